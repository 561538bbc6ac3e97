"""Streaming (non-temporal) stores of large write-only outputs (codegen/streaming.py):
which outputs the emitted C streams, and that results are unchanged where it does."""
import numpy as np
import pytest

import codegen
from codegen.c_backend import c_sources
from codegen.plan import plan
from derive import derive
from derive.builtins import builtin_text
from derive.parser import parse_spec

from .oracles import require_oracle

# h is an output that y's statement reads again; dx (backward) is only written
SPEC = """layer twostep  an output a later statement reads
dims N, I
input  x[N, I]
output h[N, I]
output y[N, I]

h[n, i] = exp(x[n, i])
y[n, i] = h[n, i] * x[n, i] + h[n, i]
"""


def function(source: str, name: str) -> str:
    start = source.index(f"int {name}(")
    return source[start:source.index("\n}\n", start)]


def test_streams_a_write_only_output_and_not_one_read_again():
    source = c_sources(plan(derive(parse_spec(SPEC, "<twostep>"))))["twostep.c"]
    backward = function(source, "bp_twostep_backward_f32")
    assert "bp_stream_f32(&dx[n*I + bp_b], bp_block);" in backward
    assert "N*I >= BP_STREAM_MIN" in backward and "bp_stream_fence();" in backward
    # the plain loop stays for small outputs and where the CPU has no streaming stores
    assert backward.count("dx[n*I + i] =") == 3 and "#endif" in backward
    assert "bp_stream_f64(&dx[" in function(source, "bp_twostep_backward_f64")
    forward = function(source, "bp_twostep_forward_f32")
    assert "bp_stream" not in forward and "h[n*I + i] = bp_exp_f32" in forward
    # the helpers compile only where the builtins exist (no <immintrin.h>: 0.2 s of
    # parsing per compile unit); plain C99 elsewhere
    assert "#define BP_STREAMS 0" in source and "__builtin_ia32_movntps512" in source
    assert "#include <immintrin.h>" not in source


def test_streams_neither_a_row_sum_nor_an_output_read_again():
    """y[n] is a row's sum, not a row; h is read again by y's statement: nothing streams."""
    source = c_sources(plan(derive(parse_spec(SPEC.replace(
        "y[n, i] = h[n, i] * x[n, i] + h[n, i]", "y[n] = sum(h[n, i] * x[n, i], i)").replace(
        "output y[N, I]", "output y[N]"), "<rowsum>"))))["twostep.c"]
    assert "bp_stream" not in function(source, "bp_twostep_forward_f32")


def test_streamed_results_equal_plain_ones(tmp_path):
    """Above BP_STREAM_MIN (8 MB), rows of 1030 floats: every row starts at another
    offset in its line, and has a head and a tail stored plainly."""
    spec = tmp_path / "twostep.bp"
    spec.write_text(SPEC)
    for dtype in ("float32", "float64"):
        c = codegen.load(str(spec), backend="c", dtype=dtype)
        rng = np.random.default_rng(7)
        N, I = 2048 if dtype == "float32" else 1024, 1030
        x, dh, dy = (rng.standard_normal((N, I)).astype(dtype) for _ in range(3))
        h = np.exp(x)
        grads = c.backward(x=x, dh=dh, dy=dy, h=h)
        expect = (dh + dy * x + 2 * dy) * h
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(grads["dx"], expect, rtol=tol, atol=tol)
        # the same rows 64 at a time, each call below the size that streams
        plain = np.concatenate([c.backward(x=x[r:r + 64], dh=dh[r:r + 64], dy=dy[r:r + 64],
                                           h=h[r:r + 64])["dx"] for r in range(0, N, 64)])
        np.testing.assert_array_equal(grads["dx"], plain)


def test_a_one_loop_step_streams_every_output_in_shared_blocks():
    source = c_sources(plan(derive(parse_spec(builtin_text("adam"), "<adam>"))))["adam.c"]
    forward = function(source, "bp_adam_forward_f32")
    for k, name in enumerate(("m_next", "v_next", "p_next")):
        assert f"bp_stream_f32(&{name}[bp_b], bp_block{k});" in forward
    assert "BP_OMP(for schedule(static) nowait)" in forward
    assert "bp_stream" not in function(source, "bp_adam_forward_inplace_f32")


