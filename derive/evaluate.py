"""Numbers from the symbolic side: every equation and every derived step evaluated at
concrete arrays by expanding the sums at the given sizes and lambdifying the scalar
element formulas.  Independent of codegen: it is the symbolic oracle of the tests and
what `backprop tour` prints for the worked example.  Meant for small sizes (it builds one
formula per element)."""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import numpy as np
import sympy as sp

from .piecewise import ArgMaxOver, FirstMax, MaxOver

from .derivation import Derivation, adjoint_name
from .spec import dim_symbol

NUMERIC = {
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "relu": lambda v: np.maximum(v, 0.0),
    "softplus": lambda v: np.logaddexp(0.0, v),
    "Heaviside": lambda v, h0=0.0: np.heaviside(v, h0),
    "KroneckerDelta": lambda a, b: np.float64(a == b),
    "erf": np.vectorize(math.erf, otypes=[np.float64]),
    "maximum": np.maximum,
    "minimum": np.minimum,
    "absolute": np.abs,
    "Where": lambda c, a, b: np.where(c, a, b),
    "Iverson": lambda c: np.float64(c),
    # a max over an index, written out: the values of its body at every position
    "max_of": lambda *values: np.max(values),
    "first_max_at": lambda rank, *values: np.float64(rank == np.argmax(values)),
    "first_max_rank": lambda *values: np.float64(np.argmax(values)),
}


class max_of(sp.Function):
    """The largest of the arguments (a MaxOver written out; numbers only here)."""


class first_max_rank(sp.Function):
    """first_max_rank(v0, v1, ...): the position of the first maximal value (an argmax)."""


class first_max_at(sp.Function):
    """first_max_at(rank, v0, v1, ...): 1 when v[rank] is the first maximal value."""


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
    compiled = {}

    def compute(expr, idx, dims):
        key = (expr, tuple(idx), tuple(dims))
        if key not in compiled:
            compiled[key] = _compile(expr, idx, dims, sizes, outside)
        return _run(compiled[key], values, sizes, dims)

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
    return _run(_compile(expr, indices, dims, sizes, outside), values, sizes, dims)


# Compiled element formulas by what they are compiled from, the most recently used last:
# the verifier draws the same sizes (seed 0) for every claim about a layer, and so
# evaluates the layer's equations and steps at the same sizes claim after claim (15 claims
# about mlp2 in the catalogue).  A lambdified formula is a pure function of its arrays.
_COMPILED: OrderedDict = OrderedDict()
COMPILED_KEPT = 2048


def _compile(expr, indices, dims, sizes, outside=None):
    """(names read, the lambdified element formulas) of expr over `dims`."""
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
    elements = []
    for combo in itertools.product(*[range(sizes[d]) for d in dims]):
        element = expr.xreplace(dict(zip(indices, map(sp.Integer, combo))))
        elements.append(_expand(element, outside))
    names = sorted({b.label.name for e in elements for b in e.atoms(sp.IndexedBase)} |
                   {s.name for e in elements for s in e.free_symbols
                    if isinstance(s, sp.Symbol) and not isinstance(s, sp.Indexed)})
    indexed = {b.label.name for e in elements for b in e.atoms(sp.IndexedBase)}
    args = [sp.IndexedBase(n) if n in indexed else sp.Symbol(n) for n in names]
    return names, sp.lambdify(args, elements, modules=[NUMERIC, "numpy"])


def _run(compiled, values, sizes, dims):
    names, fn = compiled
    out = np.asarray(fn(*[values[n] for n in names]), dtype=np.float64)
    return out.reshape(tuple(sizes[d] for d in dims))


def _expand(e, outside):
    """An element formula with every sum written out.  Sums are expanded here rather than
    by Sum.doit(): a sum whose upper bound is below its lower bound is empty (SymPy's
    Karr convention would negate it), and a read outside a zero-padded array is 0."""
    if isinstance(e, sp.Sum):
        *inner, (k, lo, hi) = e.limits             # the last limit is the outermost
        body = sp.Sum(e.function, *inner) if inner else e.function
        lo, hi = _expand(lo, outside), _expand(hi, outside)
        return sp.Add(*[_expand(body.xreplace({k: sp.Integer(v)}), outside)
                        for v in range(int(lo), int(hi) + 1)])
    if isinstance(e, (MaxOver, FirstMax, ArgMaxOver)):
        ks = e.bound_indices
        values = [_expand(e.body.xreplace(dict(zip(ks, map(sp.Integer, at)))), outside)
                  for at in itertools.product(*[range(int(k.upper) + 1) for k in ks])]
        if isinstance(e, MaxOver):
            return max_of(*values)
        if isinstance(e, ArgMaxOver):
            return first_max_rank(*values)
        rank = sp.Integer(0)
        for a, k in zip(e.position, ks):
            rank = rank * (k.upper + 1) + _expand(a, outside)
        return first_max_at(rank, *values)
    if isinstance(e, sp.Indexed):
        idx = [_expand(i, outside) for i in e.indices]
        name = e.base.label.name
        if name in outside and all(i.is_Integer for i in idx):
            fill, shape = outside[name]
            if any(not 0 <= int(i) < n for i, n in zip(idx, shape)):
                if fill is None:
                    raise IndexError(f"{name}{tuple(map(int, idx))} is outside {name}'s "
                                     f"shape {tuple(shape)}")
                return fill
        return e.base[tuple(idx)]
    if not e.args or isinstance(e, (sp.Symbol, sp.Number)):
        return e
    if isinstance(e, sp.Mul):
        # brackets first: a read they guard may lie outside its array where they are 0
        guards = [_expand(a, outside) for a in e.args if not isinstance(a, sp.Indexed)]
        if any(g == 0 for g in guards):
            return sp.Integer(0)
        return sp.Mul(*guards, *[_expand(a, outside) for a in e.args
                                 if isinstance(a, sp.Indexed)])
    return e.func(*[_expand(a, outside) for a in e.args])
