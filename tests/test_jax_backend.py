"""The JAX backend: every built-in's jax.numpy module against the NumPy backend (forward and
backward, float64), its apply() checked by jax.test_util.check_grads, and the derived
backward (not JAX's own differentiation) shown to be what jax.grad and jax.jit run."""
import re

import numpy as np
import pytest

import codegen
from derive.builtins import BUILTINS, builtin
from derive.parser import parse_spec

from .oracles import (GATED, OPTIMIZERS, assert_close, draw_sizes, random_arrays,
                      require_oracle, tolerance)

jax = require_oracle("jax")
jnp = jax.numpy
from jax.test_util import check_grads  # noqa: E402  (only once JAX is known to be there)

# Shifted reads with stride and padding (the adjoint reads at fractions: _take) and
# bounded sums, beside the built-ins' defaults.
STRIDED = [("conv1d", dict(S=2, P=1)), ("conv2d", dict(S=2, P=1, D=2)),
           ("conv2d_grouped", dict(S=2, P=1)), ("avgpool2d", dict(K=3, S=2))]


@pytest.fixture(autouse=True, scope="module")
def float64():
    """JAX computes in float32 unless x64 is on; these comparisons are float64."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def load_pair(layer):
    return codegen.load(layer), codegen.load(layer, backend="jax")


def draw(kernels, seed):
    rng = np.random.default_rng(seed)
    sizes = draw_sizes(kernels.layer, rng)
    return sizes, random_arrays(kernels, sizes, rng, one_hot=True)


def differentiable_apply(kernels, arrays):
    """apply() as a function of the arguments it differentiates, the others fixed."""
    names = [n for n in kernels.args if "d" + n in kernels.gradients]

    def f(*values):
        given = {**{n: jnp.asarray(arrays[n]) for n in kernels.args}, **dict(zip(names, values))}
        return kernels.module.apply(*[given[n] for n in kernels.args])

    return f, [jnp.asarray(arrays[n]) for n in names]


LAYERS = [(n, None) for n in BUILTINS] + STRIDED


@pytest.mark.parametrize("name, constants", LAYERS,
                         ids=[n if c is None else f"{n}-{c}" for n, c in LAYERS])
def test_against_the_numpy_backend_and_check_grads(name, constants):
    layer = builtin(name, constants)
    numpy_kernels, ours = load_pair(layer)
    sizes, arrays = draw(numpy_kernels, seed=4)
    tol = tolerance(np.float64, sizes)
    args = {n: arrays[n] for n in numpy_kernels.args}
    # jitted (eager JAX compiles op by op: 10x slower here); eager runs in the tests below
    want, got = numpy_kernels.forward(**args), jax.jit(ours.module.forward)(**args)
    assert set(got) == set(want)
    for n in want:
        assert np.asarray(got[n]).dtype == np.float64
        np.testing.assert_allclose(np.asarray(got[n]), want[n], rtol=tol, atol=tol)
    if not numpy_kernels.gradients:
        assert name == "adam" or name in OPTIMIZERS      # the steps are forward only
        return
    full = {**args, **{"d" + t.name: arrays["d" + t.name] for t in layer.upstream}}
    want, got = numpy_kernels.backward(**full), jax.jit(ours.module.backward)(**full)
    for n in want:
        assert_close(np.asarray(got[n]), want[n], tol, f"{name} {n}")
    f, values = differentiable_apply(ours, arrays)
    check_grads(jax.jit(f), values, order=1, modes=["rev"])


def test_jax_grad_runs_the_derived_backward():
    """ReLU'(0) = 0 is the derived convention; JAX's own derivative of maximum(z, 0) at 0
    is 0.5: jax.grad, jitted or not, gives 0, so the custom_vjp is what runs."""
    relu = codegen.load("relu", backend="jax").module
    z = jnp.zeros((2, 3))
    own = jax.grad(lambda z: jnp.maximum(z, 0).sum())(z)
    assert np.all(np.asarray(own) == 0.5)
    for grad in (jax.grad(lambda z: relu.apply(z).sum()),
                 jax.jit(jax.grad(lambda z: relu.apply(z).sum()))):
        assert np.all(np.asarray(grad(z)) == 0)
    assert "custom_vjp_call" in str(jax.make_jaxpr(relu.apply)(z))


@pytest.mark.parametrize("constants", [None, dict(S=2, P=1)])
def test_convolution_reads_windows_by_strided_slices(constants):
    """A shifted read, x[n, c, S*i + p - P, ...], is strided slices of x in the compiled
    forward and in the backward's dw: no gather (many times slower on XLA's CPU)."""
    ours = codegen.load(builtin("conv2d", constants), backend="jax").module
    rng = np.random.default_rng(7)
    x, w, b = rng.normal(size=(2, 3, 9, 8)), rng.normal(size=(4, 3, 3, 2)), np.zeros(4)
    forward = str(jax.make_jaxpr(ours.forward)(x, w, b))
    assert "gather" not in forward and "slice" in forward
    dy = ours.forward(x, w, b)["y"]
    backward = jax.make_jaxpr(ours.backward)(x, w, b, dy)
    if constants is None:                  # stride 1: dx reads dy in a window too
        assert "gather" not in str(backward)


def test_windows_match_the_numpy_backend():
    """The JAX module's _window against the NumPy module's strided view: steps of either
    sign, several terms on one axis (the longest first, last and in the middle), reads
    that leave the array (zeros) and one mostly outside it (gathered)."""
    numpy_module = codegen.load("conv1d").module
    jax_module = codegen.load("conv1d", backend="jax").module
    a = np.random.default_rng(8).normal(size=(3, 7, 6))
    for slots in [((0, ((1, 3),)), (0, ((2, 3), (1, 2))), (-1, ((1, 6),))),
                  ((0, ((1, 3),)), (1, ((1, 2), (-1, 5))), (2, ((-1, 3), (1, 2)))),
                  ((0, ((1, 3),)), (0, ((1, 2), (2, 3), (1, 2))), (0, ((1, 6),))),
                  ((1, ((-1, 2),)), (3, ((1, 9), (-2, 4))), (0, ((1, 6),)))]:
        want = numpy_module._window(a, slots)
        got = jax.jit(jax_module._window, static_argnums=1)(a, slots)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=str(slots))


def test_jit_of_a_loss_gradient_matches_numpy():
    """mlp2 under jax.jit: labels of a one-hot target, gradients of every parameter, and
    the loss's cotangent scaling them (3 L)."""
    numpy_kernels, ours = load_pair("mlp2")
    sizes, arrays = draw(numpy_kernels, seed=5)
    args = [jnp.asarray(arrays[n]) for n in ours.args]
    grads = jax.jit(jax.grad(lambda *a: 3 * ours.module.apply(*a), argnums=(1, 2, 3, 4)))(*args)
    want = numpy_kernels.backward(**{n: arrays[n] for n in ours.args})
    for g, n in zip(grads, ("W1", "b1", "W2", "b2")):
        assert_close(np.asarray(g), 3 * want["d" + n], tolerance(np.float64, sizes), n)


