"""Winograd's F(2x2, 3x3) route of a 3x3 window at stride 1, and F(3x3, 2x2) for its dw
(codegen/winograd.py): which products take it, that the C takes it at run time only for a
3 x 3 window with enough channels (and, for dw, tiles), and that y, dx, dw and db equal
torch's on the shapes where tiles overhang."""
import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

import codegen
from codegen.c_backend import _windows, as_im2col, lower_for_c
from codegen.plan import plan
from codegen.winograd import as_winograd
from derive import derive
from derive.builtins import builtin


def _routes(constants):
    """{target: the Winograd form or None} of conv2d's GEMM-route products."""
    layer = builtin("conv2d", constants)
    p = plan(derive(layer))
    shapes = {t.name: t.dims for t in layer.tensors.values()}
    shapes.update({"d" + t.name: t.dims for t in layer.tensors.values()})
    loops = lower_for_c(p, shapes)
    for t in loops.forward_temps + loops.backward_temps:
        shapes[t.name] = t.dims
    windows = _windows(layer)
    return {n.target: as_winograd(n, g, shapes, windows)
            for n in loops.forward + loops.backward
            if (g := as_im2col(n, shapes, windows)) is not None}


def test_y_dx_and_dw_each_have_a_form():
    """y reads x at i + p - P (the window forwards), dx reads dy at h - p + P (backwards:
    the window is flipped into the transformed weights); dw sums dy's tiles times x's
    patches over the images: the weights' form, F(3x3, 2x2), its window T's last axes."""
    for P in (0, 1, 2):
        routes = _routes(dict(P=P))
        assert set(routes) == {"y", "dx", "dw"}, P
        assert str(routes["y"].weight) == "w[o, c, bp_wa, bp_wb]"
        assert str(routes["dx"].weight) == "w[o, c, 2 - bp_wa, 2 - bp_wb]"
        assert [i.label.name for i in routes["y"].channels] == ["c"]
        assert [i.label.name for i in routes["dx"].channels] == ["o"]
        dw = routes["dw"]
        assert dw.weight is None and [i.label.name for i in dw.channels] == ["c"]
        assert [i.label.name for i in dw.windows] == ["p", "q"]
        reads = lambda e: {str(a) for a in e.atoms(sp.Indexed)}
        assert reads(dw.tile) == {"dy[n, o, bp_wtr, bp_wts]"}, dw.tile
        assert reads(dw.patch) == {str(sp.IndexedBase("x")[
            sp.Symbol("n"), sp.Symbol("c"), sp.Symbol("bp_wr") - P,
            sp.Symbol("bp_ws") - P])}, dw.patch


@pytest.mark.parametrize("constants", [dict(S=2, P=1), dict(D=2, P=2)])
def test_a_stride_or_a_dilation_keeps_the_im2col_gemm(constants):
    assert not any(_routes(constants).values()), constants
    source = codegen.sources(builtin("conv2d", constants), "c")["conv2d.c"]
    assert "bp_wino" not in source


def _build(monkeypatch, dtype, *flags):
    """conv2d (P=1) built with extra -D flags (BACKPROP_CFLAGS replaces the defaults)."""
    from codegen import build
    monkeypatch.setenv("BACKPROP_CFLAGS", " ".join(build.opt_flags() + list(flags)))
    k = codegen.load("conv2d", backend="c", dtype=dtype, constants=dict(P=1))
    monkeypatch.delenv("BACKPROP_CFLAGS")
    assert k.blas is not None, "the GEMM routes need NumPy's BLAS"
    return k


def _all(k, x, w, b, dy):
    return {**k.forward(x=x, w=w, b=b), **k.backward(x=x, w=w, b=b, dy=dy)}


def test_the_route_is_taken_for_a_3x3_window_with_enough_channels(monkeypatch):
    """The routes round differently in float32, so the bits tell which one ran: y, dx and
    dw differ from the im2col build's (-DBP_WINOGRAD=0) where the window is 3 x 3 and the
    channels summed reach BP_WINOGRAD_MIN_K (16: C for y and dw, O for dx), dw only where
    an image has BP_WINOGRAD_MIN_TILES (32) tiles of dy (10 x 9: 5 x 5 = 25 tiles, 12 x 13:
    42); below, or for a window of another size, they are the same bits."""
    default = codegen.load("conv2d", backend="c", dtype="float32", constants=dict(P=1))
    im2col = _build(monkeypatch, "float32", "-DBP_WINOGRAD=0")
    rng = np.random.default_rng(5)
    for (C, O, KH, KW, H, W), on in {
            (16, 15, 3, 3, 10, 9): ("y",), (15, 16, 3, 3, 10, 9): ("dx",),
            (16, 16, 3, 3, 10, 9): ("y", "dx"), (16, 16, 3, 3, 12, 13): ("y", "dx", "dw"),
            (16, 3, 3, 3, 12, 13): ("y", "dw"), (15, 15, 3, 3, 12, 13): (),
            (16, 16, 5, 5, 12, 13): (), (16, 16, 3, 5, 12, 13): (),
            (16, 16, 1, 3, 10, 9): ()}.items():
        x, w, b, dy = (rng.standard_normal(s, dtype=np.float32) for s in (
            (2, C, H, W), (O, C, KH, KW), (O,), (2, O, H + 3 - KH, W + 3 - KW)))
        got, ref = _all(default, x, w, b, dy), _all(im2col, x, w, b, dy)
        for name in ("y", "dx", "dw"):
            same = bool((got[name] == ref[name]).all())
            assert same == (name not in on), (C, O, KH, KW, H, W, name)


