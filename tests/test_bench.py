"""The benchmark measures what it claims: every peer computes the same results as the
generated kernel, and `backprop bench --json` writes well-formed records.  No timing is
asserted (speed lives in bench/, never in tests)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import codegen

from .oracles import rel_err, require_oracle
from bench import peer_c
from bench.cases import cases
from bench.floor import Floor
from bench.run import case_arrays, entry_of, same_traffic

CASES = cases(scale=64)


@pytest.mark.parametrize("case", CASES, ids=[c.kernel for c in CASES])
def test_every_peer_computes_the_same_results(case):
    c = codegen.load(case.layer, backend="c", dtype="float32",
                     constants=case.constants or None)
    arrays, args = case_arrays(case, c, np.random.default_rng(0))
    ours = entry_of(c, case)(**args)
    hand = case.hand(dict(arrays)) if case.hand is not None else {}
    for n, v in hand.items():
        assert_same(ours[n], v, case, f"hand {n}")
    if case.peer is not None:       # the hand-C peer, from the same arrays
        out = {n: np.empty_like(v) for n, v in ours.items() if np.ndim(v)}
        loss = case.peer(peer_c.library(), arrays, out)()
        for n, v in out.items():
            np.testing.assert_allclose(v, ours[n], rtol=2e-4, atol=2e-5, err_msg=f"hand-c {n}")
        if "L" in ours:
            np.testing.assert_allclose(loss, float(ours["L"]), rtol=1e-5)
    torch = require_oracle("torch")
    call = case.torch(torch, {k: (np.array(v) if isinstance(v, np.ndarray) else v)
                              for k, v in arrays.items()})
    got = call()
    if case.kernel == "adam_step":
        return                    # in place on copies: compared in tests/test_outputs.py
    if case.kernel.endswith("fwd_bwd"):
        loss, dz = got
        np.testing.assert_allclose(float(loss.detach()), float(ours["L"]), rtol=1e-4)
        np.testing.assert_allclose(dz.numpy(), ours["dz"], rtol=2e-4, atol=1e-7)
    else:
        names = c.returns if case.entry == "forward" else c.gradients
        want = dict(zip(names, got if isinstance(got, tuple) else (got,)))
        for n, v in want.items():
            assert_same(ours[n], v.detach().numpy(), case, n)


def assert_same(ours, want, case, what):
    """Elementwise for elementwise kernels.  A GEMM's outputs (a convolution's dw sums
    N*H*W products in float32) are summed in another order by each peer (and by each
    machine's BLAS): small entries differ by ~sqrt(K) eps of the large ones, so they are
    compared normwise (float32 sums of up to 1e4 terms: ~1e-5)."""
    if case.flops:
        assert rel_err(ours, want) < 1e-4, what
    else:
        np.testing.assert_allclose(np.asarray(want, np.float64), ours, rtol=2e-4, atol=2e-5,
                                   err_msg=what)


def test_floor_streams_a_pooling_s_traffic():
    """One array into another of a quarter (or four times) its size: every element read
    once (the sums of four), every output written once."""
    floor = Floor()
    a = np.arange(12, dtype=np.float32)
    small, big = np.empty(3, np.float32), np.empty(12, np.float32)
    floor.stream([a], [small])
    np.testing.assert_array_equal(small, a.reshape(3, 4).sum(1))
    floor.stream([small], [big])
    np.testing.assert_array_equal(big, np.repeat(small, 4))
    with pytest.raises(ValueError, match="two sizes that divide one another"):
        floor.stream([a], [np.empty(5, np.float32)])


def test_floor_streams_a_saved_argmax_s_traffic():
    """A pooling that saves its argmax: one big array into two small ones (y and at), and
    two small ones (dy and at) into one big one (dx)."""
    floor = Floor()
    a = np.arange(12, dtype=np.float32)
    y, at, dx = np.empty(3, np.float32), np.empty(3, np.float32), np.empty(12, np.float32)
    floor.stream([a], [y, at])
    np.testing.assert_array_equal(y, a.reshape(3, 4).sum(1))
    np.testing.assert_array_equal(at, y + 1)
    floor.stream([y, at], [dx])
    np.testing.assert_array_equal(dx, np.repeat(y + at, 4))
    with pytest.raises(ValueError, match="one or two small inputs"):
        floor.stream([a, y], [dx])


def test_pooling_floors_read_and_write_every_element_once():
    """The pooling floors go in blocks of 16 small elements and their big lines (streamed
    when large), the ends one by one: at any offset in a line, short or past
    BP_STREAM_MIN, the two outputs of a reduction at different offsets, every big element
    is summed into exactly one small one (the totals agree), and each small one reaches
    exactly `ratio` big ones (the same multiset)."""
    floor = Floor()
    rng = np.random.default_rng(0)
    total = lambda v: v.astype(np.float64).sum()      # exact: small integers, float64
    for n in (3, 17, 40, 1001, 2_200_000):
        for offset in (0, 4, 7):
            big = lambda: np.zeros(4 * n + 16, np.float32)[offset:offset + 4 * n]
            small = lambda o=offset: np.zeros(n + 16, np.float32)[o:o + n]
            # the second output at another offset in its line: it goes through a stage
            a, y, at, dx = big(), small(), small((offset + 5) % 16), big()
            a[:] = rng.integers(0, 8, a.size)
            floor.stream([a], [y])
            assert total(y) == total(a), (n, offset)
            floor.stream([a], [y, at])
            assert total(y) == total(a) and np.array_equal(at, y + 1), (n, offset)
            floor.stream([y], [dx])
            np.testing.assert_array_equal(np.sort(dx), np.sort(np.repeat(y, 4)))
            floor.stream([y, at], [dx])
            np.testing.assert_array_equal(np.sort(dx), np.sort(np.repeat(y + at, 4)))


def test_floor_streams_what_it_is_given():
    floor = Floor()
    a, b = np.arange(10, dtype=np.float32), np.ones(10, np.float32)
    out = np.empty(10, np.float32)
    floor.stream([a, b], [out])
    np.testing.assert_array_equal(out, a + b)
    floor.stream_in_place([a, b], 1)
    np.testing.assert_array_equal(a, out)          # a <- a + b
    with pytest.raises(ValueError, match="1-4 inputs"):
        floor.stream([a], [np.empty(3, np.float32)])


def test_floor_builds_and_streams_with_the_user_s_own_flags(tmp_path, monkeypatch):
    """BACKPROP_CFLAGS replaces the default flags: without -march=native there are no
    streaming stores, and the floor must still compile (its blocks' alignment macro was
    defined only where stores stream) and compute the same."""
    monkeypatch.setenv("BACKPROP_CFLAGS", "-O2")
    monkeypatch.setattr(codegen.build, "_loaded", {})
    floor = Floor(cache=tmp_path)
    a, b = np.arange(40, dtype=np.float32), np.ones(40, np.float32)
    out, small = np.empty(40, np.float32), np.empty(10, np.float32)
    floor.stream([a, b], [out])
    np.testing.assert_array_equal(out, a + 1)
    floor.stream([a], [small])
    np.testing.assert_array_equal(small, a.reshape(10, 4).sum(axis=1))


def test_floor_aligns_its_vector_loop_and_streams_every_element():
    """NumPy's big arrays start 16 bytes past a cache line, where every vector access
    straddles two lines: the floor streams the elements before the first output's line
    boundary one by one and runs its vector loop from there; none is lost or doubled, for
    arrays that start at any float of a line and sizes shorter than the head."""
    from bench.floor import SHAPES
    from templates import render
    source = render("floor.c.j2", shapes=SHAPES, version="test")
    body = source.split("void bp_floor_4_3(")[1].split("\n}\n")[0]
    assert "bp_floor_head(out0, n)" in body
    assert "for (ptrdiff_t i = head; i < n; ++i)" in body.split("#pragma omp parallel for simd")[1]
    floor = Floor()
    for offset in range(16):
        for n in (1, 3, 40, 1001):
            buffers = [np.zeros(n + 16, np.float32)[offset:offset + n] for _ in range(5)]
            a, b, out, c, d = buffers
            a[:], b[:] = np.arange(n), 2
            floor.stream([a, b], [out])
            np.testing.assert_array_equal(out, a + 2)
            c[:], d[:] = a, 1
            floor.stream_in_place([c, d], 1)
            np.testing.assert_array_equal(c, a + 1)


def test_floor_streams_large_outputs_as_the_kernels_do():
    """Outputs of BP_STREAM_MIN (8 MB) and more are written with non-temporal stores, as
    the generated kernels write theirs (codegen/streaming.py): a floor that paid the
    write-allocate fetch the kernels skip put Adam's new arrays at 210% of it.  In place
    the lines were just read, and the floor stores plainly.  Every element is written once,
    with the outputs at any offset in a line, or at different ones (the first output's
    blocks on its line boundaries, the others through a stage, streamed too)."""
    from bench.floor import SHAPES
    from templates import render
    source = render("floor.c.j2", shapes=SHAPES, version="test")
    body = source.split("void bp_floor_4_3(")[1].split("\n}\n")[0]
    assert "n >= BP_STREAM_MIN / (ptrdiff_t)sizeof(float)" in body
    assert "bp_stream_f32(out0 + b, block0);" in body
    for k in (1, 2):
        assert f"bp_floor_stream_any(&stage{k}, out{k} + b, block{k}, shift{k});" in body
        assert f"bp_floor_stage_end(&stage{k}, shift{k});" in body
    reduce2 = source.split("void bp_floor_reduce2(")[1].split("\n}\n")[0]
    assert "bp_floor_stream_any(&stage, out1 + b, block, shift);" in reduce2
    assert "bp_stream_fence();" in body and "#pragma omp for schedule(static) nowait" in body
    assert "bp_stream" not in source.split("void bp_floor_inplace_4_3(")[1].split("\n}\n")[0]
    floor = Floor()
    n = (8 << 20) // 4 + 37
    for offsets in ((0, 0), (3, 3), (5, 2), (15, 1)):
        a = np.arange(n, dtype=np.float32) % 1000
        outs = [np.zeros(n + 16, np.float32)[o:o + n] for o in (offsets[0], *offsets)]
        floor.stream([a, np.ones(n, np.float32)], outs)
        for k, out in enumerate(outs):
            np.testing.assert_array_equal(out, a + 1 + k)


def test_flush_keeps_the_data_and_covers_odd_sizes():
    """flush writes dirty lines back before dropping them: every value survives, for sizes
    and offsets that are not whole cache lines; on x86-64 and AArch64 it reports success."""
    import platform
    floor = Floor()
    a = np.arange(1000, dtype=np.float32)
    a[3] = 7.5                                           # a dirty line
    views = [a, a[1:], a[5:6], np.arange(3, dtype=np.int64)]
    before = [v.copy() for v in views]
    flushed = floor.flush(views)
    assert flushed == (platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"))
    for v, w in zip(views, before):
        np.testing.assert_array_equal(v, w)


def test_bench_json_records():
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "bench", "--quick", "--repeat",
                        "2", "--json", "--only", "layernorm_backward,adam_step"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["machine"]["cores"] >= 1 and data["repeat"] == 2
    # a shared machine's times compare only within one run: the load is recorded with them
    assert len(data["machine"]["load_average"]) == 2
    assert all(v is None or v >= 0 for v in data["machine"]["load_average"])
    # spinning OpenMP workers would steal BLAS's cores: the bench sleeps them unless told
    assert data["machine"]["openblas_env"].get("OMP_WAIT_POLICY") == "PASSIVE"
    assert data["machine"]["openblas_env"].get("OPENBLAS_THREAD_TIMEOUT") == "4"  # the same for BLAS
    recs = data["records"]
    kinds = {(x["kernel"], x["impl"], x["threads"]) for x in recs}
    for kernel in ("layernorm_backward", "adam_step"):
        for impl, threads in (("c", 1), ("c", 2), ("numpy", 2), ("hand", 2), ("floor", 2)):
            assert (kernel, impl, threads) in kinds
    for x in recs:
        assert x["median_s"] > 0 and "pct_floor" in x and x["gbps"] > 0
        assert set(x) >= {"kernel", "impl", "threads", "outputs", "median_s"}
        assert x["calls"] == 2                         # --quick: --repeat calls, no minimum time
    assert any(x["outputs"] == "in-place" and x["impl"] == "c" for x in recs)
    # each memory-bound case also times its arithmetic alone, in cache, at 1 thread
    cached = [x for x in recs if x["outputs"] == "in cache"]
    assert sorted(x["kernel"] for x in cached) == ["adam_step", "layernorm_backward"]
    assert all(x["impl"] == "c" and x["threads"] == 1 and x["in_cache_sizes"] for x in cached)
    if data["machine"]["torch"]:     # like for like: torch's Adam runs in place
        assert {x["outputs"] for x in recs if x["kernel"] == "adam_step"
                and x["impl"] == "torch"} == {"in-place"}
        for x in recs:
            if x["outputs"] == "in cache":          # not a call torch is compared with
                assert "vs_torch" not in x
            elif x["impl"] != "torch":
                in_place_vs_new = x["kernel"] == "adam_step" and x["outputs"] != "in-place"
                assert ("vs_torch" in x) != in_place_vs_new, x


def test_torch_compares_like_for_like():
    assert same_traffic("in-place", "in-place") and same_traffic("preallocated", "fresh")
    assert not same_traffic("preallocated", "in-place")
    assert not same_traffic("in-place", "fresh")


def test_bench_names_an_unknown_kernel():
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "bench", "--only", "nope"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "no benchmark named 'nope'" in r.stderr
    # one misspelt name among good ones is named too, not silently skipped
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "bench", "--quick", "--only",
                        "gelu_backward,softmax_ce_labels"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and "no benchmark named 'softmax_ce_labels'" in r.stderr


def test_bench_rounds_run_for_the_minimum_time():
    """Rounds go on past --repeat until the minimum time, and stop at 10 x repeat."""
    from bench.run import _median_interleaved
    calls = []
    impls = {"a": (lambda: None, lambda: calls.append(1))}
    medians, rounds = _median_interleaved(impls, 3, min_seconds=0.0)
    assert rounds == 3 and len(calls) == 4                     # one warm-up call
    calls.clear()
    medians, rounds = _median_interleaved(impls, 3, min_seconds=60.0)
    assert rounds == 30 and len(calls) == 31 and medians["a"] >= 0


def test_bench_refuses_a_negative_minimum_time():
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "bench", "--min-time", "-1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--min-time must be at least 0" in r.stderr


def test_loading_the_hand_c_peer_keeps_subnormals():
    """-Ofast must not bring crtfastmath.o's flush-to-zero into this process: it would make
    every later subnormal result 0 (the kernels' tests of subnormals among them)."""
    require_oracle("cc")
    peer_c.library()
    tiny = np.array([1e-39], np.float32)
    assert (tiny * np.float32(0.5))[0] != 0


def test_torch_attention_backward_reuses_one_recorded_forward(monkeypatch):
    """Like for like with ours (which reads the forward's saved arrays): torch's backward row
    runs autograd through a graph recorded once, never its forward; the train-step row runs
    the forward each call.  Both give the same gradients, call after call."""
    torch = require_oracle("torch")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    by_name = {c.kernel: c for c in CASES}
    case = by_name["attention_causal_backward"]
    arrays = case.make(np.random.default_rng(0), case.sizes)
    backward = case.torch(torch, arrays)
    assert len(calls) == 1
    first, again = backward(), backward()
    assert len(calls) == 1
    step = by_name["attention_causal_train_step"].torch(torch, arrays)
    stepped = step()
    assert len(calls) == 2          # the step records its own graph, then runs back through it
    for a, b, c in zip(first, again, stepped):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_allclose(c.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)


def test_the_first_compile_bench_runs_a_cold_load_in_a_fresh_process(tmp_path):
    """bench/first_compile.py: a record per fresh process, its time inside load part of
    its wall time; a bad layer name is one line naming it.  No timing is asserted."""
    script = [sys.executable, "bench/first_compile.py", "--scratch", str(tmp_path)]
    r = subprocess.run(script + ["--layer", "relu", "--repeat", "2", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    runs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["layer"], x["dtype"]) for x in runs] == [("relu", "float32")] * 2
    assert all(0 < x["load"] < x["wall"] for x in runs)
    bad = subprocess.run(script + ["--layer", "nope", "--repeat", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("first_compile: loading 'nope' failed: ")
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    none = subprocess.run(script + ["--repeat", "0"], capture_output=True, text=True)
    assert none.returncode == 2 and "--repeat must be at least 1, got 0" in none.stderr


def test_in_cache_sizes_shrink_the_first_dimensions_until_the_arrays_fit():
    from bench.run import IN_CACHE_BYTES, in_cache_sizes
    from bench.cases import Case
    case = lambda **sizes: Case("k", "layer", "backward", sizes, None, None)
    # batch norm's 77 MB: N down to 1 (2.4 MB), then C until they fit
    full = dict(N=32, C=64, H=56, W=56)
    nbytes = 3 * 4 * 32 * 64 * 56 * 56
    small = in_cache_sizes(case(**full), nbytes)
    assert small["N"] == 1 and 1 <= small["C"] < 64 and small["H"] == 56 and small["W"] == 56
    assert nbytes * small["N"] * small["C"] / (32 * 64) <= IN_CACHE_BYTES
    # rows: fewer of them, each as long
    assert in_cache_sizes(case(N=4096, I=8192), 2 * 4 * 4096 * 8192) == dict(N=16, I=8192)
    # what already fits stays as it is
    assert in_cache_sizes(case(N=8, I=8), 512) == dict(N=8, I=8)


def test_a_bound_call_computes_what_the_wrapper_does():
    """The in-cache timing calls the C entry through pointers made once: each memory-bound
    case's results equal the wrapper's, with nothing but the returned call holding the
    arrays (a cast pointer does not keep its array alive: it crashed so once)."""
    import dataclasses
    import gc
    from bench.run import bound_call, case_arrays, in_cache_sizes
    rng = np.random.default_rng(0)
    for case in cases(scale=64):
        if not case.reads:
            continue
        c = codegen.load(case.layer, backend="c", dtype="float32",
                         constants=case.constants or None)
        small = dataclasses.replace(case, sizes=in_cache_sizes(case, 10 ** 9))
        arrays, args = case_arrays(small, c, rng)
        call, out = bound_call(c, case.entry, args)
        del arrays, args
        gc.collect()
        expected = {k: v.copy() for k, v in out.items()}
        for v in out.values():
            v[...] = 7
        assert call() == 0
        for k, v in expected.items():
            np.testing.assert_array_equal(out[k], v, err_msg=f"{case.kernel}: {k}")


def test_entry_point_names_the_entries_a_layer_has():
    """The pointer route (torch, the bench's in-cache calls) takes "forward_backward" where
    the layer ends in its loss, and names what it has otherwise."""
    bce = codegen.load("sigmoid_bce", backend="c", dtype="float32")
    assert bce.entry_point("forward_backward")[0] is not None
    with pytest.raises(ValueError, match=r"no C entry point 'sideways' \(forward, backward, "
                                         r"forward_backward\)"):
        bce.entry_point("sideways")
    relu = codegen.load("relu", backend="c", dtype="float32")
    with pytest.raises(ValueError, match=r"'forward_backward' \(forward, backward\)"):
        relu.entry_point("forward_backward")
