"""Max over indices, as the kernels compute it: derive.piecewise's MaxOver and FirstMax
lowered onto the plan's one-index Maximum reduction, which both backends already run.

    max over (p, q) of body       ->  Maximum(Maximum(body, q), p)
    [(a, b) is the first argmax]  ->  [a*Q + b == -max over (p, q) of
                                       where(body == m, -(p*Q + q), -P*Q)]

with m the window's maximum: the first maximal position is the smallest row-major rank
among the maximal ones, a maximum of negated ranks, so no argmax reduction is needed.
"""
from __future__ import annotations

import sympy as sp

from derive.piecewise import FirstMax, Iverson, MaxOver, Where, linear_position

from .plan import Maximum


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
    body = e.body.xreplace(dict(zip(ks, own)))
    window_max = _nested_max(body, own)
    inner = _dummies(own)
    body_at = body.xreplace(dict(zip(own, inner)))
    total = sp.Mul(*[k.upper + 1 for k in ks])
    rank = Where(sp.Eq(body_at, window_max), -linear_position(inner, inner), -total)
    first = -_nested_max(rank, inner)
    return Iverson(sp.Eq(linear_position(e.position, ks), first))
