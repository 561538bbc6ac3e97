"""The compiled C kernels of every built-in layer, in float32 and float64, against the
NumPy backend, the symbolic expressions, finite differences and PyTorch."""
from pathlib import Path

import numpy as np
import pytest

import codegen
from derive.builtins import BUILTINS, builtin

from .oracles import (OnFirstUse, assert_close, draw_sizes, finite_differences, gradients,
                      random_arrays, rel_err, require_oracle, tolerance, torch_forward,
                      torch_leaves)
from .test_numpy_kernels import FORWARD_ONLY, GRADIENT_LAYERS

DTYPES = ("float32", "float64")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kernels():
    """(name, dtype) -> a built-in's C kernels, built when a test first asks (under
    pytest-xdist each worker builds the ones its own tests use)."""
    return OnFirstUse(lambda key: codegen.load(key[0], backend="c", dtype=key[1]))


@pytest.fixture(scope="module")
def numpy_kernels(builtin_numpy_kernels):
    return builtin_numpy_kernels


def cast(arrays, dtype):
    """Floating arrays in dtype; integer index arrays stay integers."""
    return {n: v if np.issubdtype(np.asarray(v).dtype, np.integer) else
            np.asarray(v, dtype=dtype) for n, v in arrays.items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, seed", [(n, s) for n in BUILTINS for s in range(3)])
def test_against_numpy_and_symbolic(kernels, numpy_kernels, symbolic_oracle, name, seed,
                                    dtype):
    c = kernels[name, dtype]
    rng = np.random.default_rng(2000 + seed)          # the same arrays for both dtypes
    sizes = draw_sizes(c.layer, rng, ones=(seed == 0))
    arrays = random_arrays(numpy_kernels[name], sizes, rng)
    exact = symbolic_oracle(c.derivation, arrays)     # float64, evaluated once per case
    a = cast(arrays, dtype)
    fwd = c.forward(**{n: a[n] for n in c.args})
    grads = gradients(c, **a)
    np_fwd = numpy_kernels[name].forward(**{n: a[n] for n in c.args})
    np_grads = gradients(numpy_kernels[name], **a)
    tol = tolerance(np.dtype(dtype), sizes)
    for n in c.returns:
        assert fwd[n].dtype == np.dtype(dtype) and fwd[n].shape == np_fwd[n].shape
        assert rel_err(fwd[n], np_fwd[n]) < tol, (n, sizes)
        # float32 against the float64 oracle: inputs were rounded too, so allow that as well
        assert rel_err(fwd[n], exact[n]) < max(tol, 50 * np.finfo(dtype).eps), (n, sizes)
    assert bool(c.gradients) == (name in GRADIENT_LAYERS)
    for n in c.gradients:
        assert grads[n].dtype == np.dtype(dtype)
        assert_close(grads[n], np_grads[n], tol, (n, sizes))
        assert_close(grads[n], exact[n], max(tol, 50 * np.finfo(dtype).eps), (n, sizes))


@pytest.mark.parametrize("name", GRADIENT_LAYERS)
def test_float64_against_finite_differences(kernels, numpy_kernels, name):
    c = kernels[name, "float64"]
    rng = np.random.default_rng(5)
    sizes = draw_sizes(c.layer, rng)
    arrays = random_arrays(numpy_kernels[name], sizes, rng)
    grads = c.backward(**arrays)
    assert c.gradients
    for n in c.gradients:
        fd = finite_differences(c, arrays, n[1:])
        assert_close(grads[n], fd, 1e-6, (n, sizes))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FORWARD_ONLY)
def test_forward_only_layer_against_torch_optim(kernels, numpy_kernels, name, dtype):
    """adam's step in C against torch.optim.Adam from the same state (float32 inputs are
    rounded first, then torch steps in float64)."""
    torch = require_oracle("torch")
    c = kernels[name, dtype]
    rng = np.random.default_rng(8)
    arrays = random_arrays(numpy_kernels[name], draw_sizes(c.layer, rng), rng)
    a = cast(arrays, dtype)
    want = torch_forward(name)(**torch_leaves(c.layer, cast(a, "float64"), c.args))
    got = c.forward(**{n: a[n] for n in c.args})
    assert want and c.gradients == ()
    for n, value in want.items():
        assert_close(got[n], value.detach().numpy(), 20 * np.finfo(dtype).eps, n)


