"""What the C backend does to the passes of a row loop (a parallel loop over rows n whose
members each loop over the row): share a summand a later pass recomputes, merge passes
over the same row into one loop, load what an inner loop only reads before it, compute
a one-hot bracket's single element apart, and ask for the next row ahead.  Each works on
the views c_backend builds (dicts the template reads) and returns or updates them."""
from __future__ import annotations

import sympy as sp

from derive.indices import dim_of, free_indices

from .c_printer import KernelCPrinter, common_subexpressions, own_functions_in
from .loops import Group, Nest
from .streaming import CHEAP


def store_summands(g: Group):
    """A row sum whose summand a later statement of the row recomputes elementwise (the
    softmax's exp(z - m) in the sum and again in y or dz) writes it into that statement's
    row as it sums, and the statement reads it back from cache: one exp per element, not
    two.  Returns (nests, {index of the sum: where its summand is stored})."""
    nests, stores = list(g.nests), {}
    for s, S in enumerate(nests):
        if S.kind != "reduce" or S.op != "sum" or len(S.loops) != 2 or len(S.reduced) != 1 \
                or S.loops[0] != g.index or not S.body.atoms(sp.Function):
            continue
        (k,) = S.reduced
        for a in range(s + 1, len(nests)):
            A = nests[a]
            later = nests[s + 1:a]
            if A.kind != "elementwise" or len(A.loops) != 2 or A.out != A.loops \
                    or A.loops[0] != g.index or dim_of(A.loops[1]) != dim_of(k):
                continue
            i = A.loops[1]
            summand = S.body.xreplace({k: i})
            if not A.body.has(summand) or any(
                    n.target == A.target or A.target in {r.base.label.name for e in
                                                         (n.body, n.init) for r in
                                                         e.atoms(sp.Indexed)}
                    for n in later):
                continue
            row = sp.IndexedBase(A.target)
            nests[a] = Nest(A.kind, A.target, A.out, A.loops, A.reduced,
                            A.body.xreplace({summand: row[g.index, i]}), A.op, A.comment,
                            A.init)
            stores[s] = row[g.index, k]
            break
    return nests, stores


def merge_inner_loops(members: list[dict]) -> list[dict]:
    """Consecutive members of a group whose inner loop is the same single loop, none
    reading what another writes, share that loop: layer norm's two row sums become one
    pass with two accumulators, its dw and db updates another (one read of the row each,
    not two).  Sums over the same several loops share them too: batch norm's channel
    sums of dy and of (x - mu) dy, over n, h, w, read x and dy once, not dy twice."""
    out: list[dict] = []
    run: list[dict] = []

    def key(v):
        if v["mode"] == "scalar_acc" and v["op"] == "sum" and v["split"] == 0 and (
                len(v["loops"]) == 1 or v["loops"] and not v["hoisted"] and not v["store"]):
            return tuple(v["loops"])     # over several loops: accumulators only
        if v["mode"] in ("assign", "update") and len(v["loops"]) == 1 and not v.get("point"):
            return tuple(v["loops"])
        return None

    def reads(v):
        n = v["nest"]
        return {a.base.label.name for e in (n.body, n.init) for a in e.atoms(sp.Indexed)}

    def close():
        targets = [p["target"] for p in run if p["mode"] in ("assign", "update")]
        if len(run) > 1 and len(set(targets)) == len(targets):
            # Every part's loads before any part's store: after a store to dx[n, c], a
            # load of dw[c] (a private copy the compiler cannot prove apart) waits until
            # the CPU rules out that they alias; layer norm's pass ran 25% slower so.
            # Sound because no part reads what another writes, and no two write one array.
            stores = [p for p in run if p["nest"].out and (      # array elements, not totals
                p["mode"] == "assign" or p["mode"] == "update" and p["op"] == "sum")]
            for p in stores if len(stores) > 1 else ():
                p["early"] = f"{p['acc']}_m"
        if len(run) > 1:
            # row sums and the scalar totals of the enclosing loop reduce over this loop too
            accs = [p["acc"] for p in run if p["mode"] == "scalar_acc"] + \
                [p["target"] for p in run if p.get("total")]
            out.append(dict(mode="merged", parts=list(run), loops=run[0]["loops"],
                            comment="; ".join(p["comment"] for p in run if p["comment"]),
                            simd="#pragma omp simd" + (f" reduction(+:{', '.join(accs)})"
                                                       if accs else "")))
        else:
            out.extend(run)
        run.clear()

    for v in members:
        k = key(v)
        if run and k is not None and k == key(run[0]) and not (
                reads(v) & {p["nest"].target for p in run}):
            run.append(v)
            continue
        close()
        (run if k is not None else out).append(v)
    close()
    return out


