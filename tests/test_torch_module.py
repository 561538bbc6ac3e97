"""codegen.torch_module: every built-in as an nn.Module on the generated C kernels, checked
by torch.autograd.gradcheck, by torch's own layers (initialisation, training), and by the
errors a torch user meets (device, dtype, contiguity, double backward)."""
import math

import numpy as np
import pytest

import codegen
from derive.builtins import BUILTINS, builtin
from derive.parser import parse_spec

from .oracles import GATED, draw_sizes, random_arrays, require_oracle, torch_adam_step

torch = require_oracle("torch")

GRADIENT_LAYERS = [n for n in BUILTINS if builtin(n).differentiable]


@pytest.fixture(params=["cpp", "python"])
def route(request, monkeypatch):
    """Each test so marked runs on both routes of a call (codegen.torch_native's C++ and
    codegen.torch_calls' Python), chosen as a user would: $BACKPROP_TORCH_ROUTE."""
    monkeypatch.setenv("BACKPROP_TORCH_ROUTE", request.param)
    if request.param == "cpp":
        from codegen.torch_native import extension

        assert extension() is not None, "the C++ route did not build"
    return request.param


def _on(route, module):
    """The module, checked to be on the route the test asked for."""
    assert (module.native is not None) == (route == "cpp")
    return module


def module_and_tensors(name, seed, dtype="float64", backend="c"):
    """A module of the built-in with drawn sizes, and its inputs then targets as tensors:
    float inputs require grad, targets and integer labels do not."""
    layer = builtin(name)
    rng = np.random.default_rng(seed)
    sizes = draw_sizes(layer, rng)
    own = {d: sizes[d] for t in layer.params for d in t.dims if d not in layer.dim_defs}
    module = codegen.torch_module(name, backend=backend, dtype=dtype, **own)
    arrays = random_arrays(module.kernels, sizes, rng, one_hot=True)
    tensors = []
    for t in layer.inputs + layer.targets:
        a = torch.from_numpy(np.array(arrays[t.name]))
        if t.values is None:
            a = a.to(getattr(torch, dtype)).requires_grad_(t.role == "input" and not t.nograd)
        tensors.append(a)
    return module, tensors


@pytest.mark.parametrize("name", GRADIENT_LAYERS)
def test_gradcheck_every_builtin(name, route):
    """Inputs and parameters at once: the module's parameters are swapped for gradcheck's
    leaves with torch.func.functional_call, the way torch.func differentiates a module."""
    module, tensors = module_and_tensors(name, seed=1)
    _on(route, module)
    params = dict(module.named_parameters())
    leaves = [t for t in tensors if t.requires_grad] + list(params.values())
    fixed = {i: t for i, t in enumerate(tensors) if not t.requires_grad}

    def f(*leaves):
        inputs, k = [], 0
        for i in range(len(tensors)):
            if i in fixed:
                inputs.append(fixed[i])
            else:
                inputs.append(leaves[k])
                k += 1
        swapped = dict(zip(params, leaves[k:]))
        return torch.func.functional_call(module, swapped, tuple(inputs))

    assert leaves, name
    assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_on_the_numpy_backend():
    module, (x,) = module_and_tensors("dense", seed=2, backend="numpy")
    assert torch.autograd.gradcheck(module, (x,))
    assert module.kernels.backend == "numpy"


def test_forward_only_layer_runs_as_torch_optim_adam():
    """adam has no backward: forward runs without autograd and matches torch.optim.Adam."""
    module, tensors = module_and_tensors("adam", seed=3)
    want = torch_adam_step(*tensors)
    got = module(*tensors)
    assert [t.requires_grad for t in got] == [False] * 3
    for g, name in zip(got, ("p_next", "m_next", "v_next")):
        torch.testing.assert_close(g, want[name].to(g.dtype), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, torch_layer, sizes", [
    ("dense", lambda: torch.nn.Linear(3, 5), dict(I=5, J=3)),
    ("conv2d", lambda: torch.nn.Conv2d(2, 4, (3, 2)), dict(O=4, C=2, KH=3, KW=2)),
    ("conv1d", lambda: torch.nn.Conv1d(3, 2, 4), dict(O=2, C=3, K=4)),
    ("layernorm", lambda: torch.nn.LayerNorm(7), dict(C=7)),
])
def test_parameters_initialised_as_torch_does(name, torch_layer, sizes):
    """Under one seed, the very numbers of torch's layer."""
    torch.manual_seed(7)
    ours = codegen.torch_module(name, **sizes)
    torch.manual_seed(7)
    theirs = torch_layer()
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert isinstance(p, torch.nn.Parameter) and p.dtype == torch.float32
        assert torch.equal(p, q), n


