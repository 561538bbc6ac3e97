"""A gradient that routes through a max reads the position the forward saved, where it
saved one: with `at[n, c, i, j] = argmax(x[n, c, S*i + p, S*j + q], p in KH, q in KW)`
the max-pool gradient reads

    dx[n, c, h, w] = sum_{i,j} [(h - 2*i)*KW + w - 2*j == at[n, c, i, j]] dy[n, c, i, j]

(dx at the saved argmax position, as a textbook writes it), not a search of x again."""
from __future__ import annotations

import sympy as sp

from .piecewise import ArgMaxOver, FirstMax, Iverson, linear_position


def saved_position(body, ks, name, indices, saved_body, saved_ks):
    """name[indices at this search] where the search of body over ks is the saved search
    name[indices] = argmax(saved_body over saved_ks), else None."""
    if [k.upper for k in saved_ks] != [k.upper for k in ks]:
        return None
    mine = body.xreplace(dict(zip(ks, saved_ks)))
    wild = {i: sp.Wild(f"_w{j}") for j, i in enumerate(indices)}
    found = mine.match(saved_body.xreplace(wild))
    if found is None or set(found) != set(wild.values()):
        return None
    return sp.IndexedBase(name)[tuple(found[wild[i]] for i in indices)]


def name_saved_argmax(expr, equations):
    """expr with each [pos is the first maximum of body] whose search an equation saves
    written [rank(pos) == saved[..]]."""
    saved = [eq for eq in equations if isinstance(eq.rhs, ArgMaxOver)]
    if not saved or not expr.has(FirstMax):
        return expr

    def named(e):
        for eq in saved:
            at = saved_position(e.body, e.bound_indices, eq.target, eq.indices,
                                eq.rhs.body, eq.rhs.bound_indices)
            if at is not None:
                return Iverson(sp.Eq(linear_position(e.position, e.bound_indices), at))
        return e

    return expr.replace(lambda e: isinstance(e, FirstMax), named)
