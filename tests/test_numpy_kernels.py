"""Every built-in layer's emitted NumPy kernels against three independent oracles:
the symbolic expressions evaluated (derive.evaluate), central finite differences of the emitted forward,
and PyTorch autograd on a hand-written forward."""
import numpy as np
import pytest

import codegen
from derive.builtins import BUILTINS, builtin
from derive.evaluate import evaluate

from .oracles import (GATED, assert_close, draw_sizes, finite_differences,
                      gradients, random_arrays, rel_err, require_oracle, tolerance,
                      torch_forward, torch_leaves)

# Gradient tests run over the layers that have gradients; forward-only layers (an
# optimizer step) are tested on their own terms below, against torch.optim.
GRADIENT_LAYERS = tuple(n for n in BUILTINS if builtin(n).differentiable)
FORWARD_ONLY = tuple(n for n in BUILTINS if n not in GRADIENT_LAYERS)
CASES = [(name, seed) for name in GRADIENT_LAYERS for seed in range(3)]


@pytest.fixture(scope="module")
def kernels(builtin_numpy_kernels):
    return builtin_numpy_kernels


def setup(kernels, name, seed, one_hot=False):
    k = kernels[name]
    rng = np.random.default_rng(1000 + seed)
    sizes = draw_sizes(k.layer, rng, ones=(seed == 0))
    return k, sizes, random_arrays(k, sizes, rng, one_hot)


@pytest.mark.parametrize("name, seed", CASES)
def test_against_symbolic(kernels, name, seed):
    k, sizes, arrays = setup(kernels, name, seed)
    fwd = k.forward(**{n: arrays[n] for n in k.args})
    grads = gradients(k, **arrays)
    sym = evaluate(k.derivation, arrays)
    tol = tolerance(np.float64, sizes)
    for n in k.returns:
        assert rel_err(fwd[n], sym[n]) < tol, (n, sizes)
    assert k.gradients
    for n in k.gradients:
        assert grads[n].shape == np.shape(arrays[n[1:]])
        assert_close(grads[n], sym[n], tol, (n, sizes))


@pytest.mark.parametrize("name, seed", CASES)
def test_against_finite_differences(kernels, name, seed):
    k, sizes, arrays = setup(kernels, name, seed)
    grads = k.backward(**arrays)
    assert k.gradients
    for n in k.gradients:
        fd = finite_differences(k, arrays, n[1:])
        # h = 1e-6 in float64: truncation ~h^2 and rounding ~eps/h, both well below 1e-6.
        assert_close(grads[n], fd, 1e-6, (n, sizes))


@pytest.mark.parametrize("name, seed", CASES)
def test_against_pytorch(kernels, name, seed):
    torch = require_oracle("torch")
    k, sizes, arrays = setup(kernels, name, seed, one_hot=(seed == 2))
    fn = torch_forward(name)
    leaves = torch_leaves(k.layer, arrays, k.args)
    out = fn(**leaves)
    total = sum((out[t.name] * torch.tensor(arrays["d" + t.name])).sum()
                for t in k.layer.upstream)
    if k.layer.loss:
        total = total + out[k.layer.loss]
    wanted = [n[1:] for n in k.gradients]
    tgrads = torch.autograd.grad(total, [leaves[n] for n in wanted])
    fwd = k.forward(**{n: arrays[n] for n in k.args})
    grads = gradients(k, **arrays)
    tol = tolerance(np.float64, sizes)
    for n, value in out.items():
        assert rel_err(fwd[n], value.detach().numpy()) < tol, n
    assert tgrads
    for n, g in zip(wanted, tgrads):
        assert_close(grads["d" + n], g.numpy(), tol, ("d" + n, sizes))


@pytest.mark.parametrize("name, seed", [(n, s) for n in FORWARD_ONLY for s in range(3)])
def test_forward_only_layer_against_torch_optim(kernels, name, seed):
    """A forward-only layer (every input nograd) has no gradients by construction; adam's
    step is checked against torch.optim.Adam run from the same state."""
    torch = require_oracle("torch")
    k, sizes, arrays = setup(kernels, name, seed)
    assert not k.layer.differentiable and k.gradients == ()
    want = torch_forward(name)(**torch_leaves(k.layer, arrays, k.args))
    fwd = k.forward(**{n: arrays[n] for n in k.args})
    assert set(want) == set(fwd) - {t.name for t in k.layer.tensors.values()
                                    if t.role == "intermediate"}
    for n, value in want.items():
        assert_close(fwd[n], value.detach().numpy(), 1e-13, n)


def float32_arrays(arrays):
    return {n: v if np.issubdtype(np.asarray(v).dtype, np.integer) else np.float32(v)
            if np.ndim(v) == 0 else v.astype(np.float32) for n, v in arrays.items()}


@pytest.mark.parametrize("name", BUILTINS)
def test_float32_follows_float64(kernels, name):
    """float32 in, float32 out, at float32 accuracy: forward values and gradients against
    float64 (the inputs' own rounding, eps32/2 each, is within the same bound)."""
    k, sizes, arrays = setup(kernels, name, 1)
    fwd64 = k.forward(**{n: arrays[n] for n in k.args})
    a32 = float32_arrays(arrays)
    fwd32 = k.forward(**{n: a32[n] for n in k.args})
    tol = tolerance(np.float32, sizes)
    for n, v in fwd32.items():
        assert v.dtype == np.float32, n
        assert_close(v, fwd64[n], tol, n)
    if name in FORWARD_ONLY:
        return
    grads64 = k.backward(**arrays)
    grads32 = k.backward(**a32)
    assert grads32
    for n, v in grads32.items():
        assert v.dtype == np.float32, n
        assert_close(v, grads64[n], tol, n)


