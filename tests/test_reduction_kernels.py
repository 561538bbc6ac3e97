"""How reductions become kernels (issue 12's speed items): the shape of the emitted code
that the benchmarks depend on, and the values it computes against torch."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import codegen
from codegen.c_backend import _small_window, c_sources
from codegen.loops import Nest
from codegen.plan import plan
from derive import derive

from .oracles import require_oracle


def _entry_c(name, entry, **constants):
    layer = codegen.load(name, constants=constants).layer
    source = c_sources(plan(derive(layer)))[f"{name}.c"]
    body = source[source.index(f"int bp_{name}_{entry}_f32("):]
    return body[:body.index("\n}\n")]


def _backward_c(name, **constants):
    return _entry_c(name, "backward", **constants)


def _forward_c(name, **constants):
    return _entry_c(name, "forward", **constants)


def _branches(code):
    """The streamed (tiled) branch of a gather and its plain one."""
    streamed = code[code.index("#if BP_STREAMS"):code.index("} else\n")]
    return streamed, code[code.index("} else\n"):]


def test_maxpool_backward_finds_the_first_maximum_in_one_pass():
    """One scan of each window keeps the best value and its rank, and dx is a gather that
    reads that rank: no maxima of negated ranks, no nested window maxima (four passes).
    Each branch scans a row of windows once per loop over dx's row pairs (the interior
    and its borders), so five scans in each."""
    code = _backward_c("maxpool2d")
    assert code.count("first maximal position over") == 1
    assert "maximum over" not in code
    for branch in _branches(code):
        scans = branch.count("bp_acc_at = 2*_p + _q;")
        assert scans == branch.count("for (ptrdiff_t bp_h_q") == 5


def test_maxpool_backward_ranks_each_row_right_before_its_dx_rows():
    """Windows that do not overlap (K = S): each row of window ranks is found inside the
    loop over dx's rows, right before the two rows it decides are written
    (codegen/plane_fusion.rows_where_read): x is read as dx is written, not a plane of x
    then a plane of dx.  One parallel loop in each branch."""
    code = _backward_c("maxpool2d")
    for branch in _branches(code):
        assert branch.count("parallel for") == 1
        for piece in branch.split("for (ptrdiff_t bp_h_q")[1:]:
            # the interior's rows run w split by residue, the border rows (a few) w whole
            rows = [piece.find(loop) for loop in
                    ("for (ptrdiff_t bp_w_q", "for (ptrdiff_t w = 0; w < W; ++w)")]
            assert max(rows) >= 0, piece          # one of them is there
            row = min(r for r in rows if r >= 0)
            assert piece.index("for (ptrdiff_t i = bp_h_q; i < (1 + bp_imin(Hout - 1, "
                               "bp_h_q)); ++i) {") < piece.index("bp_acc_at = ") < row


def test_maxpool_backward_ranks_overlapping_windows_plane_by_plane():
    """Overlapping windows (K = 3, S = 2) read two rows of ranks per row of dx: the ranks
    of one (n, c) plane are found inside the gather's loops over n and c, right before
    that plane's dx reads them (codegen/plane_fusion.py): one parallel loop, not a pass
    over all ranks then a pass over all of dx."""
    code = _backward_c("maxpool2d", K=3, S=2)
    for branch in _branches(code):
        assert branch.count("parallel for") == 1
        ranks = branch.index("for (ptrdiff_t i = 0; i < Hout; ++i) {")
        assert branch.index("for (ptrdiff_t c = 0; c < C; ++c) {") < ranks \
            < branch.index("bp_acc_at = ") < branch.index("for (ptrdiff_t bp_h_q")


def test_maxpool_backward_streams_dx_rows_through_a_tile():
    """Large dx: each iteration over dx's rows stores them in a tile of two rows on the
    stack and streams them out (codegen/gather_streams.py), the ranks of that iteration's
    row of windows in a stack row too; small dx: stored in place, the ranks in scratch."""
    streamed, plain = _branches(_backward_c("maxpool2d"))
    assert "BP_STREAM_BLOCK float bp_tile[2*W];" in streamed
    assert "float bp_row__s1[Wout];" in streamed
    assert "_s1[" not in streamed.replace("bp_row__s1[", "")
    assert re.search(r"\bdx\[", streamed.replace("&dx[", "")) is None
    # each border row alone (2 residues x 2 sides); inside, the two rows in one copy,
    # each copy's last partial line completed by the next (bp_stream_carry)
    assert streamed.count("bp_stream_copy_f32(&dx[") == 5
    assert "bp_stream_copy_f32(&dx[((n*C + c)*H + 2*bp_h_q)*W], bp_tile, 2*W, &bp_carry);" \
        in streamed
    assert "bp_stream_end_f32(&bp_carry);" in streamed
    # inside, one loop over the windows writes both rows of each: the four elements of a
    # window from one read of its rank and its dy, each a select, not a load under a
    # condition (codegen/loops._side_by_side, c_printer._print_Where)
    interior = streamed[streamed.index("bp_acc_r3 = 0") - 2000:streamed.index("bp_acc_r3 = 0")]
    body = interior[interior.rindex("for (ptrdiff_t bp_w_q"):]
    for store in ("bp_tile[2*bp_w_q] =", "bp_tile[2*bp_w_q + 1] =", "bp_tile[1*W + 2*bp_w_q] ="):
        assert store in body
    assert "bp_select_f32(" in body and "? dy[" not in streamed
    assert "bp_tile" not in plain and "bp_row__s1" not in plain and "dx[" in plain
    # each iteration first asks for the two rows of x that the one BP_STREAM_AHEAD later
    # ranks (codegen/gather_streams.read_ahead), rows that exist only; dy (other shape) not
    ahead = ("if (2*BP_STREAM_AHEAD + 2*bp_h_q + 2 <= H) bp_stream_ahead_f32("
             "&x[((n*C + c)*H + 2*BP_STREAM_AHEAD + 2*bp_h_q)*W], 2*W);")
    assert streamed.count(ahead) == 5 and "bp_stream_ahead" not in plain
    assert "bp_stream_ahead_f32(&dy" not in streamed


def test_a_gather_reading_no_array_of_its_target_s_shape_asks_for_nothing_ahead():
    """Average pooling's dx reads only dy (the windows' shape): nothing to ask for."""
    streamed, _ = _branches(_backward_c("avgpool2d"))
    assert "bp_tile[" in streamed and "bp_stream_ahead_f32(&" not in streamed


def test_pooling_forwards_stream_their_rows_through_a_tile():
    """Large y: max and average pooling's forward compute each row of y into a tile on
    the stack and stream it out (codegen/streaming.py, _window_rows), first asking for
    the rows of x the window reads BP_STREAM_AHEAD rows later (rows that exist only);
    small y: stored in place.  A forward that also saves its argmax (two targets) and a
    3 x 3 window reading three rows of x each."""
    for name in ("maxpool2d", "avgpool2d"):
        streamed, plain = _branches(_forward_c(name))
        assert "BP_STREAM_BLOCK float bp_tile[Wout];" in streamed
        assert "bp_stream_copy_f32(&y[((n*C + c)*Hout + i)*Wout], bp_tile, Wout, " \
               "&bp_carry);" in streamed
        assert "bp_tile[j] = " in streamed and "bp_stream_end_f32(&bp_carry);" in streamed
        for p in ("", " + 1"):
            assert (f"if (i + BP_STREAM_AHEAD < Hout) bp_stream_ahead_f32(&x[((n*C + c)*H "
                    f"+ 2*BP_STREAM_AHEAD + 2*i{p})*W], W);") in streamed, name
        assert "bp_tile" not in plain and "bp_stream" not in plain and "y[((n*C" in plain
    streamed, _ = _branches(_forward_c("maxpool2d", K=3, S=2))
    assert streamed.count("bp_stream_ahead_f32(&x[") == 3
    # the ranks and the best values, each through its own tile and carry
    streamed, plain = _branches(_forward_c("maxpool2d_indices"))
    for target, tile, carry in (("at", "bp_tile", "bp_carry"), ("y", "bp_tile1", "bp_carry1")):
        assert f"bp_stream_copy_f32(&{target}[((n*C + c)*Hout + i)*Wout], {tile}, Wout, " \
               f"&{carry});" in streamed
        assert f"bp_stream_end_f32(&{carry});" in streamed
    assert "bp_tile[j] = bp_acc_at;" in streamed and "bp_tile1[j] = bp_acc;" in streamed
    assert "bp_tile" not in plain


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, K, S", [("maxpool2d", 2, 2), ("maxpool2d", 3, 2),
                                        ("avgpool2d", 2, 2), ("maxpool2d_indices", 2, 2)])
def test_streamed_pooling_forward_into_y_at_every_offset_of_a_line(dtype, name, K, S):
    """y above the streaming size (8 MB) with rows of an odd width (each row's last
    partial line completed by the next row's first, bp_stream_carry), placed at every
    element offset of a cache line: equals torch's, ties, NaN and -inf windows included,
    and no element of the buffer around y is touched."""
    torch = require_oracle("torch")
    rng = np.random.default_rng(K * 10 + S)
    x = np.round(rng.normal(size=(2, 10, 2 * 331 + K - 2, 2 * 333 + K - 2)) * 2) / 2
    x[1, 2, 4:4 + K, 8:8 + K] = np.nan
    x[0, 5, 10:10 + K, 20:20 + K] = -np.inf
    if name == "avgpool2d":
        expected = torch.nn.functional.avg_pool2d(torch.tensor(x), K, S).numpy()
    else:
        expected, flat = torch.nn.functional.max_pool2d(torch.tensor(x), K, S,
                                                        return_indices=True)
        expected, flat = expected.numpy(), flat.numpy()
        # torch's flat h*W + w of each window's first maximum -> its rank p*K + q
        rows, cols = np.indices(expected.shape[2:])
        ranks = (flat // x.shape[3] - S * rows) * K + flat % x.shape[3] - S * cols
    expected = expected.astype(dtype)
    assert expected.size * np.dtype(dtype).itemsize >= 8 << 20      # the streamed branch
    k = codegen.load(name, backend="c", dtype=dtype, constants=dict(K=K, S=S))
    line = 64 // np.dtype(dtype).itemsize
    buffer = np.empty(expected.size + 2 * line, dtype=dtype)
    xs = x.astype(dtype)
    for offset in (0, 1, line // 2 + 1, line - 1):
        buffer[:] = 7.0
        y = buffer[offset:offset + expected.size].reshape(expected.shape)
        if name == "maxpool2d_indices":
            at = np.full(expected.shape, 7.0, dtype=dtype)
            k.forward(x=xs, out={"y": y, "at": at})
            np.testing.assert_array_equal(at, ranks.astype(dtype), err_msg=f"offset {offset}")
        else:
            k.forward(x=xs, out={"y": y})
        if name != "avgpool2d":
            np.testing.assert_array_equal(y, expected, err_msg=f"offset {offset}")
        else:   # four terms in another order than torch's: 3 roundings of at most eps
            np.testing.assert_allclose(y, expected, rtol=4 * np.finfo(dtype).eps, atol=0,
                                       err_msg=f"offset {offset}")
            assert np.array_equal(np.isnan(y), np.isnan(expected))
        assert (buffer[:offset] == 7).all() and (buffer[offset + expected.size:] == 7).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("K, S", [(2, 2), (3, 2), (2, 3)])
def test_streamed_maxpool_backward_equals_torch(dtype, K, S):
    """dx above the streaming size (BP_STREAM_MIN, 8 MB) at odd sizes, rows at every
    offset of a cache line: the tiled, streamed branch equals torch's dx with ties and a
    NaN window, every element written over stale values."""
    torch = require_oracle("torch")
    rng = np.random.default_rng(K * 10 + S)
    x = np.round(rng.normal(size=(2, 4, 517, 509)) * 2) / 2
    x[1, 2, 4:4 + K, 8:8 + K] = np.nan
    assert x.size * np.dtype(dtype).itemsize >= 8 << 20
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, K, S)
    dy = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    k = codegen.load("maxpool2d", backend="c", dtype=dtype, constants=dict(K=K, S=S))
    dx = k.backward(x=x.astype(dtype), dy=dy.astype(dtype), out={
        "dx": np.full(x.shape, 7.0, dtype=dtype)})["dx"]
    expected = xt.grad.numpy().astype(dtype)
    if K <= S:          # one term per element: exact
        np.testing.assert_array_equal(dx, expected)
    else:
        # up to 4 overlapping windows' terms, summed in another order than torch's: each
        # of the 3 additions rounds by at most eps times the sum of |terms|, 4 max|dy|
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(dx, expected, rtol=0, atol=12 * eps * np.abs(dy).max())
        assert np.array_equal(np.isnan(dx), np.isnan(expected))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_streamed_maxpool_backward_into_dx_at_every_offset_of_a_line(dtype):
    """The tile's row pairs go out as one stream per plane, each pair's last partial line
    completed by the next pair (bp_stream_carry): dx placed at every element offset of a
    cache line, planes of odd width and height (an odd last row, streamed alone), equals
    torch's dx, and no element of the buffer around it is touched."""
    torch = require_oracle("torch")
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(size=(2, 5, 463, 461)) * 2) / 2
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 2, 2)
    dy = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    expected = xt.grad.numpy().astype(dtype)
    k = codegen.load("maxpool2d", backend="c", dtype=dtype, constants=dict(K=2, S=2))
    line = 64 // np.dtype(dtype).itemsize
    assert x.size * np.dtype(dtype).itemsize >= 8 << 20          # the streamed branch
    buffer = np.empty(x.size + 2 * line, dtype=dtype)
    for offset in range(line):
        buffer[:] = 7.0
        dx = buffer[offset:offset + x.size].reshape(x.shape)
        k.backward(x=x.astype(dtype), dy=dy.astype(dtype), out={"dx": dx})
        np.testing.assert_array_equal(dx, expected, err_msg=f"offset {offset}")
        assert (buffer[:offset] == 7).all() and (buffer[offset + x.size:] == 7).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("K, S, H, W", [(2, 2, 7, 9), (2, 3, 8, 7), (1, 2, 5, 5),
                                        (3, 3, 7, 8), (2, 2, 2, 2)])