@pytest.mark.parametrize("name", GRADIENT_LAYERS)
def test_against_pytorch(kernels, numpy_kernels, name):
    torch = require_oracle("torch")
    c = kernels[name, "float64"]
    rng = np.random.default_rng(9)
    sizes = draw_sizes(c.layer, rng)
    arrays = random_arrays(numpy_kernels[name], sizes, rng, one_hot=True)
    leaves = torch_leaves(c.layer, arrays, c.args)
    out = torch_forward(name)(**leaves)
    total = sum((out[t.name] * torch.tensor(arrays["d" + t.name])).sum()
                for t in c.layer.upstream)
    if c.layer.loss:
        total = total + out[c.layer.loss]
    wanted = [n[1:] for n in c.gradients]
    tgrads = torch.autograd.grad(total, [leaves[n] for n in wanted])
    grads = c.backward(**arrays)
    assert tgrads
    for n, g in zip(wanted, tgrads):
        assert_close(grads["d" + n], g.numpy(), tolerance(np.float64, sizes), n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "softmax_cross_entropy",
                                  "softmax_cross_entropy_labels", "sigmoid_bce", "mlp2",
                                  "sigmoid", "tanh"])
@pytest.mark.parametrize("logit", [1e4, -1e4])
def test_extreme_logits_stay_finite(kernels, numpy_kernels, name, dtype, logit):
    c = kernels[name, dtype]
    rng = np.random.default_rng(3)
    arrays = random_arrays(numpy_kernels[name], {d: 3 for d in c.layer.dims}, rng,
                           one_hot=True)
    first = c.args[0]
    arrays[first] = logit * np.sign(rng.normal(size=arrays[first].shape))
    a = cast(arrays, dtype)
    fwd = c.forward(**{n: a[n] for n in c.args})
    grads = gradients(c, **a)
    fused = c.forward_backward(**{n: a[n] for n in c.args}) if c.layer.loss else {}
    for n, v in list(fwd.items()) + list(grads.items()) + list(fused.items()):
        assert np.all(np.isfinite(v)), (n, v)


def test_backward_reuses_given_intermediates(kernels, numpy_kernels):
    c = kernels["mlp2", "float64"]
    rng = np.random.default_rng(1)
    arrays = random_arrays(numpy_kernels["mlp2"], dict(N=5, D=3, H=7, C=2), rng)
    fwd = c.forward(**{n: arrays[n] for n in c.args})
    a = gradients(c, **arrays)
    b = gradients(c, **arrays, **fwd)
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])


SPECIAL = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1.2e-38, 1e-10, -1e-10, 1.0,
                    88.0, -88.0, 89.0, -104.0, 710.0, -745.0, 1e4, -1e4, np.inf, -np.inf,
                    np.nan])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu"])
def test_vector_math_error_bound_and_special_values(kernels, numpy_kernels, name, dtype):
    """Vectorized exp/tanh (libmvec on glibc) stay within 8 ulp of float64 over a wide range,
    subnormals and +-1e4 included, and NaN and Inf come out as NumPy's do."""
    with np.errstate(all="ignore"):
        z = np.concatenate([SPECIAL, np.linspace(-30, 30, 2001), np.geomspace(1e-30, 1e4, 300)])
        z = np.concatenate([z, -z]).astype(dtype).reshape(1, -1)
    c = kernels[name, dtype]
    da = np.ones_like(z)
    got = c.forward(z=z)["a"]
    grad = c.backward(z=z, da=da)["dz"]
    with np.errstate(all="ignore"):
        want = numpy_kernels[name].forward(z=z.astype(np.float64))["a"]
        want_grad = numpy_kernels[name].backward(z=z.astype(np.float64), da=da)["dz"]
    tiny, eps = np.finfo(dtype).tiny, np.finfo(dtype).eps
    for g, w in ((got, want), (grad, want_grad)):
        assert np.array_equal(np.isnan(g), np.isnan(w))
        assert np.array_equal(g[np.isinf(w)], w[np.isinf(w)].astype(dtype))
    fin = np.isfinite(want)
    rel = np.abs(got[fin] - want[fin]) / np.maximum(np.abs(want[fin]), tiny)
    assert rel.max() <= 8 * eps, rel.max() / eps
    # The backward formulas are written in the output a (a (1 - a), 1 - a^2), as PyTorch
    # computes them: where a saturates, 1 - a cancels, so their bound is absolute, in
    # units of the upstream gradient (here 1).
    fin = np.isfinite(want_grad)
    assert np.abs(grad[fin] - want_grad[fin]).max() <= 8 * eps


