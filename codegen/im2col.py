"""Contractions with a shifted operand as GEMMs: a convolution lowered onto the GEMM hook.

    T[l, m.., s..] = init + alpha * sum_{l?, r..} A(m.., r..) * B(l, r.., s..)

where B reads at affine subscripts (x[n, c, i + p - 1, j + q - 1]) is, for each value of a
loop index l (the batch n: an output axis of T or a summed one), a matrix product
T_l (M x N) += A (M x K) @ col_l (K x N), with M the output indices only A has, N those
only B has and K the summed ones.  col_l packs B's reads into scratch (im2col), zeros where
a read leaves its array; A is used in place when its axes are M then K (or K then M), else
packed too.  A sum whose bounds are exactly where B's reads stay inside its array (a
convolution's dx, sum_{k = max(0, l - Lout + 1)}^{min(K - 1, l)}) is the same full sum with
those reads zero outside, so it lowers the same way.  Scratch stays one batch item large.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive.affine import between, bounds_from, tighten
from derive.indices import dim_of, free_indices

from .loops import Nest


@dataclass(frozen=True)
class Packed:
    """A GEMM operand: an array used in place, or packed into scratch by an elementwise
    nest (run once, or once per loop value when it reads the loop index)."""
    name: str                     # the array the GEMM reads
    transposed: bool
    ld: str                       # its leading dimension
    offset: sp.Expr               # element offset of the loop value's block
    pack: Nest | None = None
    per_loop: bool = False


@dataclass(frozen=True)
class Im2col:
    loop: sp.Idx | None           # the index the GEMMs run over, one after another
    m: tuple                      # the GEMM's M, N, K indices, in the packed orders
    n: tuple
    k: tuple
    a: Packed
    b: Packed
    c_offset: sp.Expr             # where T's block for the loop value starts
    alpha: sp.Expr
    # B used in place where its packed matrix is its own block (a 1x1 window, stride 1, no
    # padding): the sizes that must hold, as (dimension, value) pairs, and B in place
    b_in_place: tuple | None = None


def _extent(indices) -> sp.Expr:
    return sp.Mul(*[dim_of(i) for i in indices])


def _shifted(ref) -> bool:
    return any(not isinstance(i, sp.Idx) for i in ref.indices)


def operands(nest: Nest):
    """(A, B, the scalar factors) of a sum of one product of two arrays, B the one read at
    shifted subscripts (the later one where both are); None otherwise."""
    factors = sp.Mul.make_args(nest.body)
    arrays = [f for f in factors if isinstance(f, sp.Indexed)]
    rest = [f for f in factors if not isinstance(f, sp.Indexed)]
    if len(arrays) != 2 or any(f.atoms(sp.Indexed) or free_indices(f) for f in rest):
        return None
    if any(i.atoms(sp.Indexed) or (isinstance(i, sp.Symbol) and not isinstance(i, sp.Idx))
           for a in arrays for i in a.indices):
        return None                                  # labels: not a GEMM
    shifted = [a for a in arrays if _shifted(a)]
    if not shifted:
        return None
    B = shifted[-1]
    A = arrays[0] if arrays[1] is B else arrays[1]
    return A, B, rest


def as_im2col(nest: Nest, shapes: dict, windows=frozenset()) -> Im2col | None:
    """The GEMM form of `nest`, or None; `shapes`: every array's dimension names;
    `windows`: the parameters' dimensions (kernel sizes)."""
    if nest.kind != "reduce" or nest.op != "sum" or not nest.out:
        return None
    found = operands(nest)
    if found is None:
        return None
    A, B, rest = found
    held_a, held_b = free_indices(A), free_indices(B)
    out, red = list(nest.out), list(nest.reduced)
    # the loop: T's first axis when only B has it, or a summed index both have
    loop = None
    if out[0] in held_b and out[0] not in held_a:
        loop = out[0]
    elif out[0] not in held_b:
        loop = next((r for r in red if r in held_a and r in held_b), None)
    rest_out = [i for i in out if i != loop]
    m = tuple(i for i in rest_out if i in held_a and i not in held_b)
    n = tuple(i for i in rest_out if i in held_b and i not in held_a)
    if not m or not n or len(m) + len(n) != len(rest_out) or tuple(rest_out) != m + n:
        return None                                  # T's block must be M x N
    k_set = [r for r in red if r != loop]
    if not k_set or any(r not in held_a or r not in held_b for r in k_set):
        return None
    # a bounded index must be bounded exactly by where B's reads stay inside
    for kk, lo, hi in nest.bounds:
        if kk not in k_set or (lo, hi) != _read_bounds(B, kk, shapes):
            return None
    # K in the order B's subscripts first name the indices
    k = tuple(sorted(k_set, key=lambda r: _first_use(B, r)))
    a = _operand(A, m, k, loop, f"_{nest.target}_pa", shapes)
    # B packed with its inner loop along a position (j, w, wout), not a kernel offset: an
    # index of B's last slot whose dimension no parameter has (`windows`)
    last = sorted(free_indices(B.indices[-1]), key=str)
    inner = next((i for i in last if str(dim_of(i)) not in windows), None)
    if inner in k and inner not in n:
        b = _operand(B, k, n, loop, f"_{nest.target}_pb", shapes, transposed=True)
    else:
        b = _operand(B, k, n, loop, f"_{nest.target}_pb", shapes)
    if a is None or b is None or a.transposed and a.pack is not None:
        return None
    c_offset = sp.Integer(0) if loop is None or loop not in out else loop * _extent(m + n)
    b_in_place = _in_place_when_unit(B, k, n, loop, shapes, windows, b.transposed) \
        if b.pack else None
    return Im2col(loop, m, n, k, a, b, c_offset, sp.Mul(*rest), b_in_place)


