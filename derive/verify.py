"""Verifying claimed formulas against the derived truth.

A claim (derive.claims) is read against a layer: each symbol is mapped to a tensor, each
side becomes an index-form SymPy expression with matrix axes made explicit, and then:

  1. shapes: sides whose shapes cannot match are ILL-FORMED (naming the shapes);
  2. symbolic: the gradient on the left is replaced by its derived formula and the
     difference is simplified (sums with different bound-index names are the same sum),
     under a time limit; zero means HOLDS, decided symbolically;
  3. numeric: both sides are evaluated at random points and sizes; if they differ, the
     smallest set of conditions under which they agree (batch size 1, a declared condition
     such as one-hot targets, a scalar target equal to 1 or 0) makes it CONDITIONAL, and
     with none it is FALSE, with the counterexample.

Vectors and matrices are read in two conventions, and a claim holds if it holds in one:
rows are examples (x W^T + b, the library's own), or columns are examples (W a + b, as in
Nielsen's book): a batch tensor x[N, D] is then the D x N matrix x^T.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import re
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .affine import between, extremes, proven_nonnegative
from .calculus import contract, tidy
from .claims import (Bin, Claim, ClaimError, Func, Grad, Indicator, Jacobian, Neg, Num,
                     Ones, Post, Sym, SumOver, at_layer, parse_claim, symbolic_layers, walk)
from .derivation import Derivation, adjoint_name
from .evaluate import _compute, evaluate
from .functions import relu, sigmoid, softplus, tanh
from .indices import free_indices, freshen_bound, tidy_bound
from .spec import dim_symbol

BATCH = "N"
ONE = sp.Idx("_one", 1)          # the unit axis of a vector (a column: (i, ONE))
FUNCS = {"sigmoid": sigmoid, "tanh": tanh, "log": sp.log, "exp": sp.exp, "relu": relu,
         "softplus": softplus, "sqrt": sp.sqrt, "erf": sp.erf, "sign": sp.sign,
         "normcdf": lambda v: (1 + sp.erf(v / sp.sqrt(2))) / 2,
         "normpdf": lambda v: sp.exp(-v ** 2 / 2) / sp.sqrt(2 * sp.pi)}
# functions without a derivative at a point: a claim equal to the truth except there is
# only CONDITIONAL (random points never hit the kink)
KINKS = (relu, sp.Heaviside, sp.Max, sp.Min, sp.sign, sp.Abs)


@dataclass
class Verdict:
    verdict: str                       # HOLDS CONDITIONAL FALSE ILL-FORMED (UNREADABLE)
    method: str                        # symbolic, numeric, shapes
    claim: str
    model: str
    conditions: list = field(default_factory=list)
    counterexample: dict | None = None
    convention: str = ""
    message: str = ""
    notes: list = field(default_factory=list)     # how ambiguous notation was read
    column: int | None = None                     # where reading stopped (UNREADABLE)

    def record(self) -> dict:
        out = dict(verdict=self.verdict, method=self.method, claim=self.claim,
                   model=self.model, conditions=self.conditions, message=self.message)
        if self.verdict == "UNREADABLE":
            out["column"] = self.column
        if self.convention:
            out["convention"] = self.convention
        if self.notes:
            out["notes"] = self.notes
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample
        return out

    def text(self) -> str:
        head = f"{self.verdict} ({self.method})"
        if self.verdict == "CONDITIONAL":
            head += ": holds only if " + "; ".join(self.conditions)
        elif self.message:
            head += ": " + self.message
        if self.verdict == "CONDITIONAL" and self.message:
            head += f" ({self.message})"
        lines = [head] + [f"  note: {n}" for n in self.notes]
        if self.counterexample:
            ce = self.counterexample
            lines.append(f"  counterexample at sizes {ce['sizes']}:")
            if ce.get("error"):
                lines.append(f"    the claim cannot be evaluated there: {ce['error']}")
            for k, v in ce["inputs"].items():
                lines.append(_show(f"    {k} = ", v, 4))
            lines.append(_show("    left  = ", ce["left"], 6))
            lines.append(_show("    right = ", ce["right"], 6))
        return "\n".join(lines)


def unreadable(exc: ClaimError, claim: str, model: str) -> Verdict:
    """The record of a claim that could not be read: verdict UNREADABLE, with the column
    where reading stopped."""
    return Verdict("UNREADABLE", "grammar", claim=claim, model=model, message=exc.message,
                   column=exc.col)


def _show(prefix, value, precision):
    return prefix + np.array2string(np.asarray(value), precision=precision, separator=", ",
                                    prefix=prefix)


class IllFormed(Exception):
    pass


# ---- reading a claim against a layer -------------------------------------------------

class Reader:
    """Claim syntax tree -> (SymPy expression, matrix axes) in one convention."""

    def __init__(self, derivation: Derivation, mapping: dict, convention: str):
        self.d = derivation
        self.layer = derivation.layer
        self.mapping = mapping
        self.convention = convention
        self.bound: dict[str, tuple[str, str]] = {}     # claim index -> (dim, where)
        self.fresh = itertools.count()
        self.implied_batch = False
        self.notes: list[str] = []
        self.elementwise_products: list[int] = []     # columns of products read as (.)
        self.claim: Claim | None = None               # for the dims of shifted indices

    def all_notes(self) -> tuple:
        cols = self.elementwise_products
        if not cols:
            return tuple(self.notes)
        where = ", ".join(map(str, cols[:5])) + (f" and {len(cols) - 5} more"
                                                   if len(cols) > 5 else "")
        return tuple(self.notes) + (
            f"the product{'s' if len(cols) > 1 else ''} at column{'s' if len(cols) > 1 else ''}"
            f" {where} read as elementwise (⊙): as matrix product{'s' if len(cols) > 1 else ''}"
            f" {'their' if len(cols) > 1 else 'its'} shapes do not match",)

    # symbols -> tensors
    def tensor_name(self, s: Sym) -> str:
        key = _key(s)
        for k in (key + "_" + "".join(s.indices), key) if s.indices else (key,):
            if k in self.mapping:
                return self.mapping[k]
        tensors = self.layer.tensors
        base = s.name.lstrip("\\")
        if s.name == r"\delta":
            z = self._named("z", s.layer)
            if z is None:
                raise ClaimError(f"'{key}': \\delta means dL/dz, and this layer has no "
                                 f"tensor z{s.layer}; map it with --map", s.col)
            return adjoint_name(z)
        if s.decor.startswith("bar "):         # \bar{\hat{x}}: the adjoint of xhat
            inner = self.tensor_name(dataclasses.replace(s, decor=s.decor[4:]))
            if inner in self.layer.tensors:
                return adjoint_name(inner)
        if s.decor == "bar":                   # \bar{X} = dL/dX, as in our documents
            name = self._named(base, s.layer)
            if name in self.layer.tensors:
                return adjoint_name(name)
        if s.decor == "hat":
            base += "hat"
        elif s.decor:
            base = f"{base}{s.decor}"
        name = self._named(base, s.layer)
        if name is None:
            known = ", ".join(tensors)
            raise ClaimError(f"unknown symbol '{key}': this layer's tensors are {known} "
                             f"(map it with --map '{key}=TENSOR')", s.col)
        return name

    def _named(self, base, layer):
        name = base + layer
        if name in self.layer.tensors or name in self.layer.dims:
            return name
        if base in ("w", "W") and base.swapcase() + layer in self.layer.tensors:
            return base.swapcase() + layer             # Nielsen's w^l_{jk} is our W
        if layer == "0" and base in ("a", "h") and len(self.layer.inputs) == 1:
            return self.layer.inputs[0].name           # a^0: the network's input
        if not layer:
            several = sorted(t for t in self.layer.tensors
                             if t[len(base):].isdigit() and t.startswith(base))
            if several:
                raise ClaimError(f"'{base}' could be any of {', '.join(several)}: give the "
                                 f"layer, as in {base}^{{({several[-1][len(base):]})}}, or "
                                 f"--map '{base}=TENSOR'")
        return None

    def idx(self, name, dim, where):
        seen = self.bound.get(name)
        if seen and seen[0] != dim:
            raise IllFormed(f"index {name} runs over {seen[0]} in {seen[1]} but over {dim} "
                            f"in {where}")
        self.bound.setdefault(name, (dim, where))
        return sp.Idx(name, dim_symbol(dim))

    def axis(self, dim):
        return sp.Idx(f"_a{next(self.fresh)}", dim_symbol(dim))

    def leaf(self, name, s: Sym, dims):
        """T as an expression: explicit indices, or matrix axes."""
        if s.indices == ("n",) and len(dims) == 2 and dims[0] == BATCH:
            # x_n, delta_n: the row of example n, read as a column vector
            a = self.axis(dims[1])
            expr = sp.IndexedBase(name)[(self.idx("n", BATCH, name), a)]
            return self.post(expr, (a, ONE), s)
        if s.indices:
            idx = list(s.indices)
            if len(idx) == len(dims) - 1 and dims and dims[0] == BATCH:
                # a per-example formula: the batch index is implied (example 0)
                self.implied_batch = True
                args = [sp.Integer(0)] + [self.idx(i, d, name) for i, d in zip(idx, dims[1:])]
            elif len(idx) != len(dims):
                raise IllFormed(f"{_key(s)} has {len(idx)} indices but {name} has "
                                f"{len(dims)} ({', '.join(dims) or 'a scalar'})")
            else:
                args = [self.idx(i, d, name) for i, d in zip(idx, dims)
                        if _is_letter(i)] if all(map(_is_letter, idx)) else None
            if args is None:                           # X_{i+r, j+s}: a shifted read
                return self.post(self.shifted(name, s, idx, dims), (), s)
            expr = sp.IndexedBase(name)[tuple(args)] if args else sp.Symbol(name)
            return self.post(expr, (), s)
        if not dims:
            return self.post(sp.Symbol(name), (), s)
        if len(dims) > 2:
            raise IllFormed(f"{name} has {len(dims)} indices; matrix notation covers two")
        axes = tuple(self.axis(d) for d in dims)
        expr = sp.IndexedBase(name)[axes]
        if len(axes) == 1:
            axes = (axes[0], ONE)                      # vectors are columns
        elif self.convention == "columns" and dims[0] == BATCH:
            axes = (axes[1], axes[0])                  # examples as columns
        return self.post(expr, axes, s)

    def shifted(self, name, s: Sym, slots, dims):
        """X_{i+r, j+s} (slots with the batch implied left out): each slot an affine
        expression of index letters; a slot that can leave its axis reads 0 there, as
        textbooks zero-pad delta in dX = sum_{r,s} delta_{i-r,j-s} W_{r,s}."""
        if len(slots) == len(dims) - 1 and dims and dims[0] == BATCH:
            self.implied_batch = True
            head, dims = [sp.Integer(0)], dims[1:]
        else:
            head = []
        if len(slots) != len(dims):
            raise IllFormed(f"{_key(s)} has {len(slots)} indices but {name} has "
                            f"{len(dims)} ({', '.join(dims) or 'a scalar'})")
        args, guards = list(head), []
        for text, dim in zip(slots, dims):
            e = self.affine(text, dim, name)
            span = extremes(e)
            top = dim_symbol(dim) - 1
            if span is None or not (proven_nonnegative(span[0], self.layer.dim_defs) and
                                    proven_nonnegative(top - span[1], self.layer.dim_defs)):
                guards.append(between(e, 0, top))
            args.append(e)
        if guards:
            note = f"{_key(s)}_{{{','.join(slots)}}} read as 0 outside {name}'s range"
            if note not in self.notes:
                self.notes.append(note)
        return sp.Mul(*guards, sp.IndexedBase(name)[tuple(args)])

    def affine(self, text, dim, where):
        """'i+r', '2i-1', 'j': letters as indices (their dimension from a plain use in
        the claim, or `dim` for a lone letter), integers as themselves."""
        if _is_letter(text):
            return self.idx(text, dim, where)
        expr, sign = sp.Integer(0), 1
        for sign_text, coeff, letter in re.findall(r"([+-]?)(\d*)([a-z]?)", text):
            if not (coeff or letter):
                continue
            sign = -1 if sign_text == "-" else 1
            c = sp.Integer(int(coeff)) if coeff else sp.Integer(1)
            term = c * (self.idx(letter, self.plain_dim(letter, where), where)
                        if letter else 1)
            expr += sign * term
        return expr

    def plain_dim(self, letter, where):
        """The dimension of an index letter used in a shifted subscript: where it is
        already bound, or its first plain use in the claim (W_{r,s} binds r and s)."""
        if letter in self.bound:
            return self.bound[letter][0]
        nodes = itertools.chain(walk(self.claim.lhs), walk(self.claim.rhs)) \
            if self.claim else ()
        for node in nodes:
            sym = node.of if isinstance(node, Grad) else node
            if not isinstance(sym, Sym) or letter not in sym.indices:
                continue
            try:
                name = self.tensor_name(sym)
                if isinstance(node, Grad):
                    name = adjoint_name(name)
                dims = self._dims(name)
            except (ClaimError, KeyError):
                continue
            if len(sym.indices) == len(dims) - 1 and dims and dims[0] == BATCH:
                dims = dims[1:]
            if len(dims) == len(sym.indices):
                return dims[sym.indices.index(letter)]
        raise IllFormed(f"index {letter} appears only in shifted subscripts ({where}), so "
                        f"its range is unknown: use it plainly somewhere, as in W_{{{letter}"
                        f"}}, or sum over it")

    def post(self, expr, axes, s):
        if s.power != 1:
            expr = expr ** _rational(s.power)          # powers are elementwise
        if s.transpose:
            axes = _t(axes)
        return expr, axes

    # the tree
    def read(self, n):
        if isinstance(n, Num):
            v = sp.Rational(str(n.value)) if n.value != int(n.value) else sp.Integer(n.value)
            return v, ()
        if isinstance(n, Sym):
            if self.is_kronecker(n):
                return self.kronecker(n)
            name = self.tensor_name(n)
            if name in self.layer.dims:
                return self.post(dim_symbol(name), (), n)
            dims = self._dims(name)
            return self.leaf(name, n, dims)
        if isinstance(n, Grad):
            x = self.tensor_name(n.of)
            if x.startswith("d") and x not in self.layer.tensors:
                raise ClaimError(f"'{_key(n.of)}' is already a gradient", n.col)
            if x not in self.layer.tensors or self.layer.tensors[x].role == "target":
                raise ClaimError(f"no gradient with respect to '{_key(n.of)}'", n.col)
            name = adjoint_name(x)
            if x == self.layer.loss:
                return sp.Integer(1), ()
            return self.leaf(name, n.of, self._dims(name))
        if isinstance(n, Jacobian):
            return self.jacobian(n)
        if isinstance(n, Neg):
            e, ax = self.read(n.a)
            return -e, ax
        if isinstance(n, Post):
            e, ax = self.read(n.a)
            if n.power != 1:
                e = e ** _rational(n.power)
            return e, (_t(ax) if n.transpose else ax)
        if isinstance(n, Bin):
            a, ax = self.read(n.a)
            b, bx = self.read(n.b)
            if n.op == "*":
                return self.product(a, ax, b, bx, n)
            symbol = {"/": "÷", "oslash": "⊘", "odot": "⊙"}.get(n.op, n.op)
            b, out = self.elementwise(a, ax, b, bx, symbol)
            if n.op in ("/", "oslash"):
                return a / b, out
            if n.op == "odot":
                return a * b, out
            return (a + b if n.op == "+" else a - b), out
        if isinstance(n, Ones):
            k = next(self.fresh)
            return sp.Integer(1), (sp.Idx(f"_ones{k}", sp.Symbol(f"_any{k}")), ONE)
        if isinstance(n, Indicator):
            a, ax = self.read(n.a)
            b, bx = self.read(n.b)
            b, out = self.elementwise(a, ax, b, bx, n.op)
            at_zero = sp.Integer(1 if "=" in n.op else 0)
            return sp.Heaviside(a - b if ">" in n.op else b - a, at_zero), out
        if isinstance(n, Func):
            return self.apply(n)
        if isinstance(n, SumOver):
            body, ax = self.read(n.body)
            free = {i.label.name: i for i in free_indices(body)}
            limits = []
            for i in n.index:
                if i not in free:
                    raise IllFormed(f"the sum over {i} has no term indexed by {i}")
                k = free[i]
                limits.append((k, 0, k.upper))
            return sp.Sum(body, *limits), ax
        raise ClaimError("this part of the claim cannot be used here",
                         getattr(n, "col", None))

    def _dims(self, name):
        base = name if name in self.layer.tensors else name[1:]
        return self.layer.tensors[base].dims

    def is_kronecker(self, s: Sym) -> bool:
        """\\delta_{ij} is the Kronecker delta when i and j run over one dimension (the
        error signal dz with two indices runs over two, the batch and the features)."""
        if s.name != r"\delta" or len(s.indices) != 2 or s.layer or s.decor or \
                s.indices[0] == s.indices[1] or not all(map(_is_letter, s.indices)):
            return False
        seen = [self.bound.get(i) for i in s.indices]
        if all(seen):
            return seen[0][0] == seen[1][0]
        try:
            z = self._named("z", "")
        except ClaimError:                 # \delta without a layer in a network
            z = None
        dims = self.layer.tensors[z].dims if z in self.layer.tensors else ()
        if len(dims) != 2:
            return any(seen)
        return any(b and b[0] != d for b, d in zip(seen, dims))

    def kronecker(self, s: Sym):
        dim = next(b[0] for b in (self.bound.get(i) for i in s.indices) if b)
        i, j = (self.idx(k, dim, r"\delta_{%s}" % "".join(s.indices)) for k in s.indices)
        note = rf"\delta_{{{''.join(s.indices)}}} read as the Kronecker delta"
        if note not in self.notes:
            self.notes.append(note)
        return sp.KroneckerDelta(i, j), ()

    def jacobian(self, n: Jacobian):
        """dY_i/dX_j of a forward tensor: its definition, expanded back to X, differentiated
        (contracted like the derivation's own local derivatives)."""
        refs = []
        for s in (n.of, n.wrt):
            name = self.tensor_name(s)
            if name not in self.layer.tensors:
                raise ClaimError(f"'{_key(s)}' is not a tensor of the layer", s.col)
            dims = self._dims(name)
            if dims and not s.indices:
                raise ClaimError(r"write a Jacobian with indices, as in "
                                 r"\frac{\partial y_i}{\partial z_j}", n.col)
            refs.append((name, self.leaf(name, s, dims)[0]))
        (_, y), (x_name, x) = refs
        forward = {eq.target: (eq.indices, eq.rhs) for eq in self.layer.equations
                   if eq.target != x_name}
        expanded = _substitute(y, forward)
        return contract(sp.diff(expanded, x)), ()

    def apply(self, n: Func):
        args = [self.read(a) for a in n.args]
        if len(args) == 2:                         # max(a, b), min(a, b)
            (a, ax), (b, bx) = args
            b, out = self.elementwise(a, ax, b, bx, n.name)
            sign = 1 if n.name == "max" else -1    # min(a, b) = -max(-a, -b)
            a, b = sign * a, sign * b
            e = relu(b) if a == 0 else relu(a) if b == 0 else sp.Max(a, b)
            e = sign * e
        else:
            (arg, out), = args
            f = self.function(n.name, n.args[0], n.col)
            if n.prime:
                s = sp.Dummy("s")
                e = sp.diff(f(s), s).xreplace({s: arg})
            else:
                e = f(arg)
        return (e ** _rational(n.power) if n.power != 1 else e), out

    def function(self, name, arg, col):
        if name != "f":
            return FUNCS[name]
        # f is the activation this layer applies to the argument's tensor
        if not isinstance(arg, Sym):
            raise ClaimError("f' needs a tensor argument, as in f'(z)", col)
        target = self.tensor_name(arg)
        found = set()
        for eq in self.layer.equations:
            r = eq.rhs
            if isinstance(r, sp.Function) and len(r.args) == 1 and isinstance(
                    r.args[0], sp.Indexed) and r.args[0].base.label.name == target:
                found.add(type(r))
        if len(found) != 1:
            raise ClaimError(f"f must be the one elementwise function applied to {target}; "
                             f"found {len(found)}", col)
        return found.pop()

    def product(self, a, ax, b, bx, n):
        """Juxtaposition, \\cdot, \\times: the matrix product, or the elementwise one when
        only its shapes match (sigma(z)(1 - sigma(z)) of a batch)."""
        try:
            return self.matmul(a, ax, b, bx)
        except IllFormed:
            if not (ax and bx and len(ax) == len(bx) and all(map(_same, ax, bx))):
                raise
        b, out = self.elementwise(a, ax, b, bx, "⊙")
        self.elementwise_products.append(n.b.col)
        return a * b, out

    def matmul(self, a, ax, b, bx):
        if not ax or not bx:                       # a scalar factor
            return a * b, ax or bx
        if len(ax) != 2 or len(bx) != 2:
            raise IllFormed("a product of non-matrices")
        r, k1 = ax
        k2, c = bx
        if not _same(k1, k2):
            raise IllFormed(f"a product of a {_shape(ax)} and a {_shape(bx)} matrix: the "
                            f"inner sizes {_dim(k1)} and {_dim(k2)} differ")
        if k1 == ONE:
            return a * b, (r, c)                   # an outer product
        inner = k2 if _is_ones(k1) else k1
        if _is_ones(inner):
            raise IllFormed(r"a product of two \mathbf{1}: their length cannot be told")
        k = self.axis(str(_dim(inner)))
        out = () if (r, c) == (ONE, ONE) else (r, c)      # 1^T v is a scalar
        return sp.Sum(a.xreplace({k1: k}) * b.xreplace({k2: k}), (k, 0, k.upper)), out

    def elementwise(self, a, ax, b, bx, op):
        """b with its axes renamed to a's (shapes must match), and the axes of the result."""
        if not (ax and bx):
            return b, ax or bx
        mapping, out = self.unify(ax, bx, op)
        return b.xreplace(mapping), out

    def unify(self, ax, bx, op):
        if len(ax) != len(bx) or not all(map(_same, ax, bx)):
            raise IllFormed(f"'{op}' of a {_shape(ax)} and a {_shape(bx)} matrix")
        mapping, out = {}, []
        for p, q in zip(ax, bx):
            if _is_ones(p) and not _is_ones(q):
                out.append(q)                      # a \mathbf{1} takes its length here
                continue
            out.append(p)
            if q != ONE and not _is_ones(q):
                mapping[q] = p
        return mapping, tuple(out)


def _substitute(e, table):
    """Each reference to a tensor of `table` (name -> (indices, body)) replaced by its body,
    until none is left (bodies may refer to each other)."""
    for _ in range(len(table) + 2):
        changed = False
        for ref in sorted(e.atoms(sp.Indexed), key=str):
            name = ref.base.label.name
            if name in table:
                idx, body = table[name]
                e = e.xreplace({ref: freshen_bound(body).xreplace(dict(zip(idx,
                                                                      ref.indices)))})
                changed = True
        for sym in sorted(e.atoms(sp.Symbol), key=str):
            if sym.name in table and not table[sym.name][0]:
                e = e.xreplace({sym: table[sym.name][1]})
                changed = True
        if not changed:
            break
    return e


def _rational(f):
    return sp.Rational(f.numerator, f.denominator)


def _is_ones(i):
    return i.label.name.startswith("_ones")


def _same(p, q) -> bool:
    """Axes of one length (a \\mathbf{1} fits any but the unit axis)."""
    if _is_ones(p) or _is_ones(q):
        return ONE not in (p, q)
    return _dim(p) == _dim(q)


def _t(axes):
    return (axes[1], axes[0]) if len(axes) == 2 else axes


def _dim(i):
    return 1 if i == ONE else i.upper + 1


def _shape(axes):
    return " x ".join("len(1)" if _is_ones(i) else str(_dim(i)) for i in axes) if axes \
        else "scalar"


def _is_letter(text: str) -> bool:
    return len(text) == 1 and text.isalpha()


def _key(s: Sym) -> str:
    name = s.name
    for decor in reversed(s.decor.split()):
        name = rf"\{decor}{{{name}}}"
    if s.layer:
        name += f"^{{({s.layer})}}"
    return name


# ---- deciding --------------------------------------------------------------------------

@dataclass
class Reading:
    convention: str
    lhs: sp.Expr
    rhs: sp.Expr
    axes: tuple
    implied_batch: bool
    notes: tuple = ()


def read_claim(claim: Claim, d: Derivation, mapping: dict) -> tuple[list, str]:
    """Readings of the claim in each convention where its shapes agree, and the shape
    complaint when they agree in none."""
    readings, problems = [], []
    for convention in ("rows", "columns"):
        r = Reader(d, mapping, convention)
        r.claim = claim
        try:
            lhs, lx = r.read(claim.lhs)
            rhs, rx = r.read(claim.rhs)
            if rx and not lx:
                raise IllFormed(f"the left side is a scalar but the right side is "
                                f"{_shape(rx)}")
            rhs, axes = r.elementwise(lhs, lx, rhs, rx, "=")
            if any(_is_ones(a) for a in axes):
                raise IllFormed(r"the length of \mathbf{1} cannot be told from the claim")
            lf = {i for i in free_indices(lhs) if i not in axes}
            rf = {i for i in free_indices(rhs) if i not in axes}
            if lf != rf and lf and rf:
                raise IllFormed(f"free indices differ: {sorted(map(str, lf))} on the left, "
                                f"{sorted(map(str, rf))} on the right")
            readings.append(Reading(convention, lhs, rhs, tuple(axes) + tuple(
                sorted(lf | rf, key=str)), r.implied_batch, r.all_notes()))
        except IllFormed as exc:
            problems.append(f"{exc} (examples as {convention})")
    return readings, "; ".join(problems)


class ProofTimeout(TimeoutError):
    """Raised by `time_limit`'s alarm; its own class so the block's unraisable hook can
    tell it from anyone else's error."""


@contextmanager
def time_limit(seconds):
    """A limit of `seconds` of this process's CPU time (ITIMER_VIRTUAL, main thread only;
    elsewhere no limit is enforced).  CPU time, not wall time: on a loaded machine a proof
    gets the same work done before the limit (a 3 s limit in wall time fell back to numbers
    for a proof that takes 1 s on a quiet one, with two other processes on its 2 cores).

    After the limit the alarm repeats every 50 ms until the block ends: a timeout raised
    while a gc callback or a finaliser runs (hypothesis installs a gc callback) is ignored
    there, and a single alarm would then let SymPy run on without limit.  Such an ignored
    timeout goes to `sys.unraisablehook`; pytest's hook formats a traceback, which the next
    alarm interrupted, failing the test ("Failed to process unraisable exception").  So for
    the block's duration our own hook drops our timeouts (nothing is lost: the next alarm
    raises where it counts) and passes everything else on, and the alarm holds its fire
    while any unraisable is being handled."""
    handling = False

    def raise_timeout(signum, frame):
        if not handling:
            raise ProofTimeout

    def drop_own_timeouts(unraisable):
        nonlocal handling
        handling = True
        try:
            if not isinstance(unraisable.exc_value, ProofTimeout):
                outer_hook(unraisable)
        finally:
            handling = False

    try:
        old = signal.signal(signal.SIGVTALRM, raise_timeout)
    except ValueError:           # not the main thread
        yield
        return
    outer_hook, sys.unraisablehook = sys.unraisablehook, drop_own_timeouts
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, old)
        sys.unraisablehook = outer_hook