def test_grouped_conv_and_user_spec_follow_the_rules():
    """A grouped convolution's fan-in is CG*KH*KW as torch's groups=G; a user's spec
    gets the same rules: a summed weight, a bias beside it."""
    torch.manual_seed(3)
    ours = codegen.torch_module("conv2d_grouped", G=2, OG=3, CG=2, KH=3, KW=3)
    torch.manual_seed(3)
    theirs = torch.nn.Conv2d(4, 6, 3, groups=2)
    assert torch.equal(ours.w.reshape(6, 2, 3, 3), theirs.weight)
    assert torch.equal(ours.b.reshape(6), theirs.bias)
    gated = codegen.torch_module(parse_spec(GATED, "gated.bp"), I=4)
    assert gated.init_rules["W"].fan_in == ("I",) and gated.init_rules["b"].fan_in == ("I",)
    bound = 1 / math.sqrt(4)
    assert 0 < gated.W.abs().max() <= bound and 0 < gated.b.abs().max() <= bound


def test_a_mixed_model_trains_as_the_all_torch_model(route):
    """Derived dense, layernorm, gelu and loss beside a torch Linear, in nn.Sequential,
    with torch.optim.Adam: every loss and parameter as the all-torch model's, 25 steps."""
    dt = torch.float64
    torch.manual_seed(0)
    derived = torch.nn.Sequential(
        codegen.torch_module("dense", dtype="float64", I=16, J=8),
        codegen.torch_module("layernorm", dtype="float64", C=16),
        codegen.torch_module("gelu", dtype="float64"),
        torch.nn.Linear(16, 4, dtype=dt))
    loss_derived = _on(route, codegen.torch_module("softmax_cross_entropy_labels",
                                                   dtype="float64"))
    torch.manual_seed(0)
    native = torch.nn.Sequential(torch.nn.Linear(8, 16, dtype=dt),
                                 torch.nn.LayerNorm(16, dtype=dt),
                                 torch.nn.GELU(approximate="tanh"),
                                 torch.nn.Linear(16, 4, dtype=dt))
    for p, q in zip(derived.parameters(), native.parameters()):
        assert torch.equal(p, q)            # the same initial weights, from the same seed
    x = torch.randn(32, 8, dtype=dt)
    labels = torch.randint(0, 4, (32,))
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (derived, native)]
    losses = []
    for step in range(25):
        pair = []
        for model, opt, loss_fn in ((derived, opts[0], loss_derived),
                                    (native, opts[1], torch.nn.functional.cross_entropy)):
            opt.zero_grad()
            loss = loss_fn(model(x), labels)
            loss.backward()
            opt.step()
            pair.append(loss.item())
        losses.append(pair)
    ours, theirs = np.array(losses).T
    assert theirs[-1] < 0.5 * theirs[0]                 # it learned something
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    for p, q in zip(derived.parameters(), native.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_float32_module_matches_torch_in_float32():
    torch.manual_seed(1)
    ours, theirs = codegen.torch_module("layernorm", C=6), torch.nn.LayerNorm(6)
    x = torch.randn(5, 6, requires_grad=True)
    y = ours(x)
    assert y.dtype == torch.float32
    y.square().sum().backward()
    gx = x.grad.clone()
    x.grad = None
    theirs(x).square().sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(ours.w.grad, theirs.weight.grad)


def test_tensors_reach_the_kernels_without_copies():
    from codegen.torch_layer import _tensor, _view

    x = torch.randn(3, 4, requires_grad=True)
    assert _view(x).__array_interface__["data"][0] == x.data_ptr()
    a = np.ones((2, 2), np.float32)
    assert _tensor(a).data_ptr() == a.__array_interface__["data"][0]


class _OnCuda(torch.Tensor):
    """A CPU tensor that reports a CUDA device: the check reads only .device."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_tensors_the_kernels_cannot_take_get_a_clear_error(route):
    m = _on(route, codegen.torch_module("dense", dtype="float64", I=3, J=4))
    x = torch.randn(4, 2, dtype=torch.float64).t()        # 2 x 4, transposed: strided
    with pytest.raises(ValueError, match=r"dense: x is not contiguous .*\.contiguous\(\)"):
        m(x)
    with pytest.raises(ValueError, match=r"x: expected torch.float64 .* got torch.float32"):
        m(x.contiguous().float())
    with pytest.raises(ValueError, match=r"x is on cuda:0; the derived kernels run on the CPU"):
        m(torch.Tensor._make_subclass(_OnCuda, x.contiguous()))
    with pytest.raises(ValueError, match=r"x is on meta; the derived kernels run on the CPU"):
        m(torch.empty(2, 4, dtype=torch.float64, device="meta"))
    with pytest.raises(TypeError, match=r"forward takes 1 tensor \(x\), got 2"):
        m(x, x)
    with pytest.raises(ValueError, match=r"expected a torch.Tensor, got ndarray"):
        m(np.ones((2, 4)))
    loss = codegen.torch_module("mse", dtype="float64")
    y = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mse: t requires grad, but the derivation gives "
                                         r"no gradient for it"):
        loss(y, y.clone().requires_grad_())
    labels = codegen.torch_module("softmax_cross_entropy_labels", dtype="float64")
    with pytest.raises(ValueError, match=r"t: expected integer class indices, got torch.float64"):
        labels(y, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("sizes, message", [
    (dict(I=3), r"dense: missing size J \(the parameters W\[I, J\], b\[I\] need I, J\)"),
    (dict(I=3, J=4, N=2), r"size N=2: it is not a dimension of any parameter"),
    (dict(I=3, J=4, Q=2), r"size Q=2: the layer has no such dimension"),
    (dict(I=0, J=4), r"size I must be a positive integer, got 0"),
])
def test_bad_sizes_get_a_clear_error(sizes, message):
    with pytest.raises(ValueError, match=message):
        codegen.torch_module("dense", **sizes)


def test_bad_dtype_and_backend_get_a_clear_error():
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64', got 'float16'"):
        codegen.torch_module("sigmoid", dtype="float16")
    with pytest.raises(ValueError, match="unknown backend 'jax' for torch_module"):
        codegen.torch_module("sigmoid", backend="jax")


def test_double_backward_raises_a_clear_error(route):
    m = _on(route, codegen.torch_module("tanh", dtype="float64"))
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="tanh: double backward .* first derivatives only"):
        torch.autograd.grad(m(z).sum(), z, create_graph=True)
    (g,) = torch.autograd.grad(m(z).sum(), z)               # first derivatives work
    torch.testing.assert_close(g, 1 - torch.tanh(z) ** 2)


def test_loss_gradient_scales_with_the_upstream_gradient(route):
    m = _on(route, codegen.torch_module("mse", dtype="float64"))
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64)
    (3 * m(y, t)).backward()
    torch.testing.assert_close(y.grad, 3 * (y - t).detach() / 4)


def test_shapes_are_checked_once_per_set_of_shapes(monkeypatch, route):
    """The C wrapper's shape checks run on the first call with a set of input shapes only;
    a new set is checked (and a wrong one refused) again, and labels' values every call."""
    m = _on(route, codegen.torch_module("dense", I=3, J=4))
    checks = []
    check = m.kernels.checked_sizes
    monkeypatch.setattr(m.kernels, "checked_sizes", lambda *a: checks.append(a) or check(*a))
    x = torch.randn(2, 4, requires_grad=True)
    for _ in range(3):
        m(x).sum().backward()
    with torch.no_grad():
        assert m(x).grad_fn is None
    assert len(checks) == 1
    torch.testing.assert_close(x.grad, 3 * m.W.detach().sum(0).expand(2, 4))
    m(torch.randn(5, 4))
    assert len(checks) == 2
    with pytest.raises(ValueError, match=r"W: expected shape \(I=3, J=5\), got \(3, 4\)"):
        m(torch.randn(2, 5))
    labels = codegen.torch_module("softmax_cross_entropy_labels")
    z = torch.randn(4, 3)
    labels(z, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"t: values must lie in 0..I-1 = 0..2; found 3 at"):
        labels(z, torch.tensor([0, 1, 3, 0]))
    torch.testing.assert_close(labels(z, torch.tensor([0, 1, 2, 0], dtype=torch.int32)),
                               torch.nn.functional.cross_entropy(z, torch.tensor([0, 1, 2, 0])))
