"""codegen.torch_native, torch_module's C++ route: it takes the calls (the Python route's
kernels calls are never reached), gives what the Python route gives (outputs, gradients,
several outputs, a convolution whose entry points hold OpenBLAS on one thread), hands the
unusual calls to the Python route for its messages, and, when the extension cannot be
built, warns and leaves every module on the Python route."""
import pytest

import codegen
from codegen import torch_native

from .oracles import require_oracle

torch = require_oracle("torch")


@pytest.fixture(autouse=True)
def _built():
    assert torch_native.extension() is not None, "the C++ route did not build"


def _never(*args):
    raise AssertionError("the Python route's kernel calls were reached")


def _twins(name, **sizes):
    """The layer on the C++ route, and on the Python route with the same parameters."""
    cpp = codegen.torch_module(name, dtype="float64", route="cpp", **sizes)
    python = codegen.torch_module(name, dtype="float64", route="python", **sizes)
    python.load_state_dict(cpp.state_dict())
    assert cpp.native is not None and python.native is None
    return cpp, python


def test_the_cpp_route_takes_the_calls_and_gives_the_python_routes_results(monkeypatch):
    cpp, python = _twins("dense", I=3, J=5)
    monkeypatch.setattr(cpp.calls, "forward", _never)
    monkeypatch.setattr(cpp.calls, "backward", _never)
    x = torch.randn(4, 5, dtype=torch.float64)
    dz = torch.randn(4, 3, dtype=torch.float64)
    results = []
    for m in (cpp, python):
        with torch.no_grad():
            plain = m(x)
        leaf = x.clone().requires_grad_()
        out = m(leaf)
        out.backward(dz)
        results.append([plain, out.detach(), leaf.grad, m.W.grad, m.b.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert cpp.native.plans == 1                 # one set of shapes, planned once in C++
    for _ in range(2):                           # refused each time, not taken for the last
        with pytest.raises(ValueError, match=r"W: expected shape \(I=3, J=4\)"):
            cpp(torch.randn(4, 4, dtype=torch.float64))
    torch.testing.assert_close(cpp(x), results[0][1], rtol=0, atol=0)


@pytest.mark.parametrize("name, sizes, shape", [
    ("conv1d", dict(O=3, C=2, K=3), (2, 2, 9)),      # OpenBLAS held around each entry
    ("layernorm", dict(C=6), (5, 6)),                 # a work buffer, reused results
])
def test_layers_with_more_to_carry_match_the_python_route(name, sizes, shape):
    cpp, python = _twins(name, **sizes)
    x = torch.randn(*shape, dtype=torch.float64)
    results = []
    for m in (cpp, python):
        leaf = x.clone().requires_grad_()
        out = m(leaf)
        out.backward(torch.ones_like(out) + out.detach())
        results.append([out.detach(), leaf.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_an_output_the_loss_does_not_use_gets_a_zero_gradient():
    """A layer of two outputs: backward through one of them only (the other's upstream
    gradient is zeros, as the Python route's autograd.Function materialises it)."""
    from derive.parser import parse_spec

    layer = parse_spec("layer twice\ndims N, I\ninput x[N, I]\noutput y[N, I], z[N, I]\n\n"
                       "y[n, i] = 2 * x[n, i]\nz[n, i] = x[n, i] * x[n, i]\n", "twice.bp")
    grads, data = [], torch.randn(3, 2, dtype=torch.float64)
    for route in ("cpp", "python"):
        m = codegen.torch_module(layer, dtype="float64", route=route)
        x = data.clone().requires_grad_()
        y, z = m(x)
        z.sum().backward()
        grads.append(x.grad)
        torch.testing.assert_close(x.grad, 2 * x.detach())
    torch.testing.assert_close(*grads, rtol=0, atol=0)


def test_the_route_setting_is_checked(monkeypatch):
    with pytest.raises(ValueError, match=r"route='fast': unknown route 'fast'; choose "
                                         r"'cpp' or 'python'"):
        codegen.torch_module("sigmoid", route="fast")
    monkeypatch.setenv("BACKPROP_TORCH_ROUTE", "c++")
    with pytest.raises(ValueError, match=r"BACKPROP_TORCH_ROUTE: unknown route 'c\+\+'"):
        codegen.torch_module("sigmoid")
    monkeypatch.setenv("BACKPROP_TORCH_ROUTE", "python")
    assert codegen.torch_module("sigmoid").native is None
    assert codegen.torch_module("sigmoid", backend="numpy", route="cpp").native is None


def test_a_failed_build_warns_and_leaves_modules_on_the_python_route(monkeypatch, tmp_path):
    broken = tmp_path / "torch_native.cpp"
    broken.write_text("#error made to fail by the test\n")
    monkeypatch.setattr(torch_native, "SOURCE", broken)
    with pytest.warns(RuntimeWarning, match=r"the C\+\+ route could not be built \(.*made "
                                            r"to fail by the test.*\); modules take the "
                                            r"Python route"):
        m = codegen.torch_module("dense", dtype="float64", route="cpp", I=3, J=5)
    assert m.native is None
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    m(x).sum().backward()
    torch.testing.assert_close(x.grad, m.W.detach().sum(0).expand(4, 5))


def test_a_dropped_module_is_freed():
    """The C++ forward holds its module weakly: no cycle through the extension (which the
    garbage collector could not see into) keeps a module alive."""
    import gc
    import weakref

    m = codegen.torch_module("dense", route="cpp", I=3, J=4)
    assert m.forward is m.native
    m(torch.randn(2, 4, requires_grad=True)).sum().backward()
    gone = weakref.ref(m)
    del m
    gc.collect()
    assert gone() is None