def symbolic_zero(reading: Reading, d: Derivation, seconds: float) -> str:
    """'zero' when lhs - rhs simplifies to 0 with every derived gradient and every forward
    definition substituted; 'timeout' when SymPy does not finish in time; 'unknown' when
    it finishes without reaching zero (then numbers decide)."""
    if reading.implied_batch:
        return "unknown"
    gradients = _adjoint_formulas(d)
    forward = {eq.target: (eq.indices, eq.rhs) for eq in d.layer.equations}
    try:
        with time_limit(seconds):
            diff = _substitute(reading.lhs, gradients) - _substitute(reading.rhs, gradients)
            for table in ({}, forward):
                diff = _substitute(diff, table) if table else diff
                diff = tidy(contract(diff))
                diff = _cancel_sums(tidy_bound(freshen_bound(diff), set()))
                if diff == 0 or sp.simplify(tidy(diff)) == 0:
                    return "zero"
            return "unknown"
    except TimeoutError:
        return "timeout"
    except Exception:            # noqa: BLE001  SymPy's simplify has internal failures
        return "unknown"        # (StopIteration in sum_add, seen on 1.14): numbers decide


def _adjoint_formulas(d: Derivation) -> dict:
    """dX -> (indices, formula) for every adjoint the derivation knows: its steps, and the
    adjoints it inlined (dmu of batch norm, dP of attention) as their contributions' sum."""
    layer = d.layer
    upstream = {adjoint_name(t.name) for t in layer.upstream}
    out = {s.name: (s.indices, s.expr) for s in d.steps if s.name not in upstream}
    for c in d.contributions:
        name = adjoint_name(c.tensor)
        if name in upstream or any(s.name == name for s in d.steps):
            continue
        idx = d.indices(c.tensor)
        before = out.get(name, (idx, sp.Integer(0)))[1]
        out[name] = (idx, before + c.expr)
    return out


