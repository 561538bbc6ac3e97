"""Threads: OpenMP loops above BP_PARALLEL_MIN really run on two threads (libgomp starts a
worker thread only when a parallel region forks), with and without BLAS, and give the
one-thread results; the build used -fopenmp where the compiler has it; set_threads sets
OpenBLAS's thread count too.  Every test leaves the thread counts as it found them."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import codegen
from derive import parse_spec

from .oracles import assert_close, random_arrays, require_oracle, tolerance

ROOT = Path(__file__).resolve().parent.parent
PARALLEL_MIN = 32768           # BP_PARALLEL_MIN of the generated C
PARALLEL_MIN_PLAIN = 262144    # BP_PARALLEL_MIN_PLAIN: loops that call no function

# A child process counts its threads (/proc/self/task) around each call: below the
# threshold on 2 threads, above it on 1, and above it on 2, where exactly one OpenMP
# worker must appear.  It saves the 1- and 2-thread results for the parent to compare.
PROBE = """
    import json, os, sys
    import numpy as np, codegen
    name, dtype, blas, entry, folder = json.loads(sys.argv[1])
    threads = lambda: len(os.listdir("/proc/self/task"))
    c = codegen.load(name, backend="c", dtype=dtype)
    c.use_blas(blas)
    small, big = (dict(np.load(os.path.join(folder, f + ".npz"))) for f in ("small", "big"))
    run = getattr(c, entry)
    counts = {"start": threads()}
    c.set_threads(2)
    run(**small)
    counts["small_on_2"] = threads()
    c.set_threads(1)
    np.savez(os.path.join(folder, "one.npz"), **run(**big))
    counts["big_on_1"] = threads()
    c.set_threads(2)
    counts["before_big_on_2"] = threads()
    np.savez(os.path.join(folder, "two.npz"), **run(**big))
    counts["big_on_2"] = threads()
    print(json.dumps(counts))
"""


def case_arrays(k, sizes, dtype, seed):
    """backward's arguments, forward's reused intermediates included (so only backward's
    own loops run), or forward_backward's; floats in dtype."""
    rng = np.random.default_rng(seed)
    a = random_arrays(k, sizes, rng, one_hot=True)
    if k.layer.loss:
        a = {n: a[n] for n in k.args}
    else:
        a.update(k.forward(**{n: a[n] for n in k.args}))
    return {n: v if np.issubdtype(v.dtype, np.integer) else v.astype(dtype)
            for n, v in a.items()}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
@pytest.mark.parametrize("name, dtype, blas, sizes", [
    # only the reduction(+:dw[0:C]) loop (N*C) is above the threshold (C-sized loops are
    # not); its body calls no function, so the threshold is BP_PARALLEL_MIN_PLAIN
    ("layernorm", "float32", True, dict(N=521, C=523)),
    # with BLAS the products go to OpenBLAS; the elementwise loops and the row and column
    # reductions (N*H, N*C) fork; without it the generated product loops fork too
    ("mlp2", "float64", True, dict(N=521, D=13, H=67, C=71)),
    ("mlp2", "float64", False, dict(N=521, D=13, H=67, C=71)),
    ("softmax_cross_entropy_labels", "float32", True, dict(N=131, I=257)),
])
def test_openmp_loops_fork_above_the_threshold(tmp_path, name, dtype, blas, sizes):
    k = codegen.load(name)
    codegen.load(name, backend="c", dtype=dtype)         # built here, warm in the child
    entry = "forward_backward" if k.layer.loss else "backward"
    assert sizes["N"] * list(sizes.values())[-1] >= PARALLEL_MIN
    small = {d: s for d, s in zip(sizes, (5, 3, 7, 2))}
    np.savez(tmp_path / "small.npz", **case_arrays(k, small, dtype, 0))
    big = case_arrays(k, sizes, dtype, 1)
    np.savez(tmp_path / "big.npz", **big)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE),
                        json.dumps([name, dtype, blas, entry, str(tmp_path)])],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)
    assert counts["small_on_2"] == counts["start"], counts      # below: no fork
    assert counts["big_on_1"] == counts["start"], counts        # 1 thread: no fork
    assert counts["big_on_2"] == counts["before_big_on_2"] + 1, counts   # forked
    one, two = (dict(np.load(tmp_path / f"{f}.npz")) for f in ("one", "two"))
    exact = getattr(k, entry)(**{n: v.astype(np.float64) if v.dtype.kind == "f" else v
                                 for n, v in big.items()})
    tol = max(tolerance(np.dtype(dtype), sizes), 50 * np.finfo(dtype).eps)
    assert set(one) == set(two) == set(exact)
    for n in exact:
        assert_close(one[n], exact[n], tol, ("1 thread", n))
        assert_close(two[n], exact[n], tol, ("2 threads", n))
        assert_close(two[n], one[n], tol, ("2 threads against 1", n))


