"""Numbers from the symbolic side: every equation and every derived step evaluated at
concrete arrays by expanding the sums at the given sizes and lambdifying the scalar
element formulas.  Independent of codegen: it is the symbolic oracle of the tests and
what `backprop tour` prints for the worked example.  Meant for small sizes (it builds one
formula per element)."""
from __future__ import annotations

import itertools

import numpy as np
import sympy as sp

from .derivation import Derivation, adjoint_name
from .spec import dim_symbol

NUMERIC = {
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "relu": lambda v: np.maximum(v, 0.0),
    "softplus": lambda v: np.logaddexp(0.0, v),
    "Heaviside": lambda v, h0=0.0: np.heaviside(v, h0),
    "KroneckerDelta": lambda a, b: np.float64(a == b),
}


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
    sizes = sizes_of(layer, values)
    for eq in layer.equations:
        dims = layer.tensors[eq.target].dims
        values[eq.target] = _compute(eq.rhs, eq.indices, dims, sizes, values)
    for step in derivation.steps:
        dims = layer.tensors[step.tensor].dims
        expr = step.simplest if given else step.expr
        values[adjoint_name(step.tensor)] = _compute(expr, step.indices, dims, sizes, values)
    if every_adjoint:
        # Also the adjoints the derivation inlined (dy, da1, ...): each is the sum of its
        # contributions, which read only steps and adjoints computed before it here.
        from .indices import canonical_indices
        from .spec import dim_symbol

        taken = set(layer.tensors) | set(layer.dims)
        order = [eq.target for eq in reversed(layer.equations)] + \
            [t.name for t in layer.differentiable]
        for name in order:
            if name == layer.loss or adjoint_name(name) in values:
                continue
            t = layer.tensors[name]
            idx = canonical_indices([dim_symbol(d) for d in t.dims], taken)
            total = sum((c.expr for c in derivation.contributions if c.tensor == name),
                        sp.Integer(0))
            values[adjoint_name(name)] = _compute(total, idx, t.dims, sizes, values)
    return values


def _compute(expr, indices, dims, sizes, values):
    subs = {dim_symbol(d): sp.Integer(n) for d, n in sizes.items()}
    expr = sp.sympify(expr).xreplace(subs)
    indices = [i.xreplace(subs) for i in indices]
    elements = []
    for combo in itertools.product(*[range(sizes[d]) for d in dims]):
        elements.append(sp.sympify(expr.xreplace(dict(zip(indices, map(sp.Integer, combo))))
                                   ).doit())
    names = sorted({b.label.name for e in elements for b in e.atoms(sp.IndexedBase)} |
                   {s.name for e in elements for s in e.free_symbols
                    if isinstance(s, sp.Symbol) and not isinstance(s, sp.Indexed)})
    args = [sp.IndexedBase(n) if np.ndim(values[n]) else sp.Symbol(n) for n in names]
    fn = sp.lambdify(args, elements, modules=[NUMERIC, "numpy"])
    out = np.asarray(fn(*[values[n] for n in names]), dtype=np.float64)
    return out.reshape(tuple(sizes[d] for d in dims))
