"""Gradients kept finite where their forward is: a backward formula that divides by, or
takes the log of, a sigmoid's output p = sigmoid(u) is rewritten before printing.

    log(p) -> -softplus(-u), log(1 - p) -> -softplus(u)   (as the forward already does)
    (1 - p)/p * p -> 1 - p                                (the rational part factored:
                                                           no division by p, which is 0
                                                           for u < -88 in float32)
    1 - p -> sigmoid(-u)                                  (no cancellation near p = 1)

So a loss written stably, p = sigmoid((2t - 1) z), L = -sum((1 - p)**2 log(p)) / N, has a
finite gradient at |z| = 1e4 in both dtypes, where the derived form was NaN.  Formulas
with no such division or log are left exactly as they are.
"""
from __future__ import annotations

import sympy as sp

from derive.functions import sigmoid
from derive.piecewise import Iverson, Where


def stabilize(expr, layer):
    """expr with logs of and divisions by sigmoid outputs rewritten (see above)."""
    from .plan import _stable_logs

    defs = {eq.target: eq for eq in layer.equations}
    sig = {name for name, eq in defs.items() if isinstance(eq.rhs, sigmoid)}
    if not sig or not _at_risk(expr, sig):
        return expr
    expr = _stable_logs(expr, defs)
    expr = _factor_sum_free(expr)
    return _complements(expr, defs, sig)


def _name(e):
    if isinstance(e, sp.Indexed):
        return e.base.label.name
    return e.name if isinstance(e, sp.Symbol) else None


def _refs(e, sig):
    return [a for a in e.atoms(sp.Indexed, sp.Symbol) if _name(a) in sig]


def _at_risk(expr, sig) -> bool:
    """A log of, or a negative power of something holding, a sigmoid output."""
    for e in sp.preorder_traversal(expr):
        if isinstance(e, sp.log) and _refs(e.args[0], sig):
            return True
        if isinstance(e, sp.Pow) and e.exp.is_negative and _refs(e.base, sig):
            return True
    return False


def _factor_sum_free(expr):
    """sp.factor on every sum-free product (sums are left whole): (1 - p)/p * p cancels."""
    if not expr.has(sp.Sum):
        return sp.factor(expr)
    if isinstance(expr, sp.Sum):
        return sp.Sum(_factor_sum_free(expr.function), *expr.limits)
    if isinstance(expr, (sp.Add, sp.Mul)):
        plain = expr.func(*[a for a in expr.args if not a.has(sp.Sum)])
        rest = [_factor_sum_free(a) for a in expr.args if a.has(sp.Sum)]
        return expr.func(sp.factor(plain), *rest)
    return expr


def _complements(expr, defs, sig):
    """1 - p (within any sum of terms) as sigmoid(-u), for p = sigmoid(u)."""
    def value(ref):
        eq = defs[_name(ref)]
        idx = ref.indices if isinstance(ref, sp.Indexed) else ()
        return eq.rhs.xreplace(dict(zip(eq.indices, idx))).args[0]

    def rewrite(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        e = e.func(*[rewrite(a) for a in e.args])
        if not isinstance(e, sp.Add):
            return e
        for ref in _refs(e, sig):
            for sign in (1, -1):                     # 1 - p, or its negation p - 1
                if sign * sp.Integer(1) in e.args and -sign * ref in e.args:
                    rest = [a for a in e.args if a not in (sign * sp.Integer(1), -sign * ref)]
                    return sp.Add(*rest, sign * sigmoid(-value(ref)))
        return e

    return rewrite(expr)


def guard_brackets(expr):
    """[c] * f as where(c, f, 0): f is not evaluated (C) or its value is dropped (NumPy)
    where c fails, so an exp that overflows only there (ELU's exp(z) at z = 1e4, in the
    branch not taken) leaves no 0 * inf = NaN behind."""
    if not expr.has(Iverson):
        return expr

    def rewrite(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        e = e.func(*[rewrite(a) for a in e.args])
        if not isinstance(e, sp.Mul):
            return e
        brackets = [f for f in e.args if isinstance(f, Iverson)]
        if not brackets:
            return e
        rest = sp.Mul(*[f for f in e.args if not isinstance(f, Iverson)])
        return Where(sp.And(*[b.args[0] for b in brackets]), rest, sp.Integer(0))

    return rewrite(expr)
