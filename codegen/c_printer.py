"""SymPy's C99 printer, extended for kernels: flat row-major array access, our functions
(sigmoid, softplus, relu, the ReLU' step), and float or double arithmetic."""
from __future__ import annotations

import sympy as sp
from sympy.codegen.ast import float32, real
from sympy.codegen.rewriting import create_expand_pow_optimization, optimize, optims_c99
from sympy.printing.c import C99CodePrinter

# log(1 + x) -> log1p(x), exp(x) - 1 -> expm1(x), small integer powers -> products.
OPTIMIZATIONS = list(optims_c99) + [create_expand_pow_optimization(4, base_req=lambda b: True)]

from .dtypes import SUFFIX


class KernelCPrinter(C99CodePrinter):
    """Prints one scalar element formula.  `shapes` maps every array name to its
    dimension names (row-major); `scalars` are names passed as pointers to one value."""

    def __init__(self, dtype: str, shapes: dict[str, tuple[str, ...]], scalars: set[str]):
        settings = {"type_aliases": {real: float32}} if dtype == "float32" else {}
        super().__init__(settings)
        self.dtype = dtype
        self.suffix = SUFFIX[dtype]
        self.shapes = shapes
        self.scalars = scalars

    def code(self, expr) -> str:
        return self.doprint(_optimized(expr))

    def offset(self, name: str, indices) -> str:
        """Row-major offset, in Horner form: ((i1*D2 + i2)*D3 + i3)."""
        dims = self.shapes[name]
        out = ""
        for k, i in enumerate(indices):
            idx = self._print(i)
            if k == 0:
                out = idx
            else:
                out = (f"({out})" if k > 1 else out) + f"*{dims[k]} + {idx}"
        return out or "0"

    def _print_Integer(self, expr):
        # C int constants overflow past 2**31: large ones are floating constants.
        if abs(int(expr)) >= 2**31:
            return self._print_Float(sp.Float(int(expr)))
        return super()._print_Integer(expr)

    def _print_Indexed(self, expr):
        name = expr.base.label.name
        return f"{name}[{self.offset(name, expr.indices)}]"

    def _print_Idx(self, expr):
        return expr.label.name

    def _print_Symbol(self, expr):
        if expr.name in self.scalars:
            return f"{expr.name}[0]"
        return super()._print_Symbol(expr)

    def _helper(self, name, expr):
        return f"bp_{name}_{self.suffix}({self._print(expr.args[0])})"

    def _print_exp(self, expr):
        # float exp is the toolkit's own (templates/c_source.c.j2): it vectorizes inline,
        # where libmvec's expf is a call per vector and a fifth slower in softmax rows.
        if self.dtype == "float32":
            return self._helper("exp", expr)
        return super()._print_exp(expr)

    def _print_sigmoid(self, expr):
        return self._helper("sigmoid", expr)

    def _print_softplus(self, expr):
        return self._helper("softplus", expr)

    def _print_relu(self, expr):
        return self._helper("relu", expr)

    def _print_KroneckerDelta(self, expr):
        a, b = (self._print(x) for x in expr.args)
        return f"({a} == {b})"

    def _print_Heaviside(self, expr):
        # The ReLU'(0) = 0 convention, as in PyTorch and the NumPy backend.
        return self._helper("step", expr)


_OPTIMIZED: dict = {}


def _optimized(expr):
    """The rewrites, memoized (both dtypes print the same formulas) and skipped where no
    pattern can match: they are SymPy pattern matching, most of the C generation time."""
    if not (expr.has(sp.exp) or expr.has(sp.log) or expr.has(sp.Pow)):
        return expr
    if expr not in _OPTIMIZED:
        _OPTIMIZED[expr] = optimize(expr, OPTIMIZATIONS)
    return _OPTIMIZED[expr]