SHAPES = [  # N, C, O, H, W, P: odd and even sizes (tiles past the last row and column)
    (2, 16, 20, 7, 9, 1), (1, 17, 3, 8, 8, 0), (3, 32, 16, 5, 6, 2), (2, 16, 16, 1, 1, 1),
    (1, 16, 16, 3, 4, 0), (5, 24, 40, 2, 3, 1), (2, 16, 16, 12, 5, 2),
    (2, 16, 16, 12, 12, 1), (1, 16, 20, 13, 11, 2), (3, 20, 16, 16, 15, 0)]  # dw's too


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_route_equals_torch(dtype, threads):
    """y, dx, dw and db as torch's float64 convolution.  float32: Winograd's transforms
    add sums of four values before and after the products, but its GEMMs sum C terms, not
    C * 9: on a 64-channel 28 x 28 layer its y and dx were within 3.1e-7 and 4.3e-7 of
    the largest value (the im2col route 4.3e-7 and 5.5e-7, torch's float32 1.3e-6); 3e-5
    (the im2col tests' 2e-5 and a margin for the transforms' roundings) fails on any
    wrong tile, tap or flip (errors of order 1)."""
    tol = 1e-12 if dtype == "float64" else 3e-5
    rng = np.random.default_rng(6)
    for N, C, O, H, W, P in SHAPES:
        k = codegen.load("conv2d", backend="c", dtype=dtype, constants=dict(P=P))
        k.set_threads(threads)
        x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((N, C, H, W), (O, C, 3, 3),
                                                                  (O,)))
        xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                      for a in (x, w, b))
        y = F.conv2d(xt, wt, bt, padding=P)
        dy = rng.standard_normal(tuple(y.shape)).astype(dtype)
        y.backward(torch.tensor(dy, dtype=torch.float64))
        got = _all(k, x, w, b, dy)
        for name, ref in (("y", y.detach()), ("dx", xt.grad), ("dw", wt.grad),
                          ("db", bt.grad)):
            ref = ref.numpy()
            err = np.abs(got[name] - ref).max() / np.abs(ref).max()
            assert err < tol, ((N, C, O, H, W, P), threads, name, err)


SHIFTED_A = """layer shifted_{kind}  a GEMM operand read past its own indices
const P = 1
dims N, C, O, H, W, KH, KW
dims Hout = H + 2*P - KH + 1, Wout = W + 2*P - KW + 1
input  g[N, O, Hout, Wout], x[N, C, H, W]
outside x = 0
outside g = 0
param  w[O, C, KH, KW]
outside w = 0
output {out}
{equation}
"""


@pytest.mark.parametrize("kind, out, equation", [
    ("weights", "y[O, C, KH, KW]",
     "y[o, c, p, q] = w[o, c, p, q] + g[n, o + 1, i, j] * x[n, c, i + p - P, j + q - P]"),
    ("forward", "y[N, O, Hout, Wout]",
     "y[n, o, i, j] = g[n, o, i, j] + w[o + 1, c, p, q] * x[n, c, i + p - P, j + q - P]")])
def test_an_operand_read_past_its_indices_keeps_the_im2col_gemm(kind, out, equation):
    """The transforms read A in place, without the guards an im2col pack gives a shifted
    read (o + 1 past O), so such an A keeps the im2col GEMM (a review found the weights'
    form reading past g: errors of 1e154 against the NumPy backend)."""
    from derive import parse_spec
    layer = parse_spec(SHIFTED_A.format(kind=kind, out=out, equation=equation))
    assert "bp_wino" not in codegen.sources(layer, "c")[f"shifted_{kind}.c"]
    rng = np.random.default_rng(7)
    N, C, O, H, W = 2, 16, 3, 12, 12
    arrays = dict(x=rng.standard_normal((N, C, H, W)), g=rng.standard_normal((N, O, H, W)),
                  w=rng.standard_normal((O, C, 3, 3)))
    got, ref = (codegen.load(layer, backend=b).forward(**arrays)["y"] for b in ("c", "numpy"))
    assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()


