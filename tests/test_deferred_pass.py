"""A row loop's last pass run a row late, inside the next row's sum (codegen/row_loops.py,
defer_last_pass): which loops get it, the source it prints, and results equal to NumPy's
and to the passes run one after the other, on both sides of the sizes that choose it."""
import numpy as np
import pytest

import codegen
from codegen.c_backend import c_sources
from codegen.plan import plan
from derive import derive
from derive.builtins import builtin_text
from derive.parser import parse_spec

# a user's layer: a row sum of exponentials, the output written from x (no summand kept)
EXPNORM = """layer expnorm  each row over the sum of its exponentials
dims N, I
input  x[N, I]
output y[N, I]

y[n, i] = x[n, i] / sum(exp(x[n, k]), k)
"""
# the same with a cheap sum: nothing to overlap, the passes stay one after the other
SQUARES = EXPNORM.replace("exp(x[n, k])", "x[n, k]**2")
# the output read again by a later statement: not streamed, so not deferred
READ_AGAIN = EXPNORM.replace("output y[N, I]", "output y[N, I]\noutput u[N, I]") + \
    "u[n, i] = y[n, i] * 2\n"


def source(text: str, name: str) -> str:
    return c_sources(plan(derive(parse_spec(text, f"<{name}>"))), dtypes=("float32",))[
        f"{name}.c"]


def function(src: str, name: str) -> str:
    start = src.index(f"int {name}(")
    return src[start:src.index("\n}\n", start)]


def test_softmax_cross_entropy_writes_each_dz_row_inside_the_next_row_s_exp_sum():
    fused = function(source(builtin_text("softmax_cross_entropy_labels"),
                            "softmax_cross_entropy_labels"),
                     "bp_softmax_cross_entropy_labels_forward_backward_f32")
    deferred, plain = fused.split("} else\n    #endif", 1)
    # a ring of two rows a thread, and each thread's rows in order
    assert "BP_STREAM_BLOCK float bp_ring[BP_RING_MAX / sizeof(float)];" in deferred
    assert "I <= BP_RING_MAX / 2 / (ptrdiff_t)sizeof(float)" in deferred
    assert "BP_OMP(for schedule(static) reduction(+:bp_total2))" in deferred
    # the merged loop: this row's exps into the ring, the last row's dz streamed from it
    block = deferred[deferred.index("for (bp_b = bp_head;"):]
    block = block[:block.index("bp_stream_fence")]
    assert "bp_row[k] = bp_v;" in block and "bp_acc1_lanes[bp_j] += bp_v;" in block
    assert "bp_block0[bp_j] = bp_acc4_r2*bp_row_prev[k];" in block
    assert "bp_stream_f32(&dz[bp_n_prev*I + bp_b], bp_block0);" in block
    assert "BP_PREFETCH(z + (n + 1 < N ? n + 1 : n)*I + bp_b);" in block
    # the label's element after the streamed row; the rows swap; a thread's last row after
    assert "dz[bp_n_prev*I + bp_acc4_r1] = " in deferred
    assert "bp_row = bp_row_prev;" in deferred and deferred.count("if (bp_n_prev >= 0)") == 2
    assert "dz[n*I + k] = bp_v;" not in deferred            # dz is written once, streamed
    # the passes one after the other where the output is small or the row too long
    assert "dz[n*I + k] = bp_v;" in plain and "bp_n_prev" not in plain


def test_which_row_loops_run_their_last_pass_a_row_late():
    deferring = {
        "softmax": "bp_softmax_forward_f32",
        "softmax_cross_entropy_labels": "bp_softmax_cross_entropy_labels_forward_backward_f32"}
    for layer, fn in deferring.items():
        assert "bp_n_prev = -1;" in function(source(builtin_text(layer), layer), fn), layer
    # two outputs in its last pass; sums of cheap terms (layer norm's, and the one-hot
    # targets' sum right before dz); one pass
    for layer, fn in {"log_softmax": "bp_log_softmax_forward_f32",
                      "layernorm": "bp_layernorm_backward_f32",
                      "softmax_cross_entropy": "bp_softmax_cross_entropy_forward_backward_f32",
                      "sigmoid_bce": "bp_sigmoid_bce_forward_backward_f32"}.items():
        assert "bp_n_prev" not in function(source(builtin_text(layer), layer), fn), layer
    expnorm = function(source(EXPNORM, "expnorm"), "bp_expnorm_forward_f32")
    assert "bp_n_prev = -1;" in expnorm and "bp_ring" not in expnorm   # no summand kept
    assert "bp_block0[bp_j] = bp_acc2_r1*x[bp_n_prev*I + k];" in expnorm
    assert "bp_n_prev" not in function(source(SQUARES, "expnorm"), "bp_expnorm_forward_f32")
    assert "bp_n_prev" not in function(source(READ_AGAIN, "expnorm"),
                                       "bp_expnorm_forward_f32")


