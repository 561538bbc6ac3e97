"""How the C of a convolution reaches the GEMM hook at run time: a 1x1, stride-1,
unpadded read is its own GEMM operand (no pack), for y, dx and dw alike."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import codegen
from derive.builtins import builtin

SHAPES = [(2, 3, 5, 4, 6, 1, 1), (2, 3, 5, 4, 6, 3, 1), (1, 1, 1, 1, 1, 1, 1),
          (3, 7, 2, 5, 5, 2, 2)]


def _body(source, side):
    """One entry function's text, up to the next one (whatever attributes precede it)."""
    rest = source.split(f"int bp_conv2d_{side}_f32(", 1)[1]
    return re.split(r"\n(?:BP_\w+ )*int bp_", rest, maxsplit=1)[0]


def test_a_1x1_read_skips_its_pack():
    source = codegen.sources(builtin("conv2d", dict(P=0)), "c")["conv2d.c"]
    for side, operand in (("forward", "x"), ("backward", "dy"), ("backward", "x")):
        body = _body(source, side)
        assert "if (!bp_in_place) {" in body, side
        assert f"bp_in_place ? {operand} + " in body, (side, operand)
    when = _body(source, "forward").split("const int bp_in_place = ", 1)[1].split(";")[0]
    assert when == "KH == 1 && KW == 1 && Hout == H && Wout == W"
    # the GEMMs read the operand chosen, not the scratch, a block of output rows at a time
    assert _body(source, "forward").count(", bp_b + bp_c0*(Wout), bp_ldb, ") == 1


def test_padding_or_a_stride_keeps_the_pack():
    for constants in (dict(P=1), dict(S=2)):
        source = codegen.sources(builtin("conv2d", constants), "c")["conv2d.c"]
        assert "bp_in_place" not in source, constants


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_1x1_and_wider_windows_equal_torch_with_and_without_the_gemm(dtype):
    k = codegen.load("conv2d", backend="c", dtype=dtype, constants=dict(P=0))
    assert k.blas is not None, "the GEMM path needs NumPy's BLAS"
    tol = 1e-12 if dtype == "float64" else 1e-4
    rng = np.random.default_rng(1)
    try:
        for N, C, O, H, W, KH, KW in SHAPES:
            x, w, b = (rng.normal(size=s).astype(dtype)
                       for s in ((N, C, H, W), (O, C, KH, KW), (O,)))
            xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
            y = F.conv2d(xt, wt, bt)
            dy = rng.normal(size=tuple(y.shape)).astype(dtype)
            y.backward(torch.tensor(dy))
            for blas in (True, False):
                k.use_blas(blas)
                got = {**k.forward(x=x, w=w, b=b), **k.backward(x=x, w=w, b=b, dy=dy)}
                for name, ref in (("y", y), ("dx", xt.grad), ("dw", wt.grad), ("db", bt.grad)):
                    ref = ref.detach().numpy()
                    err = np.abs(got[name] - ref).max() / np.abs(ref).max()
                    assert err < tol, (N, C, O, H, W, KH, KW, blas, name, err)
    finally:
        k.use_blas(True)


def _gemm_at_every_size(monkeypatch):
    """conv2d (P=1) built with the GEMM route forced at every size."""
    from codegen import build
    monkeypatch.setenv("BACKPROP_CFLAGS",
                       " ".join(build.opt_flags() + ["-DBP_IM2COL_MIN_WORK=0"]))
    forced = codegen.load("conv2d", backend="c", dtype="float32", constants=dict(P=1))
    monkeypatch.delenv("BACKPROP_CFLAGS")
    return forced


def _results(k, arrays, blas):
    k.use_blas(blas)
    try:
        x, w, b, dy = arrays
        return {**k.forward(x=x, w=w, b=b), **k.backward(x=x, w=w, b=b, dy=dy)}
    finally:
        k.use_blas(True)


def _arrays(N, C, O, H, rng):
    return tuple(rng.standard_normal(s, dtype=np.float32)
                 for s in ((N, C, H, H), (O, C, 3, 3), (O,), (N, O, H, H)))


def test_the_route_is_chosen_per_shape_from_the_gemm_size(monkeypatch):
    """Below BP_IM2COL_MIN_WORK terms per GEMM (M*N*K, here O*C*9*H*W) the C takes its
    loops even with a GEMM supplied; above, the GEMM.  The routes sum in different orders,
    so float32 results tell them apart bit for bit (y and dw)."""
    forced = _gemm_at_every_size(monkeypatch)
    default = codegen.load("conv2d", backend="c", dtype="float32", constants=dict(P=1))
    rng = np.random.default_rng(0)
    for shape, route in (((2, 1, 1, 2), "loops"), ((2, 3, 2, 2), "loops"),
                         ((2, 4, 4, 3), "gemm"), ((2, 8, 8, 8), "gemm")):
        arrays = _arrays(*shape, rng)
        got = _results(default, arrays, True)
        gemm, loops = _results(forced, arrays, True), _results(default, arrays, False)
        for name in ("y", "dw"):
            same_as = {r: bool((got[name] == ref[name]).all())
                       for r, ref in (("gemm", gemm), ("loops", loops))}
            assert same_as == {"gemm": route == "gemm", "loops": route == "loops"}, \
                (shape, name, same_as)