def test_maxpool_backward_equals_torch_at_gaps_and_borders(dtype, K, S, H, W):
    """The C gather equals torch's dx with ties (values rounded to halves), a NaN window,
    gaps between windows (S > K) and rows and columns past the last window, into an
    output buffer holding stale values."""
    torch = require_oracle("torch")
    rng = np.random.default_rng(K * 10 + S + H)
    x = np.round(rng.normal(size=(2, 3, H, W)) * 2) / 2
    x[0, 0, :K, :K] = np.nan
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, K, S)
    dy = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    k = codegen.load("maxpool2d", backend="c", dtype=dtype, constants=dict(K=K, S=S))
    dx = k.backward(x=x.astype(dtype), dy=dy.astype(dtype), out={
        "dx": np.full(x.shape, 7.0, dtype=dtype)})["dx"]
    np.testing.assert_array_equal(dx, xt.grad.numpy().astype(dtype))


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("c", "float64"),
                                            ("c", "float32")])
def test_maxpool_nan_and_inf_windows_as_torch(backend, dtype):
    """A window holding NaNs sends its gradient to the last NaN, one of only -inf to its
    first element: torch.max_pool2d's CPU kernel (`val > max || isnan(val)`)."""
    torch = require_oracle("torch")
    x = np.zeros((1, 1, 4, 6))
    x[0, 0, :2, :2] = [[np.nan, 1.0], [np.nan, 2.0]]
    x[0, 0, :2, 2:4] = -np.inf
    x[0, 0, 2:, :2] = [[3.0, np.nan], [3.0, 1.0]]
    x[0, 0, 2:, 4:] = [[1.0, 5.0], [5.0, 5.0]]
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 2, 2)
    dy = np.arange(1.0, 1.0 + yt.numel()).reshape(tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    k = codegen.load("maxpool2d", backend=backend,
                     **({"dtype": dtype} if backend == "c" else {}))
    dx = k.backward(x=x.astype(dtype), dy=dy.astype(dtype))["dx"]
    np.testing.assert_array_equal(dx, xt.grad.numpy().astype(dtype))


def test_batchnorm_backward_sums_each_channel_once():
    """dvar's and dw's sum of (x - mu) dy are one sum, dx's and db's sum of dy another,
    dx's sum of x is N H W mu (the forward's): two sums in one reduction pass, then one
    elementwise pass for dx; no dxhat array."""
    code = _backward_c("batchnorm")
    assert len(re.findall(r"bp_acc\d* \+= ", code)) == 2
    assert "dxhat" not in code.split("*/")[-1] and "bp_work + N*C*H*W" not in code
    assert re.search(r"dw\[c\] = -_s\d+\[c\]\*rstd\[c\];", code)
    assert re.search(r"db\[c\] = _s\d+\[c\];", code)


def test_shared_sums_keep_batchnorm_equal_to_torch():
    torch = require_oracle("torch")
    rng = np.random.default_rng(3)
    x, dy = rng.normal(size=(2, 3, 5, 7)) * 3 + 1, rng.normal(size=(2, 3, 5, 7))
    w, b = rng.normal(size=3), rng.normal(size=3)
    xt, wt, bt = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True).backward(
        torch.tensor(dy))
    for backend in ("numpy", "c"):
        k = codegen.load("batchnorm", backend=backend)
        saved = k.forward(x=x, w=w, b=b)
        got = k.backward(x=x, w=w, b=b, dy=dy, **{n: saved[n] for n in ("mu", "var", "rstd")})
        for name, t in (("dx", xt), ("dw", wt), ("db", bt)):
            np.testing.assert_allclose(got[name], t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_attention_contractions_are_batched_gemms():
    """Every contraction of attention's 4-D arrays (scores, context, projections, and in
    backward their gradients) is a loop of GEMM calls over (b, h) blocks; dx's sum of
    three products and the row sums stay loops."""
    layer = codegen.load("attention", constants=dict(CAUSAL=1)).layer
    source = c_sources(plan(derive(layer)))["attention.c"]
    forward = source[source.index("int bp_attention_forward_f32("):]
    forward = forward[:forward.index("\n}\n")]
    backward = _backward_c("attention", CAUSAL=1)
    call = "bp_attention_gemm_f32(101, "
    assert forward.count(call) == 6              # q, k, v, s, ctx, and y (sums over h)
    assert "s + b_h*T*T, T);" in forward         # (b, h) adjacent everywhere: one loop
    # dctx, dv, dk, dq, dWq, dWk, dWv, dWo, dctx v^T (once: ds reads it twice, see
    # below), and dx's three products (one loop of GEMMs each, the later two adding to dx)
    assert backward.count(call) == 12
    assert re.search(r"dWo \+ h\*E, H\*E\);", backward)     # dWo[d, h, e]: a d x e block


BLOCKS = """layer blocks  contractions of 3- and 4-D arrays: loops of GEMMs
dims B, H, T, U, E, D
input  c[B, H, T, E], k[B, U, H, E]
param  W[D, H, E]
output y[B, T, D], s[H, B, U, T]

y[b, t, d] = W[d, h, e] * c[b, h, t, e]
s[h, b, u, t] = k[b, u, h, e] * c[b, h, t, e] / 2
"""


def test_batched_gemms_equal_the_loops():
    """Blocks with a summed loop index (y sums over h), transposed and strided ones (k's
    rows are H*E apart, s stores u before t): the C kernel through the GEMM hook equals
    NumPy's einsum, forward and backward."""
    from derive import parse_spec

    layer = parse_spec(BLOCKS)
    source = c_sources(plan(derive(layer)))["blocks.c"]
    assert source.count("bp_blocks_gemm_f64(101, ") >= 2 + 4
    rng = np.random.default_rng(7)
    c = rng.normal(size=(2, 3, 5, 7))
    k = rng.normal(size=(2, 4, 3, 7))
    W = rng.normal(size=(6, 3, 7))
    dy, ds = rng.normal(size=(2, 5, 6)), rng.normal(size=(3, 2, 4, 5))
    kernel = codegen.load(layer, backend="c")
    got = kernel.forward(c=c, k=k, W=W)
    np.testing.assert_allclose(got["y"], np.einsum("dhe,bhte->btd", W, c), rtol=1e-12)
    np.testing.assert_allclose(got["s"], np.einsum("buhe,bhte->hbut", k, c) / 2, rtol=1e-12)
    grads = kernel.backward(c=c, k=k, W=W, dy=dy, ds=ds)
    np.testing.assert_allclose(grads["dW"], np.einsum("btd,bhte->dhe", dy, c), rtol=1e-12)
    np.testing.assert_allclose(grads["dk"], np.einsum("hbut,bhte->buhe", ds, c) / 2,
                               rtol=1e-12)
    np.testing.assert_allclose(grads["dc"], np.einsum("btd,dhe->bhte", dy, W) +
                               np.einsum("hbut,buhe->bhte", ds, k) / 2, rtol=1e-12)


def test_numpy_maxpool_backward_memory_is_proportionate():
    """The NumPy module's maxpool dx sums over each window's offset (hout = lo(h) + t),
    not over all of Hout x Wout: its peak memory is a small multiple of dx's, where the
    mask over (n, c, h, w, hout, wout) was Hout * Wout / 4 times dx (1000x here)."""
    import tracemalloc

    torch = require_oracle("torch")
    rng = np.random.default_rng(2)
    x = rng.integers(-3, 4, size=(2, 3, 64, 62)).astype(np.float64)
    dy = rng.normal(size=(2, 3, 32, 31))
    k = codegen.load("maxpool2d")
    tracemalloc.start()
    dx = k.backward(x=x, dy=dy)["dx"]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 * dx.nbytes, peak / dx.nbytes
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2, 2).backward(torch.tensor(dy))
    np.testing.assert_array_equal(dx, xt.grad.numpy())


