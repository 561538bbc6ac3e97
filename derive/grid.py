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
array gives its `outside` value (zero padding) or is an error, unless a bracket factor
of the product it is in (between, divides, a delta, an Iverson bracket) is 0 there.
"""
from __future__ import annotations

import math

import numpy as np
import sympy as sp

from .affine import between, divides
from .indices import outer_first
from .piecewise import ArgMaxOver, FirstMax, Iverson, MaxOver, Where

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
    "Iverson": lambda c: np.asarray(c, dtype=np.float64),
}

_RELATIONS = {sp.StrictLessThan: np.less, sp.LessThan: np.less_equal,
              sp.StrictGreaterThan: np.greater, sp.GreaterThan: np.greater_equal,
              sp.Equality: np.equal, sp.Unequality: np.not_equal}


class Node:
    """A compiled subformula: a constant (`value`, known when compiled: it depends on
    indices only) or a function of the named arrays (`run`).  `problems`: (mask, what)
    pairs, where on the grid it reads outside an array that has no value there or at a
    subscript that is not whole, and which read (for the error); none all False."""
    __slots__ = ("value", "run", "problems")

    def __init__(self, value=None, run=None, problems=()):
        self.value, self.run = value, run
        self.problems = tuple((m, w) for m, w in problems if np.any(m))

    @property
    def constant(self) -> bool:
        return self.run is None

    def __call__(self, arrays):
        return self.value if self.run is None else self.run(arrays)


def compile_grid(expr, indices, shape, outside):
    """f(arrays) -> expr at every element of `shape`, indices[j] running along axis j.
    `outside`: tensor -> (value read outside its shape or None, shape)."""
    depth = len(shape)
    scope = {}
    for axis, (i, n) in enumerate(zip(indices, shape)):
        scope[i] = np.arange(n).reshape([n if a == axis else 1 for a in range(depth)])
    node = _Compiler(outside).node(sp.sympify(expr), scope, depth)
    if node.problems:
        mask, what = node.problems[0]
        at = tuple(int(a[0]) for a in np.nonzero(np.broadcast_to(mask, shape)))
        where = ", ".join(f"{i} = {v}" for i, v in zip(indices, at))
        raise IndexError(f"{what}, first at {where}, and no bracket of its product is 0 "
                         f"there")

    def run(arrays):
        return np.array(np.broadcast_to(node(arrays), shape), dtype=np.float64)
    return run


# Functions whose value is 0 or 1 by an index or a tensor's value: where one is 0, the
# product it is a factor of is 0, whatever the other factors read there.
_BRACKETS = (between, divides, sp.KroneckerDelta, Iverson)


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
        if isinstance(e, (sp.Piecewise, Where)):
            return self.piecewise(e, scope, depth)
        if isinstance(e, (sp.Symbol, sp.Idx)):
            name = e.name
            return Node(run=lambda arrays: arrays[name])
        if e is sp.true or e is sp.false:
            return Node(bool(e))
        if e.is_Integer:
            return Node(int(e))
        if e.is_Number or e.is_NumberSymbol:
            if not e.is_finite:
                # 1/0 at these sizes: undefined, as the verifier reports it
                raise ZeroDivisionError(f"{e} (a division by zero at these sizes)")
            return Node(float(e))
        args = [self.node(a, scope, depth) for a in e.args]
        if isinstance(e, sp.Mul):
            return self.product(e, args)
        if isinstance(e, sp.Add):
            return _combine(args, lambda *v: sum(v))
        if isinstance(e, sp.Pow):
            return _combine(args, _power)
        # where an index's value decides, fractions computed in floats land on it exactly
        whole = [_exact(a) for a in args]
        if isinstance(e, tuple(_RELATIONS)):
            return _combine(whole, _RELATIONS[type(e)])
        if isinstance(e, sp.And):
            return _combine(args, lambda *v: np.logical_and.reduce(np.broadcast_arrays(*v)))
        if isinstance(e, sp.Or):
            return _combine(args, lambda *v: np.logical_or.reduce(np.broadcast_arrays(*v)))
        if isinstance(e, sp.Not):
            return _combine(args, np.logical_not)
        if isinstance(e, sp.KroneckerDelta):       # lambdify writes it as a Python `if`
            return _combine(whole, lambda a, b: np.equal(a, b).astype(np.int64))
        if isinstance(e, between):
            return _combine(whole, lambda v, lo, hi: ((lo <= v) & (v <= hi)).astype(np.int64))
        if isinstance(e, divides):
            return _combine(whole, lambda q, v: (np.mod(v, q) == 0).astype(np.int64))
        if isinstance(e, (sp.Max, sp.Min)):
            pick = np.maximum if isinstance(e, sp.Max) else np.minimum
            return _combine(args, lambda *v: pick.reduce(np.broadcast_arrays(*v)))
        if isinstance(e, (sp.floor, sp.ceiling, sp.Mod)):
            return _combine(whole, self.function(e))
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
        at = [_exact(self.node(i, scope, depth)) for i in e.indices]
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
        problems = [(~whole, f"{e} has a subscript that is not whole")]
        if fill is None:
            problems.append((~inside, f"{e} reads outside {name}'s shape {tuple(shape)}"))
        return Node(run=lambda arrays: np.where(inside, np.asarray(arrays[name])[clipped],
                                                value), problems=problems)

    def gather(self, e, at, fill) -> Node:
        """A read whose subscripts depend on a tensor (E[ids[n], d]) or whose array's
        shape is not known before the run: checked when it runs.  A read outside the array
        or at a subscript that is not whole gives its `outside` value, or NaN where it has
        none, which the result carries unless a bracket of the product is 0 there."""
        name = e.base.label.name
        value = np.nan if fill is None else float(fill)

        def run(arrays):
            array = np.asarray(arrays[name])
            idx = [np.asarray(a(arrays)) for a in at]
            rounded = [np.round(i).astype(np.int64) for i in idx]
            inside = np.logical_and.reduce(np.broadcast_arrays(
                True, *[(0 <= r) & (r < n) & (r == i)
                        for r, i, n in zip(rounded, idx, array.shape)]))
            if inside.all():
                return array[tuple(rounded)]
            clipped = tuple(np.clip(r, 0, max(n - 1, 0)) for r, n in zip(rounded, array.shape))
            return np.where(inside, array[clipped], value)
        return Node(run=run, problems=_all_problems(at))

    def product(self, e, args) -> Node:
        """A product; a bracket factor (between, divides, a delta, an Iverson bracket) that
        is 0 somewhere makes the product 0 there, whatever its other factors read (outside
        an array, too): known when compiled where the bracket reads indices only."""
        zero = None
        for a in args:
            if a.constant:
                z = np.asarray(a.value) == 0
                zero = z if zero is None else zero | z
        guards = [a for f, a in zip(e.args, args) if isinstance(f, _BRACKETS)
                  and not a.constant]
        node = _combine(args, lambda *v: math.prod(v))
        if zero is not None and np.any(zero):
            problems = _masked(node.problems, ~zero)
            if node.constant:
                return Node(np.where(zero, 0, node.value), problems=problems)
            run = node.run
            node = Node(run=lambda arrays: np.where(zero, 0.0, run(arrays)), problems=problems)
        if guards:
            run = node.run

            def guarded(arrays):
                off = np.logical_or.reduce(np.broadcast_arrays(
                    False, *[np.asarray(g(arrays)) == 0 for g in guards]))
                return np.where(off, 0.0, run(arrays))
            node = Node(run=guarded, problems=node.problems)
        return node

    def sum(self, e, scope, depth) -> Node:
        (k, lo, hi), *inner = outer_first(e.limits)
        body = sp.Sum(e.function, *reversed(inner)) if inner else e.function
        lo, hi = (_exact(self.node(b, scope, depth)) for b in (lo, hi))
        if not (lo.constant and hi.constant):
            raise NotImplementedError(f"{e}: a sum bound that reads a tensor")
        if lo.problems or hi.problems:
            raise IndexError(f"{e}: a bound reads outside an array")
        # k runs over the integers from lo to hi (an empty sum where hi < lo)
        lo = np.ceil(np.asarray(lo.value, dtype=np.float64)).astype(np.int64)
        hi = np.floor(np.asarray(hi.value, dtype=np.float64)).astype(np.int64)
        first, last = int(np.min(lo)), int(np.max(hi))
        if last < first:
            return Node(0)
        ks = np.arange(first, last + 1).reshape((-1,) + (1,) * depth)
        within = (ks >= lo) & (ks <= hi)
        inner_node = self.node(body, scope | {k: ks}, depth + 1)
        problems = [(np.any(_padded(m, depth + 1) & within, axis=0), w)
                    for m, w in inner_node.problems]
        if inner_node.constant:
            return Node(np.sum(np.where(within, inner_node.value, 0), axis=0),
                        problems=problems)
        run = inner_node.run
        return Node(run=lambda arrays: np.sum(np.where(within, run(arrays), 0.0), axis=0),
                    problems=problems)

    def max_over(self, e, scope, depth) -> Node:
        """max, argmax (row-major rank) or [rank is the first maximum] over the bound
        indices, which take leading axes in their order."""
        ks = e.bound_indices
        m = len(ks)
        sizes = tuple(int(k.upper) + 1 for k in ks)
        inner = dict(scope)
        for j, (k, n) in enumerate(zip(ks, sizes)):
            inner[k] = np.arange(n).reshape([n if a == j else 1 for a in range(m)] +
                                            [1] * depth)
        body = self.node(e.body, inner, depth + m)
        rank = None
        if isinstance(e, FirstMax):
            rank = Node(0)
            for a, n in zip(e.position, sizes):
                rank = _combine([rank, _exact(self.node(a, scope, depth))],
                                lambda r, v, n=n: r * n + v)

        def reduce(values, rank_value):
            # a body that does not read a bound index has no axis for it: pad, then
            # broadcast over the bound indices' axes
            values = _padded(np.asarray(values, dtype=np.float64), depth + m)
            values = np.broadcast_to(values, sizes + values.shape[m:])
            flat = values.reshape((-1,) + values.shape[m:])
            if isinstance(e, MaxOver):
                return np.max(flat, axis=0)
            best = np.argmax(flat, axis=0)
            if isinstance(e, ArgMaxOver):
                return best.astype(np.float64)
            return (rank_value == best).astype(np.float64)

        problems = [(np.any(_padded(p, depth + m), axis=tuple(range(m))), w)
                    for p, w in body.problems] + list(rank.problems if rank else ())
        if body.constant and (rank is None or rank.constant):
            return Node(reduce(body.value, rank and rank.value), problems=problems)
        return Node(run=lambda arrays: reduce(body(arrays), rank and rank(arrays)),
                    problems=problems)

    def piecewise(self, e, scope, depth) -> Node:
        """Piecewise((v1, c1), (v2, c2), ...) or where(c, a, b): each branch where it is
        taken (a read a branch makes where it is not taken is no error)."""
        pairs = [(v, c) for v, c in e.args] if isinstance(e, sp.Piecewise) else \
            [(e.args[1], e.args[0]), (e.args[2], sp.true)]
        pieces = [(self.node(v, scope, depth), _exact(self.node(c, scope, depth)))
                  for v, c in pairs]
        problems = [p for _, c in pieces for p in c.problems]
        if all(c.constant for _, c in pieces):
            taken = np.zeros((), dtype=bool)
            for v, c in pieces:
                here = np.asarray(c.value, dtype=bool) & ~taken
                problems += _masked(v.problems, here)
                taken = taken | here
        else:
            problems += [p for v, _ in pieces for p in v.problems]

        def run(arrays):
            values = [v(arrays) for v, _ in pieces]
            conds = [np.asarray(c(arrays), dtype=bool) for _, c in pieces]
            shape = np.broadcast_shapes(*[np.shape(x) for x in values + conds])
            return np.select([np.broadcast_to(c, shape) for c in conds],
                             [np.broadcast_to(np.asarray(v, dtype=np.float64), shape)
                              for v in values], default=np.nan)
        if all(v.constant and c.constant for v, c in pieces):
            return Node(run(None), problems=problems)
        return Node(run=run, problems=problems)


def _combine(args, op) -> Node:
    """op over the arguments' values: a constant when every argument is one."""
    problems = _all_problems(args)
    if all(a.constant for a in args):
        return Node(op(*[a.value for a in args]), problems=problems)
    return Node(run=lambda arrays: op(*[a(arrays) for a in args]), problems=problems)


