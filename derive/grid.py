"""An element formula over its whole index grid at once, with NumPy broadcasting: the
symbolic oracle's arithmetic (derive.evaluate).

Each free index is an integer array along its own axis of the output; a sum, or a max
over indices, puts its bound indices on new leading axes and reduces them, masked to the
sum's bounds (which may depend on outer indices, as a gather's do).  Everything that
depends on indices alone (subscripts, brackets, Kronecker deltas, sum bounds) is
computed once, when the formula is compiled; what reads tensors becomes a function of
the arrays.  So a formula is compiled once per sizes and run at NumPy speed, where
writing every element out as its own formula took seconds for a recurrence.

The semantics are the written-out ones: a sum whose upper bound is below its lower bound
is empty (0; SymPy's Sum.doit() follows Karr's convention instead), a read outside an
array gives its `outside` value (zero padding) or is an error, unless an index-only
factor of the product it is in (a bracket, a delta) is 0 there.
"""
from __future__ import annotations

import math

import numpy as np
import sympy as sp

from .affine import between, divides
from .piecewise import ArgMaxOver, FirstMax, MaxOver

# Functions lambdify does not know, as NumPy computes them element by element.
NUMERIC = {
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "relu": lambda v: np.maximum(v, 0.0),
    "softplus": lambda v: np.logaddexp(0.0, v),
    "Heaviside": lambda v, h0=0.0: np.heaviside(v, h0),
    "erf": np.vectorize(math.erf, otypes=[np.float64]),
    "maximum": np.maximum,
    "minimum": np.minimum,
    "absolute": np.abs,
    "Where": lambda c, a, b: np.where(c, a, b),
    "Iverson": lambda c: np.asarray(c, dtype=np.float64),
}

_RELATIONS = {sp.StrictLessThan: np.less, sp.LessThan: np.less_equal,
              sp.StrictGreaterThan: np.greater, sp.GreaterThan: np.greater_equal,
              sp.Equality: np.equal, sp.Unequality: np.not_equal}


class Node:
    """A compiled subformula: a constant (`value`, known when compiled: it depends on
    indices only) or a function of the named arrays (`run`); `outside`: where on the grid
    it reads outside an array that has no value there, and what it reads (for the error)."""
    __slots__ = ("value", "run", "outside")

    def __init__(self, value=None, run=None, outside=None):
        self.value, self.run, self.outside = value, run, outside

    @property
    def constant(self) -> bool:
        return self.run is None

    def __call__(self, arrays):
        return self.value if self.run is None else self.run(arrays)


def compile_grid(expr, indices, shape, outside):
    """(names read, f(arrays) -> expr at every element of `shape`), indices[j] running along
    axis j.  `outside`: tensor -> (value read outside its shape or None, shape)."""
    depth = len(shape)
    scope = {}
    for axis, (i, n) in enumerate(zip(indices, shape)):
        scope[i] = np.arange(n).reshape([n if a == axis else 1 for a in range(depth)])
    node = _Compiler(outside).node(sp.sympify(expr), scope, depth)
    if node.outside is not None and np.any(node.outside[0]):
        mask, what = node.outside
        at = tuple(int(a[0]) for a in np.nonzero(np.broadcast_to(mask, shape)))
        where = ", ".join(f"{i} = {v}" for i, v in zip(indices, at))
        raise IndexError(f"{what}, first at {where}, and no bracket of its product is 0 "
                         f"there")
    names = sorted({b.label.name for b in expr.atoms(sp.IndexedBase)} |
                   {s.name for s in expr.free_symbols
                    if not isinstance(s, (sp.Indexed, sp.Idx)) and s not in scope
                    and not _bound_anywhere(expr, s)})

    def run(arrays):
        return np.array(np.broadcast_to(node(arrays), shape), dtype=np.float64)
    return names, run


def _bound_anywhere(expr, s) -> bool:
    return any(s in getattr(e, "variables", ()) or s in getattr(e, "bound_indices", ())
               for e in expr.atoms(sp.Sum, MaxOver, FirstMax, ArgMaxOver))


