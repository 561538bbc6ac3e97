"""Two innermost loops over one contiguous stretch run as one loop.

A loop nest whose last two loops (i over H, j over W) index every array it touches only
as that array's last two subscripts, [.., i, j] on an array whose last two axes are H
and W, walks H*W consecutive elements: it may run j over H*W with i held at 0, the same
addresses in the same order.  Batch norm's channel sums and its dx loop, over rows of
W = 56 floats, then vectorize over 3136 at a time: no 8-float remainder (142
instructions a row, the rest of every row's sum) and no horizontal add per row."""
from __future__ import annotations

import dataclasses

import sympy as sp

from derive.indices import dim_of
from derive.spec import dim_symbol

from .loops import Nest


def merged_rows(n: Nest, shapes, padded=frozenset()) -> Nest:
    """n with its last two loops as one, or n itself where that is not the same walk."""
    if n.kind not in ("elementwise", "reduce") or n.op not in ("sum", "max") or \
            len(n.loops) < 3 or n.bounds or n.subs or n.copies or n.at or n.step or \
            n.accumulate_in_place:
        return n
    i, j = n.loops[-2:]
    if (i in n.reduced) != (j in n.reduced):
        return n
    refs = [e for e in (n.body, n.init) for e in e.atoms(sp.Indexed)]
    if n.out:
        refs.append(sp.IndexedBase(n.target)[n.out])
    dims = (str(dim_of(i)), str(dim_of(j)))
    touching = [a for a in refs if a.has(i) or a.has(j)]
    for a in touching:
        name = a.base.label.name
        if name in padded or tuple(a.indices[-2:]) != (i, j) or \
                tuple(shapes[name][-2:]) != dims or any(x.has(i, j) for x in a.indices[:-2]):
            return n
    rest = [e.xreplace({a: sp.Symbol("bp_row") for a in touching}) for e in (n.body, n.init)]
    if any(e.has(i, j) for e in rest) or not touching:
        return n                         # an index used as a number, or nothing to walk
    # its extent one symbol, printed as the product it is: loop bounds print with str(),
    # which writes T*T as T**2
    row = sp.Idx(j.label, dim_symbol(f"{dims[0]}*{dims[1]}"))
    at = {i: sp.Integer(0), j: row}
    swap = lambda e: e.xreplace({a: a.xreplace(at) for a in touching})
    summed = i in n.reduced
    return dataclasses.replace(
        n, loops=n.loops[:-2] + (row,), body=swap(n.body), init=swap(n.init),
        reduced=tuple(x for x in n.reduced if x not in (i, j)) + (row,) if summed
        else n.reduced,
        # the target keeps its subscripts; the loops stand for them as a copy's do
        subs=() if summed else tuple(at.items()))