EXP = """layer exp_of  exp, alone
dims N, I
input z[N, I]
output y[N, I]

y[n, i] = exp(z[n, i])
"""


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_within_two_ulp_from_underflow_to_overflow(dtype):
    """float C takes exp from the toolkit's own branch-free bp_exp_f32 (exhaustively within
    1.02 ulp; here sampled): within 2 ulp of float64 exp, in units of the result's own ulp,
    also where the result is subnormal (down to x = -103.9) and at the overflow edge
    (x = 88.72); 0 below, Inf above, NaN through.  double C takes libmvec's exp (documented
    within 4 ulp), here against NumPy's float64 exp (within 1 ulp itself): 5 ulp."""
    from derive import parse_spec
    k = codegen.load(parse_spec(EXP), backend="c", dtype=dtype)
    info = np.finfo(dtype)
    top, bottom = np.log(info.max), np.log(info.smallest_subnormal) - 1
    with np.errstate(all="ignore"):
        z = np.concatenate([SPECIAL, np.linspace(bottom, top, 200001), np.geomspace(1e-40, 1, 300),
                            [top, np.nextafter(top, np.inf), bottom, np.nextafter(bottom, 0)]])
        z = np.concatenate([z, -z]).astype(dtype).reshape(1, -1)
        want = np.exp(z.astype(np.float64))
        rounded = want.astype(dtype)                       # Inf past the overflow edge
    got = k.forward(z=z)["y"]
    assert np.array_equal(np.isnan(got), np.isnan(want))
    inf = np.isinf(rounded)
    assert np.array_equal(got[inf], rounded[inf])
    fin = ~inf & ~np.isnan(want)
    ulp = np.spacing(rounded[fin])                         # the result's own ulp, subnormals too
    err = np.abs(got[fin] - want[fin]) / ulp
    assert err.max() <= (2 if dtype == "float32" else 5), (err.max(), z[fin][err.argmax()])


