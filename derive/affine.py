"""Affine index arithmetic: subscripts like x[n, c, 2*i + k - 1], their ranges, and the
Iverson brackets that keep a solved index inside its range.

A read at an affine subscript differentiates into a Kronecker delta of affine arguments,
delta(2*i + k - 1, r).  derive.calculus solves such a delta for one summed index and
keeps that index's range as a bracket [lo <= e <= hi] (`between`), which a later sum
absorbs into its bounds: sum_k [0 <= r - k <= Lout - 1] f(k) is
sum_{k = max(0, r - Lout + 1)}^{min(K - 1, r)} f(k).  So every adjoint is a gather with
exact bounds, never a scatter, and no Piecewise is ever built (Halide's scatter-to-gather
and TVM's zero elimination, in SymPy terms).

A sum whose upper bound is below its lower bound is empty (0) everywhere in the toolkit:
SymPy's own Sum.doit() follows Karr's convention instead, so nothing here calls it on a
bounded sum (derive.evaluate expands sums itself).
"""
from __future__ import annotations

import sympy as sp


class between(sp.Function):
    """[lo <= e <= hi]: 1 when the integer e lies in lo..hi, else 0.  An Iverson bracket
    that guards what it multiplies: kernels evaluate it before reading the factors."""
    nargs = 3

    @classmethod
    def eval(cls, e, lo, hi):
        if all(a.is_Integer for a in (e, lo, hi)):
            return sp.Integer(int(bool(lo <= e) and bool(e <= hi)))
        if e == lo == hi:
            return sp.Integer(1)
        below, above = e - lo, hi - e
        if below.is_Integer and below < 0 or above.is_Integer and above < 0:
            return sp.Integer(0)          # [0 <= -1 <= T - 1]: a step before the first
        if isinstance(e, sp.Idx) and (lo, hi) == (e.lower, e.upper) or \
                below.is_Integer and above.is_Integer:
            return sp.Integer(1)          # an index over its own range
        return None

    def _latex(self, printer):
        """Solved for its index where it has one, with the bounds the index's own range
        implies left out: [t - 1 = -1] as [t = 0], [0 <= t - 1 <= T - 1] as [t >= 1]."""
        solved = self.solved()
        if solved is None:
            e, lo, hi = (printer._print(a) for a in self.args)
            return r"\left[%s \le %s \le %s\right]" % (lo, e, hi)
        i, lo, hi = solved
        show = printer._print
        if lo is not None and lo == hi:
            return r"\left[%s = %s\right]" % (show(i), show(lo))
        if lo is None:
            return r"\left[%s \le %s\right]" % (show(i), show(hi))
        if hi is None:
            return r"\left[%s \ge %s\right]" % (show(i), show(lo))
        return r"\left[%s \le %s \le %s\right]" % (show(lo), show(i), show(hi))

    def solved(self):
        """(i, lo, hi) with lo <= i <= hi the same condition as this bracket's, i an index
        (coefficient 1), a bound its range already implies None; None when e is not an
        index plus a constant."""
        e, lo, hi = self.args
        parts = terms(e)
        if parts is None or len(parts[0]) != 1:
            return None
        (i, c), = parts[0].items()
        if c != 1 or not isinstance(i, sp.Idx):
            return None
        lo, hi = lo - parts[1], hi - parts[1]
        implied = lambda d: d.is_Integer and d >= 0 or d.is_nonnegative is True
        return (i, None if lo != hi and implied(i.lower - lo) else lo,
                None if lo != hi and implied(hi - i.upper) else hi)


class divides(sp.Function):
    """[q | e]: 1 when the integer q divides e, else 0 (a strided read's adjoint)."""
    nargs = 2

    @classmethod
    def eval(cls, q, e):
        if q.is_Integer and e.is_Integer:
            return sp.Integer(int(e % q == 0))
        if q == 1:
            return sp.Integer(1)
        return None

    def _latex(self, printer):
        return r"\left[%s \mid %s\right]" % (printer._print(self.args[0]),
                                             printer._print(self.args[1]))


def is_plain(i) -> bool:
    return isinstance(i, sp.Idx)


def index_range(i: sp.Idx):
    return i.lower, i.upper


