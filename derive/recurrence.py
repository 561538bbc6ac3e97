"""Recurrences: a tensor over a time axis that reads its own earlier steps.

    input  h0[N, H]
    output h[T, N, H]
    initial h = h0
    h[t, n, j] = tanh(W[j, k] * h[t - 1, n, k] + U[j, i] * x[t, n, i] + b[j])

The first axis of a recurrent tensor is time.  A read h[t - d, ...] (d >= 1, t the reading
equation's own index over that axis) is a read of an earlier step; before step 0 it reads
the initial state: h0[n, k] stands for h[-1, n, k], and an initial state with a leading
axis of size D (a dimension defined as an integer, `dims D2 = 2`) holds the D steps
before 0, h0[p, ...] standing for h[p - D, ...].  The parser writes each such read as the
two guarded reads it is,

    h[t - d, n, k] [0 <= t - d <= T - 1]  +  h0[n, k] [t - d = -1]

so the derivation, the oracles and the kernels need nothing else: the first read's adjoint
is the carry of backpropagation through time, dh[t] += ... dz[t + d] over t <= T - 1 - d
(a gather with exact bounds, derive.affine), the second gives dh0 from step d - 1.

Equations are ordered by their same-step reads only (an earlier step is computed by then);
the kernels run the equations that read their own earlier steps as one loop over t
(codegen/scan.py), forward in the forward pass and backward in the backward pass.
"""
from __future__ import annotations

import sympy as sp

from .affine import between, terms
from .spec import Tensor, dim_symbol


def depth(h: Tensor, h0: Tensor, dim_defs: dict) -> int | None:
    """How many steps before 0 the initial state h0 holds: 1 when its axes are h's
    without time, D when it has a leading axis whose size is the integer D; None when
    its shape fits neither."""
    if h0.dims == h.dims[1:]:
        return 1
    if len(h0.dims) == len(h.dims) and h0.dims[1:] == h.dims[1:]:
        size = dim_defs.get(h0.dims[0])
        if size is not None and size.is_Integer and size >= 1:
            return int(size)
    return None


def step_back(subscript, own: tuple[sp.Idx, ...]):
    """(t, d) when the time subscript is t - d with t one of the equation's own indices
    over the same axis and d an integer (d >= 1: an earlier step; 0: this step; below 0:
    a later one); None when it is anything else (a constant such as T - 1, or a sum's
    index)."""
    parts = terms(subscript)
    if parts is None:
        return None
    coeffs, const = parts
    if len(coeffs) != 1:
        return None
    (t, c), = coeffs.items()
    if c != 1 or t not in own or not const.is_Integer:
        return None
    return t, int(-const)


def guarded_read(read: sp.Indexed, t: sp.Idx, d: int, h0: Tensor, steps: int):
    """h[t - d, rest] as the read of h where t - d is a step, plus the read of the
    initial state where it is one of the `steps` before 0."""
    rest = read.indices[1:]
    time = dim_symbol(str(t.upper + 1))
    inside = read * between(t - d, 0, time - 1)
    # brackets, not Kronecker deltas: a kernel evaluates a bracket before the reads it
    # multiplies (the backward pass at step t must not read dc[0], not computed yet)
    if steps == 1 and len(h0.dims) == len(rest):
        return inside + h0.ref(*rest) * between(t - d, -1, -1)
    return inside + h0.ref(t - d + steps, *rest) * between(t - d, -steps, -1)