def test_float_log1p_within_two_ulp_on_the_unit_interval(tmp_path):
    """The float softplus takes log1p(e), e = exp(-|z|) in [0, 1], from the toolkit's own
    series: within 2 ulp of log1p (README; exhaustively checked once).  Here 2^21 floats
    spread evenly over the bit patterns of [0, 1] (subnormals to 1, both ends included),
    the function compiled alone from the generated source with the toolkit's flags."""
    import ctypes
    import subprocess

    from codegen import build

    source = (ROOT / "generated" / "c" / "sigmoid_bce.c").read_text()
    start = source.index("static inline float bp_log1p_unit_f32(")
    function = source[start:source.index("\n}\n", start) + 3]
    harness = tmp_path / "log1p.c"
    harness.write_text("#include <math.h>\n#include <stddef.h>\n" + function +
                       "void run(const float *e, float *y, ptrdiff_t n)\n"
                       "{ for (ptrdiff_t i = 0; i < n; ++i) y[i] = bp_log1p_unit_f32(e[i]); }\n")
    lib = tmp_path / "log1p.so"
    r = subprocess.run(require_oracle("cc") + build.BASE_FLAGS + build.opt_flags() +
                       ["-shared", str(harness), "-o", str(lib), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    e = np.linspace(0, np.float32(1).view(np.uint32), 2 ** 21).astype(np.uint32).view(np.float32)
    assert e[0] == 0 and e[-1] == 1
    y = np.empty_like(e)
    ctypes.CDLL(str(lib)).run(ctypes.c_void_p(e.ctypes.data), ctypes.c_void_p(y.ctypes.data),
                              ctypes.c_ssize_t(e.size))
    want = np.log1p(e.astype(np.float64))
    err = np.abs(y - want) / np.spacing(want.astype(np.float32))   # the result's own ulp
    assert err.max() <= 2, (err.max(), e[err.argmax()])


SOFTPLUS = """layer softplus_of  log(1 + exp(z)), written plainly
dims N, I
input z[N, I]
output y[N, I]

y[n, i] = log(1 + exp(z[n, i]))
"""


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_log_one_plus_exp_is_a_stable_softplus(backend, dtype):
    """log(1 + exp(z)) as written overflows for z > 88 in float32; the kernels compute it as
    softplus (max(z, 0) + log1p(exp(-|z|))).  In float32 C that log1p is the toolkit's own
    (log1p on [0, 1] only): within 8 ulp of float64 over a wide range, subnormals, +-1e4,
    and NaN and Inf as NumPy's np.logaddexp(0, z) gives them; its derivative sigmoid too."""
    from derive import parse_spec
    k = codegen.load(parse_spec(SOFTPLUS), backend=backend,
                     **({"dtype": dtype} if backend == "c" else {}))
    with np.errstate(all="ignore"):
        z = np.concatenate([SPECIAL, np.linspace(-120, 120, 24001), np.geomspace(1e-40, 1e4, 600)])
        z = np.concatenate([z, -z]).astype(dtype).reshape(1, -1)
        want = np.logaddexp(0.0, z.astype(np.float64))
        z64 = z.astype(np.float64)
        e = np.exp(-np.abs(z64))                     # sigmoid without overflow either side
        want_grad = np.where(z64 >= 0, 1, e) / (1 + e)
    with np.errstate(invalid="ignore"):            # NumPy warns of the NaN input
        got = k.forward(z=z)["y"]
        grad = k.backward(z=z, dy=np.ones_like(z))["dz"]
    for g, w in ((got, want), (grad, want_grad)):
        assert np.array_equal(np.isnan(g), np.isnan(w))
        assert np.array_equal(g[np.isinf(w)], w[np.isinf(w)].astype(dtype))
    tiny, eps = np.finfo(dtype).tiny, np.finfo(dtype).eps
    for g, w in ((got, want), (grad, want_grad)):
        fin = np.isfinite(w)
        rel = np.abs(g[fin] - w[fin]) / np.maximum(np.abs(w[fin]), tiny)
        assert rel.max() <= 8 * eps, rel.max() / eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["dense", "mlp2"])
def test_matrix_products_through_blas_and_through_loops(kernels, numpy_kernels, name, dtype):
    """Matrix products go to NumPy's BLAS by default (every other test runs that path);
    the generated loops, used when no GEMM is supplied, meet the same oracle: the NumPy
    backend in float64 (itself checked against the symbolic one above; expanding that at
    sizes up to 40 took minutes)."""
    from codegen.blas import numpy_blas

    c = kernels[name, dtype]
    assert c.blas is not None and c.blas == numpy_blas(), "NumPy's OpenBLAS was not found"
    rng = np.random.default_rng(77)
    sizes = {d: int(v) for d, v in zip(c.layer.dims,
                                       rng.choice(np.arange(5, 40), len(c.layer.dims), False))}
    arrays = random_arrays(numpy_kernels[name], sizes, rng)
    npk = numpy_kernels[name]
    exact = {**npk.forward(**{n: arrays[n] for n in c.args}), **npk.backward(**arrays)}
    a = cast(arrays, dtype)
    tol = max(tolerance(np.dtype(dtype), sizes), 50 * np.finfo(dtype).eps)
    results = {}
    try:
        for blas in (True, False):
            c.use_blas(blas)
            results[blas] = {**c.forward(**{n: a[n] for n in c.args}), **gradients(c, **a)}
    finally:
        c.use_blas(True)
    for blas, got in results.items():
        for n in c.returns + c.gradients:
            assert_close(got[n], exact[n], tol, (blas, n, sizes))


# Several products summed into one target: each accumulates into it in turn
# (codegen/loops._split_init): y's two GEMMs (the first from the bias), u's hand-loop
# product after its GEMM, the loss's two scalar sums.
PRODUCTS = """layer two_products  y = W x + V z + b, u = W x + (V z)^2 summed apart, a loss of both
dims N, I, K, J
input  x[N, I], z[N, K]
param  W[J, I], V[J, K], b[J]
output y[N, J], u[N, J]
loss   L

y[n, j] = W[j, i] * x[n, i] + b[j] + V[j, k] * z[n, k]
u[n, j] = W[j, i] * x[n, i] + V[j, k] * z[n, k] * z[n, k] - y[n, j]
L = sum(y[n, j] * y[n, j], n, j) / N + sum(u[n, j], n, j)
"""


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_products_accumulate_into_one_target(dtype):
    """A target that is a sum of several products (an LSTM's gates: W_ih x + W_hh h + b)
    gets no scratch array per product: the first product starts from the rest, each later
    one adds to the target.  The forward needs no scratch, and its C equals the
    NumPy backend (float64) and, for the loss's gradients, finite differences of the NumPy
    forward, through BLAS and through the generated loops."""
    from codegen.c_backend import lower_for_c
    from codegen.plan import plan
    from derive import derive, parse_spec
    layer = parse_spec(PRODUCTS)
    c = codegen.load(layer, backend="c", dtype=dtype)
    npk = codegen.load(layer, backend="numpy")
    loops = lower_for_c(plan(derive(layer)), {t.name: t.dims for t in layer.tensors.values()})
    assert not loops.forward_temps
    assert [(n.target, n.kind) for n in loops.forward] == [
        (t, "reduce") for t in ("y", "y", "u", "u", "L", "L")]
    rng = np.random.default_rng(5)
    sizes = dict(N=7, I=5, K=11, J=3)
    arrays = random_arrays(npk, sizes, rng)
    exact = {**npk.forward(**{n: arrays[n] for n in npk.args}), **npk.backward(**arrays)}
    for name in ("x", "z", "W", "V", "b"):
        assert_close(exact["d" + name], finite_differences(npk, arrays, name), 1e-7, name)
    a = cast(arrays, dtype)
    tol = max(tolerance(np.dtype(dtype), sizes), 50 * np.finfo(dtype).eps)
    try:
        for blas in (True, False):
            c.use_blas(blas)
            got = {**c.forward(**{n: a[n] for n in c.args}), **c.backward(**a)}
            for n in ("y", "u", "L", "dx", "dz", "dW", "dV", "db"):
                assert_close(got[n], exact[n], tol, (blas, n))
    finally:
        c.use_blas(True)


LOSS_LAYERS = [n for n in BUILTINS if builtin(n).loss]     # parsed only: no cache written


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, seed", [(n, s) for n in LOSS_LAYERS for s in range(2)])
def test_fused_forward_backward(kernels, numpy_kernels, symbolic_oracle, name, seed, dtype):
    """One kernel computes the loss and every gradient (intermediates stay in scratch or
    are recomputed): the same values as forward + backward and the symbolic oracle."""
    c = kernels[name, dtype]
    rng = np.random.default_rng(3000 + seed)
    sizes = draw_sizes(c.layer, rng, ones=(seed == 0))
    arrays = random_arrays(numpy_kernels[name], sizes, rng)
    exact = symbolic_oracle(c.derivation, arrays)
    a = cast(arrays, dtype)
    got = c.forward_backward(**{n: a[n] for n in c.args})
    assert set(got) == {t.name for t in c.layer.outputs} | set(c.gradients)
    tol = max(tolerance(np.dtype(dtype), sizes), 50 * np.finfo(dtype).eps)
    for n, v in got.items():
        assert v.dtype == np.dtype(dtype), n
        assert_close(v, exact[n], tol, (n, sizes))
    np_got = numpy_kernels[name].forward_backward(**{n: arrays[n] for n in c.args})
    for n, v in np_got.items():
        assert_close(v, exact[n], tolerance(np.float64, sizes), (n, sizes))
    if dtype != "float64" or seed != 1:
        return
    # the other two oracles, on the fused kernel itself: central differences of the loss,
    # and PyTorch autograd of the textbook forward
    for n in c.gradients:
        assert_close(got[n], finite_differences(c, dict(arrays), n[1:]), 1e-6, n)
    torch = require_oracle("torch")
    leaves = torch_leaves(c.layer, arrays, c.args)
    loss = torch_forward(name)(**leaves)[c.layer.loss]
    wanted = [n[1:] for n in c.gradients]
    for n, g in zip(wanted, torch.autograd.grad(loss, [leaves[n] for n in wanted])):
        assert_close(got["d" + n], g.numpy(), tolerance(np.float64, sizes), n)
    assert_close(got[c.layer.loss], loss.detach().numpy(), tolerance(np.float64, sizes), "L")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, row", [("softmax_cross_entropy_labels", 1000),
                                       ("softmax_cross_entropy_labels", 256),
                                       ("layernorm", 517)])
