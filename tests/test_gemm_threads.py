"""The GEMM hook the wrapper hands the kernels (templates/gemm_threads.c.j2): products below
SERIAL_BELOW multiply-adds run OpenBLAS on one thread, those from THREADED_FROM on its
thread count, those between on its count only while the other processes' load leaves a
core per thread; the count is restored after each; one_thread's holds share it."""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

import codegen
from codegen import blas as blas_module
from codegen.blas import SERIAL_BELOW, THREADED_FROM, numpy_blas, one_thread, ruled_gemm

ROOT = Path(__file__).resolve().parent.parent
SGEMM = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_ssize_t,
                         ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_float, ctypes.c_void_p,
                         ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_float,
                         ctypes.c_void_p, ctypes.c_ssize_t)
SET = ctypes.CFUNCTYPE(None, ctypes.c_int)
GET = ctypes.CFUNCTYPE(ctypes.c_int)


@pytest.fixture
def recording_hook():
    """The hook bound to a stand-in BLAS that records the thread count each product ran
    with; rebound to NumPy's OpenBLAS afterwards."""
    if numpy_blas() is None:
        pytest.fail("NumPy's OpenBLAS is needed (BACKPROP_BLAS=none set?)")
    module = blas_module._ruled()
    state = {"threads": 2, "seen": []}
    sgemm = SGEMM(lambda *args: state["seen"].append((args[3] * args[4] * args[5],
                                                      state["threads"])))
    setter = SET(lambda t: state.update(threads=t))
    getter = GET(lambda: state["threads"])
    ffi, lib = module.ffi, module.lib
    address = lambda f: ffi.cast("void *", ctypes.cast(f, ctypes.c_void_p).value)
    lib.bp_gemm_threads_init(address(sgemm), address(sgemm), address(setter),
                             address(getter), SERIAL_BELOW, THREADED_FROM)
    lib.bp_gemm_threads_force_load(0.0)           # an idle machine unless a test says not
    try:
        yield lib, state
    finally:
        lib.bp_gemm_threads_force_load(-1.0)
        blas_module._ruled.cache_clear()
        blas_module._ruled()                      # the same module, bound to OpenBLAS again


def _product(lib, m, n, k):
    """A product of m n k multiply-adds (the stand-in reads no array)."""
    null = blas_module._ruled().ffi.NULL
    lib.bp_sgemm_ruled(101, 111, 111, m, n, k, 1.0, null, k, null, n, 0.0, null, n)


def test_small_products_run_on_one_thread_and_large_ones_on_all(recording_hook):
    lib, state = recording_hook
    tiny, small, large = (32, 128, 128), (64, 512, 512), (4096, 768, 768)
    assert np.prod(tiny) < SERIAL_BELOW <= np.prod(small) < THREADED_FROM <= np.prod(large)
    _product(lib, *tiny)
    assert state["threads"] == 2                  # restored after the product
    _product(lib, *small)
    _product(lib, *large)
    assert state["seen"] == [(np.prod(tiny), 1), (np.prod(small), 2), (np.prod(large), 2)]


@pytest.mark.parametrize("others, threads", [(0.4, 2), (0.7, 1), (3.0, 1)])
def test_middling_products_take_a_second_thread_only_while_a_core_is_free(
        recording_hook, others, threads):
    """The others' load leaves 2 - others cores: a second thread while that is >= 1.5;
    the largest products take it whatever the load."""
    import os
    lib, state = recording_hook
    cores = os.cpu_count()
    lib.bp_gemm_threads_force_load(cores - 2 + others)
    _product(lib, 64, 512, 512)
    _product(lib, 4096, 768, 768)
    assert state["seen"] == [(64 * 512 * 512, threads), (4096 * 768 * 768, 2)]


def test_the_others_load_is_the_load_average_less_this_process_share():
    """Measured (nothing forced): never negative, never above the 1-minute load average
    (read after it), and this process's own busy thread counts in its share, which is
    taken out of the load average: a process spinning on a core is not 'another'.  The
    share is a 60-second average: the spin must keep it above where it would have decayed
    to with no CPU time at all (not above its old value: on a shared host whose other
    guests take half this core, a spinning thread's 0.5 lowered an average of 0.57)."""
    import math
    import os
    import time
    lib = blas_module._ruled().lib
    lib.bp_gemm_threads_force_load(-1.0)
    start = time.perf_counter()
    lib.bp_gemm_threads_others_load()
    share = lib.bp_gemm_threads_own_share()
    end = time.perf_counter() + 0.6               # busy: well past the 0.25 s re-measure
    while time.perf_counter() < end:
        pass
    others = lib.bp_gemm_threads_others_load()
    # the measured interval began at most LOAD_EVERY (0.25 s) before `start`
    idle = share * math.exp(-(time.perf_counter() - start + 0.25) / 60.0)
    assert lib.bp_gemm_threads_own_share() > idle
    assert 0 <= others <= os.getloadavg()[0] + 1e-9


def test_a_hold_keeps_large_products_on_one_thread_and_restores_once(recording_hook):
    lib, state = recording_hook
    lib.bp_gemm_threads_hold()
    _product(lib, 4096, 768, 768)
    _product(lib, 8, 8, 8)                        # its release must not restore the count
    assert state["threads"] == 1
    lib.bp_gemm_threads_release()
    assert state["threads"] == 2
    assert [t for _, t in state["seen"]] == [1, 1]


