"""codegen.torch_calls: what torch_module's hot path keeps between calls (a plan per set
of shapes, each entry's results packed in one block, no work buffer where none is
needed), checked against a fresh module (a planned call computes exactly what a first call
does) and against tensors that change after their shape was planned (each still refused,
with its message)."""
import numpy as np
import pytest

import codegen
from codegen.torch_calls import Block

from .oracles import require_oracle

torch = require_oracle("torch")


def _fresh_twin(module, **sizes):
    """A new module of the same layer and dtype with the same parameter values (its calls
    have planned nothing yet)."""
    twin = codegen.torch_module(module.layer_name, dtype=str(module.dtype)[6:], **sizes)
    twin.load_state_dict(module.state_dict())
    return twin


def _step(module, x, upstream):
    """The output, and the gradients of x and of every parameter, for one call."""
    for p in module.parameters():
        p.grad = None
    x = x.detach().requires_grad_()
    y = module(x)
    y.backward(upstream)
    return [y.detach(), x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("name, sizes, width", [
    ("dense", dict(I=3, J=4), 4),            # no work buffer (NULL), one result
    ("layernorm", dict(C=5), 5),             # a work buffer, four results in one block
])
def test_a_planned_call_equals_a_fresh_modules_first_call(name, sizes, width):
    module = codegen.torch_module(name, dtype="float64", **sizes)
    rng = torch.Generator().manual_seed(0)
    first = torch.randn(3, width, dtype=torch.float64, generator=rng)
    other = torch.randn(6, width, dtype=torch.float64, generator=rng)
    up_first = torch.randn(3, module.W.shape[0] if name == "dense" else width,
                           dtype=torch.float64, generator=rng)
    up_other = torch.randn(6, up_first.shape[1], dtype=torch.float64, generator=rng)
    for x, up in ((first, up_first), (other, up_other), (first, up_first)):
        planned = _step(module, x, up)                 # the third call: a kept plan
        fresh = _step(_fresh_twin(module, **sizes), x, up)
        for a, b in zip(planned, fresh):
            assert torch.equal(a, b)
    assert len(module.calls.plans) == 2
    work = [(p.forward_work, p.backward_work) for p in module.calls.plans.values()]
    assert all(w == (0, 0) for w in work) == (name == "dense")


def test_a_tensor_changed_after_its_shape_was_planned_is_refused_again():
    """Same shapes, so the plan is found: dtype, contiguity and device are still checked
    every call; a parameter given a new shape is planned, and refused, anew."""
    m = codegen.torch_module("dense", I=3, J=4)
    x = torch.randn(2, 4)
    m(x).sum().backward()
    with pytest.raises(ValueError, match=r"dense: x: expected torch.float32 .* got "
                                         r"torch.float64"):
        m(x.double())
    with pytest.raises(ValueError, match=r"dense: x is not contiguous"):
        m(torch.randn(4, 2).t())
    with pytest.raises(ValueError, match=r"dense: x is on meta"):
        m(torch.empty(2, 4, device="meta"))
    kept = m.W.data
    with torch.no_grad():
        m.W.data = kept.double()
        with pytest.raises(ValueError, match=r"dense: W: expected torch.float32"):
            m(x)
        m.W.data = kept.t().contiguous().t()           # (3, 4), strided
        with pytest.raises(ValueError, match=r"dense: W is not contiguous"):
            m(x)
        m.W.data = torch.randn(3, 5)
        with pytest.raises(ValueError, match=r"W: expected shape \(I=3, J=4\), got "
                                             r"\(3, 5\): dimension J is 4 in x"):
            m(x)
        m.W.data = kept
    torch.testing.assert_close(m(x), x @ m.W.T + m.b)


def test_a_strided_upstream_gradient_is_read_as_its_values():
    """torch hands backward strided gradients (a transpose's, a sum's expanded ones):
    the kernels get a contiguous copy, not the raw memory."""
    m = codegen.torch_module("dense", dtype="float64", I=3, J=4)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, dtype=torch.float64).t()       # (2, 3), not contiguous
    m(x).backward(g)
    torch.testing.assert_close(x.grad, g @ m.W.detach())
    torch.testing.assert_close(m.W.grad, g.T @ x.detach())


def test_nothing_to_differentiate_records_no_graph():
    m = codegen.torch_module("dense", I=3, J=4)
    x = torch.randn(2, 4)
    assert m(x).grad_fn is not None                      # the parameters require grad
    m.requires_grad_(False)
    assert m(x).grad_fn is None
    assert m(x.requires_grad_()).grad_fn is not None
    with torch.no_grad():
        assert m(x).grad_fn is None


def test_results_in_one_block_start_on_cache_lines_and_never_overlap():
    block = Block.of([(2, 3), (), (0,), (5, 1)], itemsize=4)
    assert block.offsets == (0, 16, 32, 32)
    assert block.size == 48
    ends = [s.stop for s in block.slices]
    assert ends == [6, 17, 32, 37]
    assert all(end <= nxt for end, nxt in zip(ends, block.offsets[1:]))
    assert Block.of([()], itemsize=8).offsets == (0,)
    assert Block.of([(0,)], itemsize=8).size == 1        # never an empty allocation
    m = codegen.torch_module("layernorm", C=5)
    x = torch.randn(3, 5, requires_grad=True)
    m(x).backward(torch.ones(3, 5))
    grads = [x.grad, m.w.grad, m.b.grad]
    starts = sorted((g.data_ptr(), g.numel() * 4) for g in grads)
    assert all(a + n <= b for (a, n), (b, _) in zip(starts, starts[1:]))
    x.grad.fill_(np.nan)                                 # one result written: no other
    assert not any(g.isnan().any() for g in grads[1:])