def test_maxpool_forward_is_one_pass_over_each_window():
    """max over (p, q) is one reduction: no partial maxima over q stored and read back
    (in each branch: rows streamed through a tile, and stored in place)."""
    for branch in _branches(_forward_c("maxpool2d")):
        assert "_s1" not in branch and branch.count("bp_acc_nan |=") == 1


def test_saved_argmax_and_max_are_one_scan_in_the_forward():
    """The argmax's scan keeps the best value: it writes y as well, one pass over x (in
    each branch; the streamed one's other reads of x are the rows it asks for ahead)."""
    code = re.sub(r"/\*.*?\*/", "", _forward_c("maxpool2d_indices"))
    streamed, plain = _branches(code)
    for branch in (streamed, plain):
        assert len(re.findall(r"(?<!&)\bx\[", branch)) == 1 and "bp_acc_nan" not in branch
    assert "y[((n*C + c)*Hout + i)*Wout + j] = bp_acc;" in plain
    assert "bp_tile1[j] = bp_acc;" in streamed


def test_saved_argmax_is_read_by_the_backward_not_searched_again():
    """maxpool2d_indices' forward saves each window's first maximal rank (at); the
    backward reads at and dy and never x (as torch.max_pool2d_with_indices_backward)."""
    code = _backward_c("maxpool2d_indices")
    body = re.sub(r"/\*.*?\*/", "", code)
    assert "first maximal position" not in body and not re.search(r"\bx\[", body)
    assert "== at[((n*C + c)*Hout + i)*Wout + j]" in body
    assert codegen.load("maxpool2d_indices", backend="c").reuses == ("at",)


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("c", "float64"),
                                            ("c", "float32")])