@pytest.mark.parametrize("name", GRADIENT_LAYERS)
def test_backward_reuses_forward_results(kernels, name):
    k, sizes, arrays = setup(kernels, name, 2)
    fwd = k.forward(**{n: arrays[n] for n in k.args})
    plain = k.backward(**arrays)
    reused = k.backward(**arrays, **fwd)
    assert plain
    for n in plain:
        np.testing.assert_array_equal(plain[n], reused[n])


def test_one_hot_condition_is_not_needed_by_kernels(kernels):
    """Kernels compute the general form, so soft targets (rows not summing to 1) still get
    the exact gradient; the simplified y - t would be wrong for them."""
    k = kernels["softmax_cross_entropy"]
    rng = np.random.default_rng(7)
    z, t = rng.normal(size=(5, 3)), rng.uniform(size=(5, 3))
    g = k.backward(z=z, t=t)["dz"]
    fd = finite_differences(k, {"z": z, "t": t}, "z")
    assert_close(g, fd, 1e-6, "dz")
    y = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert rel_err(g, (y - t) / 5) > 1e-2   # the one-hot form really differs here


@pytest.mark.parametrize("name, logit", [(n, s) for n in ("softmax", "softmax_cross_entropy",
                                                           "sigmoid_bce", "mlp2", "sigmoid")
                                          for s in (1e4, -1e4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_stay_finite(kernels, name, logit, dtype):
    k = kernels[name]
    rng = np.random.default_rng(3)
    sizes = {d: 3 for d in k.layer.dims}
    arrays = random_arrays(k, sizes, rng, one_hot=True)
    first = k.args[0]
    arrays[first] = arrays[first] * 0 + logit * np.sign(rng.normal(size=arrays[first].shape))
    arrays = {n: v.astype(dtype) for n, v in arrays.items()}
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        fwd = k.forward(**{n: arrays[n] for n in k.args})
        grads = gradients(k, **arrays)
    for n, v in list(fwd.items()) + list(grads.items()):
        assert np.all(np.isfinite(v)), (n, v)


def test_bad_arrays_get_named_errors(kernels):
    k = kernels["dense"]
    x, W, b = np.ones((3, 5)), np.ones((7, 5)), np.ones(7)
    with pytest.raises(ValueError, match=r"W: expected shape \(I=7, J=5\)|W: .*dimension J"):
        k.forward(x=x, W=np.ones((7, 4)), b=b)
    with pytest.raises(ValueError, match=r"b: expected shape .* \(1 axes\), got \(7, 1\)"):
        k.forward(x=x, W=W, b=np.ones((7, 1)))
    with pytest.raises(ValueError, match="missing array b"):
        k.forward(x=x, W=W)
    with pytest.raises(ValueError, match="unexpected array bias"):
        k.forward(x=x, W=W, b=b, bias=b)
    with pytest.raises(ValueError, match="missing array dz"):
        k.backward(x=x, W=W, b=b)
    with pytest.raises(ValueError, match=r"dz: expected shape \(N=3, I=7\)"):
        k.backward(x=x, W=W, b=b, dz=np.ones((3, 6)))
    with pytest.raises(ValueError, match="dimension N .* is 0"):
        k.forward(x=np.ones((0, 5)), W=W, b=b)
    with pytest.raises(ValueError, match="expected real numbers"):
        k.forward(x=x.astype(complex), W=W, b=b)


def test_tensors_describe_shapes(kernels):
    assert kernels["dense"].tensors == {
        "x": ("input", ("N", "J")), "W": ("param", ("I", "J")), "b": ("param", ("I",)),
        "z": ("output", ("N", "I"))}
    assert kernels["mlp2"].tensors["L"] == ("output", ())
    assert kernels["mlp2"].gradients == ("dx", "dW1", "db1", "dW2", "db2")




@pytest.mark.parametrize("seed", range(3))
def test_user_layer_from_spec_file(tmp_path, seed):
    spec = tmp_path / "gated.bp"
    spec.write_text(GATED)
    k = codegen.load(str(spec), cache=tmp_path / "cache")
    rng = np.random.default_rng(seed)
    sizes = draw_sizes(k.layer, rng, ones=(seed == 0))
    arrays = random_arrays(k, sizes, rng)
    grads = gradients(k, **arrays)
    sym = evaluate(k.derivation, arrays)
    for n in k.gradients:
        assert_close(grads[n], sym[n], tolerance(np.float64, sizes), n)
        assert_close(grads[n], finite_differences(k, arrays, n[1:]), 1e-6, n)
    torch = require_oracle("torch")
    x, W, b = (torch.tensor(arrays[n], requires_grad=True) for n in ("x", "W", "b"))
    a = x * torch.sigmoid(x @ W.T + b)
    tg = torch.autograd.grad((a * torch.tensor(arrays["da"])).sum(), [x, W, b])
    for n, g in zip(("dx", "dW", "db"), tg):
        assert_close(grads[n], g.numpy(), tolerance(np.float64, sizes), n)
