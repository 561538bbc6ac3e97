"""Convolutions and pooling: affine subscripts, their gather adjoints with exact bounds,
against torch.nn.functional in both backends, for strides, paddings, dilations and groups;
the spec errors of shifted reads; and generated C called from a plain C program with guard
bands around every array."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codegen
from derive import derive, parse_spec
from derive.affine import between
from derive.builtins import builtin
from derive.errors import SpecError
from derive.evaluate import evaluate
from derive.indices import free_indices, outer_first

from .oracles import rel_err, require_oracle

try:
    import torch
    F = torch.nn.functional
except ImportError:                      # each test then asks for it (skip, or fail in CI)
    torch = F = None


@pytest.fixture(autouse=True)
def _torch_oracle():
    require_oracle("torch")


def _check(kernels, inputs, fn, dtype, rng, tol, zero_ok=False):
    """Forward and every gradient of `kernels` against torch at float64 (`zero_ok`: a
    drawn configuration may read only padding, where a gradient is exactly 0)."""
    leaves = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for n, v in inputs.items()}
    y_t = fn(**leaves)
    dy = rng.normal(size=tuple(y_t.shape))
    y_t.backward(torch.tensor(dy))
    cast = {n: v.astype(dtype) for n, v in inputs.items()}
    out = kernels.forward(**cast)
    grads = kernels.backward(**cast, dy=dy.astype(dtype))
    assert out["y"].shape == tuple(y_t.shape)
    assert rel_err(out["y"], y_t.detach().numpy()) < tol
    for n, leaf in leaves.items():
        want = leaf.grad.numpy()
        assert zero_ok or np.linalg.norm(want) > 0, n       # no vacuous comparison
        assert grads["d" + n].shape == want.shape
        assert rel_err(grads["d" + n], want) < tol, (n, rel_err(grads["d" + n], want))


# float64: every output and gradient within 1e-10 (relative, normwise) of torch; float32
# inputs are rounded first, and the sums are at most a few hundred terms: 1e-4.
TOL = {"float64": 1e-10, "float32": 1e-4}
BACKENDS = [("numpy", "float64"), ("numpy", "float32"), ("c", "float64"), ("c", "float32")]


def _load(name, backend, dtype, **constants):
    return codegen.load(name, backend=backend, dtype=dtype if backend == "c" else None,
                        constants=constants or None)


CONV1D = [  # (S, P, D, L, K): strides, paddings, dilations; sizes with 1 and odd primes
    (1, 0, 1, 7, 3), (2, 1, 1, 11, 3), (1, 2, 2, 7, 3), (3, 1, 2, 13, 2), (2, 0, 3, 11, 3),
    (1, 0, 1, 5, 5), (1, 3, 1, 1, 7), (2, 2, 1, 3, 5),
]


@pytest.mark.parametrize("backend, dtype", BACKENDS)
@pytest.mark.parametrize("S, P, D, L, K", CONV1D)
def test_conv1d_against_torch(backend, dtype, S, P, D, L, K):
    k = _load("conv1d", backend, dtype, S=S, P=P, D=D)
    rng = np.random.default_rng(S * 100 + P * 10 + D)
    N, C, O = 2, 3, 5
    inputs = dict(x=rng.normal(size=(N, C, L)), w=rng.normal(size=(O, C, K)),
                  b=rng.normal(size=O))
    _check(k, inputs, lambda x, w, b: F.conv1d(x, w, b, stride=S, padding=P, dilation=D),
           dtype, rng, TOL[dtype])


CONV2D = [  # (S, P, D, H, W, KH, KW)
    (1, 0, 1, 5, 7, 3, 3), (1, 1, 1, 5, 5, 3, 3), (2, 1, 1, 7, 6, 3, 2),
    (2, 2, 2, 7, 5, 3, 3), (1, 0, 1, 3, 3, 3, 3), (3, 1, 1, 5, 11, 1, 5),
]


@pytest.mark.parametrize("backend, dtype", BACKENDS)
@pytest.mark.parametrize("S, P, D, H, W, KH, KW", CONV2D)
def test_conv2d_against_torch(backend, dtype, S, P, D, H, W, KH, KW):
    k = _load("conv2d", backend, dtype, S=S, P=P, D=D)
    rng = np.random.default_rng(H * W + KH)
    N, C, O = 2, 3, 2
    inputs = dict(x=rng.normal(size=(N, C, H, W)), w=rng.normal(size=(O, C, KH, KW)),
                  b=rng.normal(size=O))
    _check(k, inputs, lambda x, w, b: F.conv2d(x, w, b, stride=S, padding=P, dilation=D),
           dtype, rng, TOL[dtype])


@pytest.mark.parametrize("backend, dtype", BACKENDS)
@pytest.mark.parametrize("G, CG, OG, S, P", [(3, 1, 1, 1, 1), (2, 3, 2, 2, 0),
                                             (5, 1, 2, 1, 2)])
def test_grouped_and_depthwise_conv2d_against_torch(backend, dtype, G, CG, OG, S, P):
    """conv2d_grouped's x[N, G, CG, H, W] is torch's x[N, G*CG, H, W] (a view): groups=G;
    depthwise when CG = 1."""
    k = _load("conv2d_grouped", backend, dtype, S=S, P=P)
    rng = np.random.default_rng(G * 10 + CG)
    N, H, W, KH, KW = 2, 5, 7, 3, 3
    inputs = dict(x=rng.normal(size=(N, G, CG, H, W)), w=rng.normal(size=(G, OG, CG, KH, KW)),
                  b=rng.normal(size=(G, OG)))

    def grouped(x, w, b):
        y = F.conv2d(x.reshape(N, G * CG, H, W), w.reshape(G * OG, CG, KH, KW),
                     b.reshape(G * OG), stride=S, padding=P, groups=G)
        return y.reshape(N, G, OG, *y.shape[2:])

    _check(k, inputs, grouped, dtype, rng, TOL[dtype])


@pytest.mark.parametrize("backend, dtype", BACKENDS)
@pytest.mark.parametrize("K, S, H, W", [(2, 2, 4, 6), (2, 2, 5, 7), (3, 1, 5, 3),
                                         (3, 2, 7, 3), (1, 1, 2, 3)])
def test_avgpool2d_against_torch(backend, dtype, K, S, H, W):
    k = _load("avgpool2d", backend, dtype, K=K, S=S)
    rng = np.random.default_rng(K * 7 + H)
    x = rng.normal(size=(2, 3, H, W))
    _check(k, dict(x=x), lambda x: F.avg_pool2d(x, K, S), dtype, rng, TOL[dtype])


@pytest.mark.parametrize("backend, dtype", BACKENDS)
def test_global_avgpool2d_against_torch(backend, dtype):
    k = _load("global_avgpool2d", backend, dtype)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, 5, 7))
    _check(k, dict(x=x), lambda x: F.adaptive_avg_pool2d(x, 1)[:, :, 0, 0], dtype, rng,
           TOL[dtype])


def test_symbolic_oracle_matches_torch_for_a_strided_dilated_padded_conv():
    """The derivation itself (evaluated from its formulas) agrees with torch where the
    adjoint needs a divisibility condition (stride 2 and dilation 2)."""
    d = derive(builtin("conv1d", dict(S=2, P=1, D=2)))
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 2, 9)), rng.normal(size=(3, 2, 3)), rng.normal(size=3)
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    yt = F.conv1d(*leaves, stride=2, padding=1, dilation=2)
    dy = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    v = evaluate(d, dict(x=x, w=w, b=b, dy=dy))
    assert rel_err(v["y"], yt.detach().numpy()) < 1e-12
    for n, leaf in zip("xwb", leaves):
        assert rel_err(v["d" + n], leaf.grad.numpy()) < 1e-12, n


# ---- the derivation's form ---------------------------------------------------------

def test_stride_one_conv_dx_is_a_full_correlation_with_bounds():
    """dx[l] = sum_o sum_{k = max(0, l - Lout + 1)}^{min(K - 1, l)} w[o, c, k] dy[n, o, l - k]:
    a gather (the output position solved for, the kernel offset summed) with exact bounds,
    no Piecewise and no delta."""
    s = derive(builtin("conv1d")).gradients["x"]
    (o_lim, k_lim) = outer_first(s.expr.limits) if len(s.expr.limits) == 2 else (None, None)
    assert not s.expr.has(sp.Piecewise) and not s.expr.has(sp.KroneckerDelta)
    body = s.expr.function
    assert k_lim is not None, s.expr
    k, lo, hi = k_lim
    n, c, l = s.indices
    Lout, K = sp.Symbol("Lout", integer=True, positive=True), \
        sp.Symbol("K", integer=True, positive=True)
    assert sp.simplify(lo - sp.Max(0, l - Lout + 1)) == 0
    assert sp.simplify(hi - sp.Min(K - 1, l)) == 0
    dy = [a for a in body.atoms(sp.Indexed) if a.base.label.name == "dy"][0]
    assert sp.expand(dy.indices[2] - (l - k)) == 0


def test_strided_conv_dx_needs_no_divisibility_when_one_coefficient_is_one():
    """stride 2, dilation 1: the kernel offset is solved for, the output position sums over
    exactly the positions that reach l (ceil/floor bounds), with no [2 | ...] bracket."""
    s = derive(builtin("conv1d", dict(S=2, P=1))).gradients["x"]
    text = str(s.expr)
    assert "divides" not in text and "ceiling" in text and "floor" in text


def test_bounds_show_in_text_and_latex():
    from derive.latex import index_latex
    from derive.pretty import formula

    s = derive(builtin("conv1d")).gradients["x"]
    assert "k=max(0, l + 1 - Lout)..min(K - 1, l)" in formula(s.expr)
    tex = index_latex(s.expr)
    # (a dimension named by a word is set upright, as every multi-letter name)
    assert r"\sum_{k=\max\left(0, l + 1 - \mathrm{Lout}\right)}^{\min\left(K - 1, l\right)}" \
        in tex, tex


def test_the_worked_example_grows_sizes_a_dilated_kernel_needs():
    """conv2d with D = 3 at the example's H = W = 4 would have Hout = -2: the document's
    worked example grows H and W until every derived size is at least 1."""
    from derive.document import document

    text = document(derive(builtin("conv2d", dict(D=3))), "md")
    line = next(li for li in text.splitlines() if li.startswith("At N = "))
    sizes = dict(part.split(" = ") for part in line[3:].split(" (")[0].split(", "))
    assert int(sizes["Hout"]) >= 1 and int(sizes["Wout"]) >= 1, line
    assert int(sizes["H"]) == 3 * (int(sizes["KH"]) - 1) + int(sizes["Hout"]), line


def test_constants_are_written_into_the_source():
    layer = builtin("conv2d", dict(S=2, P=1))
    assert "const S = 2, P = 1, D = 1" in layer.source
    assert layer.constants == {"S": 2, "P": 1, "D": 1}
    with pytest.raises(SpecError, match="'Q' is not a constant of layer conv2d"):
        builtin("conv2d", dict(Q=1))
    with pytest.raises(SpecError, match="must be set to an integer"):
        builtin("conv2d", dict(S=1.5))


def test_output_size_is_checked_against_its_definition():
    k = codegen.load("conv1d", backend="c")
    x, w, b = np.ones((1, 2, 7)), np.ones((3, 2, 3)), np.ones(3)
    dy = np.ones((1, 3, 4))                       # Lout = 7 - 3 + 1 = 5, not 4
    for kern in (k, codegen.load("conv1d")):
        with pytest.raises(ValueError, match=r"dy: dimension Lout is 4, but Lout = "
                                             r".* = 5 with L = 7, K = 3"):
            kern.backward(x=x, w=w, b=b, dy=dy)
        with pytest.raises(ValueError, match="must be at least 1"):
            kern.forward(x=np.ones((1, 2, 2)), w=w, b=b)


PAIRS = """layer pairs
dims N, I, K = 2, J = 2*I
input x[N, J]
output y[N, I]
y[n, i] = max(x[n, 2*i + p], p in K)
"""


@pytest.mark.parametrize("backend", ["numpy", "c", "jax"])
def test_a_dimension_only_defined_into_another_needs_an_array_that_gives_it(backend):
    """J = 2*I with only x[N, J] given: I cannot be recovered from J, so the forward pass
    says which dimension is missing (it raised a bare KeyError: 'I' in the NumPy module);
    the backward pass, given dy[N, I], has it."""
    if backend == "jax":
        pytest.importorskip("jax")
    k = codegen.load(parse_spec(PAIRS), backend=backend)
    x = np.arange(12.0).reshape(2, 6)
    with pytest.raises(ValueError, match=r"^pairs: no array gives the size of dimension I$"):
        k.forward(x=x)
    dx = k.backward(x=x, dy=np.ones((2, 3)))["dx"]
    assert np.array_equal(np.asarray(dx), np.tile([0.0, 1.0], 6).reshape(2, 6))


# ---- spec errors -------------------------------------------------------------------

HEAD = """layer c1
dims N, L, K, M
input x[N, L]
param w[K]
output y[N, M]
"""


def spec_error(text):
    with pytest.raises(SpecError) as e:
        parse_spec(text, "c.bp")
    return e.value


@pytest.mark.parametrize("lines, line, col, words", [
    # a shifted read that can leave x without padding declared (the column of the subscript)
    ("y[n, i] = w[k] * x[n, i + k]", 6, 23, "can read outside x: the subscript runs from 0 to "
                                            "K + M - 2, the axis L from 0 to L - 1"),
    ("y[n, i] = w[k] * x[n, i - 1]", 6, 23, "declare 'outside x = 0'"),
    # not affine
    ("y[n, i] = w[k] * x[n, i*k]", 6, 23, "a product of two indices is not"),
    ("y[n, i] = w[k] * x[n, i/2]", 6, 23, "'/' is not allowed in a subscript"),
    ("y[n, i] = w[k] * x[n, i//2]", 6, 23, "'//' is not allowed in a subscript"),
    # a dimension as a coefficient: sizes are known only when the kernel runs
    ("y[n, i] = w[k] * x[n, K*i + k]", 6, 23, "dimension K multiplies an index: an index's "
                                              "coefficient in a subscript is an integer "
                                              "constant ('const K = 2'), not a dimension"),
    ("y[n, i] = w[k] * x[n, i*(M + 1) + k]", 6, 26, "dimension M multiplies an index"),
    # a stride that is not a positive integer
    ("y[n, i] = w[k] * x[n, 0*i + k]", 6, 23, "stride or dilation is a positive integer"),
    # an index whose range nothing gives
    ("y[n, i] = x[n, i + j]", 6, 20, "appears only in shifted subscripts"),
])
def test_shifted_read_errors(lines, line, col, words):
    e = spec_error(HEAD + lines + "\n")
    assert (e.file, e.line, e.col) == ("c.bp", line, col), str(e)
    assert words in e.message, e.message


@pytest.mark.parametrize("text, line, col, words", [
    ("layer a\nconst S = 0\ndims N, L\ninput x[N, L]\noutput y[N, L]\n"
     "y[n, i] = x[n, S*i]", 6, 16, "S = 0 multiplies an index: a stride or dilation is a "
                                   "positive integer"),
    ("layer a\ndims N, L, M = L / 2\ninput x[N, L]\noutput y[N, M]\ny[n, i] = x[n, 2*i]",
     2, 16, "write // (floor division"),
    ("layer a\ndims N, L, M = L // Q\n", 2, 21, "'Q' is not a dimension or constant declared "
                                                "before this line"),
    ("layer a\nconst S = 1.5\n", 2, 7, "const takes 'NAME = integer' pairs"),
    ("layer a\ndims N, L\ninput x[N, L]\noutput y[N, L]\noutside y = 0\ny[n, i] = x[n, i]",
     5, 9, "'y' is an output: only arrays the layer reads from its caller can be padded"),
    ("layer a\ndims N, L\ninput x[N, L]\noutput y[N, L]\noutside x = 1\ny[n, i] = x[n, i]",
     5, 13, "only zero padding is supported"),
    ("layer a\ndims N, L\ninput x[N, L]\noutput y[N, L]\ny[n, i] = sum(x[n, i + k], k in Q)",
     5, 33, "'Q' is not a dimension"),
])
def test_declaration_errors(text, line, col, words):
    e = spec_error(text)
    assert (e.line, e.col) == (line, col) and words in e.message, (e.line, e.col, e.message)


def test_padding_makes_a_read_that_leaves_the_axis_valid():
    layer = parse_spec(HEAD.replace("output y[N, M]", "output y[N, L]") +
                       "outside x = 0\ny[n, i] = w[k] * x[n, i + k - 1]\n")
    assert layer.tensors["x"].outside == 0
    # padding declared where no read leaves the axis: no guard is needed, none is kept
    layer = parse_spec("layer a\ndims N, L\ninput x[N, L]\noutside x = 0\noutput y[N, L]\n"
                       "y[n, i] = x[n, i]")
    assert layer.tensors["x"].outside is None


# ---- random configurations -----------------------------------------------------------

@st.composite
def conv_configs(draw):
    dims2 = draw(st.booleans())
    S, D, P = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    G = draw(st.integers(1, 3))
    CG, OG = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sizes = [draw(st.integers(1, 7)) for _ in range(2 if dims2 else 1)]
    # a kernel as large as the padded input allows
    kernel = [draw(st.integers(1, (n + 2 * P - 1) // D + 1)) for n in sizes]
    return dims2, S, P, D, G, CG, OG, sizes, kernel


GROUPED_1D = """layer conv1d_grouped  1-D grouped convolution
const S = 1, P = 0, D = 1
dims N, G, CG, OG, L, K, Lout = (L + 2*P - D*(K - 1) - 1) // S + 1
input x[N, G, CG, L]
outside x = 0
param w[G, OG, CG, K], b[G, OG]
output y[N, G, OG, Lout]
y[n, g, o, i] = w[g, o, c, k] * x[n, g, c, S*i + D*k - P] + b[g, o]
"""


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_random_convolutions_against_torch(config):
    """Random 1-D and 2-D convolutions (stride, padding, dilation, groups, kernels as large
    as the padded input) in both backends against torch.nn.functional and its gradients."""
    dims2, S, P, D, G, CG, OG, sizes, kernel = config
    layer = builtin("conv2d_grouped", dict(S=S, P=P, D=D)) if dims2 else \
        parse_spec(GROUPED_1D, "conv1d_grouped.bp", dict(S=S, P=P, D=D))
    conv = F.conv2d if dims2 else F.conv1d
    N = 2
    rng = np.random.default_rng(sum(sizes) + 7 * S)
    inputs = dict(x=rng.normal(size=(N, G, CG, *sizes)), w=rng.normal(size=(G, OG, CG, *kernel)),
                  b=rng.normal(size=(G, OG)))

    def fn(x, w, b):
        y = conv(x.reshape(N, G * CG, *sizes), w.reshape(G * OG, CG, *kernel),
                 b.reshape(G * OG), stride=S, padding=P, dilation=D, groups=G)
        return y.reshape(N, G, OG, *y.shape[2:])

    for backend in ("numpy", "c"):
        k = codegen.load(layer, backend=backend)
        _check(k, inputs, fn, "float64", rng, TOL["float64"], zero_ok=True)


# ---- plain C: nothing outside an array is read or written --------------------------

GUARDS = r"""
#define GUARD 64
/* an array with GUARD elements on both sides: reads there give NaN, writes are seen */
static double *guarded(size_t n, double fill) {
    double *p = malloc((n + 2 * GUARD) * sizeof(double));
    for (size_t i = 0; i < n + 2 * GUARD; ++i) p[i] = NAN;
    for (size_t i = 0; i < n; ++i) p[GUARD + i] = fill;
    return p + GUARD;
}
static int intact(const double *p, size_t n) {
    for (size_t i = 1; i <= GUARD; ++i)
        if (!isnan(p[-(ptrdiff_t)i]) || !isnan(p[n + i - 1])) return 0;
    return 1;
}
static void show(const char *name, const double *p, size_t n) {
    printf("%s", name);
    for (size_t i = 0; i < n; ++i) printf(" %.17g", p[i]);
    printf("\n");
}
"""

PLAIN_C = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "conv2d.h"
#include "gather.h"

""" + GUARDS + r"""
int main(void) {
    const ptrdiff_t N = 1, C = 2, O = 2, H = 3, W = 4, KH = 3, KW = 3;
    const ptrdiff_t Hout = (H + 2 - 2 - 1) / 2 + 1, Wout = (W + 2 - 2 - 1) / 2 + 1;
    size_t nx = N * C * H * W, nw = O * C * KH * KW, ny = N * O * Hout * Wout;
    double *x = guarded(nx, 0), *w = guarded(nw, 0), *b = guarded(O, 0.5);
    double *y = guarded(ny, 0), *dy = guarded(ny, 0), *dx = guarded(nx, 0);
    double *dw = guarded(nw, 0), *db = guarded(O, 0);
    for (size_t i = 0; i < nx; ++i) x[i] = (double)(i % 7) - 3;
    for (size_t i = 0; i < nw; ++i) w[i] = (double)(i % 5) - 2;
    for (size_t i = 0; i < ny; ++i) dy[i] = (double)(i % 3) - 1;
    double *work = guarded(bp_conv2d_forward_work(N, C, O, H, W, KH, KW, Hout, Wout) + 1, 0);
    bp_conv2d_forward_f64(N, C, O, H, W, KH, KW, Hout, Wout, x, w, b, y, work);
    double *work2 = guarded(bp_conv2d_backward_work(N, C, O, H, W, KH, KW, Hout, Wout) + 1, 0);
    bp_conv2d_backward_f64(N, C, O, H, W, KH, KW, Hout, Wout, x, w, b, dy, dx, dw, db, work2);
    show("y", y, ny); show("dx", dx, nx); show("dw", dw, nw); show("db", db, O);
    /* an output size that disagrees with Hout's definition (a caller's arithmetic slip):
       -1, and y is neither read past nor written */
    double *small = guarded(N * O * 1 * Wout, 7);
    int status = bp_conv2d_forward_f64(N, C, O, H, W, KH, KW, 1, Wout, x, w, b, small, work);
    printf("status %d %d\n", status, intact(small, N * O * Wout) && small[0] == 7);
    /* a label gather with labels out of range: -1 and V read nothing */
    const ptrdiff_t G = 3, V = 4, E = 2;
    int64_t ids[3] = {-1, 4, 2};
    double *table = guarded(V * E, 1.0), *g = guarded(G * E, 0);
    for (ptrdiff_t i = 0; i < V * E; ++i) table[i] = (double)i;
    bp_gather_forward_f64(G, V, E, ids, table, g, work);
    show("g", g, G * E);
    int ok = intact(x, nx) && intact(w, nw) && intact(b, O) && intact(y, ny) && intact(dy, ny)
        && intact(dx, nx) && intact(dw, nw) && intact(db, O) && intact(table, V * E)
        && intact(g, G * E);
    printf("guards %s\n", ok ? "intact" : "BROKEN");
    return 0;
}
"""