def _exact(node: Node) -> Node:
    """Index arithmetic with fractions (h/3 - p + 2/3 of a stride-3 adjoint) in floats: a
    constant within rounding of a whole number is that number, so that a subscript is
    whole, a bound or a bracket right (the fractions' denominators are small).  Only
    where an index's value decides: a value like 1e-10 [i = 1] stays what it is."""
    if not node.constant or np.asarray(node.value).dtype.kind != "f":
        return node
    value = np.asarray(node.value)
    whole = np.round(value)
    near = np.abs(value - whole) <= 1e-9 * np.maximum(1.0, np.abs(value))
    return Node(np.where(near, whole, value), problems=node.problems)


def _all_problems(nodes):
    return [p for n in nodes for p in n.problems]


def _masked(problems, keep):
    return [(m & keep, w) for m, w in problems]


def _padded(a, ndim):
    """a with leading axes of length 1 up to ndim (its axes are the trailing ones)."""
    a = np.asarray(a)
    return a.reshape((1,) * (ndim - a.ndim) + a.shape) if a.ndim < ndim else a


def _power(base, exponent):
    base = np.asarray(base)
    if base.dtype.kind in "iub":
        # index arithmetic: floats (an int64 power wraps around), 1/0 undefined
        base = base.astype(np.float64)
        if np.any((base == 0) & (np.asarray(exponent) < 0)):
            raise ZeroDivisionError("a division by zero at these sizes")
        return np.power(base, exponent)
    base = base.astype(np.float64, copy=False)
    if np.ndim(exponent) == 0 and exponent in (0.5, -0.5):
        return np.sqrt(base) if exponent > 0 else 1.0 / np.sqrt(base)
    return np.power(base, exponent)
