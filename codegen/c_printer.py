"""SymPy's C99 printer, extended for kernels: flat row-major array access, the toolkit's own
functions (a table: OWN_FUNCTIONS), and float or double arithmetic."""
from __future__ import annotations

import re

import sympy as sp
from sympy.codegen.ast import float32, real
from sympy.codegen.rewriting import create_expand_pow_optimization, optimize, optims_c99
from sympy.printing.c import C99CodePrinter

# log(1 + x) -> log1p(x), exp(x) - 1 -> expm1(x), small integer powers -> products.
EXPAND_POW = create_expand_pow_optimization(4, base_req=lambda b: True)

from derive.affine import between, divides
from derive.same_shape import by_shape

from .dtypes import SUFFIX


# The functions the kernels take from the toolkit's own C (templates/c_source.c.j2 and
# c_vector_math.c.j2), by SymPy function name and dtype; any other function prints as the
# C99 library call.  The float ones are branch-free and inline into `omp simd` loops, where
# libmvec's expf, tanhf, logf... are a call per vector (and tanhf, erff, log1pf several
# times slower than the inline code in GELU backward).  Not sin and cos: libmvec's vector
# sinf/cosf, which `omp simd` loops call, are 5x faster than an exact branch-free reduction
# (docs/kernels.md; tests/test_library_math.py bounds them).  Heaviside is ReLU', with the
# ReLU'(0) = 0 convention of PyTorch and the NumPy backend.
_EVERY_DTYPE = {"sigmoid": "sigmoid", "softplus": "softplus", "relu": "relu",
               "Heaviside": "step"}
OWN_FUNCTIONS = {
    "float32": {**_EVERY_DTYPE, "exp": "exp", "log": "log", "log1p": "log1p", "tanh": "tanh",
                "erf": "erf", "exp_nonpositive": "exp_nonpos"},
    "float64": _EVERY_DTYPE,
}
# What each own function is written in: their definitions come too.
# (sigmoid, softplus and erf take exp of an argument <= 0 only: the range-limited one;
# softplus' log1p of an argument in [0, 1] only, likewise)
OWN_NEEDS = {"log1p": ("log",), "erf": ("exp_nonpos",), "sigmoid": ("exp_nonpos",),
             "softplus": ("exp_nonpos", "log1p_unit")}


def own_function(expr, dtype: str) -> str | None:
    """The toolkit's C function (bp_NAME_f32 / _f64) that computes expr's function in
    dtype, or None."""
    if not isinstance(expr, sp.Function):
        return None
    stem = OWN_FUNCTIONS[dtype].get(type(expr).__name__)
    return stem and f"bp_{stem}_{SUFFIX[dtype]}"


def own_functions_in(exprs) -> set[str]:
    """The names (bp_NAME_f32's NAME) of the own C functions the exprs call, in float or
    double, with what they are written in: the definitions the source must carry.  Looked
    for after the rewrites the printer applies (log(1 + x) prints as log1p(x))."""
    names = {OWN_FUNCTIONS[d].get(type(f).__name__) for e in exprs
             for f in _optimized(e).atoms(sp.Function) for d in OWN_FUNCTIONS} - {None}
    return names | {m for n in names for m in OWN_NEEDS.get(n, ())}


_INTEGER_POWER = re.compile(r"\b(powf?)\(([A-Za-z_]\w*), (\d+)\)")