def _cancel_sums(e):
    """Every sum (and every sum of terms with sums) that is identically zero replaced by
    0, wherever it sits: sum_i (x_i - mu), mu = sum_j x_j / M, inside batch norm's dmu."""
    if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol, sp.Number)):
        return e
    e = e.func(*[_cancel_sums(a) for a in e.args])
    if isinstance(e, (sp.Sum, sp.Add)) and e.has(sp.Sum):
        if tidy_bound(freshen_bound(contract(e)), set()) == 0:
            return sp.Integer(0)
    return e


def candidate_conditions(layer) -> list[tuple[str, dict]]:
    """Conditions a claim may need: (description, how to generate data under it)."""
    out = []
    if BATCH in layer.dims:
        out.append(("batch size 1", {"size": {BATCH: 1}}))
    for c in layer.conditions:
        out.append((f"{c.text}", {"condition": c}))
    for t in layer.targets:
        if not t.dims:
            out.append((f"{t.name} = 1", {"value": (t.name, 1.0)}))
            out.append((f"{t.name} = 0", {"value": (t.name, 0.0)}))
    return out


def _draw(layer, rng, rules):
    sizes = _draw_sizes(layer, rng, {k: v for r in rules for k, v in r.get("size", {}).items()})
    values = {}
    for t in layer.tensors.values():
        shape = tuple(sizes[x] for x in t.dims)
        if t.role in ("input", "param") and t.nograd:
            # hyperparameters (a learning rate, batch norm's epsilon) are positive
            values[t.name] = rng.uniform(0.05, 1.0, size=shape)
        elif t.role in ("input", "param"):
            values[t.name] = rng.normal(size=shape)
        elif t.role == "target":
            values[t.name] = rng.uniform(0.05, 1.0, size=shape)
    for r in rules:
        if "condition" in r:
            c = r["condition"]
            t = layer.tensors[c.tensor]
            shape = tuple(sizes[x] for x in t.dims)
            a = np.moveaxis(np.zeros(shape), c.slot, -1)
            flat = a.reshape(-1, a.shape[-1])
            flat[np.arange(len(flat)), rng.integers(0, a.shape[-1], len(flat))] = \
                float(c.value)
            values[c.tensor] = np.moveaxis(flat.reshape(a.shape), -1, c.slot)
        if "value" in r:
            values[r["value"][0]] = np.asarray(r["value"][1])
    for t in layer.upstream:
        values[adjoint_name(t.name)] = rng.normal(size=tuple(sizes[x] for x in t.dims))
    return sizes, values