@pytest.mark.parametrize("K, S, H, W", [(2, 2, 6, 8), (3, 1, 5, 7), (3, 2, 7, 5)])
def test_saved_argmax_equals_torch_indices(backend, dtype, K, S, H, W):
    """y, the saved ranks (torch's flat indices h*W + w, as p*K + q) and dx equal torch's,
    with ties (values rounded to halves) and a NaN window."""
    torch = require_oracle("torch")
    rng = np.random.default_rng(K * 10 + S)
    x = np.round(rng.normal(size=(2, 3, H, W)) * 2) / 2
    x[0, 0, :2, :2] = np.nan
    xt = torch.tensor(x, requires_grad=True)
    yt, idx = torch.nn.functional.max_pool2d(xt, K, S, return_indices=True)
    dy = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    k = codegen.load("maxpool2d_indices", backend=backend, constants=dict(K=K, S=S),
                     **({"dtype": dtype} if backend == "c" else {}))
    fwd = k.forward(x=x.astype(dtype))
    np.testing.assert_array_equal(fwd["y"], yt.detach().numpy().astype(dtype))
    flat = idx.numpy()
    i = np.arange(flat.shape[2])[:, None] * S
    j = np.arange(flat.shape[3])[None, :] * S
    np.testing.assert_array_equal(fwd["at"], (flat // W - i) * K + (flat % W - j))
    dx = k.backward(x=x.astype(dtype), dy=dy.astype(dtype), at=fwd["at"])["dx"]
    # overlapping windows (S < K) add several dy: the order of the additions differs
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6 if dtype == "float32" else 1e-12)


def test_attention_backward_computes_the_score_gradient_product_once():
    """sum_e dctx[t, e] v[u, e] appears twice in ds (alone, and inside sum_w a[t, w] (.)):
    one array serves both (it was computed twice)."""
    code = _backward_c("attention", CAUSAL=1)
    assert code.count("dctx + b_h*T*E, E, v + b_h*T*E") == 1       # (b, h): one loop


def test_batchnorm_backward_is_one_pass_per_channel_read_twice_from_cache():
    """The channel sums of dy and (x - mu) dy share one loop over n, h, w (dy read once,
    not twice), and dx runs channel by channel inside the same parallel loop right after
    them, so its reads of the channel's x and dy come from cache: one parallel region,
    memory traffic of one read of x and dy and one write of dx, as torch's kernel."""
    code = re.sub(r"/\*.*?\*/", "", _backward_c("batchnorm"))
    assert code.count("BP_OMP(parallel") == 1
    assert code.count("simd reduction(+:bp_acc0, bp_acc1)") == 1
    # the per-channel constants (a powf among them) once per channel and image, not per
    # row; each image's H x W plane one loop (codegen/contiguous_rows.py)
    head, rows = code.split("for (ptrdiff_t j = 0; j < H*W; ++j)")
    assert "powf" in head and "powf" not in rows


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (1, 3, 1, 2), (2, 1, 4, 3)])
def test_batchnorm_channel_pass_equals_torch(dtype, shape):
    """The fused channel pass computes torch's batch norm gradients (sizes of 1 too)."""
    torch = require_oracle("torch")
    rng = np.random.default_rng(len(shape) + shape[0])
    x = rng.normal(size=shape).astype(dtype)
    w, b = rng.normal(size=shape[1]).astype(dtype), rng.normal(size=shape[1]).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    k = codegen.load("batchnorm", backend="c", dtype=dtype)
    got = k.backward(**{**k.forward(x=x, w=w, b=b), "x": x, "w": w, "b": b, "dy": dy})
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True).backward(
        torch.tensor(dy))
    tol = 1e-4 if dtype == "float32" else 1e-10
    for name, t in (("dx", xt), ("dw", wt), ("db", bt)):
        np.testing.assert_allclose(got[name], t.grad.numpy(), rtol=tol, atol=tol, err_msg=name)


