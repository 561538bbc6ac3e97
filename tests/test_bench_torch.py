"""bench/torch_interop.py measures what it claims: the derived and native peers compute
the same, and both measurements produce their records (no timing is asserted)."""
import pytest

from .oracles import require_oracle

torch = require_oracle("torch")

# The tests so marked load the C++ route (codegen/torch_native.py), a 34 s build the first
# time in a session.  They run on one pytest-xdist worker (--dist loadgroup), which builds
# it once while the other goes on with other tests instead of waiting on the build's lock.
ON_THE_BUILDING_WORKER = pytest.mark.xdist_group("torch-native-build")


@ON_THE_BUILDING_WORKER
def test_derived_and_native_peers_compute_the_same():
    from bench.torch_interop import peers

    models = peers(width=12)
    x = torch.randn(5, 12)
    for what in ("model", "layernorm", "gelu"):
        torch.testing.assert_close(models[f"derived_{what}"](x), models[f"native_{what}"](x),
                                   rtol=2e-5, atol=2e-6)


@ON_THE_BUILDING_WORKER
def test_overhead_record(monkeypatch):
    import bench.torch_interop as bench

    monkeypatch.setattr(bench, "MODEL", dict(N=3, C=4))
    record = bench.overhead(repeat=3)
    assert record["rounds"] == 3
    assert record["forward_overhead"] == pytest.approx(record["module_forward"]
                                                       - record["c_forward"])
    assert record["train_vs_linear"] == pytest.approx(record["module_forward_backward"]
                                                      / record["linear_forward_backward"])
    assert record["train_over_entry"] == pytest.approx(record["module_forward_backward"]
                                                       - record["entry_forward_backward"])
    assert 0 < record["entry_forward"] and 0 < record["empty_function_forward_backward"]
    assert record["over_floor_no_grad"] == pytest.approx(
        record["module_forward"] - record["entry_forward_no_grad"])
    assert record["over_floor_recording"] == pytest.approx(
        record["module_forward_recording"] - record["empty_function_forward"]
        - record["entry_forward"])
    assert record["over_floor_forward_backward"] == pytest.approx(
        record["module_forward_backward"] - record["empty_function_forward_backward"]
        - record["entry_forward_backward"])
    assert record["cpp_route"]                     # the C++ route's rows measure it
    calls = dict(no_grad="forward", recording="forward_recording",
                 forward_backward="forward_backward")
    for mode, call in calls.items():                 # the Python route's, on the same floor
        assert record["python_over_floor_" + mode] - record["over_floor_" + mode] == \
            pytest.approx(record["python_module_" + call] - record["module_" + call])
    assert record["over_floor_no_grad_past_module_call"] == pytest.approx(
        record["over_floor_no_grad"] - record["identity_forward_no_grad"]
        + record["no_grad_block"])
    model = bench.in_a_model(repeat=2)
    assert set(model) == {"rounds", "native_model", "derived_model", "native_layernorm",
                          "derived_layernorm", "native_gelu", "derived_gelu"}
    assert all(v > 0 for v in model.values())


@ON_THE_BUILDING_WORKER
def test_entry_points_compute_what_the_module_does():
    """The bench's floor (the C entry points on pointers made once) runs the real kernels:
    the module's output and autograd's gradients."""
    import codegen
    from bench.torch_interop import _entry_points

    module = codegen.torch_module("dense", I=3, J=5)
    x, dz = torch.randn(4, 5, requires_grad=True), torch.randn(4, 3)
    run, train = _entry_points(module, x.detach(), dz)
    (z,), _ = run()
    dx, dW, db = train()
    module(x).backward(dz)
    torch.testing.assert_close(z, module(x).detach())
    for got, want in ((dx, x.grad), (dW, module.W.grad), (db, module.b.grad)):
        torch.testing.assert_close(got, want)


def test_the_floor_function_takes_and_gives_what_the_module_does():
    """The empty autograd.Function the bench subtracts records a node over the same
    leaves (x, W, b), returns an output of the module's shape, and hands a gradient to
    every leaf, so torch's share of a call is the same for both."""
    import codegen
    from bench.torch_interop import _empty_function

    module = codegen.torch_module("dense", I=3, J=5)
    x = torch.randn(4, 5, requires_grad=True)
    out = _empty_function(module, x)()
    assert out.shape == module(x).shape and out.grad_fn is not None
    out.backward(torch.ones(4, 3))
    assert all(t.grad is not None and t.grad.shape == t.shape
               for t in (x, module.W, module.b))