def test_streamed_step_equals_plain_steps():
    c = codegen.load("adam", backend="c", dtype="float32")
    P = 2_100_001                       # 8.4 MB an output; an odd tail
    rng = np.random.default_rng(3)
    a = {n: rng.random(P, dtype=np.float32) for n in "pgmv"}
    a.update({n: np.float32(x) for n, x in
              dict(step=3, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8).items()})
    whole = c.forward(**a)
    parts = [c.forward(**{n: x[r:r + 100_000] if np.ndim(x) else x for n, x in a.items()})
             for r in range(0, P, 100_000)]
    for n in c.returns:
        np.testing.assert_array_equal(whole[n], np.concatenate([p[n] for p in parts]))


def test_a_streamed_row_asks_for_the_next_row_line_by_line():
    """Layer norm backward's dx pass is streamed and prefetches the next row: each
    streamed block is one cache line, and asks for that line of the next row of x and dy
    (the plain loop asks block by block); a streamed pass without the prefetch left the
    next row's first pass waiting on memory."""
    source = c_sources(plan(derive(parse_spec(builtin_text("layernorm"), "<ln>"))))
    backward = function(source["layernorm.c"], "bp_layernorm_backward_f32")
    streamed = backward[backward.index("for (bp_b = bp_head;"):backward.index("bp_stream_fence")]
    for row in ("dy", "x"):
        assert f"BP_PREFETCH({row} + (n + 1 < N ? n + 1 : n)*C + bp_b);" in streamed
    # the twostep's dx pass has no later pass to prefetch for: none
    twostep = c_sources(plan(derive(parse_spec(SPEC, "<twostep>"))))["twostep.c"]
    assert "BP_PREFETCH" not in function(twostep, "bp_twostep_backward_f32")


# a pass calling vector math (tanh) on rows it streams out: forward y, backward dx
HEAVY = """layer tanhgate  x (.) tanh(x): vector math in a streamed pass
dims N, I
input  x[N, I]
output y[N, I]

y[n, i] = x[n, i] * tanh(x[n, i])
"""


def test_a_streamed_pass_calling_vector_math_asks_for_its_rows_ahead():
    """Each streamed block of a pass that calls the toolkit's vector math asks for the
    line BP_AHEAD_BYTES further on in every row it reads of the target's shape (the
    forward: x; the backward: x and dy); a pass of plain arithmetic (twostep's dx) or of a
    compare and select (relu) asks for none."""
    source = c_sources(plan(derive(parse_spec(HEAVY, "<tanhgate>"))))["tanhgate.c"]
    for entry, rows in (("forward", ["x"]), ("backward", ["dy", "x"])):
        for sfx in ("f32", "f64"):
            body = function(source, f"bp_tanhgate_{entry}_{sfx}")
            streamed = body[body.index("for (bp_b = bp_head;"):body.index("bp_stream_fence")]
            asked = [line.strip() for line in streamed.splitlines() if "BP_READ_AHEAD" in line]
            assert asked == [f"BP_READ_AHEAD(&{r}[n*I + bp_b]);" for r in rows], (entry, sfx)
    assert "#define BP_AHEAD_BYTES 4096" in source
    twostep = c_sources(plan(derive(parse_spec(SPEC, "<twostep>"))))["twostep.c"]
    relu = c_sources(plan(derive(parse_spec(builtin_text("relu"), "<relu>"))))["relu.c"]
    assert "BP_READ_AHEAD(&" not in twostep and "BP_READ_AHEAD(&" not in relu


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_asked_for_ahead_give_the_plain_results(tmp_path, dtype):
    """Streamed with requests 4 KB ahead, which in the last rows point past the arrays'
    ends (a hint never faults): equal to the same rows computed 64 at a time, below the
    size that streams, and to NumPy."""
    spec = tmp_path / "tanhgate.bp"
    spec.write_text(HEAVY)
    c = codegen.load(str(spec), backend="c", dtype=dtype)
    rng = np.random.default_rng(11)
    N, I = (2048 if dtype == "float32" else 1024), 1030
    x, dy = (rng.standard_normal((N, I)).astype(dtype) for _ in range(2))
    y, dx = c.forward(x=x)["y"], c.backward(x=x, dy=dy)["dx"]
    tol = 1e-5 if dtype == "float32" else 1e-12
    th = np.tanh(x.astype(np.float64))
    np.testing.assert_allclose(y, x * th, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, dy * (th + x * (1 - th ** 2)), rtol=tol, atol=tol)
    # float: the toolkit's own tanh, one code in every loop, so equal bit for bit;
    # double: libmvec's tanh in the vector loops and libm's in a row's head and tail,
    # which may differ in the last bits (up to 2 ulp here)
    same = np.testing.assert_array_equal if dtype == "float32" else \
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)
    rows = range(0, N, 64)
    same(y, np.concatenate([c.forward(x=x[r:r + 64])["y"] for r in rows]))
    same(dx, np.concatenate([c.backward(x=x[r:r + 64], dy=dy[r:r + 64])["dx"] for r in rows]))