class _Compiler:
    def __init__(self, outside):
        self.outside = outside
        self.numeric = {}

    def node(self, e, scope, depth) -> Node:
        if e in scope:
            return Node(scope[e])
        if isinstance(e, sp.Indexed):
            return self.read(e, scope, depth)
        if isinstance(e, sp.Sum):
            return self.sum(e, scope, depth)
        if isinstance(e, (MaxOver, ArgMaxOver, FirstMax)):
            return self.max_over(e, scope, depth)
        if isinstance(e, (sp.Symbol, sp.Idx)):
            name = e.name
            return Node(run=lambda arrays: arrays[name])
        if e is sp.true or e is sp.false:
            return Node(bool(e))
        if e.is_Integer:
            return Node(int(e))
        if e.is_Number or e.is_NumberSymbol:
            return Node({sp.zoo: np.inf, sp.oo: np.inf, sp.S.NegativeInfinity: -np.inf,
                         sp.nan: np.nan}.get(e) if not e.is_finite else float(e))
        args = [self.node(a, scope, depth) for a in e.args] \
            if not isinstance(e, sp.Piecewise) else None
        if isinstance(e, sp.Mul):
            return self.product(args)
        if isinstance(e, sp.Add):
            return _combine(args, lambda *v: sum(v[1:], v[0]))
        if isinstance(e, sp.Pow):
            return _combine(args, _power)
        if isinstance(e, tuple(_RELATIONS)):
            return _combine(args, _RELATIONS[type(e)])
        if isinstance(e, sp.And):
            return _combine(args, lambda *v: np.logical_and.reduce(np.broadcast_arrays(*v)))
        if isinstance(e, sp.Or):
            return _combine(args, lambda *v: np.logical_or.reduce(np.broadcast_arrays(*v)))
        if isinstance(e, sp.Not):
            return _combine(args, np.logical_not)
        if isinstance(e, sp.KroneckerDelta):       # lambdify writes it as a Python `if`
            return _combine(args, lambda a, b: np.equal(a, b).astype(np.int64))
        if isinstance(e, between):
            return _combine(args, lambda v, lo, hi: ((lo <= v) & (v <= hi)).astype(np.int64))
        if isinstance(e, divides):
            return _combine(args, lambda q, v: (np.mod(v, q) == 0).astype(np.int64))
        if isinstance(e, (sp.Max, sp.Min)):
            pick = np.maximum if isinstance(e, sp.Max) else np.minimum
            return _combine(args, lambda *v: pick.reduce(np.broadcast_arrays(*v)))
        if isinstance(e, sp.Piecewise):
            return self.piecewise(e, scope, depth)
        return _combine(args, self.function(e))

    def function(self, e):
        """e's function as NumPy computes it, from lambdify (once per function)."""
        key = (e.func, len(e.args))
        if key not in self.numeric:
            xs = sp.symbols(f"a0:{len(e.args)}", cls=sp.Dummy)
            self.numeric[key] = sp.lambdify(xs, e.func(*xs), modules=[NUMERIC, "numpy"])
        return self.numeric[key]

    def read(self, e, scope, depth) -> Node:
        name = e.base.label.name
        at = [self.node(i, scope, depth) for i in e.indices]
        fill, shape = self.outside.get(name, (None, None))
        if shape is None or not all(a.constant for a in at):
            return self.gather(e, at, fill)
        # a subscript that is not whole there (dy[n, o, (l + 1)/2 - k] of a strided
        # convolution's adjoint) reads nothing: an error unless a bracket guards it
        whole = np.logical_and.reduce(np.broadcast_arrays(
            True, *[np.round(a.value) == a.value for a in at]))
        at = [np.round(a.value).astype(np.int64) for a in at]
        inside = np.logical_and.reduce(np.broadcast_arrays(
            True, *[(0 <= a) & (a < n) for a, n in zip(at, shape)]))
        if inside.all() and whole.all():
            return Node(run=lambda arrays: np.asarray(arrays[name])[tuple(at)])
        clipped = tuple(np.clip(a, 0, max(n - 1, 0)) for a, n in zip(at, shape))
        value = 0.0 if fill is None else float(fill)
        wrong = ~whole | ~inside if fill is None else ~whole
        what = f"{e} reads outside {name}'s shape {tuple(shape)}" \
            if fill is None and not inside.all() else f"{e} has a subscript that is not whole"
        problem = (wrong, what) if wrong.any() else None
        return Node(run=lambda arrays: np.where(inside, np.asarray(arrays[name])[clipped],
                                                value), outside=problem)

    def gather(self, e, at, fill) -> Node:
        """A read whose subscripts depend on a tensor (E[ids[n], d]) or whose array's
        shape is not known before the run: checked when it runs.  A read outside the array
        gives its `outside` value, or NaN where it has none, which the result carries
        unless a bracket or delta of the product makes it 0 there."""
        name = e.base.label.name
        value = np.nan if fill is None else float(fill)

        def run(arrays):
            array = np.asarray(arrays[name])
            idx = [_integers(a(arrays), e) for a in at]
            inside = np.logical_and.reduce(np.broadcast_arrays(
                True, *[(0 <= i) & (i < n) for i, n in zip(idx, array.shape)]))
            if inside.all():
                return array[tuple(idx)]
            clipped = tuple(np.clip(i, 0, max(n - 1, 0)) for i, n in zip(idx, array.shape))
            return np.where(inside, array[clipped], value)
        return Node(run=run, outside=_merge_outside([a.outside for a in at
                                                      if a.outside is not None]))

    def product(self, args) -> Node:
        """A product; an index-only factor that is 0 somewhere (a bracket, a delta) makes
        the product 0 there, whatever its other factors read (outside an array, too)."""
        zero = None
        for a in args:
            if a.constant:
                z = np.asarray(a.value) == 0
                zero = z if zero is None else zero | z
        node = _combine(args, lambda *v: _prod(v))
        if zero is None or not np.any(zero):
            return node
        if node.outside is not None:
            node.outside = (node.outside[0] & ~zero, node.outside[1])
        if node.constant:
            return Node(np.where(zero, 0, node.value), outside=node.outside)
        run = node.run
        return Node(run=lambda arrays: np.where(zero, 0.0, run(arrays)), outside=node.outside)

    def sum(self, e, scope, depth) -> Node:
        *inner, (k, lo, hi) = e.limits               # the last limit is the outermost
        body = sp.Sum(e.function, *inner) if inner else e.function
        lo, hi = self.node(lo, scope, depth), self.node(hi, scope, depth)
        if not (lo.constant and hi.constant):
            raise NotImplementedError(f"{e}: a sum bound that reads a tensor")
        lo, hi = _integers(lo.value, e), _integers(hi.value, e)
        first, last = int(np.min(lo)), int(np.max(hi))
        if last < first:
            return Node(0)
        ks = np.arange(first, last + 1).reshape((-1,) + (1,) * depth)
        within = (ks >= lo) & (ks <= hi)
        inner_node = self.node(body, scope | {k: ks}, depth + 1)
        outside = None
        if inner_node.outside is not None:
            outside = (np.any(inner_node.outside[0] & within, axis=0), inner_node.outside[1])
        if inner_node.constant:
            return Node(np.sum(np.where(within, inner_node.value, 0), axis=0), outside=outside)
        run = inner_node.run
        return Node(run=lambda arrays: np.sum(np.where(within, run(arrays), 0.0), axis=0),
                    outside=outside)

    def max_over(self, e, scope, depth) -> Node:
        """max, argmax (row-major rank) or [rank is the first maximum] over the bound
        indices, which take leading axes in their order."""
        ks = e.bound_indices
        m = len(ks)
        sizes = [int(k.upper) + 1 for k in ks]
        inner = dict(scope)
        for j, (k, n) in enumerate(zip(ks, sizes)):
            inner[k] = np.arange(n).reshape([n if a == j else 1 for a in range(m)] +
                                            [1] * depth)
        body = self.node(e.body, inner, depth + m)
        rank = None
        if isinstance(e, FirstMax):
            rank = Node(0)
            for a, n in zip(e.position, sizes):
                rank = _combine([rank, self.node(a, scope, depth)],
                                lambda r, v, n=n: r * n + v)

        def reduce(values, rank_value):
            values = np.asarray(values, dtype=np.float64)
            values = np.broadcast_to(values, tuple(sizes) + values.shape[m:]) \
                if values.ndim >= m else np.broadcast_to(values, tuple(sizes))
            flat = values.reshape((-1,) + values.shape[m:])
            if isinstance(e, MaxOver):
                return np.max(flat, axis=0)
            best = np.argmax(flat, axis=0)
            if isinstance(e, ArgMaxOver):
                return best.astype(np.float64)
            return (rank_value == best).astype(np.float64)

        outside = None if body.outside is None else \
            (np.any(body.outside[0], axis=tuple(range(m))), body.outside[1])
        if body.constant and (rank is None or rank.constant):
            return Node(reduce(body.value, rank and rank.value), outside=outside)
        return Node(run=lambda arrays: reduce(body(arrays), rank and rank(arrays)),
                    outside=outside)

    def piecewise(self, e, scope, depth) -> Node:
        pieces = [(self.node(v, scope, depth), self.node(c, scope, depth))
                  for v, c in e.args]
        outside = [p.outside for v, c in pieces for p in (v, c) if p.outside is not None]

        def run(arrays):
            values = [v(arrays) for v, _ in pieces]
            conds = [np.asarray(c(arrays), dtype=bool) for _, c in pieces]
            shape = np.broadcast_shapes(*[np.shape(x) for x in values + conds])
            return np.select([np.broadcast_to(c, shape) for c in conds],
                             [np.broadcast_to(np.asarray(v, dtype=np.float64), shape)
                              for v in values], default=np.nan)
        merged = _merge_outside(outside)
        if all(v.constant and c.constant for v, c in pieces):
            return Node(run(None), outside=merged)
        return Node(run=run, outside=merged)


