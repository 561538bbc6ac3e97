"""A 3x3 window at stride 1 as Winograd's F(2x2, 3x3): 16 GEMMs of a quarter of the size.

A convolution lowered onto the GEMM hook (codegen/im2col) multiplies, per image, A (M x K)
by its packed windows (K x N), K = channels x 3 x 3.  Where B's two shifted subscripts are
u + v + c or u - v + c (an output position u, a window offset v of extent 3, c free of
indices: stride 1, dilation 1, any padding) the same sums come from 2 x 2 output tiles:

    Y = A^T [ (G g G^T) . (B^T d B) ] A        (Lavin and Gray, 2016)

g the 3x3 window of A for one (m, channel), d the 4x4 input patch of one tile and channel;
the 16 products of the transformed values, summed over channels, are 16 GEMMs
U_xi (M x C) @ V_xi (C x tiles): 2 * 16 * M * C * tiles multiply-adds against the direct
2 * 9 * M * C * 4 * tiles, 2.25x fewer.  A window read u - v (a convolution's dx, whose
window runs backwards) is the forward one with the window flipped: g[a][b] = A(2 - a, ..).

Run-time sizes decide in the C: the window must be 3 x 3 (KH, KW are sizes passed at the
call), else the im2col GEMM runs as before.  This module only finds the shape and the
formulas the C needs; the transforms are in templates/c_winograd.c.j2.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive.affine import between
from derive.indices import dim_of, free_indices

from .im2col import Im2col, _dims, operands
from .loops import Nest

TAPS = 3                # the window F(2x2, 3x3) takes
TRANSFORMS = 16         # the 4 x 4 transformed products


@dataclass(frozen=True)
class Winograd:
    rows: tuple                  # (u1, u2): the output positions, T's last two axes
    windows: tuple               # (v1, v2): their window offsets, each of extent 3
    channels: tuple              # the summed indices other than the window (C)
    patch: sp.Expr               # B's read at position (r, s) of the padded input plane
    plane: tuple                 # (r, s): the plane's indices, from 0
    weight: sp.Expr              # A's element at window position (a, b), flipped as read
    taps: tuple                  # (a, b): the window position symbols in `weight`


def as_winograd(nest: Nest, g: Im2col | None, shapes: dict,
                windows=frozenset()) -> Winograd | None:
    """The Winograd form of `nest`'s GEMMs `g`, or None: one GEMM per image writing its own
    block of T (not a sum over images, dw), two output positions each read at one shifted
    subscript u +- v + c of B with v a window offset that A reads as a plain index."""
    if g is None or g.loop is None or g.loop not in nest.out or len(g.n) != 2:
        return None
    found = operands(nest)
    if found is None:
        return None
    A, B, _ = found
    plain_a = [i for i in A.indices if isinstance(i, sp.Idx)]
    rows, wins, signs, shifts = [], [], [], []
    for u in g.n:
        slots = [s for s in B.indices if u in free_indices(s)]
        if len(slots) != 1 or isinstance(slots[0], sp.Idx):
            return None
        slot = sp.expand(slots[0])
        rest = sp.expand(slot - u)
        vs = [v for v in free_indices(rest)]
        if len(vs) != 1 or vs[0] not in g.k or str(dim_of(vs[0])) not in windows \
                or vs[0] not in plain_a:
            return None
        v = vs[0]
        sign = rest.coeff(v)
        if sign not in (1, -1) or free_indices(sp.expand(rest - sign * v)):
            return None
        rows.append(u)
        wins.append(v)
        signs.append(int(sign))
        shifts.append(slot)
    if len(set(wins)) != 2 or tuple(rows) != tuple(g.n):
        return None
    channels = tuple(k for k in g.k if k not in wins)
    if any(not isinstance(s, sp.Idx) for s in B.indices if s not in shifts):
        return None                        # every other read of B plain (n, c)
    if any(v in free_indices(s) for s in B.indices for v in wins if s not in shifts):
        return None
    # the plane: position r of the input that output u = r reads at offset 0 of the window
    # (u + v: v = 0; u - v: v = 2, the flipped window's first tap)
    r, s = (sp.Idx(f"bp_w{x}", sp.Symbol(f"bp_wp{x}", integer=True, positive=True))
            for x in "rs")
    at = {rows[0]: r, rows[1]: s}
    at.update({v: (0 if sg > 0 else TAPS - 1) for v, sg in zip(wins, signs)})
    guards = [between(sp.expand(slot.xreplace(at)), 0, d - 1)
              for slot, d in zip(B.indices, _dims(B, shapes)) if slot in shifts]
    patch = sp.Mul(*guards) * B.xreplace(at)
    a, b = sp.symbols("bp_wa bp_wb", integer=True, nonnegative=True)
    taps = {wins[0]: a if signs[0] > 0 else TAPS - 1 - a,
            wins[1]: b if signs[1] > 0 else TAPS - 1 - b}
    return Winograd(tuple(rows), tuple(wins), channels, patch, (r, s),
                    A.xreplace(taps), (a, b))
