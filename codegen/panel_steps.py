"""A recurrence's step GEMM whose B operand is the same at every step, packed once.

An LSTM's step multiplies the previous hidden state (N x H, new at each step) by the
recurrent weight W_hh^T (H x 4H, the same at every step).  A BLAS packs op(B) into its own
panel layout on every call; with the 32 rows of a typical batch, packing 4 MB of weights
costs about as much as the product (OpenBLAS ran the LSTM's steps at 96 GFLOP/s on two
Xeon cores, the same product on panels packed once at 230).  Here op(B) is packed once,
before the loop over t, into panels of columns (each panel's K rows contiguous), and every
step runs the toolkit's own panel GEMM on them (templates/c_panel_gemm.c.j2).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sympy as sp

from .batched_gemm import Block
from .loops import Temp

# The scratch holds op(B)'s columns rounded up to a whole number of the widest panel
# (64 floats: four AVX-512 vectors); bp_panel_cols in the generated C says the same.
PANEL_COLS = 64


@dataclass(frozen=True)
class Panels:
    """op(B) of a step's GEMM, packed into the scratch array `name` before the scan."""
    name: str
    block: Block            # B as the GEMM reads it: array, transposed, leading dim, offset
    k: sp.Expr              # op(B)'s rows
    n: sp.Expr              # op(B)'s columns


def with_panels(scan):
    """The scan (codegen/scan.Scan) with each member's step GEMM on panels where its op(B)
    is one block of an array no member writes, and the scratch those panels take."""
    written = {n.target for n in scan.items}
    found, items = {}, []
    for n in scan.items:
        s = n.step
        if s is None or s.gemm.loops or s.gemm.b.name in {v.name for v in s.views} \
                or s.gemm.b.name in written:
            items.append(n)
            continue
        key = (s.gemm.b, s.gemm.k, s.gemm.n)
        if key not in found:
            found[key] = Panels(f"_{s.gemm.b.name}_panels{len(found)}", *key)
        items.append(dataclasses.replace(n, step=dataclasses.replace(s, panels=found[key])))
    temps = [Temp(p.name, (sp.Idx("bp_row", p.k), sp.Idx("bp_col", sp.Symbol(
        f"bp_panel_cols({sp.ccode(p.n)})", integer=True, positive=True))))
        for p in found.values()]
    return dataclasses.replace(scan, items=tuple(items)), temps