def test_a_row_loop_that_sums_streams_and_sums_in_lanes():
    """Sigmoid + BCE's fused pass sums the loss beside dz: dz is streamed, and the loss adds
    into one array of the block's lanes, reduced once after the row's blocks (an `omp simd
    reduction` per 16-element block reduced across lanes at every block's end)."""
    source = c_sources(plan(derive(parse_spec(builtin_text("sigmoid_bce"), "<bce>"))),
                       dtypes=("float32",))["sigmoid_bce.c"]
    fused = function(source, "bp_sigmoid_bce_forward_backward_f32")
    streamed = fused[fused.index("for (bp_b = bp_head;"):fused.index("bp_stream_fence")]
    assert "bp_stream_f32(&dz[n*I + bp_b], bp_block0);" in streamed
    assert "bp_total0_lanes[bp_j] += " in streamed
    assert "BP_STREAM_BLOCK float bp_total0_lanes[16] = {0};" in fused
    assert "bp_total0 += bp_total0_lanes[bp_j];" in streamed
    block = streamed.split("for (ptrdiff_t bp_j = 0; bp_j < 16; ++bp_j) {")[0]
    assert "reduction" not in block


def test_streamed_sums_equal_plain_ones():
    """Rows of 1000 floats (each at another offset in its line), 8 MB and more of dz:
    every element of dz and the loss as NumPy computes them, and as row blocks below the
    streaming size give them (summed plainly)."""
    c = codegen.load("sigmoid_bce", backend="c", dtype="float32")
    rng = np.random.default_rng(5)
    N, I = 2200, 1000
    z = rng.standard_normal((N, I)).astype(np.float32) * 3
    t = (rng.random((N, I)) < 0.5).astype(np.float32)
    whole = c.forward_backward(z=z, t=t)
    parts = [c.forward_backward(z=z[r:r + 200], t=t[r:r + 200]) for r in range(0, N, 200)]
    sigmoid = 1 / (1 + np.exp(-z.astype(np.float64)))
    np.testing.assert_allclose(whole["dz"], (sigmoid - t) / N, rtol=1e-5, atol=2e-7 / N)
    expect = np.mean(np.logaddexp(0, z) - t * z, dtype=np.float64) * I
    np.testing.assert_allclose(whole["L"], expect, rtol=1e-5)
    np.testing.assert_allclose(sum(p["L"] * 200 for p in parts) / N, expect, rtol=1e-5)


def test_every_source_with_a_streamed_branch_has_the_helpers():
    """`#if BP_STREAMS` of an undefined macro is 0: a source whose only streamed loops sit
    in a row loop's members (layer norm, softmax + CE) compiled without its streamed
    branch until the helpers were included for members and merged parts too.  Checked on
    every built-in layer's generated source (tests/test_generated.py keeps them fresh)."""
    from pathlib import Path
    sources = sorted((Path(__file__).resolve().parent.parent / "generated" / "c").glob("*.c"))
    assert sources
    missing = [p.name for p in sources if "#if BP_STREAMS" in p.read_text()
               and "#define BP_STREAMS 1" not in p.read_text()]
    assert not missing, f"streamed branches without the helpers: {missing}"
    for name in ("layernorm", "softmax_cross_entropy_labels"):
        assert "#define BP_STREAMS 1" in (sources[0].parent / f"{name}.c").read_text()