def test_both_routes_equal_torch_on_the_same_inputs(monkeypatch):
    forced = _gemm_at_every_size(monkeypatch)
    rng = np.random.default_rng(1)
    for shape in ((2, 1, 1, 2), (2, 3, 2, 2), (1, 5, 3, 4)):
        x, w, b, dy = arrays = _arrays(*shape, rng)
        xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                      for a in (x, w, b))
        y = F.conv2d(xt, wt, bt, padding=1)
        y.backward(torch.tensor(dy, dtype=torch.float64))
        refs = dict(y=y.detach(), dx=xt.grad, dw=wt.grad, db=bt.grad)
        for got in (_results(forced, arrays, True), _results(forced, arrays, False)):
            for name, ref in refs.items():
                np.testing.assert_allclose(got[name], ref.numpy(), rtol=2e-5, atol=2e-5,
                                           err_msg=f"{shape} {name}")


def test_every_image_product_runs_in_blocks_of_rows():
    """y's and dx's GEMMs a block of output rows (N columns) at a time, dw's a block of its
    sum (K columns), each block packed right before its GEMM; the first image a thread
    takes goes whole (BP_IM2COL_FIRST_WHOLE)."""
    for constants, blocked in ((dict(P=1), 3), (dict(P=0), 3), (dict(S=2), 3)):
        source = codegen.sources(builtin("conv2d", constants), "c")["conv2d.c"]
        assert source.count("bp_c0 += bp_step) {") == 2 * blocked, constants   # f32, f64
    forward = _body(codegen.sources(builtin("conv2d", dict(P=1)), "c")["conv2d.c"],
                    "forward")
    loop = forward.split("bp_c0 += bp_step) {", 1)[1]
    assert loop.index("/* pack x[n, c, ") < loop.index("bp_conv2d_gemm_f32(101, 111, 111, O, "
                                                       "(bp_c1 - bp_c0)*(Wout), ")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("constants", [dict(P=1), dict(P=0), dict(S=2, P=1), dict(D=2, P=2)])
def test_blocks_of_rows_equal_torch(monkeypatch, dtype, constants):
    """Blocks of one row for every image (BP_IM2COL_BLOCK_BYTES=1, no whole first image),
    of a few rows (often a shorter last one) after a whole first image; these small images
    go whole by default, BP_IM2COL_WHOLE_MAX=0 and BP_IM2COL_MIN_COLS=1 block them.  y, dx,
    dw and db as torch's (float64), for padded, 1x1-in-place-capable, strided (dx summed
    over blocks of K) and dilated convolutions."""
    from codegen import build
    rng = np.random.default_rng(3)
    N, C, O, H, W = 3, 3, 4, 9, 11
    x, b = (rng.standard_normal(s).astype(dtype) for s in ((N, C, H, W), (O,)))
    tol = 1e-11 if dtype == "float64" else 2e-5
    for KH, KW in ((3, 3), (1, 1), (2, 3)):
        w = rng.standard_normal((O, C, KH, KW)).astype(dtype)
        xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True)
                      for a in (x, w, b))
        y = F.conv2d(xt, wt, bt, stride=constants.get("S", 1), padding=constants.get("P", 0),
                     dilation=constants.get("D", 1))
        dy = rng.standard_normal(tuple(y.shape)).astype(dtype)
        y.backward(torch.tensor(dy, dtype=torch.float64))
        refs = dict(y=y.detach().numpy(), dx=xt.grad.numpy(), dw=wt.grad.numpy(),
                    db=bt.grad.numpy())
        for flags in (["-DBP_IM2COL_BLOCK_BYTES=1", "-DBP_IM2COL_FIRST_WHOLE=0"],
                      ["-DBP_IM2COL_BLOCK_BYTES=6000"]):
            monkeypatch.setenv("BACKPROP_CFLAGS", " ".join(
                build.opt_flags() + ["-DBP_IM2COL_MIN_WORK=0", "-DBP_IM2COL_WHOLE_MAX=0",
                                     "-DBP_IM2COL_MIN_COLS=1"] + flags))
            k = codegen.load("conv2d", backend="c", dtype=dtype, constants=constants)
            monkeypatch.delenv("BACKPROP_CFLAGS")
            assert k.blas is not None, "the GEMM path needs NumPy's BLAS"
            for threads in (1, 2):
                k.set_threads(threads)
                got = {**k.forward(x=x, w=w, b=b), **k.backward(x=x, w=w, b=b, dy=dy)}
                for name, ref in refs.items():
                    err = np.abs(got[name] - ref).max() / np.abs(ref).max()
                    assert err < tol, (constants, KH, KW, flags, threads, name, err)


def test_images_go_to_free_threads_only_where_they_write_their_own_block():
    """y's and dx's images (each writes its own block of T) are handed out as threads come
    free; dw's and a strided dx's (they add to the threads' parts) keep fixed shares, so
    every result is the same bit for bit from call to call at two threads."""
    for constants, schedules in ((dict(P=1), ["dynamic", "dynamic", "static"]),
                                 (dict(S=2, P=1), ["dynamic", "static", "static"])):
        source = codegen.sources(builtin("conv2d", constants), "c")["conv2d.c"]
        f32 = source.split("int bp_conv2d_forward_f64(", 1)[0]
        assert re.findall(r"BP_OMP\(for schedule\((\w+)\)\)", f32) == schedules, constants
    k = codegen.load("conv2d", backend="c", dtype="float32", constants=dict(P=1))
    k.set_threads(2)
    rng = np.random.default_rng(4)
    x, w, b = (rng.standard_normal(s, dtype=np.float32)
               for s in ((9, 16, 40, 40), (16, 16, 3, 3), (16,)))
    dy = rng.standard_normal((9, 16, 40, 40), dtype=np.float32)
    first = {**k.forward(x=x, w=w, b=b), **k.backward(x=x, w=w, b=b, dy=dy)}
    for _ in range(4):
        again = {**k.forward(x=x, w=w, b=b), **k.backward(x=x, w=w, b=b, dy=dy)}
        for name, value in first.items():
            assert (again[name] == value).all(), name
