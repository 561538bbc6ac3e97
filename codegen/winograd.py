"""A 3x3 window at stride 1 as Winograd's F(2x2, 3x3): 16 GEMMs, 2.25x fewer multiply-adds.

A convolution lowered onto the GEMM hook (codegen/im2col) multiplies, per image, A (M x K)
by its packed windows (K x N), K = channels x 3 x 3.  Where B's two shifted subscripts are
u + v + c or u - v + c (an output position u, a window offset v of extent 3, c free of
indices: stride 1, dilation 1, any padding), and A is read at plain indices only (the
transforms read it in place, without a pack's guards), the same sums come from 2 x 2
output tiles:

    Y = A^T [ (G g G^T) . (B^T d B) ] A        (Lavin and Gray, 2016)

g the 3x3 window of A for one (m, channel), d the 4x4 input patch of one tile and channel;
the 16 products of the transformed values, summed over channels, are 16 GEMMs
U_xi (M x C) @ V_xi (C x tiles): 2 * 16 * M * C * tiles multiply-adds against the direct
2 * 9 * M * C * 4 * tiles, 2.25x fewer.  A window read u - v (a convolution's dx, whose
window runs backwards) is the forward one with the window flipped: `g[a][b] = A(2 - a, ..)`.

A sum over the images and positions u of a plain A (dy[n, o, i, j]) times B read at u + v + c
with v in T's last two axes (a convolution's dw) is F(3x3, 2x2), the same algorithm with
the roles of output and window swapped: per (o, c) the 3x3 result is G^T M G, M the sum over
images and tiles of (A t A^T) . (B^T d B), t the 2x2 tile of dy, A (4 x 2) the transpose of
the forward's A^T; the sum over tiles is again 16 GEMMs, M x tiles by tiles x C, added up
in each thread's own part.

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


@dataclass(frozen=True)
class Winograd:
    rows: tuple                  # (u1, u2): the positions tiled (T's last axes; dw: summed)
    windows: tuple               # (v1, v2): their window offsets, each of extent 3
    channels: tuple              # the summed indices other than the window (C)
    patch: sp.Expr               # B's read at position (r, s) of the padded input plane
    plane: tuple                 # (r, s): the plane's indices, from 0
    weight: sp.Expr | None       # A's element at window position (bp_wa, bp_wb), flipped as read
    tile: sp.Expr | None = None  # weights' form: A's read at (r, s) of its own plane, 0 past it
    tile_plane: tuple = ()       # (r, s) of that plane


def _plane():
    return tuple(sp.Idx(f"bp_w{x}", sp.Symbol(f"bp_wp{x}", integer=True, positive=True))
                 for x in "rs")


def _patch(B, at, shifts, shapes):
    """B read at the plane's position, zero where the read leaves B."""
    guards = [between(sp.expand(slot.xreplace(at)), 0, d - 1)
              for slot, d in zip(B.indices, _dims(B, shapes)) if slot in shifts]
    return sp.Mul(*guards) * B.xreplace(at)


def _shifted_by_window(B, u, candidates, windows):
    """(the slot, v, sign) where B reads u at u +- v + c, v one of `candidates` with a window
    dimension, c free of indices; None otherwise."""
    slots = [s for s in B.indices if u in free_indices(s)]
    if len(slots) != 1 or isinstance(slots[0], sp.Idx):
        return None
    slot = sp.expand(slots[0])
    rest = sp.expand(slot - u)
    vs = list(free_indices(rest))
    if len(vs) != 1 or vs[0] not in candidates or str(dim_of(vs[0])) not in windows:
        return None
    sign = rest.coeff(vs[0])
    if sign not in (1, -1) or free_indices(sp.expand(rest - sign * vs[0])):
        return None
    return slots[0], vs[0], int(sign)


def _only_shifted_by(B, shifts, wins) -> bool:
    """B's other reads plain, the window offsets nowhere else."""
    others = [s for s in B.indices if s not in shifts]
    return all(isinstance(s, sp.Idx) for s in others) and \
        not any(v in free_indices(s) for s in others for v in wins)


def as_winograd(nest: Nest, g: Im2col | None, shapes: dict,
                windows=frozenset()) -> Winograd | None:
    """The Winograd form of `nest`'s GEMMs `g`, or None: one GEMM per image writing its own
    block of T, two output positions each read at one shifted subscript u +- v + c of B
    with v a window offset that A reads as a plain index; or the weights' form (a sum
    over the images into T's window axes)."""
    if g is None or g.loop is None:
        return None
    found = operands(nest)
    if found is None:
        return None
    A, B, _ = found
    if not all(isinstance(i, sp.Idx) for i in A.indices):
        return None        # A read in place by the transforms: no read of it may leave it
    if g.loop not in nest.out:
        return _weights_form(nest, g, A, B, shapes, windows)
    if len(g.n) != 2:
        return None
    plain_a = [i for i in A.indices if isinstance(i, sp.Idx)]
    shifts, wins, signs = [], [], []
    for u in g.n:
        found = _shifted_by_window(B, u, [k for k in g.k if k in plain_a], windows)
        if found is None:
            return None
        shifts.append(found[0])
        wins.append(found[1])
        signs.append(found[2])
    if len(set(wins)) != 2 or not _only_shifted_by(B, shifts, wins):
        return None
    channels = tuple(k for k in g.k if k not in wins)
    # the plane: position r of the input that output u = r reads at offset 0 of the window
    # (u + v: v = 0; u - v: v = 2, the flipped window's first tap)
    r, s = _plane()
    at = {g.n[0]: r, g.n[1]: s}
    at.update({v: (0 if sg > 0 else TAPS - 1) for v, sg in zip(wins, signs)})
    a, b = sp.symbols("bp_wa bp_wb", integer=True, nonnegative=True)
    taps = {wins[0]: a if signs[0] > 0 else TAPS - 1 - a,
            wins[1]: b if signs[1] > 0 else TAPS - 1 - b}
    return Winograd(tuple(g.n), tuple(wins), channels, _patch(B, at, shifts, shapes),
                    (r, s), A.xreplace(taps))


def _weights_form(nest, g, A, B, shapes, windows) -> Winograd | None:
    """F(3x3, 2x2) of a sum over the images (dw[o, c, p, q] = sum dy[n, o, i, j]
    x[n, c, i + p - P, j + q - P]): the two summed positions read plainly by A and at
    u + v + c by B, v T's last two axes (its window), in that order."""
    if len(g.k) != 2 or len(g.n) < 2:
        return None
    plain_a = [i for i in A.indices if isinstance(i, sp.Idx)]
    shifts, wins = [], []
    for u in g.k:
        found = _shifted_by_window(B, u, g.n, windows)
        if u not in plain_a or found is None or found[2] != 1:
            return None
        shifts.append(found[0])
        wins.append(found[1])
    if tuple(wins) != tuple(g.n[-2:]) or not _only_shifted_by(B, shifts, wins):
        return None
    r, s = _plane()
    at = {g.k[0]: r, g.k[1]: s, wins[0]: 0, wins[1]: 0}
    tr, ts = (sp.Idx(f"bp_wt{x}", sp.Symbol(f"bp_wq{x}", integer=True, positive=True))
              for x in "rs")
    tile = between(tr, 0, dim_of(g.k[0]) - 1) * between(ts, 0, dim_of(g.k[1]) - 1) * \
        A.xreplace({g.k[0]: tr, g.k[1]: ts})
    return Winograd(tuple(g.k), tuple(wins), tuple(g.n[:-2]), _patch(B, at, shifts, shapes),
                    (r, s), None, tile, (tr, ts))