def hoist_row_values(v: dict, printer: KernelCPrinter) -> dict:
    """Load what the innermost loop reads but does not index (a row's maximum and sum, its
    label t[n], a scalar input) into locals before that loop.  GCC does not hoist loads
    through pointers into the scratch buffer past the stores of the loop, and then it
    will not vectorize the loop at all."""
    n, loops, mode = v["nest"], v["loops"], v["mode"]
    if mode not in ("assign", "update", "inplace", "scalar_acc") or not loops or \
            v.get("window"):
        return v                     # (a small window's loops sit inside the vector loop)
    inner_loops = loops[v["split"]:] if mode == "scalar_acc" else loops
    if len(inner_loops) != 1 and mode == "scalar_acc" or \
            (len(loops) == 1 and v["pragma"] and mode != "scalar_acc"):
        return v                     # a pragma must stay right above its loop
    inner = inner_loops[-1][0]
    if printer.guarded(n.body, labels=False):    # a label's guard sits in its read
        return v                     # no read may leave the bracket that guards it
    refs = sorted((a for a in n.body.atoms(sp.Indexed)
                   if inner not in {i.label.name for i in free_indices(a)}), key=str)
    refs += sorted((s for s in n.body.free_symbols
                    if type(s) is sp.Symbol and s.name in printer.scalars), key=str)
    if not refs:
        return v
    sub = {r: sp.Symbol(f"{v['acc']}_r{k}") for k, r in enumerate(refs)}
    body = n.body.xreplace(sub)
    # then whole factors and terms free of the inner index: 1/s[n] once per row, so the
    # loop multiplies instead of dividing
    derived: dict = {}
    inner_of = lambda e: any(i.label.name == inner for i in e.atoms(sp.Idx))

    def lift(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Symbol, sp.Number)):
            return e
        if isinstance(e, (sp.Mul, sp.Add)):
            fixed = [a for a in e.args if not inner_of(a) and not a.is_Number]
            rest = [lift(a) for a in e.args if inner_of(a) or a.is_Number]
            if fixed and rest and (len(fixed) > 1 or not isinstance(fixed[0], sp.Symbol)):
                key = e.func(*fixed)
                if key not in derived:
                    derived[key] = sp.Symbol(f"{v['acc']}_r{len(sub) + len(derived)}")
                return e.func(derived[key], *rest)
            return e.func(*[lift(a) for a in e.args])
        return e.func(*[lift(a) for a in e.args])

    point = _one_point(body, inner) if mode == "assign" else None
    if point is not None:
        # [i == t[n]] is 1 at one i of the row: the loop computes the row as if it were 0
        # everywhere, and that one element is computed apart (before the loop, which may
        # overwrite what it reads) and stored after it.  No integer compare per element.
        delta, i, at = point
        fixed = body.xreplace({delta: sp.S.One}).xreplace({i: at})
        body = body.xreplace({delta: sp.S.Zero})
        target = sp.IndexedBase(n.target)[tuple(at if x == i else x for x in n.out)]
        extent = inner_loops[-1][1]
        v.update(point=dict(at=printer.code(at), extent=extent, target=printer.element(target),
                            value=printer.code(fixed), var=f"{v['acc']}_fix"))
    body = lift(body)
    hoisted = [(r, s) for r, s in sub.items()] + [(e, s) for e, s in derived.items()]
    replacements, (body,) = common_subexpressions(body, v["acc"])
    def ctype(r):
        if not isinstance(r, (sp.Indexed, sp.Symbol)):
            return v["ctype"]
        name = r.base.label.name if isinstance(r, sp.Indexed) else r.name
        return "int64_t" if name in getattr(printer, "integer", ()) else v["ctype"]

    # each value loaded inside the fewest loops that bind its indices (batch norm's
    # per-channel constants once per channel, not once per row of each image); with
    # several loops, inside the first at least (a pragma sits right above it)
    outer = [l[0] for l in inner_loops[:-1]]
    level: dict = {}
    for r, s in hoisted:
        deps = [outer.index(i.label.name) + 1 for i in r.atoms(sp.Idx)
                if i.label.name in outer] + [level[d] for d in r.free_symbols if d in level]
        level[s] = max(deps + [1 if outer else 0])
    v.update(hoisted=[(ctype(r), str(s), printer.code(r), level[s]) for r, s in hoisted],
             cse=[(str(s), printer.code(e)) for s, e in replacements],
             value=printer.code(body))
    return v