def test_the_dense_kernels_take_the_ruled_hook_and_leave_the_count_as_found():
    """The small dense backward (three products of 2^24) is exact through the hook, and
    OpenBLAS's thread count is what set_threads set, before and after, also under
    one_thread."""
    c = codegen.load("dense", backend="c", dtype="float32")
    assert c.blas is not None and ruled_gemm(c.blas) != (c.blas.sgemm, c.blas.dgemm)
    rng = np.random.default_rng(5)
    x, W = rng.normal(size=(64, 512)).astype(np.float32), \
        rng.normal(size=(512, 512)).astype(np.float32)
    dz = rng.normal(size=(64, 512)).astype(np.float32)
    before = c.blas.get_threads()
    try:
        c.set_threads(2)
        got = c.backward(x=x, W=W, b=np.zeros(512, np.float32), dz=dz)
        assert c.blas.get_threads() == 2
        with one_thread(c.blas):
            again = c.backward(x=x, W=W, b=np.zeros(512, np.float32), dz=dz)
            assert c.blas.get_threads() == 1
        assert c.blas.get_threads() == 2
    finally:
        c.blas.set_threads(before)
    for r in (got, again):
        np.testing.assert_allclose(r["dx"], dz @ W, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(r["dW"], dz.T @ x, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(r["db"], dz.sum(0), rtol=1e-4, atol=1e-3)


def test_the_crossover_bench_times_both_thread_counts(monkeypatch):
    """bench/gemm_threads.py (where SERIAL_BELOW comes from): a row per product with its
    work and a positive median on one and on two threads."""
    from bench import gemm_threads

    blas = numpy_blas()
    monkeypatch.setattr(gemm_threads, "SHAPES", [(4, 8, 16), (8, 8, 8)])
    before = blas.get_threads()
    try:
        rows = gemm_threads.measure(blas, repeat=2)
    finally:
        blas.set_threads(before)
    assert [r[:4] for r in rows] == [(4, 8, 16, 512), (8, 8, 8, 512)]
    assert all(one > 0 and two > 0 for *_, one, two in rows)


def test_a_product_inside_a_parallel_region_runs_on_one_thread(recording_hook):
    """The dense backward's two 2^24 products (codegen/gemm_pairs.py) run side by side on
    the kernel's two threads, each on one OpenBLAS thread, on an idle machine too."""
    lib, state = recording_hook
    c = codegen.load("dense", backend="c", dtype="float32")
    x, W, dz = (np.zeros(s, np.float32) for s in ((64, 512), (512, 512), (64, 512)))
    c.set_threads(2)
    c.backward(x=x, W=W, b=np.zeros(512, np.float32), dz=dz)
    assert state["seen"] == [(2 ** 24, 1), (2 ** 24, 1)]
    assert state["threads"] == 2


def _view(target, a, b, fill=""):
    gemm = dict(a=a, b=b, c=target, fill=fill, m="N", n="J", k="I")
    return dict(gemm=gemm, suffix="f32", target=target)


def test_only_independent_plain_products_go_side_by_side():
    from codegen.gemm_pairs import side_by_side

    dx, dW, dh = _view("dx", "dz", "W"), _view("dW", "dz", "x"), _view("dh", "dx", "V")
    paired = side_by_side([dx, dW, dh])
    assert [v.get("pair") for v in paired] == [(dx, dW), None]
    assert side_by_side([dx, dh]) == [dx, dh]                    # dh reads dx
    assert side_by_side([dh, dx]) == [dh, dx]                    # dx overwrites what dh read
    assert side_by_side([dx, _view("dW", "dz", "x", fill="b[j]")])[0].get("pair") is None


def test_the_dense_backward_emits_its_products_as_two_sections():
    text = (ROOT / "generated" / "c" / "dense.c").read_text()
    body = text[text.index("int bp_dense_backward_f32"):text.index("return 0;",
                                                         text.index("int bp_dense_backward_f32"))]
    sections = body[body.index("parallel sections"):body.index("} else {")]
    assert sections.count("BP_OMP(section)") == 2
    assert "bp_dense_gemm_f32(101, 111, 111, N, J, I" in sections
    assert "bp_dense_gemm_f32(101, 112, 111, I, J, N" in sections


def test_a_cold_load_builds_the_hook_on_a_thread_while_it_derives(tmp_path, monkeypatch):
    """A cold load asks for the hook's module on a thread of its own (the derivation keeps
    this one busy meanwhile), joined before the load returns; a hook that cannot be built
    there does not stop the load (the kernels' own call reports it)."""
    import threading

    seen = []

    def warm():
        seen.append(threading.current_thread().name)
        try:
            raise RuntimeError("no hook here")
        except RuntimeError:                 # as the real warm() leaves it to the caller
            pass

    monkeypatch.setattr(blas_module, "warm", warm)
    spec = tmp_path / "hooked.bp"
    spec.write_text("layer hooked\ndims N, I\ninput x[N, I]\noutput y[N, I]\n\n"
                    "y[n, i] = 3 * x[n, i]\n")
    k = codegen.load(str(spec), backend="c", cache=tmp_path / "cache")
    assert seen == ["backprop-gemm-hook"]
    assert not any(t.name == "backprop-gemm-hook" for t in threading.enumerate())
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(k.forward(x=x)["y"], 3 * x)