def _draw_sizes(layer, rng, fixed):
    """Sizes from {1, 2, 3, 5} for the free dimensions (`fixed` as given), the derived
    ones from their definitions (Hout = H - KH + 1), redrawn until every one is >= 1."""
    free = [d for d in layer.dims if d not in layer.dim_defs]
    for _ in range(200):
        sizes = {d: int(rng.choice([1, 2, 3, 5])) for d in free} | fixed
        sizes = layer.dim_sizes(sizes)
        if all(sizes.get(d, 0) >= 1 for d in layer.dims):
            return sizes
    raise ValueError(f"no sizes from 1, 2, 3, 5 give every dimension of {layer.name} a size "
                     f">= 1")


def _sides(reading: Reading, d: Derivation, sizes, values):
    full = evaluate(d, values, every_adjoint=True)
    axes = [a for a in reading.axes if a != ONE]
    dims = [str(a.upper + 1) for a in axes]
    one = {ONE: sp.Integer(0)}
    # a claim's shifted read outside its tensor reads 0 (dy[n, o, l - k] of a full
    # correlation), as the notes say
    outside = {n: (sp.Integer(0), list(np.shape(v))) for n, v in full.items()}
    left = _compute(reading.lhs.xreplace(one), axes, dims, sizes, full, outside)
    right = _compute(reading.rhs.xreplace(one), axes, dims, sizes, full, outside)
    return left, right


