"""Streaming (non-temporal) stores for large write-only outputs of elementwise loops.

An ordinary store to a line not in cache first fetches the line (write-allocate): a new
output array costs its bytes twice.  A non-temporal store writes whole lines without the
fetch (standalone, 4 arrays in and 3 out of 10^7 floats at NumPy's offset, 1 thread on a
Xeon: 33 ms with ordinary stores, 17.5 with `_mm512_stream_ps`).  GCC ignores OpenMP's
`nontemporal` clause, so the loop computes 64 bytes of results into a local block under
`omp simd` and a helper (templates/c_streams.c.j2) streams the block; the elements before
the row's first 64-byte boundary and after its last are stored plainly.

Only an output the function never reads (streamed lines leave the cache), of an
elementwise nest over the target's own indices (its rows contiguous in the innermost loop),
and only when the output is large (BP_STREAM_MIN bytes, decided by the C at run time:
a small result the caller reads right away should stay in cache)."""
from __future__ import annotations

import itertools
from collections import Counter

import sympy as sp

from derive.indices import dim_of

from .c_printer import own_functions_in
from .gather_streams import mark_gather_streams
from .loops import leaves


def read_arrays(nests) -> set[str]:
    """Names of the arrays any of these nests reads, or writes from more than one nest
    (a later one adds to what the first wrote)."""
    # a gather split by residue writes each element in one of its copies: one writer
    targets = Counter(t for n in nests for t in (
        {m.target for m in leaves([n])} if n.kind == "reduce" else
        [m.target for m in leaves([n])]))
    return {a.base.label.name for n in leaves(nests) for e in (n.body, n.init)
            for a in e.atoms(sp.Indexed)} | {t for t, k in targets.items() if k > 1}


def _written_at(n) -> tuple:
    """The target's subscripts as the nest writes them (its fixed indices put in: a copy
    by value's number, or a merged row's i = 0)."""
    return tuple(sp.sympify(i).xreplace(dict(n.subs)) for i in n.out)


def _walks_rows(n) -> bool:
    """Each loop index is one subscript of the target, the innermost loop its last, the
    other subscripts numbers: every element written once, each row contiguous, in any
    order of the outer loops (batch norm's dx runs its channels outermost)."""
    at = _written_at(n)
    return bool(n.loops) and at[-1] == n.loops[-1] \
        and sorted(map(str, n.loops)) == sorted(str(i) for i in at if not i.is_Integer)


def _writes_alone(n, outputs, read: set[str]) -> bool:
    """An elementwise nest walking its target's rows, an output nobody reads."""
    return (n.kind == "elementwise" and not n.bounds and not n.copies and _walks_rows(n)
            and n.target in outputs and n.target not in read)


def _plain_loops(loops, least: int) -> bool:
    return len(loops) >= least and all(len(l) == 2 for l in loops)


def streamable(view: dict, outputs, read: set[str], least: int = 2) -> bool:
    """A row loop (at least `least` loops, the outer ones parallel) of one nest that
    writes an output of the function nobody reads."""
    n = view.get("nest")
    if n is None or view.get("group") or view.get("pair") is not None \
            or view.get("mode") != "assign":
        return False
    lowered = any(view.get(k) for k in ("gemm", "im2col", "batched", "step", "prefetch",
                                        "point"))
    return _plain_loops(view["loops"], least) and not lowered \
        and _writes_alone(n, outputs, read)


