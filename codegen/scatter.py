"""Recognizing a scatter-add among sums: T[.., v, ..] = sum_K [v == g] * rest, with g an
integer expression of the summed indices K (a label ids[n]) and v nowhere in rest, adds
each summand at the one v it hits (an embedding's gradient).  Both backends ask here, so
they agree on which sums they compute in O(K) instead of O(V K)."""
from __future__ import annotations

import sympy as sp

from derive.indices import free_indices


def scatter_parts(out, reduced, body):
    """(v, g, rest) when body = [v == g] * rest with v one of the indices `out`, g an
    integer expression of the indices `reduced` only, and v nowhere in rest; else None."""
    factors = sp.Mul.make_args(body)
    for d in factors:
        if not isinstance(d, sp.KroneckerDelta):
            continue
        for v, g in (d.args, d.args[::-1]):
            if v in out and not isinstance(g, sp.Idx) and free_indices(g) \
                    and free_indices(g) <= set(reduced):
                rest = sp.Mul(*[f for f in factors if f is not d])
                if v not in free_indices(rest):
                    return v, g, rest
    return None
