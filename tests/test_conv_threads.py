"""Convolutions on the GEMM hook from several threads (codegen/c_backend.py _im2col_view):
each thread packs into its own scratch slot and calls the GEMM on its own images, and dw
sums one partial per slot.  A plain C program supplies a reference GEMM and more threads
than the work size was asked for, with guard bands around every array and the scratch;
the Python wrapper holds OpenBLAS at one thread around these kernels and restores it."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

import codegen
from codegen.blas import numpy_blas, one_thread
from derive.builtins import builtin

from .oracles import require_oracle
from .test_conv import GUARDS

PLAIN_C = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#include "conv2d.h"

""" + GUARDS + r"""
/* row-major C = alpha op(A) op(B) + beta C; beta = 0 never reads C (as BLAS) */
static void ref_dgemm(int layout, int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                      double alpha, const double *a, ptrdiff_t lda, const double *b,
                      ptrdiff_t ldb, double beta, double *c, ptrdiff_t ldc) {
    (void)layout;
    for (ptrdiff_t i = 0; i < m; ++i)
        for (ptrdiff_t j = 0; j < n; ++j) {
            double s = 0;
            for (ptrdiff_t p = 0; p < k; ++p)
                s += (ta == 112 ? a[p * lda + i] : a[i * lda + p])
                     * (tb == 112 ? b[j * ldb + p] : b[p * ldb + j]);
            c[i * ldc + j] = alpha * s + (beta == 0 ? 0 : beta * c[i * ldc + j]);
        }
}
int main(void) {
    const ptrdiff_t N = 7, C = 5, O = 5, H = 9, W = 11, KH = 3, KW = 3;   /* big enough
       for the kernels to fork (BP_PARALLEL_MIN) */
    const ptrdiff_t Hout = (H + 2 - 2 - 1) / 2 + 1, Wout = (W + 2 - 2 - 1) / 2 + 1;
    size_t nx = N * C * H * W, nw = O * C * KH * KW, ny = N * O * Hout * Wout;
    double *x = guarded(nx, 0), *w = guarded(nw, 0), *b = guarded(O, 0.5);
    double *dy = guarded(ny, 0);
    for (size_t i = 0; i < nx; ++i) x[i] = (double)(i % 7) - 3;
    for (size_t i = 0; i < nw; ++i) w[i] = (double)(i % 5) - 2;
    for (size_t i = 0; i < ny; ++i) dy[i] = (double)(i % 3) - 1;
    bp_conv2d_set_gemm(NULL, ref_dgemm);
    omp_set_num_threads(1);              /* the sizes asked for on one thread ... */
    size_t nf = bp_conv2d_forward_work(N, C, O, H, W, KH, KW, Hout, Wout);
    size_t nb = bp_conv2d_backward_work(N, C, O, H, W, KH, KW, Hout, Wout);
    double *work = guarded(nf, NAN), *work2 = guarded(nb, NAN);
    double *y = guarded(ny, NAN), *dx = guarded(nx, NAN), *dw = guarded(nw, NAN);
    double *db = guarded(O, NAN);
    omp_set_num_threads(4);              /* ... and more threads than processors to run */
    int s1 = bp_conv2d_forward_f64(N, C, O, H, W, KH, KW, Hout, Wout, x, w, b, y, work);
    int s2 = bp_conv2d_backward_f64(N, C, O, H, W, KH, KW, Hout, Wout, x, w, b, dy, dx, dw,
                                    db, work2);
    printf("status %d %d\n", s1, s2);
    printf("per_thread %d\n", bp_conv2d_gemm_per_thread());
    show("y", y, ny); show("dx", dx, nx); show("dw", dw, nw); show("db", db, O);
    int ok = intact(x, nx) && intact(w, nw) && intact(b, O) && intact(y, ny) && intact(dy, ny)
        && intact(dx, nx) && intact(dw, nw) && intact(db, O) && intact(work, nf)
        && intact(work2, nb);
    printf("guards %s\n", ok ? "intact" : "BROKEN");
    return 0;
}
"""


def test_threads_on_the_gemm_hook_stay_in_their_scratch(tmp_path):
    """Against torch: y, dx, dw, db of a strided padded conv2d over 7 images, run by up to
    4 threads on a reference GEMM, every output filled with NaN first (beta = 0 must
    overwrite, each image's block be written); the scratch sized before the threads were
    raised is never overrun (its guards, and all others, stay NaN)."""
    require_oracle("torch")
    import torch

    cc = require_oracle("cc")
    codegen.emit(builtin("conv2d", dict(S=2, P=1)), tmp_path, "c")
    (tmp_path / "main.c").write_text(PLAIN_C)
    r = subprocess.run([*cc, "-std=c99", "-O1", "-fopenmp", "-Wall", "main.c", "conv2d.c",
                        "-lm", "-o", "main"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True)
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()}
    assert rows["guards"] == ["intact"]
    assert rows["status"] == ["0", "0"] and rows["per_thread"] == ["1"]
    x = (np.arange(7 * 5 * 9 * 11) % 7 - 3.0).reshape(7, 5, 9, 11)
    w = (np.arange(5 * 5 * 9) % 5 - 2.0).reshape(5, 5, 3, 3)
    b = np.full(5, 0.5)
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = torch.nn.functional.conv2d(*leaves, stride=2, padding=1)
    y.backward(torch.tensor((np.arange(y.numel()) % 3 - 1.0).reshape(tuple(y.shape))))
    got = {k: np.array(rows[k], dtype=float) for k in ("y", "dx", "dw", "db")}
    np.testing.assert_allclose(got["y"], y.detach().numpy().ravel(), rtol=1e-13)
    for n, leaf in zip(("dx", "dw", "db"), leaves):
        np.testing.assert_allclose(got[n], leaf.grad.numpy().ravel(), rtol=1e-13, atol=1e-13)


def test_only_convolutions_call_the_gemm_from_their_threads():
    """The header says which kernels do (a threaded BLAS beside the kernels' own threads
    ran conv2d's backward 13x slower); a dense layer's one GEMM keeps BLAS's threads."""
    conv = codegen.sources(builtin("conv2d", dict(P=1)), "c")
    dense = codegen.sources(builtin("dense"), "c")
    assert "int bp_conv2d_gemm_per_thread(void);" in conv["conv2d.h"]
    assert "gemm_per_thread" not in dense["dense.h"] + dense["dense.c"]


def test_one_thread_restores_the_blas_thread_count():
    """Nested uses set OpenBLAS to one thread once and restore the count once; a
    convolution called through the wrapper leaves the count as it found it."""
    blas = numpy_blas()
    if blas is None or blas.get_threads is None:
        pytest.fail("NumPy's OpenBLAS is needed (BACKPROP_BLAS=none set?)")
    before = blas.get_threads()
    try:
        blas.set_threads(2)
        with one_thread(blas):
            assert blas.get_threads() == 1
            with one_thread(blas):
                assert blas.get_threads() == 1
            assert blas.get_threads() == 1
        assert blas.get_threads() == 2
        k = codegen.load("conv2d", backend="c", dtype="float64", constants=dict(P=1))
        rng = np.random.default_rng(0)
        x, w, b = rng.normal(size=(3, 2, 5, 5)), rng.normal(size=(2, 2, 3, 3)), np.zeros(2)
        k.backward(x=x, w=w, b=b, dy=rng.normal(size=(3, 2, 5, 5)))
        assert blas.get_threads() == 2
    finally:
        blas.set_threads(before)
