"""Numbers from the symbolic side: every equation and every derived step evaluated at
concrete arrays, each formula over its whole index grid at the given sizes (derive.grid:
NumPy broadcasting, sums as masked reductions).  Independent of codegen: it is the
symbolic oracle of the tests, the verifier's numeric check, and what `backprop tour`
prints for the worked example."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import sympy as sp

from .derivation import Derivation, adjoint_name
from .grid import compile_grid
from .spec import dim_symbol

def sizes_of(layer, arrays) -> dict[str, int]:
    sizes = {}
    for name, value in arrays.items():
        base = name if name in layer.tensors else name[1:]
        for dim, n in zip(layer.tensors[base].dims, np.shape(value)):
            if sizes.setdefault(dim, n) != n:
                raise ValueError(f"{name}: dimension {dim} is {n}, elsewhere {sizes[dim]}")
    return sizes


def evaluate(derivation: Derivation, arrays: dict, given: bool = False,
             every_adjoint: bool = False) -> dict:
    """All forward tensors and all derived adjoints, as float64 arrays.

    `arrays` holds the inputs, parameters, targets and (for a layer without a loss) the
    upstream gradients d<output>.  With given=True the steps use their simplified forms
    under the declared conditions.
    """
    layer = derivation.layer
    integer = {t.name for t in layer.tensors.values() if t.values is not None}
    values = {k: np.asarray(v, dtype=np.int64 if k in integer else np.float64)
              for k, v in arrays.items()}
    sizes = layer.dim_sizes(sizes_of(layer, values))
    for name, expr in layer.dim_defs.items():
        subs = {dim_symbol(d): n for d, n in sizes.items() if d != name}
        if name in sizes and expr.xreplace(subs) != sizes[name]:
            raise ValueError(f"dimension {name} is {sizes[name]}, but its definition gives "
                             f"{expr.xreplace(subs)}")
    outside = {t.name: (t.outside, [sizes[d] for d in t.dims])
               for t in layer.tensors.values()}
    # an adjoint's read outside its tensor is an error too, unless a bracket guards it
    outside |= {adjoint_name(t.name): (None, [sizes[d] for d in t.dims])
                for t in layer.tensors.values()}
    compiled = {}

    def compute(expr, idx, dims):
        key = (expr, tuple(idx), tuple(dims))
        if key not in compiled:
            compiled[key] = _compile(expr, idx, dims, sizes, outside)
        return compiled[key](values)

    # A recurrence reads its own earlier steps (and its adjoint its later ones): every
    # pass over the equations gets one more step right, from zeros.
    passes = 1 + max((sizes[d] for d in {t.dims[0] for t in layer.tensors.values()
                                          if t.initial}), default=0)
    if passes > 1:
        for t in layer.tensors.values():
            if t.role in ("output", "intermediate"):
                values.setdefault(t.name, np.zeros([sizes[d] for d in t.dims]))
        for s in derivation.steps:
            values.setdefault(s.name, np.zeros(
                [sizes[d] for d in derivation.tensor(s.tensor).dims]))
    for _ in range(passes):
        for eq in layer.equations:
            dims = layer.tensors[eq.target].dims
            values[eq.target] = compute(eq.rhs, eq.indices, dims)
    for _ in range(passes):
        for step in derivation.steps:
            dims = derivation.tensor(step.tensor).dims
            expr = step.simplest if given else step.expr
            values[step.name] = compute(expr, step.indices, dims)
    if every_adjoint:
        # Also the adjoints the derivation inlined (dy, da1, ...): each is the sum of its
        # contributions, which read only steps and adjoints computed before it here.
        order = [eq.target for eq in reversed(layer.equations)] + \
            [t.name for t in layer.differentiable]
        for name in order:
            if name == layer.loss or adjoint_name(name) in values:
                continue
            t = layer.tensors[name]
            idx = derivation.indices(name)
            total = sum((c.expr for c in derivation.contributions if c.tensor == name),
                        sp.Integer(0))
            values[adjoint_name(name)] = compute(total, idx, t.dims)
    return values


def _compute(expr, indices, dims, sizes, values, outside=None):
    """expr at every element of a tensor over `dims`; `outside`: tensor -> (value read
    outside its shape or None, shape), for shifted reads."""
    return _compile(expr, indices, dims, sizes, outside)(values)


# Compiled element formulas by what they are compiled from, the most recently used last:
# the verifier draws the same sizes (seed 0) for every claim about a layer, and so
# evaluates the layer's equations and steps at the same sizes claim after claim (15 claims
# about mlp2 in the catalogue).  A compiled formula is a pure function of its arrays.
_COMPILED: OrderedDict = OrderedDict()
COMPILED_KEPT = 2048


def _compile(expr, indices, dims, sizes, outside=None):
    """A function of the arrays giving expr over `dims`."""
    outside = outside or {}
    key = (sp.sympify(expr), tuple(indices), tuple(dims), tuple(sorted(sizes.items())),
           tuple(sorted((k, fill, tuple(shape)) for k, (fill, shape) in outside.items())))
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key]
    compiled = _COMPILED[key] = _compile_anew(expr, indices, dims, sizes, outside)
    while len(_COMPILED) > COMPILED_KEPT:
        _COMPILED.popitem(last=False)
    return compiled


def _compile_anew(expr, indices, dims, sizes, outside):
    subs = {dim_symbol(d): sp.Integer(n) for d, n in sizes.items()}
    expr = sp.sympify(expr).xreplace(subs)
    indices = [i.xreplace(subs) for i in indices]
    return compile_grid(expr, indices, tuple(sizes[d] for d in dims), outside)

