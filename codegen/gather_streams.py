"""Streaming stores for a gather split by residue: its rows through a small tile.

A gather split by residue (codegen/loops.split_by_residue: max pooling's dx) writes each
row of its target in several loops (the borders and the interior of w, each residue of
h), so no one loop walks a row that the row streaming of codegen/streaming.py could
stream.  Each iteration of a loop over h_q does write whole rows, though: h = q*h_q + r
for the residues r it covers, every w of them.  So those rows go to a tile of q rows on
the stack, and at the iteration's end they are streamed out to the target: the target's
lines are written without being fetched first (write-allocate), and the tile stays in L1.
Each flush keeps its last partial line and the next one, starting right after it,
completes it (bp_stream_carry in templates/c_streams.c.j2), so a plane goes out in whole
lines wherever the target starts in a line; only the plane's first and last partial lines
are stored plainly.  Each iteration first asks for the rows that the iteration
BP_STREAM_AHEAD later reads of the inputs of the target's shape (read_ahead).  With the
ranks found row by row (codegen/plane_fusion.rows_where_read)
and both rows of each window written by one loop (codegen/loops._side_by_side), max
pooling's backward (N=32, C=64, 112x112) takes 15-16 ms at one thread in a C harness on
arrays 16 bytes into a line, as NumPy's are, against 27-32 ms before the tile
(docs/benchmarks.md, fifth pass).

Applies to a gather whose target is an output the function never reads, whose shared
loops are the target's leading indices and whose split loops each write rows
h = q*t + r of the last two; the C picks the tiled code when the target is large
(BP_STREAM_MIN) and q rows fit the tile (BP_STREAM_TILE_MAX), the plain code otherwise."""
from __future__ import annotations

import sympy as sp

from derive.indices import dim_of

from .loops import leaves


def _rows(piece, target: str, h) -> dict | None:
    """{leaf: (q, r)} for the leaves of `piece` (a loop over t) writing `target`, each at
    h = q*t + r with one q and 0 <= r < q; None when a leaf writes elsewhere."""
    if len(piece.loops) != 1 or not piece.copies:
        return None
    t = piece.loops[0]
    out = {}
    for n in leaves(piece.copies):
        if n.target != target:
            continue
        at = dict(n.subs).get(h)
        if at is None:
            return None
        q, r = sp.Poly(at, t).all_coeffs() if at.has(t) else (None, None)
        if q is None or not (q.is_Integer and r.is_Integer and 0 <= r < q):
            return None
        out[n] = (int(q), int(r))
    return out or None


def tile_plan(n, outputs, read: set[str]) -> dict | None:
    """{piece: {leaf: (q, r)}} for a gather whose rows can be streamed through a tile
    (see the module's doc), else None."""
    k = len(n.loops)
    if n.kind != "reduce" or not n.copies or n.target not in outputs or n.target in read \
            or not k or tuple(n.out[:k]) != tuple(n.loops) or len(n.out) != k + 2:
        return None
    h = n.out[k]
    plan = {}
    for piece in n.copies:
        if piece.target != n.target:
            if any(m.target == n.target for m in leaves([piece])):
                return None
            continue
        rows = _rows(piece, n.target, h)
        if rows is None:
            return None
        plan[piece] = rows
    qs = {q for rows in plan.values() for q, _ in rows.values()}
    return plan if plan and len(qs) == 1 else None


def row_scratch(n, plan: dict, outputs) -> dict:
    """{scratch name: its row's extent} for the scratch rows the pieces compute first in
    each iteration (codegen/plane_fusion.rows_where_read) and read only there: in the
    tiled code such a row lives on the stack beside the tile, not in a plane-sized array
    whose lines would each be fetched before written."""
    rows = {}
    for piece in plan:
        first = piece.copies[0]
        if first.target != n.target and first.target not in outputs and first.bounds \
                and first.bounds[-1][0] == first.loops[0]:
            rows[first.target] = str(dim_of(first.out[-1]))
    return {s: e for s, e in rows.items()
            if not any(m.target == s for m in leaves(n.copies)
                       if all(m is not p.copies[0] for p in plan))}


