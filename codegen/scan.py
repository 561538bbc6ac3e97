"""Recurrences in kernels: the statements (or loop nests) that read their own earlier
steps run as one loop over time, in order.

A recurrence h[t] = f(h[t - 1], x[t]) and its adjoint dz[t] = g(dz[t + 1], dh[t]) cannot
be computed for all t at once: each step needs the one before (after, in the backward
pass).  Here every item of a kernel (a plan statement for NumPy, a loop nest for C) that
reads another item's target at a shifted time step is found, and the strongly connected
components of "reads" among them become scans: one loop over t, forward when the reads
look back (t - 1), backward when they look ahead (t + 1), running the component's items
at that t in their same-step order.  Everything else stays a whole-array item before or
after (the input projection W x[t] of every step, dW = sum over t, ...), so a kernel
does per step only what must be done per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive.affine import between
from derive.indices import dim_of


@dataclass(frozen=True)
class Scan:
    """Items run in order at each t of `index`'s range (reverse: from the last step)."""
    index: sp.Idx
    reverse: bool
    items: tuple


def time_dims(layer) -> set[str]:
    """The time axes: the first axis of every tensor declared with an initial state."""
    return {t.dims[0] for t in layer.tensors.values() if t.initial}


def schedule(items, target, reads, shapes: dict, times: set[str]) -> list:
    """items (each writing the array target(item) and reading the Indexed set
    reads(item)) in an order that respects every read, with each recurrent component
    grouped into a Scan.  shapes: array name -> its dimension names."""
    items = list(items)
    if not times:
        return items
    writer = {target(it): k for k, it in enumerate(items)}
    clock = [_time_index(it, target, shapes, times) for it in items]
    edges = []                 # (reader, writer, shift or None)
    for k, it in enumerate(items):
        for r in reads(it):
            w = writer.get(r.base.label.name)
            if w is None or w == k and not _shift(r, clock[k], shapes, times):
                continue
            edges.append((k, w, _shift(r, clock[k], shapes, times)))
    comp = _components(len(items), [(a, b) for a, b, _ in edges])
    groups: dict[int, list[int]] = {}
    for k in range(len(items)):
        groups.setdefault(comp[k], []).append(k)
    recurrent = {c for c, members in groups.items()
                 if any(comp[a] == comp[b] == c and s for a, b, s in edges)}
    order = _topological(groups, edges, comp)
    out = []
    for c in order:
        members = groups[c]
        if c not in recurrent:
            out += [items[k] for k in members]
            continue
        inner = [(a, b) for a, b, s in edges if comp[a] == comp[b] == c and s == 0 and a != b]
        ordered = _topological({k: [k] for k in members},
                               [(a, b, 0) for a, b in inner], {k: k for k in members})
        shifts = {s for a, b, s in edges if comp[a] == comp[b] == c and s}
        if any(clock[k] is None for k in members) or None in shifts \
                or len({s > 0 for s in shifts}) > 1:
            names = ", ".join(target(items[k]) for k in members)
            raise ValueError(f"{names} read each other's steps both before and after, or "
                             f"over all steps: they cannot run as one loop over time")
        first = clock[members[0]]
        out.append(Scan(first, reverse=next(iter(shifts)) > 0,
                        items=tuple(_on_clock(items[k], clock[k], first) for k in ordered)))
    return out


def _time_index(item, target, shapes, times):
    """The item's own index over a time axis: the one in its target's time slot."""
    dims = shapes.get(target(item), ())
    if not dims or dims[0] not in times:
        return None
    own = getattr(item, "indices", None) or getattr(item, "out", ())
    return own[0] if own and isinstance(own[0], sp.Idx) else None


def _shift(read, t, shapes, times):
    """c when read's time slot is t + c (0: this step); None for any other subscript
    (a fixed step, or a sum over all steps: the whole history)."""
    dims = shapes.get(read.base.label.name, ())
    if t is None or not dims or dims[0] not in times or not read.indices:
        return None
    c = sp.expand(read.indices[0] - t)
    return int(c) if c.is_Integer else None


def _on_clock(item, own, common):
    """item with its time index renamed to the scan's (several equations may call it t,
    s, ...: one loop runs them all)."""
    if own == common:
        return item
    return _rename(item, {own: common})


def _rename(item, sub):
    from dataclasses import fields, replace
    changes = {}
    for f in fields(item):
        v = getattr(item, f.name)
        if isinstance(v, sp.Basic):
            changes[f.name] = v.xreplace(sub)
        elif isinstance(v, tuple) and v and all(isinstance(x, sp.Basic) for x in v):
            changes[f.name] = tuple(x.xreplace(sub) for x in v)
        elif isinstance(v, tuple) and v and all(isinstance(x, tuple) for x in v):
            changes[f.name] = tuple(tuple(y.xreplace(sub) if isinstance(y, sp.Basic) else y
                                          for y in x) for x in v)
    return replace(item, **changes)


def _components(n, edges):
    """Strongly connected components (Tarjan): item -> component id."""
    succ = [[] for _ in range(n)]
    for a, b in edges:
        succ[a].append(b)
    index, low, on, stack, comp = {}, {}, set(), [], {}
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            while True:
                w = stack.pop()
                on.discard(w)
                comp[w] = v
                if w == v:
                    break

    for v in range(n):
        if v not in index:
            visit(v)
    return comp


def _topological(groups, edges, comp):
    """Component ids, each after those it reads from, otherwise in the order of their
    first item (a stable order: the kernels follow the spec where they can)."""
    deps = {c: set() for c in groups}
    for a, b, _ in edges:
        if comp[a] != comp[b]:
            deps[comp[a]].add(comp[b])
    done, order = set(), []
    pending = sorted(groups, key=lambda c: min(groups[c]))
    while pending:
        ready = next(c for c in pending if deps[c] <= done)
        pending.remove(ready)
        done.add(ready)
        order.append(ready)
    return order


def guard_steps(expr, times: set[str]):
    """A step bracket multiplying a sum, [t + 1 <= T - 1] sum_k W[k, j] dz[t + 1, n, k],
    moved inside the sum: kernels compute a sum apart (a temporary over t, n, j) and
    evaluate a bracket before the reads it multiplies, so inside, the step after the last
    is never read."""
    if not times or not expr.has(between):
        return expr

    def on_time(b):
        return any(str(dim_of(i)) in times for i in b.atoms(sp.Idx))

    def rewrite(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        e = e.func(*[rewrite(a) for a in e.args])
        if not isinstance(e, sp.Mul):
            return e
        brackets = [f for f in e.args if isinstance(f, between) and on_time(f)]
        sums = [f for f in e.args if isinstance(f, sp.Sum)]
        if not brackets or len(sums) != 1:
            return e
        rest = [f for f in e.args if f not in brackets and f is not sums[0]]
        inner = sp.Sum(sums[0].function * sp.Mul(*brackets), *sums[0].limits)
        return sp.Mul(*rest) * inner

    return rewrite(expr)