class KernelCPrinter(C99CodePrinter):
    """Prints one scalar element formula.  `shapes` maps every array name to its
    dimension names (row-major); `scalars` are names passed as pointers to one value."""

    def __init__(self, dtype: str, shapes: dict[str, tuple[str, ...]], scalars: set[str],
                 padded: frozenset = frozenset()):
        settings = {"type_aliases": {real: float32}} if dtype == "float32" else {}
        super().__init__(settings)
        self.dtype = dtype
        self.suffix = SUFFIX[dtype]
        self.shapes = shapes
        self.scalars = scalars
        self.padded = padded          # arrays that read as 0 outside their range
        self._printed: dict = {}

    def code(self, expr) -> str:
        # memoized: a fused kernel prints its forward and backward formulas again
        if expr not in self._printed:
            self._printed[expr] = self.doprint(_optimized(expr))
        return self._printed[expr]

    def offset(self, name: str, indices) -> str:
        """Row-major offset, in Horner form: ((i1*D2 + i2)*D3 + i3)."""
        dims = self.shapes[name]
        out = ""
        for k, i in enumerate(indices):
            idx = self.index_code(i)
            if k == 0:
                # a first subscript that is a sum or difference (a recurrence's t - 1)
                # is multiplied as a whole
                out = f"({idx})" if isinstance(i, sp.Add) and len(indices) > 1 else idx
            elif out == "0":    # 0s (rows walked as one stretch) add nothing
                out = idx
            else:
                whole = f"({out})" if k > 1 and not out.isidentifier() else out
                out = f"{whole}*{dims[k]}" + (f" + {idx}" if idx != "0" else "")
        return out or "0"

    def _print_Integer(self, expr):
        # C int constants overflow past 2**31: large ones are floating constants.
        if abs(int(expr)) >= 2**31:
            return self._print_Float(sp.Float(int(expr)))
        return super()._print_Integer(expr)

    def index_code(self, e) -> str:
        """An integer index expression in ptrdiff_t arithmetic: fractions as exact
        divisions (a divisibility bracket guards them), max/min and floor/ceiling
        through the bp_ integer helpers; a power of a size, H**2, as a product (powf is a
        float)."""
        return _INTEGER_POWER.sub(lambda m: "(" + "*".join([m.group(2)] * int(m.group(3)))
                                  + ")", self._index_code(e))

    def _index_code(self, e) -> str:
        if isinstance(e, (sp.Idx, sp.Integer, sp.Symbol)) or e.atoms(sp.Indexed) or not (
                e.atoms(sp.Max, sp.Min, sp.floor, sp.ceiling)
                or any(not r.is_Integer for r in e.atoms(sp.Rational))):
            return self._print(e)             # integer arithmetic prints as it is
        if isinstance(e, (sp.Max, sp.Min)):
            name = "bp_imax" if isinstance(e, sp.Max) else "bp_imin"
            code = self.index_code(e.args[0])
            for a in e.args[1:]:
                code = f"{name}({code}, {self.index_code(a)})"
            return code
        if isinstance(e, (sp.floor, sp.ceiling)):
            sign = 1 if isinstance(e, sp.floor) else -1
            num, den = sp.fraction(sp.together(sign * e.args[0]))
            code = f"bp_floordiv({self.index_code(sp.expand(num))}, {den})"
            return code if sign == 1 else f"(-{code})"
        num, den = sp.fraction(sp.together(e))
        if den != 1:
            return f"({self.index_code(sp.expand(num))})/{den}"
        if isinstance(e, sp.Add):
            terms = [self.index_code(t) for t in e.args]
            return "(" + " + ".join(terms).replace("+ -", "- ") + ")"
        if isinstance(e, sp.Mul):
            return "(" + "*".join(self.index_code(f) for f in e.args) + ")"
        return self._print(e)

    def element(self, expr) -> str:
        """An array element as a place to store into: never guarded (stores are placed
        only where they are in range)."""
        name = expr.base.label.name
        return f"{name}[{self.offset(name, expr.indices)}]"

    def _guarded_slot(self, name, i, dim, labels=True) -> bool:
        """A subscript the printer guards: a padded array's shifted read (an index of
        another dimension too), or a label (checked by the wrapper, not by a plain C
        caller); never outside the array."""
        label = i.atoms(sp.Indexed) or (isinstance(i, sp.Symbol) and not
                                        isinstance(i, sp.Idx))         # a label loaded once
        own = isinstance(i, sp.Idx) and str(i.upper + 1) == dim
        return not own and (name in self.padded or (labels and bool(label)))

    def guarded(self, body, labels=True) -> bool:
        """body holds a bracket or a guarded read (labels' too, unless labels=False): no
        read of it may be moved ahead of its guard (CSE, loads hoisted out of a loop)."""
        return body.has(between, divides) or any(
            self._guarded_slot(a.base.label.name, i, dim, labels)
            for a in body.atoms(sp.Indexed) for i, dim in zip(a.indices,
                                                             self.shapes[a.base.label.name]))

    def _print_Indexed(self, expr):
        name = expr.base.label.name
        code = f"{name}[{self.offset(name, expr.indices)}]"
        guards = []
        for i, dim in zip(expr.indices, self.shapes[name]):
            if self._guarded_slot(name, i, dim):
                v = self.index_code(i)
                guards.append(f"0 <= {v} && {v} < {dim}")
        return f"(({' && '.join(guards)}) ? {code} : 0)" if guards else code

    def condition(self, e) -> str:
        """The C condition of a bracket."""
        if isinstance(e, between):
            x, lo, hi = (self.index_code(a) for a in e.args)
            return f"{lo} <= {x} && {x} <= {hi}"
        q, x = e.args
        return f"({self.index_code(x)}) % {q} == 0"

    def _print_between(self, expr):
        return f"(({self.condition(expr)}) ? 1 : 0)"

    def _print_divides(self, expr):
        return f"(({self.condition(expr)}) ? 1 : 0)"

    def _print_Mul(self, expr, **kwargs):
        # A bracket guards what it multiplies: its factors are read only where it is 1
        # (they may lie outside their arrays elsewhere).
        guards = [f for f in expr.args if isinstance(f, (between, divides))]
        if not guards:
            return super()._print_Mul(expr, **kwargs)
        rest = sp.Mul(*[f for f in expr.args if f not in guards])
        cond = " && ".join(self.condition(g) for g in guards)
        return f"(({cond}) ? {self.parenthesize(rest, 0)} : 0)"

    def _print_Idx(self, expr):
        return expr.label.name

    def _print_Symbol(self, expr):
        if expr.name in self.scalars:
            return f"{expr.name}[0]"
        return super()._print_Symbol(expr)

    def _print(self, expr, **kwargs):
        if isinstance(expr, sp.Heaviside) and len(expr.args) > 1 \
                and expr.args[1] == sp.Rational(1, 2):
            # H0 = 1/2: the even split of a tie (torch.maximum's backward)
            return f"bp_halfstep_{self.suffix}({self._print(expr.args[0])})"
        function = own_function(expr, self.dtype)
        if function:              # all unary (Heaviside's second argument is its value at 0)
            return f"{function}({self._print(expr.args[0])})"
        return super()._print(expr, **kwargs)

    def _print_exp_nonpositive(self, expr):
        # an exp whose argument is <= 0 (codegen/exp_ranges.py): float has its own
        # function for that range (own_function); double's is the library's exp
        return self._print(sp.exp(expr.args[0]))

    def _print_NumberSymbol(self, expr):
        # pi (erf's derivative) as a literal: M_PI is not in strict C99's <math.h>
        return self._print_Float(sp.Float(expr, 17))

    _print_Pi = _print_NumberSymbol

    def _print_KroneckerDelta(self, expr):
        a, b = (self._print(x) for x in expr.args)
        return f"({a} == {b})"

    # piecewise functions (derive.piecewise)
    def _print_Where(self, expr):
        c, a, b = (self._print(x) for x in expr.args)
        if all(self._plain(x) for x in expr.args[1:]):
            # Both branches read unconditionally, through a function's arguments: `c ?
            # dy[..] : 0` is a load under a condition, which GCC vectorizes as a masked
            # load and could not at all where the select fed stride-2 stores (max
            # pooling's dx); loading first, it is one blend.
            return f"bp_select_{self.suffix}({c}, {a}, {b})"
        return f"(({c}) ? {self.parenthesize(expr.args[1], 0)} : " \
            f"{self.parenthesize(expr.args[2], 0)})"

    def _plain(self, e) -> bool:
        """A value that may be read where it is not used: a number, a scalar, or an
        element whose subscripts stay inside its array (no guarded read)."""
        return e.is_Number or isinstance(e, sp.Symbol) or (
            isinstance(e, sp.Indexed) and not self.guarded(e))

    def _print_Iverson(self, expr):
        return f"(({self._print(expr.args[0])}) ? 1 : 0)"

    def _print_Not(self, expr):
        return f"!({self._print(expr.args[0])})"

    def _print_maximum(self, expr):
        return f"bp_maximum_{self.suffix}({self._print(expr.args[0])}, " \
            f"{self._print(expr.args[1])})"

    def _print_minimum(self, expr):
        return f"bp_minimum_{self.suffix}({self._print(expr.args[0])}, " \
            f"{self._print(expr.args[1])})"

    def _print_absolute(self, expr):
        return self._print(sp.Abs(expr.args[0]))