def test_a_row_maximum_runs_as_two_chains_and_a_window_maximum_as_one():
    """softmax's row maximum is two accumulators over the row's halves (one `vmaxps`
    chain is 4 cycles a vector: codegen/c_backend.py, _two_chains); max pooling's fixed
    windows keep their one scan."""
    softmax = _forward_c("softmax")
    assert "reduction(max:bp_acc0, bp_acc0_hi)" in softmax
    assert "const ptrdiff_t k = bp_k_j + bp_acc0_half;" in softmax
    assert "_hi" not in _forward_c("maxpool2d")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("I", [1, 2, 7, 32, 33])
def test_two_chain_row_maxima_equal_numpy(dtype, I):
    """The maximum, or NaN, wherever it sits: the first half, the second, the odd last
    element; rows of -Inf and Inf.  Through softmax, against NumPy in float64."""
    rows = []
    for at in sorted({0, I // 2 - 1, I // 2, I - 1} - {-1}):
        for special in (50.0, np.nan, np.inf):
            r = np.linspace(-3, 3, I)
            r[at] = special
            rows.append(r)
    rows += [np.full(I, -np.inf), np.full(I, np.inf)]
    z = np.array(rows, dtype=dtype)
    got = codegen.load("softmax", backend="c", dtype=dtype).forward(z=z)["y"]
    x = z.astype(np.float64)
    with np.errstate(all="ignore"):
        e = np.exp(x - x.max(1, keepdims=True))
        want = e / e.sum(1, keepdims=True)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    tol = 2e-6 if dtype == "float32" else 1e-14     # a few ulp of the float's epsilon
    fin = ~np.isnan(want)
    assert np.allclose(got[fin], want[fin], rtol=tol, atol=0)


def test_a_small_fixed_window_runs_inside_the_vector_loop_over_outputs():
    """A pooling's window (2 x 2, 3 x 3: 16 terms at most) is unrolled inside the loop over
    the outputs of a row, which carries the simd pragma (each lane one output); a wider
    window keeps its own vector loop (codegen/c_backend.py, _small_window)."""
    generated = Path(__file__).resolve().parent.parent / "generated" / "c"
    for name in ("maxpool2d", "maxpool2d_indices", "avgpool2d"):     # K = S = 2
        text = (generated / f"{name}.c").read_text()
        forward = text[text.index(f"int bp_{name}_forward_f32("):]
        forward = forward[:forward.index("\n}\n")]
        assert re.search(r"BP_OMP\(simd\)\n\s*for \(ptrdiff_t j = 0; j < Wout; \+\+j\)",
                         forward), name
        assert "reduction(" not in forward, name
    n, c, i, j, p, q = (sp.Idx(x, sp.Symbol(x.upper())) for x in "ncijpq")
    simd = "#pragma omp simd"

    def window(k):
        nest = Nest("reduce", "y", (n, c, i, j), (n, c, i, j, p, q), (p, q),
                    sp.IndexedBase("x")[n, c, i + p, j + q], op="max")
        return _small_window(nest, [(x.name, x.name.upper()) for x in (n, c, i, j)]
                             + [("p", str(k)), ("q", str(k))], simd)

    assert window(2) == window(4) == simd                 # 4 and 16 terms
    assert window(5) == ""                                # 25 terms: the window's own loop
    over_extents = Nest("reduce", "y", (n, c, i, j), (n, c, i, j, p, q), (p, q),
                        sp.IndexedBase("x")[n, c, i + p, j + q], op="sum")
    assert _small_window(over_extents, [(x.name, x.name.upper()) for x in (n, c, i, j, p, q)],
                         simd) == ""                      # extents known at run time only


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("K, S", [(2, 2), (3, 1)])
def test_pooling_over_long_rows_equals_torch(dtype, K, S):
    """Rows long enough for the vector loop over outputs and its odd tail (W = 151), with
    ties, NaN, Inf and -Inf at lanes all along the row: max pooling's y, the first
    maximal rank and average pooling equal torch."""
    torch = require_oracle("torch")
    rng = np.random.default_rng(K * 7 + S)
    H, W = 2 * K + 1, 151
    x = np.round(rng.normal(size=(2, 3, H, W)) * 2) / 2       # halves: ties in most windows
    x[0, 0, 0, ::7] = np.nan
    x[0, 1, 1, 3::11] = np.inf
    x[1, 2, :, 5::13] = -np.inf
    x[1, 0, 0, 2::5] = np.nan
    x[1, 0, 1, 2::5] = np.inf
    xt = torch.tensor(x)
    yt, idx = torch.nn.functional.max_pool2d(xt, K, S, return_indices=True)
    i = np.arange(idx.shape[2])[:, None] * S
    j = np.arange(idx.shape[3])[None, :] * S
    ranks = (idx.numpy() // W - i) * K + (idx.numpy() % W - j)
    c = dict(backend="c", dtype=dtype, constants=dict(K=K, S=S))
    got = codegen.load("maxpool2d", **c).forward(x=x.astype(dtype))["y"]
    np.testing.assert_array_equal(got, yt.numpy().astype(dtype))
    saved = codegen.load("maxpool2d_indices", **c).forward(x=x.astype(dtype))
    np.testing.assert_array_equal(saved["y"], yt.numpy().astype(dtype))
    np.testing.assert_array_equal(saved["at"], ranks)
    finite = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    avg = codegen.load("avgpool2d", **c).forward(x=finite.astype(dtype))["y"]
    want = torch.nn.functional.avg_pool2d(torch.tensor(finite), K, S).numpy()
    np.testing.assert_allclose(avg, want, rtol=1e-6 if dtype == "float32" else 1e-13,
                               atol=1e-6 if dtype == "float32" else 1e-13)