def _agree(left, right) -> bool:
    scale = max(float(np.max(np.abs(left), initial=0)), float(np.max(np.abs(right),
                                                                     initial=0)), 1.0)
    return left.shape == right.shape and bool(np.allclose(left, right, rtol=1e-8,
                                                          atol=1e-10 * scale))


def numeric_check(reading, d, rules, trials=6, seed=0):
    """None if the sides agree at every trial, else the first counterexample."""
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        sizes, values = _draw(d.layer, rng, rules)
        try:
            with np.errstate(all="ignore"):
                left, right = _sides(reading, d, sizes, values)
        except ZeroDivisionError as exc:
            # a side undefined at this point (1/0 in the claim) differs from the truth;
            # any other exception is a bug in the toolkit and must not become a verdict
            return dict(sizes=sizes, inputs={}, left=[], right=[], error=str(exc))
        if not _agree(left, right):
            return dict(sizes=sizes, inputs={k: np.asarray(v).tolist() for k, v in
                                             values.items()},
                        left=left.tolist(), right=right.tolist())
    return None


def is_spec_claim(text: str) -> bool:
    """A claim in the spec language: no backslash, and a tensor on the left."""
    return "\\" not in text and bool(re.match(r"\s*[A-Za-z]\w*\s*(\[[^\]]*\])?\s*=[^=]",
                                              text))