def _stream(n, printer, name: str) -> dict:
    """The target's element at its row's first element and at the block's (bp_b)."""
    inner = n.loops[-1]
    ref = sp.IndexedBase(n.target)[_written_at(n)]
    block = sp.Idx("bp_b", (inner.lower, inner.upper))     # in range: no guard
    return dict(row=printer._print(ref.xreplace({inner: sp.Integer(0)})),
                block=printer._print(ref.xreplace({inner: block})), name=name,
                size="*".join(str(dim_of(i)) for i in n.loops),
                lanes=64 // (4 if printer.dtype == "float32" else 8))


# own functions of a compare and a select or two: no more work than a plain copy's
CHEAP = {"relu", "step"}


def _ahead(nests, printer, shapes: dict) -> list[str]:
    """The elements at a streamed block (bp_b) of the rows that a pass calling the
    toolkit's vector math (exp, tanh, log1p ...) reads at its targets' own subscripts, in
    arrays of its targets' shape: the block loop asks for each such line BP_AHEAD_BYTES
    early.  Such a pass computes about as long as it streams, and the hardware's
    prefetcher alone left GELU's backward from (z, dy) at 11.1 ms, 67% of the floor
    (1 thread, C harness; 8.8-9.0 ms asking 2-16 KB ahead)."""
    if not own_functions_in([e for n in nests for e in (n.body, n.init)]) - CHEAP:
        return []
    out = []
    for n in nests:
        if n.subs or not n.loops:
            continue
        inner = n.loops[-1]
        block = sp.Idx("bp_b", (inner.lower, inner.upper))     # in range: no guard
        for a in sorted(n.body.atoms(sp.Indexed) | n.init.atoms(sp.Indexed), key=str):
            if tuple(a.indices) == tuple(n.out) and \
                    shapes.get(a.base.label.name) == shapes.get(n.target):
                at = printer._print(a.xreplace({inner: block}))
                out += [at] if at not in out else []
    return out


def _sums(m: dict) -> list[str] | None:
    """The accumulators a merged inner loop adds into (its row sums and the enclosing
    loop's totals), or None when one of them also stores its summands."""
    parts = [p for p in m["parts"] if p["mode"] == "scalar_acc" or p.get("total")]
    if any(p["store"] for p in parts):
        return None
    return [p["acc"] if p["mode"] == "scalar_acc" else p["target"] for p in parts]


def _merged_streams(m: dict, outputs, read: set[str], printer, shapes: dict) -> None:
    """Streams, in a row loop's merged inner loop, every part that assigns an output
    nobody reads (not one it stores summands into).  Its sums (sigmoid + BCE's loss beside
    dz) add into one array of a block's lanes, reduced once after the row's blocks: an
    `omp simd reduction` per 16-element block reduced across lanes at every block's end
    and ran 1.8x slower."""
    sums = _sums(m)
    if not _plain_loops(m["loops"], 1) or m.get("point") or sums is None:
        return
    parts = [p for p in m["parts"] if p["mode"] == "assign" and not p["store"]
             and not p.get("point") and _writes_alone(p["nest"], outputs, read)]
    for k, p in enumerate(parts):
        p["stream"] = _stream(p["nest"], printer, f"bp_block{k}")
    if parts:
        m["stream"] = dict(size=parts[0]["stream"]["size"], lanes=parts[0]["stream"]["lanes"],
                           sums=[(acc, f"{acc}_lanes") for acc in sums],
                           ahead=_ahead([p["nest"] for p in m["parts"]], printer, shapes))


def _flat_streams(g: dict, outputs, read: set[str], printer, shapes: dict) -> bool:
    """A one-loop group (an optimizer step) whose statements all assign outputs nobody
    reads, nothing summed: every one streamed, its blocks shared among the threads."""
    members = g["members"]
    if g["pre"] or g["post"] or "reduction" in g["pragma"] or not all(
            m["mode"] == "assign" and not m["loops"] and not m["hoisted"] and not m["point"]
            and _writes_alone(m["nest"], outputs, read) for m in members):
        return False
    for k, m in enumerate(members):
        m["stream"] = _stream(m["nest"], printer, f"bp_block{k}")
    g["stream"] = dict(size=g["extent"], lanes=members[0]["stream"]["lanes"],
                       ahead=_ahead([m["nest"] for m in members], printer, shapes))
    return True


def _deferred_streams(g: dict, outputs, read: set[str], printer) -> None:
    """A row loop's last pass run a row late inside the next row's sum
    (codegen/row_loops.py, defer_last_pass) streams its output row, the sum's lanes added
    up after the blocks; kept only where that output is one nobody reads, else dropped."""
    d = g.get("deferred")
    if not d:
        return
    late = d["both"]["parts"][-1]
    if not _writes_alone(late["nest"], outputs, read):
        g["deferred"] = None
        return
    late["stream"] = _stream(late["nest"], printer, "bp_block0")
    d["both"]["stream"] = dict(size=late["stream"]["size"], lanes=late["stream"]["lanes"],
                               sums=[(d["first"]["acc"], f"{d['first']['acc']}_lanes")],
                               ahead=[])


def _window_rows(v: dict, outputs, read: set[str], printer, shapes: dict) -> None:
    """A small window's reduction (codegen/c_backend.py, _small_window: max pooling's
    forward) computes its target a row at a time, in the vector loop over the row's
    outputs.  Where the target is an output nobody reads, written once by one nest whose
    loops walk its rows in order (consecutive rows lie one after the other), each row is
    computed into a tile on the stack and streamed out from there (bp_stream_copy's carry
    completes the lines two rows share), and the input rows the window reads
    BP_STREAM_AHEAD rows later are asked for first: the prefetcher alone left max
    pooling's forward waiting on x (C harness, N=32 C=64 112x112, 2 threads, flushed
    caches, EPYC Zen 1: 9.5 ms as before, 6.9 with the rows asked for, 5.8 with the
    output streamed too; the floor 5.0).  An argmax that also keeps the best value (max
    pooling's forward saving its ranks: at and y) streams both rows, each through its own
    tile and carry."""
    n = v.get("nest")
    if n is None or v.get("mode") != "scalar_acc" or not v.get("window") \
            or n.kind != "reduce" or n.bounds or n.copies or n.subs:
        return
    # the targets: the reduction's, and the best value an argmax also keeps (y beside at)
    targets = [n.target] + ([n.best] if n.best else [])
    k = len(n.loops) - len(n.reduced)
    if k < 3 or tuple(n.out) != tuple(n.loops[:k]) or not _plain_loops(v["loops"][:k], k) \
            or any(t not in outputs or t in read for t in targets):
        return
    row, j = n.loops[k - 2], n.loops[k - 1]
    extents = {name: int(extent) for name, extent in v["loops"][k:]}
    ahead, widths = [], set()
    for a in sorted(n.body.atoms(sp.Indexed), key=str):
        *lead, last = a.indices
        if a.base.label.name in targets or last.has(row) or any(x.has(j) for x in lead):
            continue                    # (only reads whose rows the last index walks)
        vars_ = [w for w in n.reduced if any(x.has(w) for x in lead)]
        if any(w.label.name not in extents for w in vars_) or a.base.label.name not in shapes:
            return
        for at in itertools.product(*[range(extents[w.label.name]) for w in vars_]):
            fixed = dict(zip(vars_, map(sp.Integer, at)))
            fixed.update({w: sp.Integer(0) for w in n.reduced if w not in fixed})
            fixed.update({row: row + sp.Symbol("BP_STREAM_AHEAD"), j: sp.Integer(0)})
            ref = a.base[tuple(x.xreplace(fixed) for x in lead) + (sp.Integer(0),)]
            ahead.append(printer._print(ref))
            widths.add(str(shapes[a.base.label.name][-1]))
    if len(widths) > 1:
        return
    row_start = tuple(n.out[:-1]) + (sp.Integer(0),)
    tiles = [dict(tile=f"bp_tile{m if m else ''}", carry=f"bp_carry{m if m else ''}",
                  dst=printer._print(sp.IndexedBase(t)[row_start]))
             for m, t in enumerate(targets)]
    v["rows"] = dict(size="*".join(str(dim_of(i)) for i in n.out),
                     count=str(dim_of(j)), tiles=tiles,
                     ahead=list(dict.fromkeys(ahead)), width=widths.pop() if widths else "0",
                     guard=f"{row} + BP_STREAM_AHEAD < {dim_of(row)}")


def mark_streams(views: list[dict], nests, outputs, printer, shapes: dict) -> list[dict]:
    """Adds `stream` to each view (or row loop member, or part of a merged inner loop)
    whose output is streamed: see _stream."""
    read, outputs = read_arrays(nests), set(outputs)
    mark_gather_streams(views, outputs, read, printer, shapes)
    for v in views:
        if v.get("group") and _flat_streams(v, outputs, read, printer, shapes):
            continue
        if v.get("group"):
            _deferred_streams(v, outputs, read, printer)
            for m in v["members"]:
                if m["mode"] == "merged":
                    _merged_streams(m, outputs, read, printer, shapes)
                elif streamable(m, outputs, read, least=1):
                    m["stream"] = dict(_stream(m["nest"], printer, "bp_block"),
                                       ahead=_ahead([m["nest"]], printer, shapes))
        elif streamable(v, outputs, read):
            v["stream"] = dict(_stream(v["nest"], printer, "bp_block"),
                               ahead=_ahead([v["nest"]], printer, shapes))
        else:
            _window_rows(v, outputs, read, printer, shapes)
    return views


def any_streamed(views: list[dict]) -> bool:
    """Whether any view, row loop member or part of a merged inner loop is streamed: the
    source then needs the helpers (templates/c_streams.c.j2), or `#if BP_STREAMS` reads
    an undefined macro as 0 and the streamed branch silently compiles away."""
    return any(x.get("stream") or x.get("tiled") or x.get("deferred") or x.get("rows") or any(
        m.get("stream") or any(p.get("stream") for p in m.get("parts", ()))
        for m in x.get("members", ())) for x in views)