def _guarded_call(k, entry, arrays, guard=4096):
    """k's C entry called directly with a work buffer of exactly the size its work function
    gives, between NaN guard bands (nothing outside the buffer is writable unseen, and a
    read past it brings NaN into a result): (results, guards intact, work size)."""
    out = getattr(k, entry)(**arrays)
    fn, work_size = k.entry_point(entry)
    inputs = k.args + (k.upstream if entry == "backward" else ())
    dims = k.dim_values(k.checked_sizes(arrays, inputs))
    ffi, ctype = k.c_types()
    size = int(work_size(*dims))
    band = np.full(size + 2 * guard, np.nan, dtype=k.dtype)
    out = {n: np.full_like(v, np.nan) for n, v in out.items()}
    ptr = lambda a: ffi.cast(ctype + " *", ffi.from_buffer(a))
    keep = {n: np.ascontiguousarray(arrays[n]) for n in inputs}
    assert fn(*dims, *[ptr(keep[n]) for n in inputs], *[ptr(v) for v in out.values()],
              ptr(band[guard:])) == 0
    intact = bool(np.isnan(band[:guard]).all() and np.isnan(band[guard + size:]).all())
    return out, intact, size


@pytest.mark.parametrize("threads", [1, 2])
def test_the_route_needs_no_im2col_scratch(monkeypatch, threads):
    """Where a call takes Winograd's route, the work size leaves out the im2col packs'
    slots and dw's partial sums (its images skip them): smaller than the im2col build's
    (-DBP_WINOGRAD=0) on the bench's shape, by the packs' size and less the route's own.
    Called with exactly that buffer between NaN guard bands, the kernels stay inside it and
    equal torch; at 8 channels (below BP_WINOGRAD_MIN_K) the im2col route gets its slots."""
    wino, plain = _build(monkeypatch, "float64"), \
        _build(monkeypatch, "float64", "-DBP_WINOGRAD=0")
    for k in (wino, plain):
        k.set_threads(threads)
    _, fwork = wino.entry_point("forward")
    _, fplain = plain.entry_point("forward")
    _, bwork = wino.entry_point("backward")
    _, bplain = plain.entry_point("backward")
    N, C, O, H, W = 4, 64, 64, 56, 56           # (Hout, Wout = H, W at padding 1)
    dims = (N, C, O, H, W, 3, 3, H, W)
    pack = fplain(*dims)                        # y's im2col pack: C * 9 * H * W a slot
    slots = pack // (C * 9 * H * W)
    assert pack == slots * C * 9 * H * W and 1 <= slots <= N
    # Winograd's own: the weights' 16 values, and a slot's transformed image (16 x (O + C)
    # x 28 x 28 tiles) and padded plane (58 x 58) with 4 transformed rows: 62 x 58
    assert fwork(*dims) == 16 * O * C + slots * (16 * (O + C) * 28 * 28 + 62 * 58)
    assert fwork(*dims) < pack          # (with the packs counted too: pack + this)
    # backward: dx's weights rearranged (packed once, either route), dx's and dw's slots
    # (dw's with its 28 x 28 plane of dy's tiles) and dw's 16 sums a slot; no im2col packs
    # (2 x pack) and no partial dw (slots x O x C x 9) as in the im2col build
    slot = 16 * (O + C) * 28 * 28 + 62 * 58
    assert bwork(*dims) == C * O * 9 + 16 * C * O + slots * (2 * slot + 4 * 28 * 28) + \
        slots * 16 * O * C
    assert bplain(*dims) == C * O * 9 + 2 * pack + slots * O * C * 9
    rng = np.random.default_rng(9)
    for N, C, O, H, W in ((3, 16, 20, 12, 11), (2, 8, 16, 9, 9)):
        x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, 3, 3)), \
            rng.standard_normal(O)
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.conv2d(xt, wt, bt, padding=1)
        dy = rng.standard_normal(tuple(y.shape))
        y.backward(torch.tensor(dy))
        got, ok, _ = _guarded_call(wino, "forward", dict(x=x, w=w, b=b))
        assert ok, ("forward", C)
        grads, ok, _ = _guarded_call(wino, "backward", dict(x=x, w=w, b=b, dy=dy))
        assert ok, ("backward", C)
        for name, ref in (("y", y.detach()), ("dx", xt.grad), ("dw", wt.grad),
                          ("db", bt.grad)):
            v = (got if name == "y" else grads)[name]
            ref = ref.numpy()
            assert np.abs(v - ref).max() <= 1e-12 * np.abs(ref).max(), (C, name)