def read_spec_claim(text: str, d: Derivation) -> Reading:
    """`dz[n, i] = (y[n, i] - t[n, i]) / N`, read by the spec parser with each tensor's
    gradient dX declared beside it."""
    from .errors import SpecError
    from .parser import _Expr, _Parser, _Statement
    from .spec import Tensor

    layer = d.layer
    p = _Parser("", "<claim>")
    p.name = layer.name
    p.dims = {dim: 0 for dim in layer.dims}
    p.tensors = dict(layer.tensors)
    p.constants, p.dim_defs = dict(layer.constants), dict(layer.dim_defs)
    for t in layer.tensors.values():
        if t.role != "target":
            p.tensors[adjoint_name(t.name)] = Tensor(adjoint_name(t.name), "output", t.dims, 0)
    stmt = _Statement("<claim>", 1, text)
    try:
        at, lhs_src, rhs_src = p._split_equals(stmt, text)
        lhs = p._parse_expr(stmt, lhs_src, 0)
        node = lhs.node
        if isinstance(node, ast.Name):
            name, slots = node.id, []
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            name = node.value.id
            sl = node.slice
            slots = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        else:
            raise ClaimError("the left-hand side must be a tensor like dz[n, i]", 1)
        tensor = p.tensors.get(name)
        if tensor is None:
            raise ClaimError(f"unknown tensor '{name}' on the left (gradients are d + name)", 1)
        scope = _Expr(p, stmt, lhs.shift)
        indices = scope.bind_lhs(tensor, slots, lhs.col(node))
        rhs = p._parse_expr(stmt, rhs_src, at + 1)
        scope.shift = rhs.shift
        expr = scope.rhs(rhs.node, indices)
    except SpecError as exc:
        if "does not appear on the right-hand side" in exc.message or \
                "runs over" in exc.message:
            raise IllFormed(exc.message) from None
        raise ClaimError(exc.message, exc.col) from None
    lhs_expr = tensor.ref(*indices)
    notes = tuple(f"{name}[..., {text}, ...] read as 0 outside {name}'s range"
                  for _, _, name, dim, e, text, _ in p.reads_to_check
                  if not _inside(e, dim, layer.dim_defs))
    return Reading("index form", lhs_expr, expr, tuple(indices), False,
                   tuple(dict.fromkeys(notes)))


