"""Max over indices, as the kernels compute it: derive.piecewise's MaxOver and FirstMax
lowered onto the plan's reductions, which both backends run.

    max over (p, q) of body       ->  Maximum(Maximum(body, q), p)
    [(a, b) is the first argmax]  ->  [a*Q + b == ArgMax(body, p, q)]

ArgMax is one reduction: a single pass over the window keeps the best value and its
row-major rank, replacing the earlier four passes (a max, then a max of negated ranks
where the body equals it, each nested over the indices one by one).
"""
from __future__ import annotations

import sympy as sp

from derive.piecewise import FirstMax, Iverson, MaxOver, linear_position

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
    if not expr.has(MaxOver, FirstMax):
        return expr

    def rewrite(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        e = e.func(*[rewrite(a) for a in e.args])
        if isinstance(e, MaxOver):
            return _nested_max(e.body, e.bound_indices)
        if isinstance(e, FirstMax):
            return _first_max(e)
        return e

    return rewrite(expr)


def _dummies(ks):
    """Copies of the reduced indices no spec can name (a leading underscore)."""
    return [sp.Idx(f"_{k.label.name}".replace("~", "_"), k.upper + 1) for k in ks]


def _nested_max(body, ks):
    for k in reversed(ks):
        body = Maximum(body, k)
    return body


def _first_max(e):
    ks = list(e.bound_indices)
    own = _dummies(ks)
    first = ArgMax(e.body.xreplace(dict(zip(ks, own))), *own)
    return Iverson(sp.Eq(linear_position(e.position, ks), first))
