"""Adjacent axes of a contraction read as one axis, so it is one GEMM and not a loop of them.

An LSTM's input projection of every step, s[t, n, g, j] = sum_i x[t, n, i] W[g, j, i],
holds (t, n) next to each other in s and in x, and (g, j) in s and in W.  In row-major
memory each such pair is one axis, of extent T*N (4*H), so the whole projection is one
(T N) x (4 H) x I GEMM where the index-by-index form is a loop of 4 T small ones (and dW,
dx, the recurrent product of a step over all four gates alike).  A pair (p, q) merges when
every array holding either index holds both, p just before q, and both are outputs or
both are summed; merging repeats while some pair does.
"""
from __future__ import annotations

import dataclasses

import sympy as sp

from derive.indices import dim_of

from .batched_gemm import BatchedGemm, as_batched_gemm
from .loops import Nest


def fewest_gemm_calls(nest: Nest, shapes: dict, plain: bool = False) -> BatchedGemm | None:
    """nest as a loop of GEMMs on blocks (plain: or as one GEMM), as it stands or with its
    adjacent axes merged: the form with fewer loops (the unmerged one of equals)."""
    forms = [f for f in (as_batched_gemm(nest, shapes, plain=plain),
                         as_fused_gemm(nest, shapes)) if f is not None]
    return min(forms, key=lambda f: len(f.loops)) if forms else None


def as_fused_gemm(nest: Nest, shapes: dict) -> BatchedGemm | None:
    """nest as one GEMM or a loop of GEMMs once its adjacent axes are merged; None when
    no pair merges (the unmerged forms are codegen/gemm.py's and batched_gemm's)."""
    merged = fused(nest, shapes)
    return None if merged is None else as_batched_gemm(*merged, plain=True)


def fused(nest: Nest, shapes: dict) -> tuple[Nest, dict] | None:
    """(nest with its mergeable index pairs merged, shapes with the merged arrays'
    axes joined: "T*N"), or None when nothing merges."""
    if nest.kind != "reduce" or nest.op != "sum" or nest.subs or nest.copies \
            or not nest.out:
        return None
    shifted = bool(nest.bounds)
    nest = _from_zero(nest)
    if nest is None:
        return None
    factors = sp.Mul.make_args(nest.body)
    arrays = [f for f in factors if isinstance(f, sp.Indexed)]
    names = [a.base.label.name for a in arrays] + [nest.target]
    if len(arrays) != 2 or len(set(names)) != 3 or any(n not in shapes for n in names):
        return None
    refs = arrays + [sp.IndexedBase(nest.target)[tuple(nest.out)]]
    dims = {r.base.label.name: [str(d) for d in shapes[r.base.label.name]] for r in refs}
    refs = [_shift_to_pointer(r, dims) for r in refs]
    if None in refs:
        return None
    out, reduced = list(nest.out), list(nest.reduced)
    changed = shifted or any(r.base.label.name not in names for r in refs)
    while (pair := _mergeable(refs, out, reduced, dims)) is not None:
        p, q = pair
        pq = sp.Idx(f"{p.label.name}_{q.label.name}", dim_of(p) * dim_of(q))
        refs = [_merge(r, p, q, pq, dims) for r in refs]
        for role in (out, reduced):
            if p in role:
                role[role.index(p)] = pq
                role.remove(q)
        changed = True
    if not changed:
        return None
    body = sp.Mul(*[f for f in factors if not isinstance(f, sp.Indexed)], *refs[:2])
    loops = tuple(out) + tuple(reduced)
    merged = dataclasses.replace(nest, out=tuple(out), reduced=tuple(reduced), loops=loops,
                                 body=body, bounds=())
    return merged, {**shapes, **{n: tuple(d) for n, d in dims.items()}}


def _from_zero(nest: Nest) -> Nest | None:
    """nest with each summed index that runs over part of its range (lo..hi, fixed
    bounds) replaced by one counted from 0 (i = i' + lo); None when a bound moves."""
    sub = {}
    for i, lo, hi in nest.bounds:
        if lo.atoms(sp.Idx) or hi.atoms(sp.Idx) or i not in nest.reduced:
            return None
        sub[i] = (sp.Idx(f"bp_{i.label.name}_from0", hi - lo + 1), lo)
    if not sub:
        return nest
    swap = lambda seq: tuple(sub[i][0] if i in sub else i for i in seq)
    return dataclasses.replace(nest, body=nest.body.xreplace(
        {i: new + lo for i, (new, lo) in sub.items()}), reduced=swap(nest.reduced),
        loops=swap(nest.loops), bounds=())


def _shift_to_pointer(ref, dims):
    """ref with each subscript i + c (c fixed) read as i in a block c rows on: the
    array's name becomes that pointer, `da + (1)*(N*4*H)`; None for any subscript other
    than an index, a fixed position, or an index plus a fixed shift."""
    name = ref.base.label.name
    axes = dims[name]
    indices, offsets = [], []
    for k, i in enumerate(ref.indices):
        idx = [a for a in i.atoms(sp.Idx)]
        if isinstance(i, sp.Idx) or not idx:
            indices.append(i)
            continue
        shift = i - idx[0]
        if len(idx) != 1 or shift.atoms(sp.Idx):
            return None
        indices.append(idx[0])
        stride = "*".join(axes[k + 1:]) or "1"
        offsets.append(f"({sp.ccode(shift)})*({stride})")
    if not offsets:
        return ref
    pointer = f"{name} + {' + '.join(offsets)}"
    dims[pointer] = list(axes)
    return sp.IndexedBase(pointer)[tuple(indices)]


def _mergeable(refs, out, reduced, dims):
    """The first index pair held next to each other, in order, by every array holding
    either index, both of one role, the second over its whole axis; None when there is
    none."""
    for r in refs:
        for p, q in zip(r.indices, r.indices[1:]):
            if not (isinstance(p, sp.Idx) and isinstance(q, sp.Idx)):
                continue
            if not (p in out and q in out or p in reduced and q in reduced):
                continue
            if all(_adjacent(s, p, q, dims) for s in refs):
                return p, q
    return None


def _adjacent(ref, p, q, dims) -> bool:
    """ref holds neither p nor q, or holds q right after p, q over its whole axis."""
    idx = list(ref.indices)
    if p not in idx and q not in idx:
        return True
    return p in idx and q in idx and idx.index(q) == idx.index(p) + 1 and \
        dims[ref.base.label.name][idx.index(q)] == str(dim_of(q))


def _merge(ref, p, q, pq, dims):
    """ref with (p, q) read as pq; its axes joined in dims."""
    idx = list(ref.indices)
    if p not in idx:
        return ref
    k = idx.index(p)
    axes = dims[ref.base.label.name]
    axes[k:k + 2] = [f"{axes[k]}*{axes[k + 1]}"]
    return ref.base[tuple(idx[:k] + [pq] + idx[k + 2:])]
