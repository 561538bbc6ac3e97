"""A recurrence's per-step products as GEMMs on blocks that each step points at.

Inside the loop over t (codegen/scan.py), an RNN step's recurrent product reads

    sum_k W[j, k] (h[t - 1, n, k] [0 <= t - 1 <= T - 1] + h0[n, k] [t - 1 = -1])

that is, at each t, one N x H block: h0's at the first step, h's previous slice after it.
Such a read becomes a pointer chosen per step (a view: `t - 1 >= 0 ? h + (t - 1)*N*H :
h0`), every read of the step's own slice (x[t], the target s[t]) a view at t's offset, and
what is left is a plain contraction of views that codegen/batched_gemm (with
codegen/fused_axes) lowers onto the GEMM hook.  A bracket on t alone multiplying the
product ([t + 1 <= T - 1] in the backward pass) decides whether the step runs the GEMM at
all; the target is filled with its start either way.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sympy as sp

from derive.affine import between

from .batched_gemm import BatchedGemm
from .fused_axes import fewest_gemm_calls
from .loops import Nest


@dataclass(frozen=True)
class View:
    """A pointer to a block of one of `cases`' arrays: the first case whose condition
    (s, lo, hi) holds, or any case without one; NULL when none holds."""
    name: str
    cases: tuple               # ((s, lo, hi) | None, array name, offset in elements)
    dims: tuple                # the block's dimension names


@dataclass(frozen=True)
class StepGemm:
    nest: Nest                 # the step's contraction over views
    views: tuple[View, ...]
    guards: tuple              # (s, lo, hi): the product is zero unless each holds
    gemm: BatchedGemm
    panels: object = None      # op(B) packed once before the scan (codegen/panel_steps)


def step_gemm(nest: Nest, t: sp.Idx, shapes: dict) -> StepGemm | None:
    """The GEMM form of a scan member `nest` at the step t of its loop, or None."""
    if nest.kind != "reduce" or nest.op != "sum" or nest.bounds or nest.copies \
            or not nest.out or nest.out[0] != t:
        return None
    views, guards, factors = [], [], []
    for f in sp.Mul.make_args(nest.body):
        if isinstance(f, between) and f.args[0].atoms(sp.Idx) <= {t}:
            guards.append(f.args)
        elif not f.has(t):
            factors.append(f)
        else:
            ref = _view(f, t, shapes, views)
            if ref is None:
                return None
            factors.append(ref)
    target = _view(sp.IndexedBase(nest.target)[tuple(nest.out)], t, shapes, views)
    if target is None:
        return None
    known = {**shapes, **{v.name: v.dims for v in views}}
    stepped = dataclasses.replace(nest, target=target.base.label.name, out=target.indices,
                                  loops=tuple(i for i in nest.loops if i != t),
                                  body=sp.Mul(*factors), init=sp.Integer(0), subs=())
    gemm = fewest_gemm_calls(stepped, known, plain=True)
    if gemm is None:
        return None
    return StepGemm(stepped, tuple(views), tuple(guards), gemm)


def _view(f, t, shapes, views):
    """f (one read, or a sum of guarded reads of the same block) as a read of a new
    view at step t, appended to views; None when f is neither."""
    terms = sp.Add.make_args(f) if isinstance(f, sp.Add) else (f,)
    cases, rest, dims = [], None, None
    for term in terms:
        parts = sp.Mul.make_args(term)
        refs = [p for p in parts if isinstance(p, sp.Indexed)]
        conds = [p for p in parts if isinstance(p, between)]
        if len(refs) != 1 or len(refs) + len(conds) != len(parts) or len(conds) > 1 \
                or len(terms) > 1 and not conds:
            return None
        block = _block(refs[0], t, shapes)
        if block is None:
            return None
        name, offset, indices, axes = block
        if rest is not None and (indices != rest or axes != dims):
            return None
        rest, dims = indices, axes
        cond = conds[0].args if conds else None
        if cond is not None and not cond[0].atoms(sp.Idx) <= {t}:
            return None
        cases.append((cond, name, offset))
    name = f"bp_{cases[0][1]}_step{len(views)}"
    views.append(View(name, tuple(cases), dims))
    return sp.IndexedBase(name)[rest]


def _block(ref, t, shapes):
    """(array, offset of the block at step t, the block's indices, its dimension names)
    for a read whose first subscript alone holds t (h[t - 1, n, k], h0[n, k])."""
    name = ref.base.label.name
    dims = tuple(str(d) for d in shapes.get(name, ()))
    if not dims or any(i.has(t) for i in ref.indices[1:]):
        return None
    first = ref.indices[0]
    if not first.has(t):
        return name, sp.Integer(0), ref.indices, dims
    if not (first.atoms(sp.Idx) <= {t} and sp.degree(first, t) == 1):
        return None
    stride = sp.Mul(*[sp.Symbol(d, integer=True) if not d.isdigit() else sp.Integer(d)
                      for d in dims[1:]])
    return name, first * stride, ref.indices[1:], dims[1:]