def test_rows_longer_than_a_prefetch_block(kernels, numpy_kernels, name, row, dtype):
    """Passes that ask for the next row ahead run their inner loop in blocks of 16 cache
    lines (256 floats, 128 doubles): rows of several blocks, a partial last block, exactly
    one block, and the last row (whose "next row" is itself) give the NumPy backend's
    float64 values (itself checked against the symbolic oracle above; expanding that oracle
    at rows of 1000 takes minutes)."""
    from codegen.emitter import sources
    assert "BP_PREFETCH(" in sources(name, "c")[f"{name}.c"]          # the blocked path
    c = kernels[name, dtype]
    rng = np.random.default_rng(5000 + row)
    sizes = {d: (row if d in ("I", "C") else 3) for d in c.layer.dims}
    arrays = random_arrays(numpy_kernels[name], sizes, rng)
    npk = numpy_kernels[name]
    if c._fused:
        exact = npk.forward_backward(**{n: arrays[n] for n in c.args})
    else:
        exact = {**npk.forward(**{n: arrays[n] for n in c.args}),
                 **npk.backward(**{n: arrays[n] for n in c.args + c.upstream})}
    a = cast(arrays, dtype)
    got = c.forward_backward(**{n: a[n] for n in c.args}) if c._fused else {
        **c.forward(**{n: a[n] for n in c.args}),
        **c.backward(**{n: a[n] for n in c.args + c.upstream})}
    assert set(got) == set(exact)
    tol = max(tolerance(np.dtype(dtype), sizes), 50 * np.finfo(dtype).eps)
    for n, v in got.items():
        assert rel_err(v, exact[n]) < tol, (n, sizes)


