"""The C build: standalone sources, the cache (warm, concurrent, corrupt), compiler
failures, and a wrapper that keeps bad arrays away from C."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import codegen
from codegen.build import CompilerError
from derive.builtins import BUILTINS

from .oracles import (GATED, finite_differences, random_arrays, rel_err, require_oracle,
                      tolerance)

ROOT = Path(__file__).resolve().parent.parent


def defined_symbols(obj):
    out = subprocess.run(["nm", "--defined-only", "-g", str(obj)], capture_output=True,
                         text=True, check=True).stdout
    return sorted(line.split()[-1] for line in out.splitlines() if line.strip())


STRICT = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"]


@pytest.mark.parametrize("flags", ["plain", "toolkit"])
@pytest.mark.parametrize("name", BUILTINS)
def test_generated_sources_compile_standalone(tmp_path, name, flags):
    """The committed generated/c sources are plain C99 without a single diagnostic under
    -pedantic -Wall -Wextra -Werror: at -O2 without OpenMP (the pragmas compile away), and
    with the toolkit's own build flags (-O3 -march=native -fno-math-errno
    -fno-trapping-math, __FAST_MATH__ on x86_64 glibc, -fopenmp).  The object defines every function the header declares,
    and nothing outside the layer's bp_NAME_ prefix."""
    cc = require_oracle("cc")
    src = ROOT / "generated" / "c" / f"{name}.c"
    b = codegen.build
    extra = (["-O2"] if flags == "plain" else
             b.BASE_FLAGS + b.opt_flags() + b.openmp_flags(cc))
    obj = tmp_path / f"{name}.o"
    r = subprocess.run(cc + STRICT + extra + ["-c", str(src), "-o", str(obj)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    header = (ROOT / "generated" / "c" / f"{name}.h").read_text()
    declared = set(re.findall(r"^\w[\w ]*?\b(bp_\w+)\(", header, re.M))
    symbols = defined_symbols(obj)
    assert declared and declared <= set(symbols), sorted(declared - set(symbols))
    assert all(s.startswith(f"bp_{name}_") for s in symbols), symbols


def test_a_build_leaves_sys_stdout_alone(tmp_path, monkeypatch):
    """cffi's "generating ..." is silenced by its own setting, not by swapping sys.stdout:
    a swap is process-wide, and two builds on two threads (a kernel's and the GEMM hook's,
    codegen/loader) restored each other's buffers and left print() writing into one."""
    import cffi
    import sys as _sys

    require_oracle("cc")
    seen, real = [], cffi.FFI.emit_c_code

    def emit(self, filename):
        seen.append(_sys.stdout)
        return real(self, filename)

    monkeypatch.setattr(cffi.FFI, "emit_c_code", emit)
    spec = tmp_path / "quiet.bp"
    spec.write_text("layer quiet\ndims N\ninput x[N]\noutput y[N]\n\ny[n] = 2 * x[n]\n")
    codegen.load(str(spec), backend="c", cache=tmp_path / "cache")
    assert seen and all(out is _sys.stdout for out in seen)


def test_flags_are_probed_in_one_run_and_an_unknown_one_dropped(monkeypatch):
    """A cold build asks the compiler about all its flags in one run; only when that run
    fails is each flag asked alone, and the one it rejects is left out."""
    cc = require_oracle("cc")
    b = codegen.build
    runs, real = [], b._run
    monkeypatch.setattr(b, "_run", lambda cmd, cwd=None: runs.append(cmd) or real(cmd, cwd))
    monkeypatch.setattr(b, "_accepted", {})
    assert b.accepted(cc, ["-fPIC", "-O2", "-Wall"]) == ["-fPIC", "-O2", "-Wall"]
    assert len(runs) == 1
    runs.clear()
    assert b.accepted(cc, ["-O1", "-fno-such-flag-bp", "-w"]) == ["-O1", "-w"]
    assert len(runs) == 4                           # all three together, then each alone
    runs.clear()
    assert b.accepted(cc, ["-O1", "-fno-such-flag-bp"]) == ["-O1"] and not runs


@pytest.mark.parametrize("loops", ["", "-DBP_GEMM_LOOPS=0"])
@pytest.mark.parametrize("name", ["mlp2", "dense", "softmax_cross_entropy_labels", "lstm"])
def test_parts_build_the_same_library_as_the_whole_file(tmp_path, name, loops):
    """The toolkit compiles a source's parts (-DBP_PART=k) at once and links them: each part
    is warning-free C99, no symbol is defined twice, and together they define exactly what
    the whole file defines; so also without the loops beside the GEMM calls.  The LSTM's
    panel GEMM is compiled in its forward's part only (the backward's calls it there)."""
    src = ROOT / "generated" / "c" / f"{name}.c"
    flags = require_oracle("cc") + STRICT + ["-O1", "-fopenmp", "-fPIC"] + \
        ([loops] if loops else [])
    defined = defined_symbols
    whole = tmp_path / "whole.o"
    subprocess.run(flags + ["-c", str(src), "-o", str(whole)], check=True)
    symbols = []
    for part in codegen.build._parts(src.read_text()):
        obj = tmp_path / f"part{part}.o"
        r = subprocess.run(flags + [f"-DBP_PART={part}", "-c", str(src), "-o", str(obj)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        symbols += defined(obj)
        if name == "lstm":
            assert ("bp_lstm_panel_gemm_f32" in defined(obj)) == (part == 1), part
    assert len(symbols) == len(set(symbols)), "a symbol is defined in two parts"
    assert sorted(symbols) == defined(whole)
    # float's forward and backward, double's: a first build asks for one dtype, two parts
    assert codegen.build._parts(src.read_text()) == [1, 2, 3, 4]
    assert codegen.build._parts("int f(void);") == [0]


@pytest.mark.parametrize("name", BUILTINS)
def test_the_loops_switch_is_where_the_kernels_may_call_a_gemm(name):
    """BP_GEMM_LOOPS (and the -2 refusal without a GEMM) is in exactly the sources whose
    kernels choose between a GEMM and loops by the hook alone (codegen/gemm_loops.py finds
    them in the kernel views), so a layer without such products never refuses to run
    without a GEMM; a convolution's loops, which also run beside a GEMM, are not among them."""
    text = (ROOT / "generated" / "c" / f"{name}.c").read_text()
    by_hook_alone = bool(re.search(rf"bp_{name}_gemm_f32 != NULL\)", text))
    assert ("#if BP_GEMM_LOOPS" in text) == by_hook_alone
    assert ("return -2;" in text) == by_hook_alone


def test_a_build_with_a_gemm_leaves_the_loops_out_until_they_are_asked_for(tmp_path,
                                                                          monkeypatch):
    """With NumPy's OpenBLAS to hand the kernels, codegen.load compiles them without the
    plain-C loops beside their GEMM calls (-DBP_GEMM_LOOPS=0; 0.4 s of CPU of an LSTM's
    first compile): called without a GEMM, such a kernel refuses (-2) before it touches an array.
    use_blas(False) swaps in the build with the loops, after a cold load and after a warm
    one (which derives the layer for it), and the results equal the GEMM route's.  A layer
    without products has nothing to leave out and is built once."""
    require_oracle("cc")
    from codegen.blas import numpy_blas

    if numpy_blas() is None:
        pytest.fail("NumPy's ILP64 OpenBLAS is needed (BACKPROP_BLAS=none set?)")
    rng = np.random.default_rng(5)
    a = dict(x=rng.normal(size=(3, 5)), W=rng.normal(size=(4, 5)), b=rng.normal(size=4),
             dz=rng.normal(size=(3, 4)))
    # (modules built earlier in this worker, dense's by test_c_kernels, would be reused)
    monkeypatch.setattr(codegen.build, "_loaded", {})
    k = codegen.load("dense", backend="c", cache=tmp_path)
    (manifest,) = (tmp_path / "c").glob("*/manifest.json")
    assert "-DBP_GEMM_LOOPS=0" in json.loads(manifest.read_text())["command"]
    want = k.backward(**a)
    getattr(k._lib, "bp_dense_set_gemm")(k._ffi.NULL, k._ffi.NULL)
    with pytest.raises(RuntimeError, match="built without their loops"):
        k.backward(**a)
    for kernels in (k, codegen.load("dense", backend="c", cache=tmp_path)):  # cold, warm
        assert kernels.with_loops is not None
        kernels.use_blas(False)
        assert kernels.with_loops is None and kernels.blas is None
        got = kernels.backward(**a)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-12, err_msg=name)
        kernels.use_blas(True)
        assert kernels.blas is not None
    # a layer without products has no loops to leave out: one build serves both routes
    for _ in ("cold", "warm"):
        relu = codegen.load("relu", backend="c", cache=tmp_path)
        assert relu.with_loops is None


def test_a_failing_part_is_reported_and_leaves_no_entry(tmp_path, monkeypatch):
    """Parts compile at once: when only the double part fails, its message still arrives."""
    script = tmp_path / "half-cc"
    script.write_text("#!/bin/sh\ncase \"$*\" in *BP_PART=2*) echo 'half-cc: error: no doubles "
                      "today' >&2; exit 1;; esac\nexec cc \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(script))
    with pytest.raises(CompilerError, match="BP_PART=2.*\n.*no doubles today"):
        codegen.load("relu", backend="c", cache=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache" / "c").iterdir()
                if p.is_dir() and p.name != "index"]


@pytest.mark.parametrize("own_gemm", [False, True])
def test_plain_c_program_uses_a_kernel(tmp_path, own_gemm):
    """No Python anywhere: a C program calls the generated dense kernels, with their own
    loops or with a GEMM it supplies (a plain reference product that counts its calls, so
    the layout, transposes, leading dimensions, alpha and beta the kernels pass are checked
    against the CBLAS meaning)."""
    main = tmp_path / "main.c"
    main.write_text(textwrap.dedent("""
        #include <stdio.h>
        #include <stdlib.h>
        #include "dense.h"
        static int calls = 0;
        static void gemm(int layout, int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                         double alpha, const double *a, ptrdiff_t lda, const double *b,
                         ptrdiff_t ldb, double beta, double *c, ptrdiff_t ldc) {
            ++calls;
            if (layout != 101) abort();
            for (ptrdiff_t i = 0; i < m; ++i)
                for (ptrdiff_t j = 0; j < n; ++j) {
                    double s = 0;
                    for (ptrdiff_t p = 0; p < k; ++p)
                        s += (ta == 112 ? a[p*lda + i] : a[i*lda + p]) *
                             (tb == 112 ? b[j*ldb + p] : b[p*ldb + j]);
                    c[i*ldc + j] = alpha * s + (beta != 0 ? beta * c[i*ldc + j] : 0);
                }
        }
        int main(void) {
        #ifdef OWN_GEMM
            bp_dense_set_gemm(NULL, gemm);
        #else
            (void)gemm;
        #endif
            const ptrdiff_t N = 2, I = 3, J = 2;
            double x[4] = {1, 2, 3, 4}, W[6] = {1, 0, 0, 1, 1, 1}, b[3] = {0.5, 0, -1};
            double z[6], dz[6] = {1, -2, 3, 0.5, 5, -6}, dx[4], dW[6], db[3];
            double *work = malloc((bp_dense_backward_work(N, I, J) + 1) * sizeof *work);
            bp_dense_forward_f64(N, I, J, x, W, b, z, work);
            bp_dense_backward_f64(N, I, J, x, W, b, dz, dx, dW, db, work);
            for (int k = 0; k < 6; ++k) printf("%g ", z[k]);
            for (int k = 0; k < 4; ++k) printf("%g ", dx[k]);
            for (int k = 0; k < 3; ++k) printf("%g ", db[k]);
            for (int k = 0; k < 6; ++k) printf("%g ", dW[k]);
            printf("%d\\n", calls);
            free(work);
            return 0;
        }
    """))
    exe = tmp_path / "main"
    r = subprocess.run(require_oracle("cc") + ["-std=c99", "-O2", f"-I{ROOT / 'generated' / 'c'}"]
                       + (["-DOWN_GEMM"] if own_gemm else []) + [
                        str(main), str(ROOT / "generated" / "c" / "dense.c"), "-lm",
                        "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = [float(v) for v in subprocess.run([str(exe)], capture_output=True,
                                            text=True).stdout.split()]
    x, W, b = np.array([[1, 2], [3, 4.]]), np.array([[1, 0], [0, 1], [1, 1.]]), \
        np.array([0.5, 0, -1])
    z = x @ W.T + b
    np.testing.assert_allclose(out[:6], z.ravel())
    dz = np.array([[1, -2, 3], [0.5, 5, -6]])
    np.testing.assert_allclose(out[6:10], (dz @ W).ravel())
    np.testing.assert_allclose(out[10:13], dz.sum(axis=0))
    np.testing.assert_allclose(out[13:19], (dz.T @ x).ravel())
    assert out[19] == (3 if own_gemm else 0)       # z, dx and dW are matrix products


@pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")
def test_a_cpp_program_includes_the_header(tmp_path):
    """The header is C++-clean (restrict is spelled __restrict there, and only there): a
    C++ program includes it under -Wall -Wextra -pedantic -Werror and calls the C kernel;
    a program that defines restrict itself keeps its own definition."""
    main = tmp_path / "main.cpp"
    main.write_text(textwrap.dedent("""
        #include <cstdio>
        #include "dense.h"
        #ifdef restrict
        #error "the header leaked its restrict macro"
        #endif
        int main() {
            double x[4] = {1, 2, 3, 4}, W[6] = {1, 0, 0, 1, 1, 1}, b[3] = {0.5, 0, -1}, z[6];
            bp_dense_forward_f64(2, 3, 2, x, W, b, z, nullptr);
            for (double v : z) std::printf("%g ", v);
            return 0;
        }
    """))
    c_obj = tmp_path / "dense.o"
    subprocess.run(["cc", "-std=c99", "-O2", "-c", str(ROOT / "generated" / "c" / "dense.c"),
                    "-o", str(c_obj)], check=True)
    exe = tmp_path / "main"
    strict = ["c++", "-std=c++11", "-Wall", "-Wextra", "-pedantic", "-Werror",
              f"-I{ROOT / 'generated' / 'c'}"]
    r = subprocess.run(strict + [str(main), str(c_obj), "-lm", "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True).stdout.split()
    assert [float(v) for v in out] == [1.5, 2, 2, 3.5, 4, 6]
    own = tmp_path / "own.cpp"
    own.write_text('#define restrict __restrict__\n#include "dense.h"\n'
                   '#ifndef restrict\n#error "the header removed the user\'s restrict"\n#endif\n')
    r = subprocess.run(strict + ["-c", str(own), "-o", str(tmp_path / "own.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def run_python(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


SNIPPET = """
    import numpy as np, codegen
    k = codegen.load("mlp2", backend="c", dtype="float64")
    rng = np.random.default_rng(0)
    x, W1, b1 = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=5)
    W2, b2, t = rng.normal(size=(2, 5)), rng.normal(size=2), np.eye(2)[[0, 1, 1, 0]]
    g = k.backward(x=x, W1=W1, b1=b1, W2=W2, b2=b2, t=t)
    ref = codegen.load("mlp2").backward(x=x, W1=W1, b1=b1, W2=W2, b2=b2, t=t)
    assert all(np.allclose(g[n], ref[n], rtol=1e-12, atol=1e-14) for n in g)
    print("ok")
"""


def counting_compiler(tmp_path):
    """A cc wrapper that records every invocation."""
    log = tmp_path / "cc.log"
    script = tmp_path / "cc-wrapper"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec cc \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def test_warm_cache_loads_without_the_compiler(tmp_path):
    script, log = counting_compiler(tmp_path)
    env = {**os.environ, "BACKPROP_CACHE": str(tmp_path / "cache"), "CC": str(script)}
    assert run_python(SNIPPET, env).stdout.strip() == "ok"
    calls = log.read_text().count("\n")
    assert calls >= 1
    probe = SNIPPET.replace('print("ok")', 'import sys\n    print("ok", "codegen.c_backend" '
                                            'in sys.modules)')
    r = run_python(probe, env)
    assert r.stdout.split()[0] == "ok", r.stderr
    assert log.read_text().count("\n") == calls      # no new compiler invocation
    # the C sources were not even regenerated: the spec index found the entry
    assert r.stdout.split()[1] == "False"


def test_a_load_builds_only_its_dtype(tmp_path):
    """A first load compiles the kernels of the dtype asked for, no other (half the
    compiler's work); the other dtype is its own module, built when asked for, and each
    gives the same results as the other to float32 rounding."""
    f32 = codegen.load("dense", backend="c", dtype="float32", cache=tmp_path)
    assert hasattr(f32._lib, "bp_dense_forward_f32")
    assert not hasattr(f32._lib, "bp_dense_forward_f64")
    f64 = codegen.load("dense", backend="c", dtype="float64", cache=tmp_path)
    assert hasattr(f64._lib, "bp_dense_forward_f64")
    assert not hasattr(f64._lib, "bp_dense_forward_f32")
    rng = np.random.default_rng(0)
    x, W, b = (rng.standard_normal(s) for s in ((3, 4), (5, 4), (5,)))
    z32 = f32.forward(x=x.astype(np.float32), W=W.astype(np.float32),
                      b=b.astype(np.float32))["z"]
    np.testing.assert_allclose(z32, f64.forward(x=x, W=W, b=b)["z"], rtol=1e-5, atol=1e-6)


def test_warm_load_parses_nothing_until_asked(tmp_path):
    """A warm load reads the spec text and the index only: no parsing, no C printer, not
    even SymPy's import (0.2 s; the warm load itself is about 25 ms); the Layer and the
    derivation appear when asked for, from the same text."""
    env = {**os.environ, "BACKPROP_CACHE": str(tmp_path / "cache")}
    code = """
        import sys, numpy as np, codegen
        k = codegen.load("softmax_cross_entropy_labels", backend="c", dtype="float32")
        print(k._derivation is None and not isinstance(k._layer, type(None)))
    """
    assert run_python(code, env).returncode == 0
    probe = """
        import sys, numpy as np, codegen
        k = codegen.load("softmax_cross_entropy_labels", backend="c", dtype="float32")
        heavy = [m for m in ("codegen.c_printer", "codegen.c_backend", "sympy")
                 if m in sys.modules]
        parsed = not callable(k._layer)
        r = k.forward_backward(z=np.zeros((2, 3), np.float32), t=np.array([0, 2]))
        heavy += [m for m in ("sympy",) if m in sys.modules]      # a call needs none either
        print(heavy, parsed, round(float(r["L"]), 4), k.layer.name, k.derivation.steps[0].tensor)
    """
    r = run_python(probe, env)
    assert r.stdout.split() == ["[]", "False", str(round(float(np.log(3)), 4)),
                                "softmax_cross_entropy_labels", "z"], r.stderr


def test_a_build_sweeps_what_killed_builds_left(tmp_path):
    """After `kill -9` during a compile, its `.build-*` folder and lock stay; the next build
    removes folders whose lock no process holds and lock files of finished entries, and
    leaves a build that is running (its lock held) alone."""
    import fcntl

    root = tmp_path / "cache" / "c"
    root.mkdir(parents=True)
    dead_alone, dead_locked, live, done = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    for key in (dead_alone, dead_locked, live):
        (root / f".build-{key}-x1y2z3").mkdir()
        (root / f".build-{key}-x1y2z3" / "part.o").write_text("half")
    for key in (dead_locked, live, done):
        (root / f"{key}.lock").touch()
    (root / done).mkdir()
    (root / done / "manifest.json").write_text("{}")
    with open(root / f"{live}.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        spec = tmp_path / "sweep_probe.bp"
        spec.write_text("layer sweep_probe\ndims N\ninput x[N]\noutput y[N]\n"
                        "y[n] = 3 * x[n]\n")
        k = codegen.load(str(spec), backend="c", cache=tmp_path / "cache")
        assert k.forward(x=np.ones(2))["y"].tolist() == [3, 3]
    left = sorted(p.name for p in root.iterdir() if p.name.startswith(".build-"))
    assert left == [f".build-{live}-x1y2z3"]
    locks = {p.name for p in root.glob("*.lock")}
    assert f"{live}.lock" in locks and f"{dead_locked}.lock" in locks   # no entry yet
    assert f"{done}.lock" not in locks


def test_parallel_processes_build_once(tmp_path):
    env = {**os.environ, "BACKPROP_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(SNIPPET)], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=600) for p in procs]
    for out, err in results:
        assert out.strip() == "ok", err
    builds = (tmp_path / "cache" / "c" / "builds.log").read_text().splitlines()
    assert len(builds) == 1, builds
    entries = [p for p in (tmp_path / "cache" / "c").iterdir()
               if p.is_dir() and p.name != "index"]
    assert len(entries) == 1                          # no leftover temporary folders


def test_truncated_cache_entry_is_rebuilt(tmp_path):
    env = {**os.environ, "BACKPROP_CACHE": str(tmp_path / "cache")}
    assert run_python(SNIPPET, env).stdout.strip() == "ok"
    (entry,) = [p for p in (tmp_path / "cache" / "c").iterdir()
                if p.is_dir() and p.name != "index"]
    (lib,) = [p for p in entry.iterdir() if p.suffix == ".so"]
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 3])
    r = run_python(SNIPPET, env)
    assert r.stdout.strip() == "ok", r.stderr
    assert len((tmp_path / "cache" / "c" / "builds.log").read_text().splitlines()) == 2
    assert lib.read_bytes() != data[: len(data) // 3]


def test_missing_compiler_says_so_and_suggests_numpy(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(CompilerError, match="no C compiler found.*NumPy backend"):
        codegen.load("relu", backend="c", cache=tmp_path / "cache")


def test_failing_compiler_message_is_carried(tmp_path, monkeypatch):
    script = tmp_path / "bad-cc"
    script.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo bad-cc 1.0; exit 0; fi\n"
                      "echo 'bad-cc: error: this compiler refuses everything' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(script))
    with pytest.raises(CompilerError) as info:
        codegen.load("tanh", backend="c", cache=tmp_path / "cache")
    assert "this compiler refuses everything" in str(info.value)
    assert "backend=\"numpy\"" in str(info.value)
    assert not [p for p in (tmp_path / "cache" / "c").iterdir()
                if p.is_dir() and p.name != "index"]


@pytest.fixture(scope="module")
def dense32():
    return codegen.load("dense", backend="c", dtype="float32")


def good(dtype=np.float32):
    return dict(x=np.ones((3, 5), dtype), W=np.ones((7, 5), dtype), b=np.ones(7, dtype))


@pytest.mark.parametrize("change, words", [
    (dict(W=np.ones((7, 4), np.float32)), r"W: expected shape \(I=7, J=5\), got \(7, 4\)"),
    (dict(b=np.ones((7, 1), np.float32)), r"b: expected shape \(I=7\) \(1 axes\)"),
    (dict(x=np.ones((3, 5), np.float64)), "x: expected dtype float32"),
    (dict(x=np.ones((3, 5), np.int32)), "x: expected dtype float32"),
    (dict(x=np.ones((5, 3), np.float32).T), "x: expected a C-contiguous array"),
    (dict(W=np.ones((7, 10), np.float32)[:, ::2]), "W: expected a C-contiguous array"),
    (dict(x=np.ones((0, 5), np.float32)), "x: dimension N .* is 0"),
    (dict(x=[[1.0] * 5] * 3), "x: expected a numpy.ndarray"),
])
def test_bad_arrays_never_reach_c(dense32, change, words):
    with pytest.raises(ValueError, match=words):
        dense32.forward(**{**good(), **change})
    with pytest.raises(ValueError, match=words):
        dense32.backward(**{**good(), **change}, dz=np.ones((3, 7), np.float32))


def test_bad_upstream_and_names(dense32):
    with pytest.raises(ValueError, match=r"dz: expected shape \(N=3, I=7\), got \(3, 6\)"):
        dense32.backward(**good(), dz=np.ones((3, 6), np.float32))
    with pytest.raises(ValueError, match="missing array dz"):
        dense32.backward(**good())
    with pytest.raises(ValueError, match="unexpected array bias"):
        dense32.forward(**good(), bias=np.ones(7, np.float32))


def test_nan_inputs_propagate_without_crashing(dense32):
    a = good()
    a["x"][1, 2] = np.nan
    z = dense32.forward(**a)["z"]
    assert np.isnan(z[1]).all() and np.isfinite(z[[0, 2]]).all()
    g = dense32.backward(**a, dz=np.ones((3, 7), np.float32))
    assert np.isnan(g["dW"][:, 2]).all()


def test_bad_dtype_argument():
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        codegen.load("dense", backend="c", dtype="float16")




@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_user_layer_from_spec_file_to_c(tmp_path, dtype):
    from derive.evaluate import evaluate

    spec = tmp_path / "gated.bp"
    spec.write_text(GATED)
    c = codegen.load(str(spec), backend="c", dtype=dtype)
    k = codegen.load(str(spec))
    rng = np.random.default_rng(11)
    sizes = dict(N=5, I=7)
    arrays = random_arrays(k, sizes, rng)
    exact = evaluate(c.derivation, arrays)
    a = {n: v.astype(dtype) for n, v in arrays.items()}
    grads = c.backward(**a)
    tol = max(tolerance(np.dtype(dtype), sizes), 50 * np.finfo(dtype).eps)
    for n in c.gradients:
        assert rel_err(grads[n], exact[n]) < tol, n
        assert rel_err(grads[n], k.backward(**a)[n]) < tol, n
    if dtype == "float64":
        for n in c.gradients:
            assert rel_err(grads[n], finite_differences(c, arrays, n[1:])) < 1e-6, n
        torch = require_oracle("torch")
        x, W, b = (torch.tensor(arrays[n], requires_grad=True) for n in ("x", "W", "b"))
        out = x * torch.sigmoid(x @ W.T + b)
        tg = torch.autograd.grad((out * torch.tensor(arrays["da"])).sum(), [x, W, b])
        for n, g in zip(("dx", "dW", "db"), tg):
            assert rel_err(grads[n], g.numpy()) < tol, n


def test_corrupt_spec_index_falls_back_to_a_full_load(tmp_path):
    import numpy as np

    k = codegen.load("relu", backend="c", cache=tmp_path)
    for f in (tmp_path / "c" / "index").iterdir():
        f.write_text("{not json")
    import codegen.build as b
    b._loaded.clear()
    k2 = codegen.load("relu", backend="c", cache=tmp_path)
    z = np.array([[-1.0, 2.0]])
    assert np.array_equal(k2.forward(z=z)["a"], k.forward(z=z)["a"])
    assert k2.derivation.layer.name == "relu"


def test_cflags_override_makes_its_own_entry(tmp_path, monkeypatch):
    import numpy as np

    import codegen.build as b
    b._loaded.clear()        # modules built earlier in this process would be reused
    a = codegen.load("relu", backend="c", cache=tmp_path)
    monkeypatch.setenv("BACKPROP_CFLAGS", "-O1")
    b = codegen.load("relu", backend="c", cache=tmp_path)
    entries = [p for p in (tmp_path / "c").iterdir() if p.is_dir() and p.name != "index"]
    assert len(entries) == 2
    manifests = [json.loads((e / "manifest.json").read_text()) for e in entries]
    assert any("-O1" in m["command"] for m in manifests)
    z = np.array([[-1.0, 2.0]])
    assert np.array_equal(a.forward(z=z)["a"], b.forward(z=z)["a"])


def test_a_killed_build_leaves_no_entry(tmp_path):
    """A build killed mid-compile (SIGKILL: no cleanup runs) leaves no entry and no index
    for a later load to trust; the next load builds a working entry."""
    import signal
    import time

    marker = tmp_path / "compiling"
    script = tmp_path / "slow-cc"
    script.write_text(f"#!/bin/sh\ncase \"$*\" in *BP_PART=2*) touch {marker}; sleep 600;; "
                      "esac\nexec cc \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    cache = tmp_path / "cache"
    code = f"import codegen; codegen.load('tanh', backend='c', cache={str(cache)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                             env={**os.environ, "CC": str(script)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):                       # the double part is compiling
            if marker.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), child.communicate()
    finally:
        os.killpg(child.pid, signal.SIGKILL)        # the child's group: it and its compilers
        child.communicate()
    root = cache / "c"
    assert not [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                and p.name != "index"], sorted(p.name for p in root.iterdir())
    assert not list(root.rglob("manifest.json")) and not list(root.glob("index/*.json"))
    z = np.array([[-1.0, 0.5, 3.0]])
    k = codegen.load("tanh", backend="c", cache=cache)
    np.testing.assert_allclose(k.forward(z=z)["a"], np.tanh(z), rtol=1e-15)
    assert len((root / "builds.log").read_text().splitlines()) == 1


def test_cache_key_moves_with_compiler_cpu_abi_and_cffi(tmp_path, monkeypatch):
    """Both keys (the build's, and the spec index's that a warm load trusts without the
    compiler) change with each fact README names: compiler (another one, or the same path
    upgraded), CPU, Python ABI, cffi's version, flags."""
    import sysconfig

    import cffi

    b = codegen.build
    files, cdef = {"k.c": "int bp_k(void) { return 1; }\n", "k.h": "int bp_k(void);\n"}, \
        "int bp_k(void);"

    def keys():
        return b.build_key(files, cdef), b.spec_key("layer k\n", "k.bp")

    script = tmp_path / "cc"
    script.write_text("#!/bin/sh\nexec cc \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    changes = {
        "compiler": lambda m: m.setenv("CC", str(script)),
        "compiler upgraded": lambda m: (m.setenv("CC", str(script)),
                                        os.utime(script, ns=(10**9, 10**9))),
        "CPU": lambda m: m.setattr(b, "cpu_identity", lambda: "another CPU"),
        "Python ABI tag": lambda m: m.setattr(sys.implementation, "cache_tag", "cpython-399"),
        "extension suffix": lambda m: m.setattr(
            sysconfig, "get_config_var",
            lambda v, real=sysconfig.get_config_var: ".abi9.so" if v == "EXT_SUFFIX" else real(v)),
        "cffi version": lambda m: m.setattr(cffi, "__version__", "0.0.1"),
        "flags": lambda m: m.setenv("BACKPROP_CFLAGS", "-O1"),
    }
    seen = {"as found": keys()}
    for what, change in changes.items():
        with monkeypatch.context() as m:
            m.delenv("CC", raising=False)
            m.delenv("BACKPROP_CFLAGS", raising=False)
            if what == "compiler":
                seen["as found"] = keys()            # without CC or BACKPROP_CFLAGS set
            change(m)
            seen[what] = keys()
    assert sysconfig.get_config_var("EXT_SUFFIX") == suffix       # all undone
    for side in (0, 1):
        values = [k[side] for k in seen.values()]
        assert len(set(values)) == len(values), {w: k[side][:12] for w, k in seen.items()}


def test_clang_builds_the_same_kernels(tmp_path, monkeypatch):
    """README: gcc and clang work.  clang is optional here (CI's compiler is gcc), so this
    test runs where clang is installed."""
    import shutil

    from .oracles import assert_close
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed (optional: CI builds with gcc)")
    monkeypatch.setenv("CC", clang)
    c = codegen.load("mlp2", backend="c", dtype="float32", cache=tmp_path)
    (manifest,) = (tmp_path / "c").glob("*/manifest.json")
    assert "clang" in json.loads(manifest.read_text())["compiler"]
    rng = np.random.default_rng(6)
    N, D, H, C = 5, 3, 7, 2
    a = dict(x=rng.normal(size=(N, D)), W1=rng.normal(size=(H, D)), b1=rng.normal(size=H),
             W2=rng.normal(size=(C, H)), b2=rng.normal(size=C), t=np.eye(C)[[0, 1, 1, 0, 1]])
    want = codegen.load("mlp2").forward_backward(**a)
    got = c.forward_backward(**{n: v.astype(np.float32) for n, v in a.items()})
    for n, v in want.items():
        assert_close(got[n], v, tolerance(np.float32, dict(N=N, D=D, H=H, C=C)), n)