def _one_point(body, inner: str):
    """(delta, i, at) when the body's only bracket on the inner index i is [i == at] with
    `at` free of i (a label t[n], hoisted), else None."""
    deltas = {d for d in body.atoms(sp.KroneckerDelta)
              if any(isinstance(a, sp.Idx) and a.label.name == inner for a in d.args)}
    if len(deltas) != 1:
        return None
    (delta,) = deltas
    a, b = delta.args
    i, at = (a, b) if isinstance(a, sp.Idx) and a.label.name == inner else (b, a)
    if not isinstance(at, sp.Symbol) or isinstance(at, sp.Idx):
        return None
    return delta, i, at


def _nests(m: dict) -> list:
    """The nests a row loop member runs: a merged loop's parts', or its own."""
    return [p["nest"] for p in m["parts"]] if m["mode"] == "merged" else [m["nest"]]


def prefetch_next_row(members: list[dict], var: str, extent: str, shapes, itemsize: int):
    """The first pass over row n streams it in from memory; the passes after it find it in
    cache and compute, while memory would idle.  The first such pass over a row of the same
    length asks, block by block, for the same stretch of row n + 1 of the arrays the first
    pass streams: softmax + CE's exp pass, 32 KB rows, ran 8-10% faster so."""
    def inner(m):
        loops = m["loops"][m["split"]:] if m["mode"] == "scalar_acc" else m["loops"]
        return loops[0] if len(loops) == 1 and m["mode"] in (
            "assign", "update", "scalar_acc", "merged") else None

    if len(members) < 2 or inner(members[0]) is None:
        return
    k, row = inner(members[0])
    rows = sorted({a.base.label.name for n in _nests(members[0]) for e in (n.body, n.init)
                   for a in e.atoms(sp.Indexed)
                   if [str(i) for i in a.indices] == [var, k] and len(shapes.get(
                       a.base.label.name, ())) == 2})
    later = next((m for m in members[1:] if inner(m) and inner(m)[1] == row), None)
    if rows and later is not None:
        line = 64 // itemsize                   # elements in a 64-byte cache line
        later["prefetch"] = dict(
            rows=[f"{a} + ({var} + 1 < {extent} ? {var} + 1 : {var})*{row}" for a in rows],
            step=line, block=16 * line)