def _combine(args, op) -> Node:
    """op over the arguments' values: a constant when every argument is one."""
    outside = _merge_outside([a.outside for a in args if a.outside is not None])
    if all(a.constant for a in args):
        return Node(_snap(op(*[a.value for a in args])), outside=outside)
    return Node(run=lambda arrays: op(*[a(arrays) for a in args]), outside=outside)


def _snap(value):
    """Index arithmetic with fractions (h/3 - p + 2/3 of a stride-3 adjoint) in floats:
    a value within rounding of a whole number is that number, so that the subscript is
    whole and floor() of it right (the fractions' denominators are small)."""
    if np.asarray(value).dtype.kind != "f":
        return value
    whole = np.round(value)
    return np.where(np.abs(value - whole) <= 1e-9 * np.maximum(1.0, np.abs(value)),
                    whole, value)


def _merge_outside(problems):
    if not problems:
        return None
    mask = problems[0][0]
    for m, _ in problems[1:]:
        mask = mask | m
    return mask, problems[0][1]


def _prod(values):
    out = values[0]
    for v in values[1:]:
        out = out * v
    return out


def _power(base, exponent):
    if isinstance(exponent, int) and exponent >= 0:
        return base ** exponent
    base = np.asarray(base, dtype=np.float64)
    if np.ndim(exponent) == 0 and exponent in (0.5, -0.5):
        return np.sqrt(base) if exponent > 0 else 1.0 / np.sqrt(base)
    return np.power(base, exponent)


def _integers(value, where):
    """Subscripts and bounds as integer arrays (floor() and friends give whole floats)."""
    value = np.asarray(value)
    if value.dtype.kind in "iub":
        return value.astype(np.int64)
    whole = np.round(value)
    if not np.array_equal(whole, value):
        raise ValueError(f"{where}: a subscript or bound that is not a whole number")
    return whole.astype(np.int64)
