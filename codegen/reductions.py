"""Max over indices, as the kernels compute it: derive.piecewise's MaxOver and FirstMax
lowered onto the plan's reductions, which both backends run.

    max over (p, q) of body       ->  Maximum(body, p, q)
    [(a, b) is the first argmax]  ->  [a*Q + b == ArgMax(body, p, q)]
    argmax over (p, q) of body    ->  ArgMax(body, p, q)

ArgMax is one reduction: a single pass over the window keeps the best value and its
row-major rank, replacing the earlier four passes (a max, then a max of negated ranks
where the body equals it, each nested over the indices one by one).
"""
from __future__ import annotations

from dataclasses import replace

import sympy as sp

from derive.piecewise import ArgMaxOver, FirstMax, Iverson, MaxOver, linear_position
from derive.saved_argmax import saved_position

from .plan import Maximum


class ArgMax(sp.Function):
    """ArgMax(body, k1, ..., km): the row-major rank (k1*K2 + k2, ...) of the first
    position where body is maximal, scanning in that order; a NaN counts as maximal, the
    last one scanned wins, as torch.max_pool2d's CPU kernel (`val > max || isnan(val)`)."""

    @property
    def bound_indices(self):
        return self.args[1:]

    @property
    def rank(self):
        return linear_position(self.bound_indices, self.bound_indices)


def lower_reductions(expr):
    """expr with every MaxOver and FirstMax written in Maximum reductions."""
    if not expr.has(MaxOver, FirstMax, ArgMaxOver):
        return expr

    def rewrite(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        e = e.func(*[rewrite(a) for a in e.args])
        if isinstance(e, MaxOver):
            return _nested_max(e.body, e.bound_indices)
        if isinstance(e, FirstMax):
            return _first_max(e)
        if isinstance(e, ArgMaxOver):
            return ArgMax(e.body, *e.bound_indices)
        return e

    return rewrite(expr)


def _dummies(ks):
    """Copies of the reduced indices no spec can name (a leading underscore)."""
    return [sp.Idx(f"_{k.label.name}".replace("~", "_"), k.upper + 1) for k in ks]


def _nested_max(body, ks):
    """One reduction over every index of the window: one pass, no partial maxima stored
    (max over q into a scratch array, then over p, streamed x's window twice)."""
    return Maximum(body, *ks)


def _first_max(e):
    ks = list(e.bound_indices)
    own = _dummies(ks)
    first = ArgMax(e.body.xreplace(dict(zip(ks, own))), *own)
    return Iverson(sp.Eq(linear_position(e.position, ks), first))


def read_saved_argmax(backward, forward):
    """The backward's argmax searches that a forward statement saved (an intermediate
    `at[n, c, i, j] = argmax(x[..], p, q)`) read that array instead: the backward then
    reads a quarter-size array of ranks, not x, as torch's max_pool2d_with_indices."""
    saved = [st for st in forward if isinstance(st.expr, ArgMax)]
    if not saved:
        return backward

    def lookup(e):
        for st in saved:
            hit = _same_search(st, e)
            if hit is not None:
                return hit
        return e

    return [replace(st, expr=st.expr.replace(lambda e: isinstance(e, ArgMax), lookup))
            for st in backward]


def _same_search(st, e):
    """st's array at the indices where its search equals the search e, or None."""
    return saved_position(e.args[0], e.bound_indices, st.name, st.indices, st.expr.args[0],
                          st.expr.bound_indices)