def _softmax_family(layer, rng, N, I, dtype):
    z = (rng.standard_normal((N, I)) * 3).astype(dtype)
    if layer == "softmax_cross_entropy_labels":
        return dict(z=z, t=rng.integers(0, I, N))
    if layer == "softmax_cross_entropy":
        t = np.zeros((N, I), dtype)
        t[np.arange(N), rng.integers(0, I, N)] = 1
        return dict(z=z, t=t)
    return dict(z=z)


@pytest.mark.parametrize("layer", ["softmax", "softmax_cross_entropy_labels"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_a_row_late_equal_numpy_and_the_passes_in_turn(layer, dtype):
    """Over the streaming size (8 MB): rows that fill the ring (8192 floats, 4096
    doubles), rows of 1000 at every offset in their lines (a head and a tail stored
    plainly), an odd number of rows split unevenly between 2 threads, and rows one
    element too long for the ring (the passes in turn).  Against the NumPy module in
    float64, and against the same rows 64 at a time, below the streaming size: sums of
    thousands of terms in float32 differ in their roundings, 1e-5 of the largest value."""
    c = codegen.load(layer, backend="c", dtype=dtype)
    oracle = codegen.load(layer)
    entry = "forward" if layer == "softmax" else "forward_backward"
    rng = np.random.default_rng(17)
    ring = 8192 if dtype == "float32" else 4096
    rows = (8 << 20) // (np.dtype(dtype).itemsize * ring) + 1          # just over 8 MB
    tol = 1e-5 if dtype == "float32" else 1e-13
    for N, I in ((rows, ring), ((8 << 20) // (np.dtype(dtype).itemsize * 1000) + 3, 1000),
                 (rows, ring + 1)):
        a = _softmax_family(layer, rng, N, I, dtype)
        want = getattr(oracle, entry)(**{k: v.astype(np.float64) if v.dtype.kind == "f"
                                         else v for k, v in a.items()})
        for threads in (1, 2):
            c.set_threads(threads)
            got = getattr(c, entry)(**a)
            # (a loss averages over its batch: a part's dz scaled back to the whole's)
            mean = 1 if layer == "softmax" else N
            parts = [{k: v * (len(a["z"][r:r + 64]) if mean > 1 else 1) / mean
                      for k, v in getattr(c, entry)(**{k: v[r:r + 64] for k, v in
                                                       a.items()}).items() if np.ndim(v)}
                     for r in range(0, N, 64)]
            for k, v in got.items():
                scale = np.abs(want[k]).max()
                np.testing.assert_allclose(v, want[k], rtol=0, atol=tol * scale,
                                           err_msg=f"{layer} {N}x{I} {threads}: {k}")
                if np.ndim(v):
                    np.testing.assert_allclose(v, np.concatenate([p[k] for p in parts]),
                                               rtol=0, atol=tol * scale,
                                               err_msg=f"{layer} {N}x{I} {threads}: {k} "
                                                       "against the rows in parts")
    c.set_threads(2)


def test_a_user_layer_a_row_late_equals_numpy(tmp_path):
    spec = tmp_path / "expnorm.bp"
    spec.write_text(EXPNORM)
    c = codegen.load(str(spec), backend="c", dtype="float32")
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2101, 1003)).astype(np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(c.forward(x=x)["y"],
                               x64 / np.exp(x64).sum(1, keepdims=True), rtol=2e-6, atol=0)


def test_no_ring_runs_the_passes_in_turn(tmp_path, monkeypatch):
    """-DBP_RING_MAX=0 (for a caller whose threads have small stacks) compiles the ring's
    path out: the passes run in turn, with the results NumPy gives."""
    import json

    import codegen.build as b
    src = function(source(builtin_text("softmax"), "softmax"), "bp_softmax_forward_f32")
    assert "#if BP_STREAMS && BP_RING_MAX > 0" in src
    # a late pass that keeps no summand needs no ring, and no such condition
    assert "BP_RING_MAX" not in function(source(EXPNORM, "expnorm"), "bp_expnorm_forward_f32")
    b._loaded.clear()          # modules built earlier in this process would be reused
    monkeypatch.setenv("BACKPROP_CFLAGS", " ".join(b.DEFAULT_OPT_FLAGS + ["-DBP_RING_MAX=0"]))
    c = codegen.load("softmax", backend="c", dtype="float32", cache=tmp_path)
    (entry,) = [e for e in (tmp_path / "c").iterdir() if e.is_dir() and e.name != "index"]
    assert "-DBP_RING_MAX=0" in json.loads((entry / "manifest.json").read_text())["command"]
    rng = np.random.default_rng(29)
    z = rng.standard_normal((260, 8192)).astype(np.float32)       # over 8 MB: would defer
    z64 = z.astype(np.float64)
    want = np.exp(z64 - z64.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(c.forward(z=z)["y"], want, rtol=0, atol=1e-5 * want.max())
    b._loaded.clear()
