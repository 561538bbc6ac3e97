"""A scratch array's producer run inside the split gather that reads it, plane by plane.

Max-pooling's backward without a saved index is two nests: the first maximal position of
every window (an argmax over x into a scratch rank array, quarter the size of x), then
dx as a gather split by residue (codegen/loops.split_by_residue) that reads those ranks and
dy.  Run one after the other, the rank array makes a round trip through memory between
them, and the two passes stream x, then dx, each at its own time.  When the gather's
shared outer loops (n, c) are the producer's outermost loops and the gather reads the
scratch only at those loops' values (rank[n, c, .., ..]), the producer's inner loops run
first inside each iteration of the shared loops: the plane of ranks it writes is read back
from L1/L2 right after, and x's plane and dx's plane are streamed together.  Any producer
and any gather of that shape fuse this way: a strided, dilated conv1d's dx does too (its
sum over o of dy w, image by image); average pooling's gather has no producer.  The moved
producer keeps its output indices; those its loops lost are fixed by the gather's
(Nest.accumulate_in_place reads them as outside every loop).  Where each row of dx reads
one row of ranks, the ranks go further in, row by row: rows_where_read.
"""
from __future__ import annotations

from dataclasses import replace

import sympy as sp

from derive.indices import dim_of

from .loops import Nest, leaves


def _reads(nest: Nest, name: str) -> list[sp.Indexed]:
    exprs = [nest.body, nest.init] + [c.body for c in nest.copies] + \
        [c.init for c in nest.copies]
    return [r for e in exprs for r in e.atoms(sp.Indexed) if r.base.label.name == name]


def _fuses(producer: Nest, gather: Nest, later: list[Nest], scratch: set) -> bool:
    shared = tuple(gather.loops)
    k = len(shared)
    # a split gather keeps its bounds (a recurrence's steps are copies too: kind "scan")
    if gather.kind != "reduce" or not gather.bounds or not gather.copies or not shared \
            or producer.target not in scratch \
            or producer.kind != "reduce" or producer.copies or producer.subs \
            or producer.parallel != "output" or tuple(producer.loops[:k]) != shared \
            or tuple(producer.out[:k]) != shared:
        return False
    refs = _reads(gather, producer.target)
    if not refs or any(tuple(r.indices[:k]) != shared for r in refs):
        return False
    # the producer's own reads and the gather's target are untouched by the other
    if _reads(producer, gather.target) or gather.target == producer.target:
        return False
    return not any(_reads(n, producer.target) for n in later)


def fuse_into_gathers(nests: list[Nest], scratch: set) -> list[Nest]:
    """`nests` with each producer of a scratch array (a name in `scratch`) that the next
    nest, a gather split by residue, alone reads at its shared loops' values moved inside
    that gather: the first of its copies, over the producer's remaining loops."""
    out: list[Nest] = []
    k = 0
    while k < len(nests):
        n = nests[k]
        if k + 1 < len(nests) and _fuses(n, nests[k + 1], nests[k + 2:], scratch):
            gather = nests[k + 1]
            inner = replace(n, loops=tuple(n.loops[len(gather.loops):]))
            out.append(rows_where_read(replace(
                gather, copies=(inner,) + tuple(gather.copies),
                comment=f"{n.comment}, then {gather.comment}")))
            k += 2
            continue
        out.append(n)
        k += 1
    return out


def _row_read(piece: Nest, producer: Nest, k: int) -> bool:
    """Whether every leaf under `piece` (a loop over t) reads the producer's scratch only
    in its row t: bounds i from t to t, or to min(last row, t)."""
    t, i = piece.loops[0], producer.loops[0]
    last = dim_of(i) - 1
    reading = [n for n in leaves(piece.copies) if _reads(n, producer.target)]
    for n in reading:
        span = [(lo, hi) for j, lo, hi in n.bounds if j == i]
        if len(span) != 1 or span[0][0] != t or span[0][1] not in (t, sp.Min(last, t)) \
                or any(tuple(r.indices[k:k + 1]) != (i,) for r in _reads(n, producer.target)):
            return False
    return bool(reading)


def rows_where_read(gather: Nest) -> Nest:
    """A gather fused with its producer (fuse_into_gathers) whose pieces each read the
    scratch in one row, the row of the piece's own loop value (non-overlapping windows:
    max pooling with K = S, the row of windows i = h_q under dx's rows S*h_q .. S*h_q +
    S - 1): the producer's row runs first inside each of those loop's iterations instead
    of the whole plane before them.  Each row of x is then read (and ranked) right before
    the dx rows it decides are written, reads and writes interleaved as a streaming copy
    does, where the plane at once had a phase of reads then a phase of writes (a hand
    edit of the generated C, dx streamed either way, one thread, N=32 C=64 112x112:
    22-28 ms plane by plane against 14-15 for a row-by-row kernel).  A border piece that
    reads no row computes none (its bound clamps t to the last row).  Overlapping windows
    (K > S) read two rows of ranks per row of dx and keep the plane."""
    if len(gather.copies) < 2 or gather.copies[0].kind != "reduce" \
            or gather.copies[0].op not in ("argmax", "max"):
        return gather
    producer, pieces = gather.copies[0], gather.copies[1:]
    k = len(gather.loops)
    if not producer.loops or producer.loops[0] in producer.reduced or any(
            len(p.loops) != 1 or not p.copies or not _row_read(p, producer, k)
            for p in pieces):
        return gather
    i = producer.loops[0]
    rows = lambda t: replace(producer, bounds=producer.bounds + (
        (i, t, sp.Min(dim_of(i) - 1, t)),))
    return replace(gather, copies=tuple(
        replace(p, copies=(rows(p.loops[0]),) + tuple(p.copies)) for p in pieces))