def _inside(e, dim, dim_defs) -> bool:
    """A subscript that provably stays in 0 .. dim - 1."""
    span = extremes(e)
    return span is not None and proven_nonnegative(span[0], dim_defs) and \
        proven_nonnegative(dim_symbol(dim) - 1 - span[1], dim_defs)


def _too_deep_is_a_claim_error(fn):
    """A claim of ~1,400 factors nests deeper than Python's recursion limit somewhere in
    reading or SymPy: say so instead of 'maximum recursion depth exceeded'."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecursionError:
            raise ClaimError("the claim is nested too deeply to verify (a product or sum "
                             "of about a thousand terms or more); write it shorter, e.g. "
                             "with powers or sums") from None
    return wrapper


@_too_deep_is_a_claim_error
def verify(d: Derivation, claim_text: str, mapping: dict | None = None,
           timeout: float = 5.0) -> Verdict:
    mapping = dict(mapping or {})
    if is_spec_claim(claim_text or ""):
        base = dict(claim=claim_text.strip(), model=d.layer.name)
        try:
            reading = read_spec_claim(claim_text, d)
        except IllFormed as exc:
            return Verdict("ILL-FORMED", "shapes", message=str(exc), **base)
        return _decide([reading], "", base, d, timeout)
    for key, value in mapping.items():
        base = value[1:] if value.startswith("d") and value[1:] in d.layer.tensors else value
        if base not in d.layer.tensors and base not in d.layer.dims:
            raise ClaimError(f"--map {key}={value}: this layer has no tensor or dimension "
                             f"'{value}'")
    try:
        with _deep_recursion():
            claim = parse_claim(claim_text)
            if symbolic_layers(claim):
                return _verify_every_layer(claim, d, mapping, timeout)
            return _verify_claim(claim, d, mapping, timeout)
    except RecursionError:
        raise ClaimError("the claim nests too deeply to read; split it into smaller "
                         "claims") from None


@contextmanager
def _deep_recursion(limit=20000):
    """Reading a claim of a thousand factors recurses once per factor."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _verify_claim(claim: Claim, d: Derivation, mapping, timeout) -> Verdict:
    readings, problems = read_claim(claim, d, mapping)
    return _decide(readings, problems, dict(claim=claim.text, model=d.layer.name), d,
                   timeout)


def layer_numbers(layer) -> list[int]:
    """The layer numbers of a network's tensors (W1, z2 -> 1, 2); empty for one layer."""
    return sorted({int(m.group(1)) for t in layer.tensors
                   if (m := re.fullmatch(r".*?[A-Za-z_](\d+)", t))})