_OPTIMIZED: dict = {}


def _optimized(expr):
    """The rewrites, memoized (both dtypes print the same formulas) and skipped where no
    pattern can match: they are SymPy pattern matching, most of the C generation time."""
    if expr in _OPTIMIZED:
        return _OPTIMIZED[expr]
    matched = expr.atoms(sp.exp, sp.log, sp.Pow)
    if not matched:
        _OPTIMIZED[expr] = expr
    else:
        # C99's rewrites (expm1, log1p, exp2, log2) match only exp, log and powers of 2;
        # without those, x**2 -> x*x is the only one that can apply, and the others' pattern
        # matching cost 0.25 s a formula (10 s of a 40-layer MLP's C)
        c99 = any(not isinstance(f, sp.Pow) or f.base == 2 for f in matched)
        # x**2 -> x*x last and apart: its product is unevaluated, which renaming a
        # same-shaped formula's result would evaluate back into a power
        _OPTIMIZED[expr] = optimize(_c99_rewritten(expr) if c99 else expr, [EXPAND_POW])
    return _OPTIMIZED[expr]


@by_shape
def _c99_rewritten(expr):
    return optimize(expr, optims_c99)


@by_shape
def common_subexpressions(body, prefix: str):
    """sympy.cse of one formula (its temporaries prefix_c0, prefix_c1, ...): computed
    once per shape, as a deep network's layers print the same formulas renamed."""
    return sp.cse([body], symbols=sp.numbered_symbols(f"{prefix}_c"), optimizations="basic")