def test_fused_needs_a_loss_layer(kernels, numpy_kernels):
    for k in (kernels["dense", "float64"], numpy_kernels["dense"]):
        with pytest.raises(ValueError, match="needs a layer that ends in its loss"):
            k.forward_backward(x=np.ones((2, 2)), W=np.ones((2, 2)), b=np.ones(2))
    for k in (kernels["adam", "float64"], numpy_kernels["adam"]):   # forward only: no loss
        with pytest.raises(ValueError, match="ends in its loss; this one has no loss"):
            k.forward_backward(p=np.ones(2))


def test_blas_can_be_turned_off_from_the_environment(tmp_path):
    """BACKPROP_BLAS=none: no BLAS is looked up, the generated loops run."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np, codegen; k = codegen.load('dense', backend='c'); "
            "g = k.backward(x=np.ones((3, 2)), W=np.ones((4, 2)), b=np.zeros(4), "
            "dz=np.ones((3, 4))); print(k.blas, float(g['dW'].sum()))")
    env = {**os.environ, "BACKPROP_BLAS": "none", "BACKPROP_CACHE": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.stdout.split() == ["None", "24.0"], r.stderr


def test_layernorm_backward_recomputes_xhat():
    """xhat = (x - mu) rstd is a few operations on arrays the backward reads anyway: the
    kernel plan recomputes it rather than taking it back from forward."""
    from codegen.plan import plan
    from derive import derive
    from derive.builtins import builtin

    assert plan(derive(builtin("layernorm"))).reuses == ("mu", "rstd")
    assert plan(derive(builtin("gelu"))).reuses == ("th",)      # tanh is not cheap


def test_scratch_space_is_kept_between_calls_and_per_thread_when_busy():
    """The work buffer is the object's from call to call (no page faults on a fresh one
    each call), with or without out=; a call from a second thread while the first holds it
    gets its own, so concurrent calls still compute the right thing."""
    import threading

    k = codegen.load("layernorm", backend="c")
    rng = np.random.default_rng(0)
    x, dy = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    w, b = rng.normal(size=5), rng.normal(size=5)
    want = k.backward(x=x, w=w, b=b, dy=dy)
    kept = k._kept[("backward", None)]
    k.backward(x=x, w=w, b=b, dy=dy, out={n: np.empty_like(v) for n, v in want.items()})
    assert k._kept[("backward", None)] is kept
    got = {}
    with k._scratch_locks["backward"]:        # as if another thread were inside backward
        thread = threading.Thread(target=lambda: got.update(k.backward(x=x, w=w, b=b, dy=dy)))
        thread.start()
        thread.join()
    for n, v in want.items():
        np.testing.assert_array_equal(got[n], v)
    assert k._kept[("backward", None)] is kept


def test_cffi_glue_compiles_at_o1_and_a_user_s_flags_are_kept():
    """The argument-converting wrapper gains nothing from -O3 (0.9 s of an LSTM's build):
    it compiles at -O1; flags without -O2/-O3 (a user's -O0 -g) stay as they are."""
    from codegen.build import _glue_flags
    assert _glue_flags(["-fPIC", "-O3", "-march=native"]) == ["-fPIC", "-march=native", "-O1"]
    assert _glue_flags(["-O0", "-g"]) == ["-O0", "-g"]