def terms(expr, indices=None):
    """expr = const + sum of coeff * index: ({index: coeff}, const), or None when expr is
    not affine in its indices with integer coefficients (`indices`: the ones to separate;
    default every sp.Idx in expr)."""
    expr = sp.expand(expr)
    idx = set(indices) if indices is not None else expr.atoms(sp.Idx)
    coeffs = {}
    const = []
    for t in sp.Add.make_args(expr):
        found = [f for f in sp.Mul.make_args(t) if f in idx]
        if len(found) > 1:
            return None
        if not found:
            if t.atoms(sp.Idx) & idx:
                return None
            const.append(t)
            continue
        c = sp.Mul(*[f for f in sp.Mul.make_args(t) if f is not found[0]])
        if c.atoms(sp.Idx) & idx:
            return None
        coeffs[found[0]] = coeffs.get(found[0], 0) + c
    coeffs = {k: v for k, v in coeffs.items() if v != 0}
    return coeffs, sp.Add(*const)


def extremes(expr):
    """(min, max) of an affine expression over the ranges of its indices (as expressions
    in the dimensions), or None when a coefficient's sign is unknown."""
    parts = terms(expr)
    if parts is None:
        return None
    coeffs, const = parts
    lo, hi = const, const
    for i, c in coeffs.items():
        a, b = index_range(i)
        if c.is_nonnegative:
            lo, hi = lo + c * a, hi + c * b
        elif c.is_nonpositive:
            lo, hi = lo + c * b, hi + c * a
        else:
            return None
    return lo, hi


def proven_nonnegative(expr, dim_defs: dict | None = None) -> bool:
    """True when expr >= 0 for every size of the dimensions (positive integers), using the
    definitions of derived dimensions (Lout = (L - K) // S + 1) where they are given.
    Sound, not complete: False means "not shown"."""
    expr = sp.expand(expr)
    defs = {sp.Symbol(k, integer=True, positive=True) if isinstance(k, str) else k: v
            for k, v in (dim_defs or {}).items()}
    for _ in range(len(defs)):            # a definition may use an earlier derived one
        expr = sp.expand(expr.xreplace(defs))
    # floor(u) >= u - (q - 1)/q for u with denominator q, and floor(u) <= u: replace each
    # floor by the side that can only make expr smaller.
    for f in sorted(expr.atoms(sp.floor), key=sp.default_sort_key):
        c = sp.expand(expr).coeff(f)
        u = f.args[0]
        q = sp.fraction(sp.together(u))[1]
        if not q.is_Integer:
            return False
        low = u - sp.Rational(q - 1, q)
        expr = sp.expand(expr.xreplace({f: low if c.is_positive else u}))
    if expr.atoms(sp.Function):
        return False
    syms = sorted(expr.free_symbols, key=str)
    if any(not (s.is_integer and s.is_positive) for s in syms):
        return False
    # a linear form in positive integers is >= 0 when its value at 1 and every coefficient
    # are; shift to s = 1 + t with t >= 0 and ask that of the polynomial in t.
    shifted = sp.expand(expr.xreplace({s: 1 + s for s in syms}))
    if not syms:
        return bool(shifted >= 0)
    poly = sp.Poly(shifted, *syms)
    return all(c >= 0 for c in poly.coeffs())


def solve_for(k: sp.Idx, e: sp.Expr):
    """e == 0 solved for the index k: (solution, divisor) with solution*divisor integral,
    i.e. k = solution, valid only where divisor divides (the numerator); None if k is not
    affine in e."""
    parts = terms(e, [k])
    if parts is None or k not in parts[0]:
        return None
    c, rest = parts[0][k], parts[1]
    if not c.is_Integer:
        return None
    return sp.expand(-rest / c), abs(int(c))


def bounds_from(bracket: between, k: sp.Idx):
    """The range of k that [lo <= a*k + b <= hi] allows, as (lower, upper), or None when
    the bracket is not affine in k with an integer coefficient."""
    e, lo, hi = bracket.args
    parts = terms(e, [k])
    if parts is None or k not in parts[0]:
        return None
    a, b = parts[0][k], parts[1]
    if not a.is_Integer:
        return None
    a = int(a)
    low, high = (lo - b, hi - b) if a > 0 else (b - hi, b - lo)
    a = abs(a)
    if a == 1:
        return sp.expand(low), sp.expand(high)
    return sp.ceiling(sp.expand(low) / a), sp.floor(sp.expand(high) / a)


def tighten(lower, upper, k: sp.Idx):
    """Combine a sum's bounds with its index's own range 0..K-1."""
    a, b = index_range(k)
    lo = lower if lower == a else sp.Max(a, lower)
    hi = upper if upper == b else sp.Min(b, upper)
    return lo, hi


def is_full(limit) -> bool:
    """A sum limit (k, lo, hi) that runs over k's whole range."""
    k, lo, hi = limit
    return isinstance(k, sp.Idx) and lo == k.lower and hi == k.upper