def _verify_every_layer(claim: Claim, d: Derivation, mapping, timeout) -> Verdict:
    """A claim about layer l (or the last layer L), as texts state BP1-BP4: checked at every
    layer of the model where its tensors exist, and said for which l it holds."""
    numbers = layer_numbers(d.layer)
    last = numbers[-1] if numbers else None
    claim = at_layer(claim, "L", last)
    if "l" not in symbolic_layers(claim):
        v = _verify_claim(claim, d, mapping, timeout)
        v.notes.insert(0, f"L = {last}, the last layer" if numbers else
                       "L is the only layer")
        return v
    verdicts, skipped = {}, {}
    for k in numbers or [None]:
        try:
            verdicts[k] = _verify_claim(at_layer(claim, "l", k), d, mapping, timeout)
        except ClaimError as exc:
            skipped[k] = exc
    if not verdicts:
        raise next(iter(skipped.values()))
    names = ", ".join(str(k) for k in verdicts)
    notes = [f"checked for l = {names}" if numbers else "l is the only layer"]
    notes += [f"l = {k} does not apply: {exc.message}" for k, exc in skipped.items()]
    first = next(iter(verdicts.values()))
    if all((v.verdict, v.conditions) == (first.verdict, first.conditions)
           for v in verdicts.values()) or not numbers:
        first.notes[:0] = notes
        return first
    good = [k for k, v in verdicts.items() if v.verdict == "HOLDS"] or \
        [k for k, v in verdicts.items() if v.verdict == "CONDITIONAL"]
    if not good:
        first.notes[:0] = notes + [f"l = {k}: {v.verdict}" for k, v in verdicts.items()]
        return first
    chosen = verdicts[good[0]]
    good = [k for k in good if verdicts[k].conditions == chosen.conditions]
    only = f"l = {', '.join(map(str, good))} only"
    return dataclasses.replace(chosen, verdict="CONDITIONAL", conditions=[only] +
                               chosen.conditions, notes=notes + [
                                   f"l = {k}: {v.verdict}" for k, v in verdicts.items()
                                   if k not in good] + chosen.notes)


def _decide(readings, problems, base, d, timeout) -> Verdict:
    if not readings:
        return Verdict("ILL-FORMED", "shapes", message=problems, **base)
    outcomes = []
    for reading in readings:
        outcome = symbolic_zero(reading, d, timeout)
        if outcome == "zero":
            return _away_from_kinks(Verdict(
                "HOLDS", "symbolic", convention=_conv(reading, readings),
                message="equal for all sizes and values", notes=list(reading.notes),
                **base), reading, d)
        outcomes.append(outcome)
    why = ("SymPy did not decide within the time limit" if "timeout" in outcomes else
           "SymPy's simplification did not reach zero")
    first_counter = None
    for reading in readings:
        counter = numeric_check(reading, d, [])
        if counter is None:
            return _away_from_kinks(Verdict(
                "HOLDS", "numeric", convention=_conv(reading, readings),
                message=f"equal at random points and sizes ({why})",
                notes=list(reading.notes), **base), reading, d)
        first_counter = first_counter or counter
    conditions = candidate_conditions(d.layer)
    for size in (1, 2):
        for combo in itertools.combinations(conditions, size):
            rules = [c[1] for c in combo]
            for reading in readings:
                if numeric_check(reading, d, rules) is None:
                    return Verdict("CONDITIONAL", "numeric", conditions=[c[0] for c in combo],
                                   convention=_conv(reading, readings),
                                   notes=list(reading.notes), **base)
    return Verdict("FALSE", "numeric", counterexample=first_counter,
                   message="the two sides differ", notes=list(readings[0].notes), **base)


def _away_from_kinks(v: Verdict, reading: Reading, d: Derivation) -> Verdict:
    """A claim that holds at random points may still differ where a kink's argument (or a
    denominator of the claim) is zero, a point random numbers never hit."""
    where = kink_condition(reading, d)
    if where is None:
        return v
    return dataclasses.replace(v, verdict="CONDITIONAL", method="numeric",
                               conditions=[f"{where} != 0"],
                               message=f"away from the kink: at {where} = 0 the sides differ")


def kink_condition(reading: Reading, d: Derivation) -> str | None:
    """The tensor whose zeros make the sides differ, or None."""
    layer = d.layer
    for name in _kink_tensors(reading, d):
        rng = np.random.default_rng(1)
        for _ in range(3):
            sizes, values = _draw(layer, rng, [])
            _zero(layer, name, values, rng)
            try:
                with np.errstate(all="ignore"):
                    left, right = _sides(reading, d, sizes, values)
            except (ValueError, TypeError, ZeroDivisionError):
                continue
            defined = np.isfinite(left)       # where the truth itself is defined
            if left.shape != right.shape:
                continue
            if not np.all(np.isfinite(right[defined])) or \
                    not _agree(left[defined], right[defined]):
                return name
    return None


def _kink_tensors(reading: Reading, d: Derivation) -> list[str]:
    """Tensors that are the argument of a kink (relu, a step, max, sign, abs) in the claim
    or the layer, or a denominator of the claim."""
    layer = d.layer
    args = []
    for e in [reading.lhs, reading.rhs] + [eq.rhs for eq in layer.equations] + \
            [s.expr for s in d.steps]:
        for f in sorted(e.atoms(*KINKS), key=str):
            args.extend(f.args if isinstance(f, (sp.Max, sp.Min)) else f.args[:1])
    for e in (reading.lhs, reading.rhs):
        args.extend(p.base for p in sorted(e.atoms(sp.Pow), key=str) if p.exp.is_negative)
    names = []
    for a in args:
        name = a.base.label.name if isinstance(a, sp.Indexed) else \
            a.name if isinstance(a, sp.Symbol) else None
        if name in layer.tensors and layer.tensors[name].role != "target" and \
                name not in names:
            names.append(name)
    return names


def _zero(layer, name, values, rng):
    """values with tensor `name` zero: half its entries if it is an input, all of it (by
    zeroing what it is computed from) if it is computed."""
    t = layer.tensors[name]
    if t.role in ("input", "param"):
        v = np.array(values[name], dtype=float)
        mask = rng.random(v.shape) < 0.5
        mask.flat[0] = True
        v[mask] = 0.0
        values[name] = v
        return
    todo, seen = [name], set()
    while todo:
        eq = next((e for e in layer.equations if e.target == todo.pop()), None)
        for src in (eq.reads if eq is not None else ()):
            if src in seen or src not in layer.tensors:
                continue
            seen.add(src)
            if layer.tensors[src].role in ("input", "param"):
                values[src] = np.zeros_like(values[src])
            else:
                todo.append(src)


def _conv(reading, readings):
    if reading.convention == "index form":
        return "index form"
    return f"examples as {reading.convention}"