def _tiled_view(view: dict, plan: dict, printer, tile: dict) -> dict:
    """A copy of the view tree with the planned leaves storing into the tile, each
    planned piece flushing its rows at the end of every iteration and asking, at its
    start, for the rows of the inputs read ahead (`ahead`) that a later iteration reads."""
    nest = view.get("nest")
    out = dict(view)
    if "parts" in view:
        out["parts"] = [_tiled_view(p, plan, printer, tile) for p in view["parts"]]
    if nest is not None and not nest.copies:
        out.update(_on_stack(nest, out, printer, tile["scratch"]))
    for rows in plan.values():
        if nest in rows:
            q, r = rows[nest]
            w = dict(nest.subs).get(tile["w"], tile["w"])
            row = f"{r}*{tile['width']} + " if r else ""
            out["target"] = f"bp_tile[{row}{printer.index_code(w)}]"
    if nest in plan:
        t = nest.loops[0]
        # consecutive rows are one stretch of the target (and of the tile): one copy, so
        # a row's last partial line and the next row's first are one line, streamed
        width = tile["width"]
        out["flush"] = [dict(dst=printer._print(sp.IndexedBase(tile["target"])[
            tile["shared"] + (tile["q"] * t + r, sp.Integer(0))]),
            src=f"bp_tile + {r}*{width}" if r else "bp_tile",
            count=f"{rows}*{width}" if rows > 1 else width)
            for r, rows in _runs(sorted({r for _, r in plan[nest].values()}))]
        q, later = tile["q"], sp.Symbol("BP_STREAM_AHEAD")
        out["ahead"] = [dict(
            src=printer._print(sp.IndexedBase(a)[tile["shared"] + (q * (t + later), 0)]),
            count=f"{q}*{width}", guard=f"{printer.index_code(q * (t + later) + q)} <= "
                                        f"{tile['height']}") for a in tile["ahead"]]
    return out


def _runs(residues: list[int]) -> list[tuple[int, int]]:
    """(first, count) of each run of consecutive residues."""
    runs = []
    for r in residues:
        if runs and runs[-1][0] + runs[-1][1] == r:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((r, 1))
    return runs


def _on_stack(nest, view: dict, printer, scratch: dict) -> dict:
    """The view's stores into and reads of the row scratch as the stack row's."""
    row = lambda name, i: f"bp_row_{name}[{printer.index_code(i)}]"
    changed = {}
    if nest.target in scratch:
        changed["target"] = row(nest.target, nest.out[-1])
    reads = [r for e in (nest.body, nest.init) for r in e.atoms(sp.Indexed)
             if r.base.label.name in scratch]
    if reads:
        swap = lambda text: _swapped(text, [(printer._print(r), row(r.base.label.name,
                                                                      r.indices[-1]))
                                            for r in reads])
        changed["value"] = swap(view["value"])
        changed["cse"] = [(s, swap(e)) for s, e in view["cse"]]
    return changed


def _swapped(text: str, pairs) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def read_ahead(n, shapes: dict) -> list[str]:
    """The arrays the gather reads that have its target's shape (max pooling's x for its
    dx): the rows of those that an iteration over h_q reads are the rows it writes (all of
    them where windows tile the plane, K = S), so the tiled code asks for them a few
    iterations early (BP_STREAM_AHEAD).  The hardware's prefetcher alone left max
    pooling's backward waiting on x: a C harness, N=32 C=64 112x112, flushed caches,
    median 9.6-10.4 ms at 2 threads without, 7.9-8.2 with (floor 6.5-7.0)."""
    target = shapes.get(n.target)
    return sorted({a.base.label.name for m in leaves(n.copies) for e in (m.body, m.init)
                   for a in e.atoms(sp.Indexed)
                   if a.base.label.name != n.target and target is not None
                   and tuple(shapes.get(a.base.label.name, ())) == tuple(target)})


def mark_gather_streams(views: list[dict], outputs, read: set[str], printer,
                        shapes: dict) -> None:
    """Adds `tiled` (the view tree storing through the tile, its sizes) to each view of a
    gather that qualifies."""
    for v in views:
        n = v.get("nest")
        if v.get("mode") != "copies" or n is None:
            continue
        plan = tile_plan(n, set(outputs), read)
        if plan is None:
            continue
        k = len(n.loops)
        (q,) = {q for rows in plan.values() for q, _ in rows.values()}
        width = str(dim_of(n.out[k + 1]))
        scratch = row_scratch(n, plan, set(outputs))
        tile = dict(target=n.target, shared=tuple(n.out[:k]), w=n.out[k + 1], q=q,
                    width=width, height=str(dim_of(n.out[k])), scratch=scratch,
                    ahead=read_ahead(n, shapes))
        view = _tiled_view(v, plan, printer, tile)
        view.update(tile=f"{q}*{width}", rows=[(f"bp_row_{s}", e) for s, e in
                                                sorted(scratch.items())])
        v["tiled"] = dict(view=view, size="*".join(str(dim_of(i)) for i in n.out),
                          rows=" + ".join([f"{q}*{width}"] + [e for _, e in view["rows"]]))
