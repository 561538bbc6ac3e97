"""Contractions of arrays with more than two axes as loops of GEMMs (batched GEMMs).

    T[.., m, .., n] = init + alpha * sum_{k, r..} A(.., m, .., k, ..) * B(.., k, .., n, ..)

Attention's scores s[b, h, t, u] = sum_e q[b, h, t, e] k[b, h, u, e], its context, its
projections (q[b, h, t, e] = sum_d Wq[h, e, d] x[b, t, d]) and their gradients are each,
for fixed values of the remaining indices (the loops: b and h, or a summed h), one matrix
product of strided 2-D blocks: T_l (M x N) += alpha op(A_l) op(B_l).  n is T's last axis
and m another of T's indices, k an index both operands sum over; every other index is a
loop, over an output index (a new block of T) or a summed one held by both operands (the
products accumulate into T).  Each operand's block must have one of its two indices as its
last axis (stride 1); the other's stride is the block's leading dimension.  T is filled
with init (or zeros) first and every product accumulates (beta = 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive.indices import dim_of

from .loops import Nest


@dataclass(frozen=True)
class Block:
    """One array's 2-D block: its name, whether it is stored transposed (op = ^T), its
    leading dimension and its element offset for given loop values (C expressions in
    dimension names and loop indices: T*T, never a power)."""
    name: str
    transposed: bool
    ld: str
    offset: str


@dataclass(frozen=True)
class BatchedGemm:
    loops: tuple            # (index, extent) outermost first: output indices, then summed
    parallel: int           # how many of the loops are output indices (blocks of T apart)
    m: sp.Expr
    n: sp.Expr
    k: sp.Expr
    a: Block
    b: Block
    c: Block
    alpha: sp.Expr


def _strides(ref, shapes):
    """index -> stride (in elements, as C) of ref's axis holding it."""
    dims = shapes[ref.base.label.name]
    return {i: "*".join(dims[pos + 1:]) or "1" for pos, i in enumerate(ref.indices)}


def _fixed(i) -> bool:
    """A subscript that is one position for the whole product (h[T - 1, n, j], da[0, ..])."""
    return not isinstance(i, sp.Idx) and not i.atoms(sp.Idx)


def _block(ref, rows, cols, loops, shapes):
    """ref as a rows x cols matrix for fixed loop values, or None.  transposed: stored
    cols x rows (rows is its last axis)."""
    held = [i for i in ref.indices if not _fixed(i)]
    if set(held) - set(loops) != {rows, cols}:
        return None
    stride = _strides(ref, shapes)
    fixed = [f"({sp.ccode(i)})*{stride[i]}" for i in ref.indices if _fixed(i) and i != 0]
    last = held[-1]
    if last == cols:
        transposed, ld = False, stride[rows]
    elif last == rows:
        transposed, ld = True, stride[cols]
    else:
        return None
    offset = " + ".join(fixed + [f"{i}*{stride[i]}" for i in held if i in loops])
    return Block(ref.base.label.name, transposed, ld, offset)


def as_batched_gemm(nest: Nest, shapes: dict, plain: bool = False) -> BatchedGemm | None:
    """The batched-GEMM form of a reduce nest, or None.  `shapes`: every array's
    dimension names (targets and temporaries included).  plain: one GEMM without loops is
    a form too (codegen/gemm.py's otherwise)."""
    if nest.kind != "reduce" or nest.op != "sum" or nest.bounds or len(nest.out) < 2 \
            or nest.subs or nest.copies:
        return None
    factors = sp.Mul.make_args(nest.body)
    arrays = [f for f in factors if isinstance(f, sp.Indexed)]
    rest = [f for f in factors if not isinstance(f, sp.Indexed)]
    if len(arrays) != 2 or any(f.atoms(sp.Indexed) or f.atoms(sp.Idx) for f in rest):
        return None
    if any(not all(isinstance(i, sp.Idx) or _fixed(i) for i in a.indices)
           or len(set(a.indices)) != len(a.indices) or a.base.label.name not in shapes
           for a in arrays) \
            or nest.target not in shapes:
        return None
    out, reduced = list(nest.out), list(nest.reduced)
    n = out[-1]
    holders = [a for a in arrays if n in a.indices]
    if len(holders) != 1:
        return None
    B = holders[0]
    A = arrays[1] if arrays[0] is B else arrays[0]
    # m nearest n in T first; k preferably A's last axis
    ms = [i for i in reversed(out[:-1]) if i in A.indices and i not in B.indices]
    ks = sorted((i for i in reduced if i in A.indices and i in B.indices),
                key=lambda i: (i != A.indices[-1], -list(A.indices).index(i)))
    target = sp.IndexedBase(nest.target)[tuple(out)]
    for m in ms:
        for k in ks:
            loops = [i for i in out + reduced if i not in (m, n, k)]
            if not loops and not plain:   # one plain GEMM: codegen/gemm.py's
                return None
            if any(i not in A.indices and i not in B.indices for i in loops) or any(
                    not (i in A.indices and i in B.indices) for i in loops if i in reduced):
                continue
            blocks = (_block(A, m, k, loops, shapes), _block(B, k, n, loops, shapes),
                      _block(target, m, n, loops, shapes))
            if None in blocks or blocks[2].transposed:
                continue
            a, b, c = blocks
            return BatchedGemm(tuple((i, dim_of(i)) for i in loops),
                               sum(1 for i in loops if i in out), dim_of(m), dim_of(n),
                               dim_of(k), a, b, c, sp.Mul(*rest))
    return None
