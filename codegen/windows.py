"""The adjoint of a read through non-overlapping windows, written window by window.

A pooling whose windows tile the input (K = S: max-pooling 2x2 stride 2) has a gather for
its dx in which each element h of an axis lies in one window i = floor(h/S) at most:

    dx[n, c, h, w] = sum_{i = max(0, ceil((h - K + 1)/S))..min(Hout - 1, floor(h/S)), j = ..}
                     body(h, w, i, j)

At h = S*i + r (r < S = K) that sum is the one term body(S*i + r, ..., i), and it is
empty past the last window (h >= S*Hout).  So the loops run over the windows (n, c, i, j)
and write each window's K x K elements in turn: one read of the window's dy and, when the body searches the window (the first
maximum's rank, an argmax scratch array read only here), one scan of its x into a local,
not a quarter-size array written out and read back.  Rows and columns past the last
window are zero-filled apart.  Returns the nests unchanged where this does not apply
(overlapping windows; gaps between them, S > K, where the last window's gap may lie past
the array; a gather over another shape of bounds).
"""
from __future__ import annotations

from dataclasses import replace

import sympy as sp

from derive.indices import dim_of, free_indices

from .loops import Nest, Temp

LOCAL_RANK = "bp_win_at"       # the window's first maximal rank, a local of the window loop


def window_by_window(nests: list[Nest], temps: list[Temp], keep=lambda nest: False):
    """(nests, temps) with every window-shaped gather written window by window.  `keep`:
    nests that stay as they are (a library call)."""
    nests, temps = list(nests), list(temps)
    k = 0
    while k < len(nests):
        found = None if keep(nests[k]) else _windows(nests[k])
        if found is None:
            k += 1
            continue
        gather = nests[k]
        search = _own_search(nests, k, found)
        if search is not None:
            temps = [t for t in temps if t.name != nests[search].target]
        written = _written(gather, found, nests[search] if search is not None else None)
        fills = _tails(gather, found)
        nests[k:k + 1] = fills + [written]
        if search is not None:
            del nests[search]
        k += len(fills) + 1 - (search is not None and search < k)
    return nests, temps


def _windows(n: Nest):
    """{output index v: (window index k, stride S = width K)} of a gather whose every
    bounded index is a window of one output index, the windows tiling it; else None.
    (Gaps, S > K, are refused: the last window's gap may lie past the array.)"""
    if n.kind != "reduce" or n.op != "sum" or not n.bounds or n.copies or n.subs \
            or n.init != 0 or set(n.reduced) != {k for k, _, _ in n.bounds}:
        return None
    found = {}
    for k, lo, hi in n.bounds:
        owners = [v for v in n.out if v in free_indices(hi)]
        floors = list(hi.atoms(sp.floor))
        if len(owners) != 1 or len(floors) != 1:
            return None
        (v,) = owners
        stride = sp.fraction(sp.together(floors[0].args[0]))[1]
        if not stride.is_Integer or stride < 1 or v in found:
            return None
        t = sp.Symbol("t", integer=True, nonnegative=True)
        for r in range(int(stride)):       # h = S*t + r: the one term i = t, each r
            at = {v: stride * t + r}
            if sp.simplify(lo.xreplace(at) - t) != 0 or \
                    sp.simplify(hi.xreplace(at) - sp.Min(dim_of(k) - 1, t)) != 0:
                return None                # overlapping windows, or gaps between them
        found[v] = (k, int(stride))
    return found


def _own_search(nests, k, found):
    """The position of an argmax over the window whose scratch array the gather alone
    reads, at the window's own indices (so it can be a local of the window loop)."""
    gather = nests[k]
    window = tuple(found[i][0] if i in found else i for i in gather.out)
    for s, n in enumerate(nests[:k]):
        if n.kind != "reduce" or n.op != "argmax" or n.best or n.bounds or n.out != window:
            continue
        reads = [a for m in nests for e in (m.body, m.init) for a in e.atoms(sp.Indexed)
                 if a.base.label.name == n.target]
        if all(tuple(a.indices) == window for a in reads) and not any(
                n.target in {a.base.label.name for e in (m.body, m.init)
                             for a in e.atoms(sp.Indexed)} for m in nests if m is not gather):
            return s
    return None


def _written(gather: Nest, found, search: Nest | None) -> Nest:
    """The loops over the windows, the gather's K x K elements of each inside."""
    window = tuple(found[i][0] if i in found else i for i in gather.out)
    body = gather.body
    parts = []
    if search is not None:
        body = body.xreplace({sp.IndexedBase(search.target)[window]: sp.Symbol(LOCAL_RANK)})
        parts.append(replace(search, target=LOCAL_RANK, out=(), loops=search.reduced))
    offsets = [[]]
    for v in gather.out:
        if v in found:
            k, stride = found[v]
            offsets = [o + [(v, k, r)] for o in offsets for r in range(stride)]
    for combo in offsets:
        sub = {v: found[v][1] * k + r for v, k, r in combo}
        parts.append(Nest("elementwise", gather.target, gather.out, (), (),
                          body.xreplace(sub), subs=tuple(sub.items())))
    return Nest("elementwise", gather.target, gather.out, window, (), sp.Integer(0),
                comment=f"{gather.comment}: window by window", copies=tuple(parts))


def _tails(gather: Nest, found) -> list[Nest]:
    """Zeros past the last window of each windowed axis (an odd H under stride 2), each
    part once: the earlier axes run over their windows' span only."""
    out, span = [], []
    for v, (k, stride) in found.items():
        end = stride * dim_of(k)
        bounds = tuple(span) + ((v, end, dim_of(v) - 1),)
        out.append(Nest("elementwise", gather.target, gather.out, gather.out, (),
                        sp.Integer(0), comment=f"{gather.target} past the last window",
                        bounds=bounds))
        span.append((v, sp.Integer(0), end - 1))
    return out