def test_integer_labels_and_a_user_layer():
    numpy_kernels, ours = load_pair("softmax_cross_entropy_labels")
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)))
    t = jnp.asarray([0, 2, 1, 2])
    g = jax.jit(jax.grad(ours.module.apply))(z, t)
    assert_close(np.asarray(g), numpy_kernels.backward(z=np.asarray(z), t=np.asarray(t))["dz"],
                 1e-12, "dz")
    with pytest.raises(ValueError, match=r"t: values must lie in 0..I-1 = 0..2; found 3"):
        ours.module.apply(z, jnp.asarray([0, 1, 2, 3]))
    gated = codegen.load(parse_spec(GATED, "gated.bp"), backend="jax")
    sizes, arrays = draw(gated, seed=6)
    f, values = differentiable_apply(gated, arrays)
    check_grads(f, values, order=1, modes=["rev"])


def test_float32_without_x64():
    jax.config.update("jax_enable_x64", False)
    try:
        ours = codegen.load("layernorm", backend="jax").module
        x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
        y = ours.apply(x, np.ones(5, np.float32), np.zeros(5, np.float32))
        assert y.dtype == jnp.float32
        g = jax.grad(lambda x: ours.apply(x, jnp.ones(5), jnp.zeros(5)).sum())(x)
        assert g.dtype == jnp.float32 and float(jnp.abs(g).max()) < 1e-4
    finally:
        jax.config.update("jax_enable_x64", True)


def test_forward_only_layer_is_not_differentiated():
    adam = codegen.load("adam", backend="jax").module
    p = jnp.ones(3)
    g = jax.grad(lambda p: adam.apply(p, p, p, p, 2.0, 0.1, 0.9, 0.999, 1e-8)[0].sum())(p)
    assert np.all(np.asarray(g) == 0)


def test_emit_writes_a_jax_module(tmp_path):
    from codegen.emitter import emit

    (path,) = emit("dense", tmp_path, backend="jax")
    text = path.read_text()
    assert path.name == "dense.py" and "import jax.numpy as jnp" in text
    assert "@jax.custom_vjp" in text and "apply.defvjp(_apply_forward, _apply_backward)" in text
    assert not re.search(r"(?<![\w.])np\.einsum", text) and "jnp.einsum" in text


def test_missing_jax_gets_a_one_line_error(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"the jax backend needs JAX: pip install "
                                          r"'backprop-toolkit\[jax\]'"):
        codegen.load("dense", backend="jax")