def test_streamed_layer_norm_rows_equal_plain_ones():
    """Layer norm backward's dx pass, streamed above 8 MB with dw and db summed beside it
    and the next row prefetched: dx as rows below the streaming size give it, dw and db
    as their sums."""
    c = codegen.load("layernorm", backend="c", dtype="float32")
    rng = np.random.default_rng(11)
    N, C = 2800, 776                  # 8.7 MB of dx; rows at every offset in a line
    x, dy = (rng.standard_normal((N, C)).astype(np.float32) for _ in range(2))
    w, b = rng.standard_normal(C).astype(np.float32), np.zeros(C, np.float32)
    saved = c.forward(x=x, w=w, b=b)
    whole = c.backward(x=x, w=w, b=b, dy=dy, mu=saved["mu"], rstd=saved["rstd"])
    parts = [c.backward(x=x[r:r + 400], w=w, b=b, dy=dy[r:r + 400], mu=saved["mu"][r:r + 400],
                        rstd=saved["rstd"][r:r + 400]) for r in range(0, N, 400)]
    np.testing.assert_array_equal(whole["dx"], np.concatenate([p["dx"] for p in parts]))
    for g in ("dw", "db"):
        np.testing.assert_allclose(whole[g], sum(p[g] for p in parts), rtol=1e-4, atol=1e-3)


def test_a_row_loop_with_its_channels_outermost_streams():
    """Batch norm's dx runs inside the loop over channels (its sums first), each image
    plane one merged row: its rows are still whole rows of dx, so they stream."""
    code = function(c_sources(plan(derive(parse_spec(builtin_text("batchnorm")))))[
        "batchnorm.c"], "bp_batchnorm_backward_f32")
    assert code.index("for (ptrdiff_t c = 0; c < C; ++c)") \
        < code.index("bp_stream_head(&dx[((n*C + c)*H)*W], sizeof(float), H*W)")


def test_streamed_batch_norm_planes_equal_plain_ones():
    """Channels are independent in batch norm: dx of six channels at once (12.6 MB,
    streamed, planes at every offset in a line) equals each channel's alone (2.1 MB,
    stored plainly)."""
    c = codegen.load("batchnorm", backend="c", dtype="float32")
    rng = np.random.default_rng(12)
    x, dy = (rng.standard_normal((4, 6, 331, 397)).astype(np.float32) for _ in range(2))
    w, b = rng.standard_normal(6).astype(np.float32), np.zeros(6, np.float32)
    saved = c.forward(x=x, w=w, b=b)
    whole = c.backward(x=x, w=w, b=b, dy=dy, mu=saved["mu"], var=saved["var"],
                       rstd=saved["rstd"])["dx"]
    for k in range(6):
        one = lambda a: np.ascontiguousarray(a[:, k:k + 1])
        alone = c.backward(x=one(x), w=w[k:k + 1], b=b[k:k + 1], dy=one(dy),
                           mu=saved["mu"][k:k + 1], var=saved["var"][k:k + 1],
                           rstd=saved["rstd"][k:k + 1])["dx"]
        np.testing.assert_array_equal(whole[:, k:k + 1], alone)


@pytest.mark.parametrize("K, S", [(2, 2), (3, 2)])
def test_streamed_average_pooling_backward_equals_torch(K, S):
    """Average pooling's dx, a gather with no scratch of its own, above the streaming size
    at odd sizes: through the tile (codegen/gather_streams.py) as torch gives it."""
    code = function(c_sources(plan(derive(parse_spec(builtin_text("avgpool2d")))))[
        "avgpool2d.c"], "bp_avgpool2d_backward_f32")
    assert "bp_stream_copy_f32(&dx[" in code
    torch = require_oracle("torch")
    rng = np.random.default_rng(K + S)
    x = rng.normal(size=(2, 4, 515, 511)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, K, S)
    dy = rng.normal(size=tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    k = codegen.load("avgpool2d", backend="c", dtype="float32", constants=dict(K=K, S=S))
    dx = k.backward(x=x, dy=dy, out={"dx": np.full(x.shape, 7.0, np.float32)})["dx"]
    # up to 4 windows' terms in another order than torch's: 3 roundings of at most eps
    # times the sum of |terms| (4 max|dy| / K^2)
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0,
                               atol=12 * eps * np.abs(dy).max() / K ** 2)