def defer_last_pass(g: Group, nests, stores: dict, members: list[dict], build, printer,
                    clauses: list[str], parallel_min: str) -> dict | None:
    """A row loop whose last pass writes an output row, after a row sum over a row of
    the same length (softmax + CE: max, exp-sum, dz), may run that last pass one row late,
    inside the next row's sum: the sum's arithmetic then overlaps the output's streamed
    stores and the next row's reads, which the passes one after the other leave to run
    alone (C harness, 2 threads: 50-56% of the floor as generated, 71-72% so, 72-75% with
    every pass a row apart; layer norm's two passes ran slower apart, 56-60% against
    62-70%, which is why only a sum carries the deferred pass).  A summand the sum stores
    for the last pass goes to a per-thread ring of two rows, this row's and the last
    one's, not the output's row: the output is then written once, streamed.

    Returns what the template needs, or None: `before` (the members before the sum, as
    they are), `first` (the sum alone, for a thread's first row), `both` (the sum and the
    last pass of the row before, one merged loop), `between` (members between, loopless),
    `last` (the last pass alone, for a thread's last row), `ring`, `row` (the row's
    length), the parallel region's pragma and its loop's.  mark_streams keeps it only
    where the output is one nobody reads (codegen/streaming.py, _deferred_streams)."""
    if len(members) < 2:
        return None
    last = members[-1]
    looped = [k for k, m in enumerate(members[:-1]) if m["loops"]]
    if last["mode"] != "assign" or len(last["loops"]) != 1 or not looped:
        return None
    f = looped[-1]
    first = members[f]
    n = last["nest"]
    if first["mode"] != "scalar_acc" or first["op"] != "sum" or first["split"] != 0 \
            or len(first["loops"]) != 1 or first.get("chains") \
            or first["loops"][0][1] != last["loops"][0][1] \
            or n.bounds or n.subs or n.copies or any(last.get(k) for k in (
                "gemm", "im2col", "batched", "step")):
        return None
    # only a sum that computes vector math has arithmetic to overlap with the traffic
    if not own_functions_in([first["nest"].body]) - CHEAP:
        return None
    between = members[f + 1:-1]
    if any(m["loops"] or n.target in {a.base.label.name for x in _nests(m)
                                      for e in (x.body, x.init) for a in e.atoms(sp.Indexed)}
           for m in between):
        return None
    s = next((k for k, x in enumerate(nests) if x is first["nest"]), None)
    if s is None:
        return None
    row_index, i = g.index, n.loops[-1]
    k = first["nest"].loops[-1]
    ring = s in stores
    if ring and stores[s].base.label.name != n.target:
        return None
    prev = sp.Idx(f"bp_{row_index.label.name}_prev", (row_index.lower, row_index.upper))
    body = n.body
    if ring:                     # the summand the sum stored, read from the ring's row
        body = body.xreplace({sp.IndexedBase(n.target)[row_index, i]:
                              sp.IndexedBase("bp_row_prev")[i]})
        if body.has(sp.IndexedBase(n.target)):
            return None
        for name in ("bp_row", "bp_row_prev"):      # one row each, for the printer
            printer.shapes[name] = (str(dim_of(k)),)
    rename = {row_index: prev, i: k}
    late = Nest(n.kind, n.target, tuple(x.xreplace(rename) for x in n.out),
                tuple(x.xreplace(rename) for x in n.loops), n.reduced,
                body.xreplace(rename), n.op, n.comment, n.init.xreplace(rename))
    late_view = build(late)
    sum_view = dict(first, store=printer._print(sp.IndexedBase("bp_row")[k])) if ring \
        else first
    both = dict(mode="merged", parts=[sum_view, late_view], loops=sum_view["loops"],
                comment="; ".join(x for x in (first["comment"], last["comment"]) if x),
                simd=f"#pragma omp simd reduction(+:{first['acc']})")
    ahead = first.get("prefetch") or last.get("prefetch")
    if ahead:                          # the next row's lines, block by block
        both["prefetch"] = ahead
    work = "*".join(str(dim_of(x)) for x in n.loops)
    # (the last pass alone, for a thread's last row, stays unstreamed: one row a thread,
    # and its one-hot element stored after the loop, which the streamed form has not)
    return dict(before=members[:f], first=sum_view, both=both, between=between,
                last=dict(late_view), ring=ring, row=first["loops"][0][1],
                prev=prev.label.name,
                parallel=f"#pragma omp parallel if ({work} >= {parallel_min})",
                loop=" ".join(["#pragma omp for schedule(static)"] + clauses))
