"""LaTeX for people: index form (W^{(1)}_{hd}, sums over named indices) and matrix form
(x W^T + 1 b^T, W^T delta (.) sigma'(z), delta^T a) of formulas.

Matrix forms are small expression trees that can both print themselves and evaluate with
NumPy, so a test can check every matrix form against its index form numerically.  Only
tensors of at most two indices have matrix forms; anything else says so (NoMatrixForm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE

from .functions import expm1, log1p, relu, sigmoid, softplus
from .piecewise import absolute
from .affine import is_full
from .pretty import index_constant
from .indices import dim_of, free_indices, printed_order
from .tex_names import has_top_script, tex_index, tex_name


def tex_adjoint(name: str) -> str:
    """The adjoint dL/dX of tensor X, written \\bar{X} (the bar over the whole name)."""
    return tex_name(name, bar=True)


def tex_array(name: str, adjoints) -> str:
    """An array of a derivation: \\bar{X} for an adjoint dX, \\bar{h}^{total} for a
    recurrent output's total adjoint dh_total (beside its upstream gradient dh, \\bar{h}),
    else the name itself."""
    if name in adjoints:
        return tex_adjoint(name[1:])
    if name.endswith("_total") and name[:-len("_total")] in adjoints:
        bar = tex_adjoint(name[1:-len("_total")])
        return (f"{{{bar}}}" if has_top_script(bar) else bar) + r"^{\mathrm{total}}"
    return tex_name(name)


class IndexLatexPrinter(LatexPrinter):
    """Index form: T_{ij} for T[i, j], \\bar{X} for the adjoint dX, sums as \\sum_{k}."""

    def __init__(self, adjoints: set[str] = frozenset(), brackets: bool = False,
                 **settings):
        """`brackets`: the Kronecker delta as the Iverson bracket [i = j] (documents,
        where delta names the error signal), else as delta_{ij} (claims read it)."""
        super().__init__(dict(settings))
        self.adjoints = set(adjoints)
        self.brackets = brackets

    def name(self, name: str) -> str:
        return tex_array(name, self.adjoints)

    def _print_Add(self, expr, order=None):
        # positive terms first: y - t rather than -t + y; a product first: W x + b
        terms = sorted(expr.args, key=lambda t: (t.could_extract_minus_sign(),
                                                 index_constant(t, expr),
                                                 not t.has(sp.Sum), sp.default_sort_key(t)))
        out = ""
        for k, t in enumerate(terms):
            if t.could_extract_minus_sign():
                body = self._print(-t)
                if isinstance(-t, sp.Add):
                    body = rf"\left({body}\right)"
                out += ("-" if k == 0 else " - ") + body
            else:
                out += ("" if k == 0 else " + ") + self._print(t)
        return out

    def _print_Symbol(self, expr, style="plain"):
        return self.name(expr.name)

    def _print_Mul(self, expr):
        """Factors in the order a textbook writes them: constants, a contraction, the
        tensors, then the functions and sums of them: (W^T delta) a (1 - a), not
        (1 - a) a W^T delta."""
        if expr.could_extract_minus_sign():
            rest = -expr
            body = self._print(rest)
            return "- " + (rf"\left({body}\right)" if isinstance(rest, sp.Add) else body)
        ordered = sp.Mul(*sorted(expr.args, key=self._textbook_rank), evaluate=False)
        before = self._settings["order"]
        self._settings["order"] = "none"
        try:
            return super()._print_Mul(ordered)
        finally:
            self._settings["order"] = before

    def _textbook_rank(self, factor):
        base = factor.base if isinstance(factor, sp.Pow) else factor
        backpropagated = isinstance(base, sp.Sum) and any(
            a.base.label.name in self.adjoints for a in base.atoms(sp.Indexed))
        rank = (0 if factor.is_Number else 1 if isinstance(base, sp.Symbol)
                else 2 if isinstance(base, sp.KroneckerDelta) else 3 if backpropagated
                else 4 if isinstance(base, sp.Indexed) else 8 if isinstance(base, sp.Sum)
                else 7 if isinstance(base, sp.Add) else 6)     # a last sum needs no ( )
        # among tensors a matrix (upper case) first, then the adjoint: W delta, abar a
        name = base.base.label.name if isinstance(base, sp.Indexed) else ""
        kind = 0 if name[:1].isupper() else 1 if name in self.adjoints else 2
        return rank, kind, sp.default_sort_key(factor)

    def _needs_mul_brackets(self, expr, first=False, last=False):
        # a bracket [s > 0] is its own parenthesis, even around a sum
        if isinstance(expr, (sp.Heaviside, sp.KroneckerDelta)):
            return False
        return super()._needs_mul_brackets(expr, first, last)

    def _print_Idx(self, expr):
        return tex_index(expr.label.name)

    def _print_Indexed(self, expr):
        sub = [self._index(i) for i in expr.indices]
        joined = "".join(sub) if all(len(s) == 1 for s in sub) else ",".join(sub)
        base = self.name(expr.base.label.name)
        if has_top_script(base, "_"):
            base = f"{{{base}}}"
        return f"{base}_{{{joined}}}"

    def _print_Pow(self, expr):
        # sympy hands a function's power to the function's own _latex as exp=..., which
        # ours do not take: sigma(z)^2 is printed here, as any other base
        if isinstance(expr.base, sp.Function) and hasattr(expr.base, "_latex") \
                and expr.exp.is_Integer and expr.exp > 0:
            return self._helper_print_standard_power(expr, "%s^{%s}")
        return super()._print_Pow(expr)

    def _helper_print_standard_power(self, expr, template: str) -> str:
        # a base that already carries a superscript (W^{(1)}_{ij}, a^{T}) is wrapped
        # before the power goes on: never a double superscript
        base = self.parenthesize(expr.base, PRECEDENCE["Pow"])
        if has_top_script(base) or expr.base.is_Float:
            base = f"{{{base}}}"
        return template % (base, self._print(expr.exp))

    def _print_Sum(self, expr):
        limits = list(expr.limits)
        body = expr.function
        while isinstance(body, sp.Sum):
            limits += list(body.limits)
            body = body.function
        limits = printed_order(limits)
        inner = self._print(body)
        if isinstance(body, sp.Add):
            inner = rf"\left({inner}\right)"
        # indices over their whole range under one sigma; a bounded one gets its own,
        # with both bounds (an empty range sums to 0)
        full = [self._print(k) for k, lo, hi in limits if is_full((k, lo, hi))]
        sigmas = [rf"\sum_{{{','.join(full)}}}"] if full else []
        sigmas += [rf"\sum_{{{self._print(k)}={self._index(lo)}}}^{{{self._index(hi)}}}"
                   for k, lo, hi in limits if not is_full((k, lo, hi))]
        return " ".join(sigmas) + f" {inner}"

    _script = 0      # depth inside subscripts and sums' bounds

    def _index(self, e):
        """An index expression, fractions over one denominator written inline, (l + 1)/2:
        a \\frac in a subscript or a sum's bound prints at a third of the text's size."""
        self._script += 1
        try:
            if not isinstance(e, sp.Idx) and any(not r.is_Integer
                                                 for r in e.atoms(sp.Rational)) \
                    and not e.has(sp.floor, sp.ceiling, sp.Max, sp.Min):
                e = sp.together(e)
            return self._inline_fraction(e) or self._print(e)
        finally:
            self._script -= 1

    def _inline_fraction(self, e) -> str | None:
        """p/q with an integer q > 1 as (p)/q; None for anything else."""
        if isinstance(e, sp.Idx) or not isinstance(e, (sp.Mul, sp.Add)):
            return None
        num, den = sp.fraction(e)
        if not (den.is_Integer and den > 1):
            return None
        text = self._print(num)
        return (rf"\left({text}\right)" if isinstance(num, sp.Add) else text) + f"/{den}"

    def _print_Max(self, expr, exp=None):
        return r"\max\left(%s\right)" % ", ".join(self._index(a) for a in expr.args)

    def _print_Min(self, expr, exp=None):
        return r"\min\left(%s\right)" % ", ".join(self._index(a) for a in expr.args)

    def _print_floor(self, expr, exp=None):
        return r"\left\lfloor %s \right\rfloor" % self._rounded(expr.args[0])

    def _print_ceiling(self, expr, exp=None):
        return r"\left\lceil %s \right\rceil" % self._rounded(expr.args[0])

    def _rounded(self, arg) -> str:
        arg = sp.together(arg)
        return (self._script and self._inline_fraction(arg)) or self._print(arg)

    def _print_Rational(self, expr):
        from .pretty import is_long_number
        if is_long_number(expr):
            return self._print(sp.Float(float(expr), 16))
        return super()._print_Rational(expr)

    def _print_Integer(self, expr):
        from .pretty import is_long_number
        return self._print(sp.Float(float(expr), 16)) if is_long_number(expr) \
            else str(int(expr))

    def _print_Float(self, expr):
        """1e-05 as 10^{-5}, 2.5e-07 as 2.5 \\cdot 10^{-7}; others in their shortest form."""
        text = repr(float(expr))
        if "e" not in text:
            return text
        mantissa, exponent = text.split("e")
        power = "10^{%d}" % int(exponent)
        return power if float(mantissa) == 1 else rf"{mantissa} \cdot {power}"

    def _print_KroneckerDelta(self, expr, exp=None):
        a, b = (self._print(x) for x in expr.args)
        if self.brackets:
            return rf"[{a} = {b}]"
        sep = "" if len(a) == 1 and len(b) == 1 else ","
        return rf"\delta_{{{a}{sep}{b}}}"

    def _print_Heaviside(self, expr, exp=None):
        e = self._print(expr.args[0])
        if len(expr.args) > 1 and expr.args[1] == sp.Rational(1, 2):   # a tie split evenly
            return r"\left(\left[%s > 0\right] + \tfrac{1}{2} " \
                r"\left[%s = 0\right]\right)" % (e, e)
        return r"\left[%s > 0\right]" % e

    def _print_Maximum(self, expr):
        return r"\max_{%s} %s" % (",".join(self._print(k) for k in expr.args[1:]),
                                   self._print(expr.args[0]))


def index_latex(expr, adjoints=frozenset()) -> str:
    return IndexLatexPrinter(adjoints).doprint(expr)


# ---- matrix forms ---------------------------------------------------------------------

class NoMatrixForm(ValueError):
    pass


@dataclass(frozen=True)
class MNode:
    """A matrix-form expression; `axes` are the index-form indices it stands for, in
    order (row, column)."""

    def latex(self) -> str:
        raise NotImplementedError

    def evaluate(self, values: dict, sizes: dict) -> np.ndarray:
        raise NotImplementedError

    prec = 3   # 0 add, 1 hadamard, 2 product, 3 atom


@dataclass(frozen=True)
class Leaf(MNode):
    name: str
    tex: str
    transposed: bool = False

    def latex(self):
        if not self.transposed:
            return self.tex
        return (r"\left(%s\right)" % self.tex if has_top_script(self.tex) else self.tex) \
            + "^{T}"

    def evaluate(self, values, sizes):
        a = np.asarray(values[self.name], dtype=float)
        a = a.reshape(a.shape + (1,)) if a.ndim == 1 else a   # vectors are columns
        return a.T if self.transposed else a


@dataclass(frozen=True)
class OneHot(MNode):
    """delta(i, t[n]) over rows n and columns i: the one-hot matrix of integer labels t."""
    name: str
    tex: str
    classes: str              # the dimension the labels index
    transposed: bool = False

    def latex(self):
        return rf"\operatorname{{onehot}}({self.tex})" + ("^{T}" if self.transposed else "")

    def evaluate(self, values, sizes):
        a = np.eye(sizes[self.classes])[np.asarray(values[self.name], dtype=int)]
        return a.T if self.transposed else a


@dataclass(frozen=True)
class Ones(MNode):
    dim: str
    transposed: bool = False

    def latex(self):
        return r"\mathbf{1}" + ("^{T}" if self.transposed else "")

    def evaluate(self, values, sizes):
        v = np.ones((sizes[self.dim], 1))
        return v.T if self.transposed else v


@dataclass(frozen=True)
class Scalar(MNode):
    expr: sp.Expr
    tex: str

    def latex(self):
        return self.tex

    def evaluate(self, values, sizes):
        subs = {s: (sizes[s.name] if s.name in sizes else values[s.name])
                for s in self.expr.free_symbols}
        return np.asarray(float(self.expr.subs(subs)))

    @property
    def prec(self):
        return 3 if (self.expr.is_Atom and not self.expr.could_extract_minus_sign()) else 0


@dataclass(frozen=True)
class Product(MNode):       # ordinary matrix product, or scalar times matrix
    factors: tuple
    prec = 2

    def latex(self):
        return " ".join(_wrap(f, 2) for f in self.factors)

    def evaluate(self, values, sizes):
        out = self.factors[0].evaluate(values, sizes)
        for f in self.factors[1:]:
            v = f.evaluate(values, sizes)
            out = out * v if (np.ndim(out) == 0 or np.ndim(v) == 0) else out @ v
        return out


@dataclass(frozen=True)
class Hadamard(MNode):
    factors: tuple
    prec = 1

    def latex(self):
        # matrix products first, as textbooks write (W^T delta) (.) sigma'(z), and sums
        # of terms last: a (.) (1 - a)
        ordered = sorted(self.factors, key=lambda f: (not isinstance(f, Product),
                                                      isinstance(f, Sum_)))
        return r" \odot ".join(_wrap(f, 3 if isinstance(f, (Product, _T)) else 2)
                               for f in ordered)

    def evaluate(self, values, sizes):
        out = self.factors[0].evaluate(values, sizes)
        for f in self.factors[1:]:
            out = out * f.evaluate(values, sizes)
        return out


@dataclass(frozen=True)
class Divide(MNode):
    num: MNode
    den: MNode
    prec = 1

    def latex(self):
        if isinstance(self.den, Scalar):
            return rf"\frac{{{self.num.latex()}}}{{{self.den.latex()}}}"
        return rf"{_wrap(self.num, 2)} \oslash {_wrap(self.den, 3)}"

    def evaluate(self, values, sizes):
        return self.num.evaluate(values, sizes) / self.den.evaluate(values, sizes)


@dataclass(frozen=True)
class Sum_(MNode):
    terms: tuple           # (sign, node)
    prec = 0

    def latex(self):
        out = ""
        terms = sorted(self.terms, key=lambda st: st[0] < 0)   # positive terms first
        for k, (sign, t) in enumerate(terms):
            body = _wrap(t, 1)
            out += (("-" if sign < 0 else "") if k == 0 else (" - " if sign < 0 else " + ")) \
                + body
        return out

    def evaluate(self, values, sizes):
        return sum(s * t.evaluate(values, sizes) for s, t in self.terms)


@dataclass(frozen=True)
class Apply(MNode):        # an elementwise function
    func: str
    arg: MNode
    power: object = 1       # an int or a SymPy Rational

    def latex(self):
        if self.func == "pow":
            return rf"{_wrap(self.arg, 4)}^{{\odot {sp.latex(self.power)}}}"
        if self.func == "step":
            return r"\left[%s > 0\right]" % self.arg.latex()
        if self.func == "step_tie":         # a tie split evenly (max of two values)
            a = self.arg.latex()
            return r"\left(\left[%s > 0\right] + \tfrac{1}{2} \left[%s = 0\right]\right)" % (a, a)
        if self.func == "sqrt":
            return r"\sqrt{%s}" % self.arg.latex()
        name = {"sigmoid": r"\sigma", "exp": r"\exp", "log": r"\log", "tanh": r"\tanh",
                "sqrt": r"\sqrt", "relu": r"\operatorname{ReLU}",
                "softplus": r"\operatorname{softplus}", "sin": r"\sin", "cos": r"\cos",
                "erf": r"\operatorname{erf}", "log1p": r"\operatorname{log1p}",
                "expm1": r"\operatorname{expm1}", "sign": r"\operatorname{sign}",
                "abs": r"\operatorname{abs}"}[self.func]
        return rf"{name}\left({self.arg.latex()}\right)"

    def evaluate(self, values, sizes):
        v = self.arg.evaluate(values, sizes)
        return {"sigmoid": lambda a: 1 / (1 + np.exp(-a)), "exp": np.exp, "log": np.log,
                "tanh": np.tanh, "sqrt": np.sqrt, "relu": lambda a: np.maximum(a, 0),
                "softplus": lambda a: np.logaddexp(0, a),
                "sin": np.sin, "cos": np.cos, "log1p": np.log1p, "expm1": np.expm1,
                "erf": np.vectorize(math.erf), "sign": np.sign, "abs": np.abs,
                "step": lambda a: (a > 0).astype(float),
                "step_tie": lambda a: np.heaviside(a, 0.5),
                "pow": lambda a: a ** float(self.power)}[self.func](v)


def _wrap(node, prec):
    """node's LaTeX, in parentheses when it binds looser than `prec`; prec 4 is a base
    about to take a superscript, which an atom already carrying one (a^{T}) is not."""
    code = node.latex()
    loose = node.prec < prec if prec <= 3 else (node.prec < 3 or has_top_script(code))
    return rf"\left({code}\right)" if loose else code


FUNCS = {sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sigmoid: "sigmoid", relu: "relu",
         softplus: "softplus", sp.sin: "sin", sp.cos: "cos", sp.erf: "erf", log1p: "log1p",
         expm1: "expm1", sp.sign: "sign", absolute: "abs"}


class MatrixConverter:
    """Index form -> matrix form, for results whose tensors have at most two indices."""

    def __init__(self, shapes: dict[str, tuple[str, ...]], adjoints=frozenset()):
        self.shapes = shapes
        self.adjoints = set(adjoints)

    def tex(self, name):
        return tex_array(name, self.adjoints)

    def convert(self, expr, axes) -> MNode:
        axes = tuple(axes)
        if len(axes) > 2:
            raise NoMatrixForm("more than two indices")
        node, have = self._node(expr, axes)
        return self._broadcast(node, have, axes)

    # each returns (node, axes the node's rows/columns stand for)
    def _node(self, e, axes):
        if not free_indices(e) and not e.atoms(sp.Indexed):
            return Scalar(e, index_latex(e, self.adjoints)), ()
        if isinstance(e, sp.Indexed):
            return self._leaf(e, axes)
        if isinstance(e, sp.Add):
            return self._add(e, axes)
        if isinstance(e, sp.Mul):
            return self._mul(e, axes)
        if isinstance(e, sp.Pow) and e.exp.is_Rational and e.exp < 0:
            den, have = self._node(e.base ** -e.exp, axes)
            return Divide(Scalar(sp.Integer(1), "1"), den), have
        if isinstance(e, sp.Pow) and e.exp == sp.S.Half:
            base, have = self._node(e.base, axes)
            return Apply("sqrt", base), have
        if isinstance(e, sp.Pow) and e.exp.is_Rational and e.exp > 0:
            base, have = self._node(e.base, axes)
            return Apply("pow", base, e.exp), have
        if isinstance(e, sp.Heaviside):
            arg, have = self._node(e.args[0], axes)
            tie = len(e.args) > 1 and e.args[1] == sp.Rational(1, 2)
            return Apply("step_tie" if tie else "step", arg), have
        if isinstance(e, sp.KroneckerDelta):
            return self._one_hot(e, axes)
        for f, name in FUNCS.items():
            if isinstance(e, f):
                arg, have = self._node(e.args[0], axes)
                return Apply(name, arg), have
        if isinstance(e, sp.Sum):
            return self._sum(e, axes)
        raise NoMatrixForm(f"no matrix form for {type(e).__name__}")

    def _one_hot(self, e, axes):
        i, g = e.args
        if not isinstance(i, sp.Idx):
            i, g = g, i
        if not (isinstance(i, sp.Idx) and isinstance(g, sp.Indexed) and len(g.indices) == 1
                and isinstance(g.indices[0], sp.Idx) and i in axes and g.indices[0] in axes):
            raise NoMatrixForm("a Kronecker delta that is not a one-hot of labels")
        row = g.indices[0]
        order = tuple(a for a in axes if a in (row, i))
        name = g.base.label.name
        return OneHot(name, self.tex(name), str(dim_of(i)), order != (row, i)), order

    def _leaf(self, e, axes):
        name = e.base.label.name
        idx = tuple(e.indices)
        if not all(isinstance(x, sp.Idx) for x in idx):
            raise NoMatrixForm(f"{name} is gathered by integer labels (index form only)")
        if len(idx) > 2:
            raise NoMatrixForm(f"{name} has more than two indices")
        order = tuple(i for i in axes if i in idx)
        if len(order) != len(idx):
            raise NoMatrixForm(f"{name} is indexed by a summed index here")
        transposed = len(idx) == 2 and order != idx
        return Leaf(name, self.tex(name), transposed), order

    def _add(self, e, axes):
        terms = []
        for t in e.args:
            sign = -1 if t.could_extract_minus_sign() else 1
            node, have = self._node(-t if sign < 0 else t, axes)
            terms.append((sign, self._broadcast(node, have, axes) if have else node))
        return Sum_(tuple(terms)), axes

    def _mul(self, e, axes):
        coeff = [f for f in e.args if not free_indices(f) and not f.atoms(sp.Indexed)]
        rest = [f for f in e.args if f not in coeff]
        num = [f for f in rest if not (isinstance(f, sp.Pow) and f.exp.is_Number
                                       and f.exp < 0)]
        den = [1 / f for f in rest if f not in num]
        c = sp.Mul(*coeff)
        nodes, have_all = [], set()
        for f in num:
            node, have = self._node(f, axes)
            nodes.append((node, have))
            have_all |= set(have)
        target = tuple(i for i in axes if i in have_all)
        parts = [self._broadcast(n, h, target) if h != target else n for n, h in nodes]
        node = parts[0] if len(parts) == 1 else Hadamard(tuple(parts)) if parts else None
        if den:
            dnode, dhave = self._node(sp.Mul(*den), axes)
            if node is None:
                node, target = Scalar(sp.Integer(1), "1"), ()
            if dhave and set(dhave) - set(target):
                target = tuple(i for i in axes if i in set(target) | set(dhave))
                node = self._broadcast(node, (), target) if not target else node
            node = Divide(node, self._broadcast(dnode, dhave, target) if dhave else dnode)
        if c != 1:
            negative = c.could_extract_minus_sign()
            c = -c if negative else c
            p, q = sp.fraction(c)
            if q != 1 and p.is_Number:
                node = Divide(Product((Scalar(p, index_latex(p)), node)) if p != 1 else node,
                              Scalar(q, index_latex(q, self.adjoints)))
            elif c != 1:
                node = Product((Scalar(c, index_latex(c, self.adjoints)), node))
            if negative:
                node = Sum_(((-1, node),))
        return node, target

    def _sum(self, e, axes):
        ks = [lim[0] for lim in e.limits]
        body = e.function
        while isinstance(body, sp.Sum):
            ks += [lim[0] for lim in body.limits]
            body = body.function
        if len(ks) != 1:
            # sum over everything: 1^T (.) 1
            if len(ks) == 2 and not free_indices(e):
                node = self.convert(body, tuple(ks))
                return Product((Ones(str(dim_of(ks[0])), True), node,
                                Ones(str(dim_of(ks[1]))))), ()
            raise NoMatrixForm("a sum over several indices")
        k = ks[0]
        free = [i for i in axes if i in free_indices(e)]
        groups: dict[frozenset, list] = {}
        coeff = []
        for f in sp.Mul.make_args(body):
            s = frozenset(free_indices(f))
            if not s:
                coeff.append(f)
            else:
                groups.setdefault(s, []).append(f)
        with_k = [g for g in groups if k in g]
        without = [g for g in groups if k not in g]
        if without or not with_k or len(with_k) > 2:
            raise NoMatrixForm("a sum that is not a matrix or vector product")
        if len(with_k) == 1:
            (g,) = with_k
            others = [i for i in free if i in g]
            node = self.convert(sp.Mul(*groups[g]), tuple(others) + (k,))
            if others:       # rows of node summed: node 1
                result = Product((node, Ones(str(dim_of(k)))))
            else:            # a vector summed: 1^T v
                result = Product((Ones(str(dim_of(k)), True), node))
            have = tuple(others)
        else:
            g1, g2 = with_k
            o1 = [i for i in free if i in g1]
            o2 = [i for i in free if i in g2]
            if len(o1) > 1 or len(o2) > 1:
                raise NoMatrixForm("a contraction of more than two indices")
            # the factor whose free index comes first in axes goes left
            if o2 and (not o1 or free.index(o2[0]) < free.index(o1[0])):
                g1, g2, o1, o2 = g2, g1, o2, o1
            left = self.convert(sp.Mul(*groups[g1]), tuple(o1) + (k,))
            if not o1:
                left = _transpose(left)
            right = self.convert(sp.Mul(*groups[g2]), (k,) + tuple(o2))
            if not o2 and isinstance(right, Leaf) and not right.transposed:
                pass
            result = Product((left, right))
            have = tuple(o1 + o2)
        if coeff:
            c = sp.Mul(*coeff)
            result = Product((Scalar(c, index_latex(c, self.adjoints)), result))
        return result, have

    def _broadcast(self, node, have, axes):
        """A node over `have` stretched to `axes` with ones vectors (1 b^T, v 1^T)."""
        have, axes = tuple(have), tuple(axes)
        if have == axes or not have:
            return node
        if len(axes) == 2 and len(have) == 1:
            r, c = axes
            if have == (c,):
                return Product((Ones(str(dim_of(r))), _transpose(node)))
            return Product((node, Ones(str(dim_of(c)), True)))
        raise NoMatrixForm("cannot broadcast")


def _transpose(node):
    if isinstance(node, Leaf):
        return Leaf(node.name, node.tex, not node.transposed)
    if isinstance(node, Ones):
        return Ones(node.dim, not node.transposed)
    if isinstance(node, Product):
        return Product(tuple(_transpose(f) for f in reversed(node.factors)))
    return _T(node)


@dataclass(frozen=True)
class _T(MNode):
    node: MNode

    def latex(self):
        return rf"{_wrap(self.node, 4)}^{{T}}"

    def evaluate(self, values, sizes):
        return self.node.evaluate(values, sizes).T
