"""Streaming (non-temporal) stores of large write-only outputs (codegen/streaming.py):
which outputs the emitted C streams, and that results are unchanged where it does."""
import numpy as np

import codegen
from codegen.c_backend import c_sources
from codegen.plan import plan
from derive import derive
from derive.builtins import builtin_text
from derive.parser import parse_spec

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


def test_streams_only_outputs_of_row_loops_that_sum_nothing():
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
