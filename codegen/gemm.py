"""Recognize loop nests that are matrix products, so C can hand them to a BLAS GEMM.

A contraction over one index of two 2-D arrays into a 2-D target,

    T[p, q] = init[p, q] + alpha * sum_k A(p, k) * B(k, q)

where A and B each hold one output index and the summed index in either axis order and
alpha is free of indices, is C = alpha * op(A) op(B) + beta * C in row-major BLAS terms:
init is written into T first and the product accumulated with beta = 1 (beta = 0 when
there is no init).  Contractions that large are compute-bound and hand loops reach about a
tenth of a tuned GEMM, so the generated C calls one when the caller supplies it.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive.indices import dim_of

from .loops import Nest


@dataclass(frozen=True)
class Gemm:
    a: str
    b: str
    trans_a: bool
    trans_b: bool
    m: str                 # extents as dimension names: T is m x n, the sum runs over k
    n: str
    k: str
    lda: str
    ldb: str
    ldc: str
    alpha: sp.Expr


def as_gemm(nest: Nest) -> Gemm | None:
    if nest.kind != "reduce" or nest.op != "sum" or len(nest.out) != 2 \
            or len(nest.reduced) != 1 or nest.bounds:
        return None
    p, q = nest.out
    (k,) = nest.reduced
    factors = sp.Mul.make_args(nest.body)
    arrays = [f for f in factors if isinstance(f, sp.Indexed)]
    rest = [f for f in factors if not isinstance(f, sp.Indexed)]
    if len(arrays) != 2 or any(f.atoms(sp.Indexed) or f.atoms(sp.Idx) for f in rest):
        return None
    if any(len(a.indices) != 2 or not all(isinstance(i, sp.Idx) for i in a.indices)
           for a in arrays):
        return None
    by_out = {}
    for a in arrays:
        held = set(a.indices)
        if held == {p, k}:
            by_out.setdefault("a", a)
        elif held == {k, q}:
            by_out.setdefault("b", a)
    if set(by_out) != {"a", "b"}:
        return None
    a, b = by_out["a"], by_out["b"]
    trans_a = a.indices[0] == k           # stored k x m: op(A) = A^T
    trans_b = b.indices[0] == q           # stored n x k: op(B) = B^T
    dim = lambda i: str(dim_of(i))
    return Gemm(a=a.base.label.name, b=b.base.label.name, trans_a=trans_a, trans_b=trans_b,
                m=dim(p), n=dim(q), k=dim(k), lda=dim(a.indices[1]), ldb=dim(b.indices[1]),
                ldc=dim(q), alpha=sp.Mul(*rest))