def _in_place_when_unit(ref, rows, cols, loop, shapes, windows, transposed):
    """(sizes, operand): ref's block for one loop value is already its packed matrix when
    the indices of its shifted subscripts that a parameter's window runs over (p, q of
    x[n, c, i + p, j + q]) have extent 1 and the other dimensions of those subscripts equal
    the array's (Hout = H): a 1x1 convolution reads its input as the GEMM operand, no
    copy.  None when a subscript is not then a plain index (a stride, a padding)."""
    shifted = [s for s in ref.indices if not isinstance(s, sp.Idx)]
    unit = sorted({i for s in shifted for i in free_indices(s)
                   if i in rows + cols and str(dim_of(i)) in windows}, key=str)
    if not unit:
        return None
    slots = [sp.expand(s.xreplace({i: 0 for i in unit})) for s in ref.indices]
    if not all(isinstance(s, sp.Idx) for s in slots):
        return None
    keep = lambda axes: tuple(i for i in axes if i not in unit)
    operand = _operand(ref.base[tuple(slots)], keep(rows), keep(cols), loop, "", shapes)
    if operand is None or operand.pack is not None or operand.transposed != transposed:
        return None
    sizes = [(dim_of(i), sp.Integer(1)) for i in unit] + [
        (dim_of(s), d) for s, d in zip(slots, _dims(ref, shapes)) if dim_of(s) != d]
    return tuple(sizes), operand


def _first_use(ref, index) -> int:
    for pos, slot in enumerate(ref.indices):
        if index in free_indices(slot):
            return pos * 100 + sorted(map(str, free_indices(slot))).index(str(index))
    return 10**6


def _read_bounds(ref, k, shapes):
    """The bounds of a sum over k that keep every read of ref inside its array."""
    lo, hi = k.lower, k.upper
    for slot, dim in zip(ref.indices, _dims(ref, shapes)):
        if isinstance(slot, sp.Idx) or k not in free_indices(slot):
            continue
        found = bounds_from(between(slot, 0, dim - 1), k)
        if found is None:
            return None
        lo, hi = tighten(*found, k) if (lo, hi) == (k.lower, k.upper) else (
            sp.Max(lo, found[0]), sp.Min(hi, found[1]))
    return lo, hi


def _dims(ref, shapes):
    return [sp.Symbol(d, integer=True, positive=True) for d in shapes[ref.base.label.name]]


def _operand(ref, rows, cols, loop, scratch, shapes, transposed=False) -> Packed | None:
    """ref as a (rows x cols) matrix for one loop value: in place when its own axes are
    the loop's (if any) then rows then cols (or cols then rows), else packed (stored
    cols x rows when `transposed`)."""
    idx = list(ref.indices)
    plain = all(isinstance(i, sp.Idx) for i in idx)
    own = [i for i in idx if i != loop]
    leading = not (loop in idx) or idx[0] == loop
    if plain and leading and len(set(idx)) == len(idx):
        block = _extent(own) if loop in idx else sp.Integer(0)
        offset = loop * block if loop in idx else sp.Integer(0)
        if tuple(own) == tuple(rows) + tuple(cols):
            return Packed(ref.base.label.name, False, str(_extent(cols)), offset)
        if tuple(own) == tuple(cols) + tuple(rows):
            return Packed(ref.base.label.name, True, str(_extent(rows)), offset)
    if transposed:
        rows, cols = cols, rows
    axes = tuple(rows) + tuple(cols)
    guards = [between(slot, 0, dim - 1) for slot, dim in zip(idx, _dims(ref, shapes))
              if not isinstance(slot, sp.Idx)]
    body = sp.Mul(*guards) * ref               # zero where a read leaves the array
    pack = Nest("elementwise", scratch, axes, axes, (), body,
                comment=f"pack {ref} as a {' '.join(map(str, rows))} x "
                        f"{' '.join(map(str, cols))} matrix")
    return Packed(scratch, transposed, str(_extent(cols)), sp.Integer(0), pack,
                  per_loop=loop is not None and loop in free_indices(ref))