@pytest.fixture
def restore_threads():
    """Every thread pool (OpenBLAS, OpenMP) back to its count after the test."""
    import threadpoolctl                                   # the test extra pins it

    codegen.load("dense", backend="c")                     # its libgomp is loaded
    before = [(lib, lib.num_threads)
              for lib in threadpoolctl.ThreadpoolController().lib_controllers]
    yield threadpoolctl
    for lib, count in before:
        lib.set_num_threads(count)


def test_set_threads_sets_openblas_and_openmp(restore_threads):
    c = codegen.load("dense", backend="c")
    assert c.blas is not None, "NumPy's OpenBLAS was not found"

    def pools():
        info = restore_threads.threadpool_info()
        blas = [p["num_threads"] for p in info if p["internal_api"] == "openblas"
                and os.path.samefile(p["filepath"], c.blas.path)]
        omp = [p["num_threads"] for p in info if p["internal_api"] == "openmp"
               and os.path.basename(p["filepath"]).startswith("libgomp")]
        return blas, omp

    for threads in (1, 2, 1):
        c.set_threads(threads)
        blas, omp = pools()
        assert blas == [threads], pools()
        assert omp and all(n == threads for n in omp), pools()


def test_build_used_openmp_where_the_compiler_has_it(tmp_path):
    """The build probes -fopenmp and silently drops it when the probe fails: the compiler
    here has OpenMP (checked independently), so the build command must carry -fopenmp."""
    cc = require_oracle("cc")
    probe = tmp_path / "omp.c"
    probe.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
    has_openmp = subprocess.run(cc + ["-fopenmp", str(probe), "-o", str(tmp_path / "omp")],
                                capture_output=True).returncode == 0
    layer = parse_spec("layer omp_flag_probe\ndims N\ninput x[N]\noutput y[N]\n"
                       "y[n] = 2 * x[n]\n")
    codegen.load(layer, backend="c", cache=tmp_path / "cache")
    (manifest,) = (tmp_path / "cache" / "c").glob("*/manifest.json")
    command = json.loads(manifest.read_text())["command"]
    assert ("-fopenmp" in command) == has_openmp, command


FORK_PROBE = """
    import json, os, sys
    import numpy as np, codegen
    from derive import parse_spec
    threads = lambda: len(os.listdir("/proc/self/task"))
    counts = {}
    for f in ("x[n, i]", "exp(x[n, i])"):
        c = codegen.load(parse_spec(
            "layer colsum  a column sum\\ndims N, I\\ninput x[N, I]\\noutput s[I]\\n\\n"
            f"s[i] = sum({f}, n)\\n"), backend="c", dtype="float32")
        c.set_threads(2)
        x = np.ones((64, 512), np.float32)
        before = threads()
        s = c.forward(x=x)["s"]
        assert np.allclose(s, 64 if f == "x[n, i]" else 64 * np.e), s[:4]
        counts[f] = threads() - before
    print(json.dumps(counts))
"""


def test_a_plain_sum_of_a_few_rows_stays_on_one_thread():
    """A column sum over 64 x 512 floats (a dense layer's bias gradient: 32768 additions,
    a few microseconds) does not start a thread team: its body only loads and adds, so
    its threshold is BP_PARALLEL_MIN_PLAIN; the same sum of exp(x) (above
    BP_PARALLEL_MIN, and a function per element) does."""
    assert PARALLEL_MIN <= 64 * 512 < PARALLEL_MIN_PLAIN
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(FORK_PROBE)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"x[n, i]": 0, "exp(x[n, i])": 1}