GATHER = """layer gather  rows of a table at integer ids
dims G, V, E
input ids[G] in V
param table[V, E]
output g[G, E]
g[n, e] = table[ids[n], e]
"""


def test_plain_c_reads_and_writes_only_inside_arrays(tmp_path):
    """A C program (no Python, no wrapper checks) calls a padded strided conv2d and a label
    gather with bad labels; every array sits between NaN guard bands: a read outside would
    make a result NaN, a write outside would change a guard."""
    cc = require_oracle("cc")
    codegen.emit(builtin("conv2d", dict(S=2, P=1)), tmp_path, "c")
    codegen.emit(parse_spec(GATHER), tmp_path, "c")
    (tmp_path / "main.c").write_text(PLAIN_C)
    r = subprocess.run([*cc, "-std=c99", "-O1", "-Wall", "-Wno-unknown-pragmas", "main.c",
                        "conv2d.c", "gather.c", "-lm", "-o", "main"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, check=True)
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()}
    assert rows["guards"] == ["intact"]
    assert rows["status"] == ["-1", "1"]          # refused, nothing touched
    got = {k: np.array(v, dtype=float) for k, v in rows.items() if k not in ("guards",
                                                                              "status")}
    x = (np.arange(24) % 7 - 3.0).reshape(1, 2, 3, 4)
    w = (np.arange(36) % 5 - 2.0).reshape(2, 2, 3, 3)
    b = np.full(2, 0.5)
    leaves = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = F.conv2d(*leaves, stride=2, padding=1)
    dy = (np.arange(y.numel()) % 3 - 1.0).reshape(tuple(y.shape))
    y.backward(torch.tensor(dy))
    np.testing.assert_allclose(got["y"], y.detach().numpy().ravel(), rtol=1e-13)
    for n, leaf in zip(("dx", "dw", "db"), leaves):
        np.testing.assert_allclose(got[n], leaf.grad.numpy().ravel(), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(got["g"], [0, 0, 0, 0, 4, 5])


@pytest.mark.parametrize("name, constants, sizes", [
    ("conv2d", dict(S=2, P=1), dict(x=(2, 3, 7, 6), w=(4, 3, 3, 3), b=(4,))),
    ("conv2d", dict(D=2, P=2), dict(x=(1, 2, 5, 9), w=(3, 2, 3, 2), b=(3,))),
    ("conv1d", dict(S=3, P=2, D=2), dict(x=(2, 6, 31), w=(5, 6, 3), b=(5,))),
])
def test_gemm_lowering_and_loops_agree(name, constants, sizes):
    """The C convolution runs as packed operands and one GEMM per image when a GEMM is
    supplied (BLAS), else as loops: both against torch, in float32 and float64.  (Sizes
    with at least BP_IM2COL_MIN_WORK terms per GEMM: below, the C takes its loops anyway.)"""
    conv = {"conv1d": F.conv1d, "conv2d": F.conv2d}[name]
    fn = lambda x, w, b: conv(x, w, b, stride=constants.get("S", 1),
                              padding=constants.get("P", 0), dilation=constants.get("D", 1))
    for dtype in ("float64", "float32"):
        k = codegen.load(name, backend="c", dtype=dtype, constants=constants)
        assert k.blas is not None, "the GEMM path needs NumPy's BLAS"
        rng = np.random.default_rng(3)
        inputs = {n: rng.normal(size=s) for n, s in sizes.items()}
        try:
            for blas in (True, False):
                k.use_blas(blas)
                _check(k, inputs, fn, dtype, np.random.default_rng(4), TOL[dtype])
        finally:
            k.use_blas(True)


DIFF = """layer diff1  forward difference along a sequence (0 past its end), then a scale
dims N, L
input x[N, L]
outside x = 0
param s[L]
output y[N, L]
y[n, i] = s[i] * (x[n, i + 1] - x[n, i])
"""


def test_a_bracket_no_sum_absorbs_guards_its_term_everywhere():
    """dx[n, l] = [0 <= l - 1 <= L - 1] s[l - 1] dy[n, l - 1] - s[l] dy[n, l]: the bracket
    stays a factor; the symbolic oracle, NumPy and C all agree with torch, at l = 0 too."""
    layer = parse_spec(DIFF)
    d = derive(layer)
    assert d.gradients["x"].expr.has(between)
    rng = np.random.default_rng(2)
    x, s, dy = rng.normal(size=(2, 5)), rng.normal(size=5), rng.normal(size=(2, 5))
    xt, st = torch.tensor(x, requires_grad=True), torch.tensor(s, requires_grad=True)
    xp = F.pad(xt, (0, 1))
    (st * (xp[:, 1:] - xp[:, :-1])).backward(torch.tensor(dy))
    results = [evaluate(d, dict(x=x, s=s, dy=dy))] + [
        codegen.load(layer, backend=b).backward(x=x, s=s, dy=dy) for b in ("numpy", "c")]
    for r in results:
        assert rel_err(r["dx"], xt.grad.numpy()) < 1e-12
        assert rel_err(r["ds"], st.grad.numpy()) < 1e-12


def test_a_convolution_is_lowered_onto_the_gemm_hook():
    """README: y, dx and dw of conv2d each run as packed operands and one GEMM per image
    (the GEMM call inside a loop over n), with the loops as the fallback without BLAS;
    y, dx and dw also as Winograd's 16 GEMMs an image (tests/test_winograd.py)."""
    source = codegen.sources(builtin("conv2d", dict(P=1)), "c")["conv2d.c"]
    for side in ("forward", "backward"):
        body = source.split(f"int bp_conv2d_{side}_f32(", 1)[1].split("\n}\n", 1)[0]
        calls = body.count("bp_conv2d_gemm_f32(101")
        winograd = sum("bp_conv2d_gemm_f32(101" in line and "bp_xi*" in line
                       for line in body.splitlines())     # the product of transform xi
        assert winograd == (1 if side == "forward" else 2), (side, winograd)
        calls -= winograd
        assert calls == (1 if side == "forward" else 2), (side, calls)
        assert "for (ptrdiff_t n = 0; n < N; ++n) {" in body.split("gemm_f32(101")[0]
    assert "/* pack x[n, c, i + p - 1, j + q - 1] as a c p q x i j matrix */" in source


TABLE_CONV = """layer conv_table
dims N, C, O, L, P, K
input x[N, C, L]
input idx[P, K] in L
param W[O, C, K]
output y[N, O, P]
y[n, o, p] = W[o, c, k] * x[n, c, idx[p, k]]
"""


@pytest.mark.parametrize("backend, dtype", BACKENDS)
def test_a_convolution_through_an_index_table_has_a_scatter_add_adjoint(backend, dtype):
    """The integer-table form of conv1d: dx is one sum of the whole product with
    [l == idx[p, k]], which both backends add at row idx[p, k] (O(N C O P K), no one-hot
    and no C x L x O x P scratch), and equals torch's conv1d gradient."""
    layer = parse_spec(TABLE_CONV)
    dx = derive(layer).gradients["x"].expr
    assert isinstance(dx, sp.Sum) and len(dx.limits) == 3 and not dx.function.has(sp.Sum)
    text = codegen.sources(layer, backend)["conv_table." + ("c" if backend == "c" else "py")]
    if backend == "c":
        assert "bp_at = idx[p*K + k]" in text and "_s1" not in text
    else:
        assert "_scatter_add(L, idx," in text
    N, C, O, L, K = 2, 3, 5, 11, 3
    idx = np.arange(L - K + 1)[:, None] + np.arange(K)[None, :]
    rng = np.random.default_rng(5)
    x, W = rng.normal(size=(N, C, L)), rng.normal(size=(O, C, K))
    kernels = codegen.load(layer, backend=backend, dtype=dtype if backend == "c" else None)
    fn = lambda x, W: F.conv1d(x, W)              # noqa: E731
    table = dict(kernels=kernels, idx=idx)

    class WithTable:                               # the table is an input torch does not take
        def forward(self, **a):
            return table["kernels"].forward(idx=table["idx"], **a)

        def backward(self, **a):
            return table["kernels"].backward(idx=table["idx"], **a)
    _check(WithTable(), dict(x=x, W=W), fn, dtype, rng, TOL[dtype])


CROP = """layer diff
dims N, L
dims M = L - 1
input x[N, L]
output y[N, M]
y[n, i] = x[n, i + 1] - x[n, i]
"""

EXTEND = """layer extend
dims N, L
dims M = L + 2
input x[N, L]
outside x = 0
param s[M]
output y[N, M]
y[n, i] = s[i] * x[n, i]
"""


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_an_index_of_a_smaller_dimension_reads_inside_a_larger_axis(backend):
    """Cropping, x[n, i] with i over M = L - 1, is a read provably inside x's L axis; with
    'outside x = 0' an index over M = L + 2 reads zeros past the end.  Both equal torch."""
    rng = np.random.default_rng(3)
    x, dy = rng.normal(size=(2, 7)), rng.normal(size=(2, 6))
    xt = torch.tensor(x, requires_grad=True)
    (xt[:, 1:] - xt[:, :-1]).backward(torch.tensor(dy))
    k = codegen.load(parse_spec(CROP), backend=backend)
    assert rel_err(k.forward(x=x)["y"], x[:, 1:] - x[:, :-1]) < 1e-15
    assert rel_err(k.backward(x=x, dy=dy)["dx"], xt.grad.numpy()) < 1e-15

    s, dy = rng.normal(size=9), rng.normal(size=(2, 9))
    xt, st = torch.tensor(x, requires_grad=True), torch.tensor(s, requires_grad=True)
    yt = st * F.pad(xt, (0, 2))
    yt.backward(torch.tensor(dy))
    k = codegen.load(parse_spec(EXTEND), backend=backend)
    assert rel_err(k.forward(x=x, s=s)["y"], yt.detach().numpy()) < 1e-15
    grads = k.backward(x=x, s=s, dy=dy)
    assert rel_err(grads["dx"], xt.grad.numpy()) < 1e-15
    assert rel_err(grads["ds"], st.grad.numpy()) < 1e-15
    if backend == "c":       # the read past x's end is guarded for plain C callers too
        assert "(0 <= i && i < L) ? x[n*L + i] : 0" in codegen.sources(
            parse_spec(EXTEND), "c")["extend.c"]


def test_an_index_of_an_unrelated_dimension_is_still_an_error():
    with pytest.raises(SpecError) as info:
        parse_spec(CROP.replace("dims M = L - 1", "dims M").replace("x[n, i + 1] - ", ""))
    assert "index 'i' runs over L here but over M at column 6" in str(info.value)
    assert ":6:16:" in str(info.value)


TANH_CONV = """layer tanhconv
const P = 1
dims N, C, O, L, K, M = L + 2*P - K + 1
input x[N, C, L]
outside x = 0
param w[O, C, K], b[O]
output y[N, O, M]
y[n, o, i] = tanh(w[o, c, k] * x[n, c, i + k - P] + b[o])
"""


@pytest.mark.parametrize("backend, dtype", BACKENDS)
@pytest.mark.parametrize("P", [0, 1])
def test_a_function_of_a_convolution_in_one_equation(backend, dtype, P):
    """tanh(conv) written in one equation: dx's sum over k holds tanh of a sum over the
    same kernel dimension, which the solved delta must not capture (x[n, l] * sum_k w[k]
    was derived once); its C computes that inner sum only where the outer bounds allow."""
    layer = parse_spec(TANH_CONV, constants=dict(P=P))
    rng = np.random.default_rng(7)
    for N, C, O, L, K in [(2, 3, 5, 7, 3), (1, 1, 1, 3, 3), (1, 2, 3, 5, 5)]:
        inputs = dict(x=rng.normal(size=(N, C, L)), w=rng.normal(size=(O, C, K)),
                      b=rng.normal(size=O))
        kernels = codegen.load(layer, backend=backend,
                               dtype=dtype if backend == "c" else None)
        _check(kernels, inputs, lambda x, w, b: torch.tanh(F.conv1d(x, w, b, padding=P)),
               dtype, rng, TOL[dtype])


RELU_STRIDED = """layer reluconv
const S = 2
dims N, C, L, K, M = (L - K) // S + 1
input x[N, C, L]
param w[C, K]
output y[N, C, M]
y[n, c, i] = relu(sum(w[c, k] * x[n, c, S*i + k], k))
"""


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_function_of_a_strided_sum_over_the_solved_index(backend):
    """relu(sum_k w x[S*i + k]): the delta is solved for k, which relu's own sum also
    binds; that sum is renamed first (it was rebuilt with k = l - 2m as its index)."""
    rng = np.random.default_rng(9)
    x, w = rng.normal(size=(2, 3, 11)), rng.normal(size=(3, 3))
    kernels = codegen.load(parse_spec(RELU_STRIDED), backend=backend)
    fn = lambda x, w: torch.relu(F.conv1d(x, w[:, None, :], stride=2, groups=3))  # noqa
    _check(kernels, dict(x=x, w=w), fn, "float64", rng, TOL["float64"])



SUMMED_OFFSETS = """layer summed_offsets  two window offsets summed in one slot
dims N, C, O, H, W, KH, KW
dims Hout = H - KH - KW + 2
input  x[N, C, H, W]
param  w[O, C, KH, KW]
output y[N, O, Hout, W]
y[n, o, i, j] = w[o, c, p, q] * x[n, c, i + p + q, j]
"""


@pytest.mark.parametrize("backend, dtype", BACKENDS)
def test_a_window_offset_whose_bounds_read_another(tmp_path, backend, dtype):
    """dx[n, c, h, j] sums q over max(0, h + 1 - Hout - p)..min(KW - 1, h - p): bounds that
    read the outer offset p.  Renaming the sums' indices (fresh, then readable) must rename
    them in those bounds too: left behind, they read an index no sum binds, and the C did
    not compile.  The oracle: torch's conv2d with the offsets' combined (KH + KW - 1) x 1
    kernel, w summed over p + q = r."""
    spec = tmp_path / "summed_offsets.bp"
    spec.write_text(SUMMED_OFFSETS)
    dx = derive(parse_spec(SUMMED_OFFSETS)).gradients["x"].expr
    assert "~" not in str(dx), dx
    assert {i.label.name for i in free_indices(dx)} == {"n", "c", "h", "j"}, dx

    def fn(x, w):
        KH, KW = w.shape[2:]
        r = torch.zeros(*w.shape[:2], KH + KW - 1, 1, dtype=w.dtype)
        for p in range(KH):
            r = r + F.pad(w[:, :, p:p + 1, :].transpose(2, 3), (0, 0, p, KH - 1 - p))
        return F.conv2d(x, r)

    rng = np.random.default_rng(8)
    inputs = dict(x=rng.normal(size=(2, 3, 9, 4)), w=rng.normal(size=(5, 3, 3, 2)))
    _check(_load(str(spec), backend, dtype), inputs, fn, dtype, rng, TOL[dtype])
