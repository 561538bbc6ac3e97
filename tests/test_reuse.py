"""reuse=True: the C wrapper writes results into buffers it keeps, the same ones call after
call (no fresh allocation, no page faults), with a stated aliasing rule."""
import numpy as np
import pytest

import codegen

from .oracles import require_oracle


@pytest.fixture(scope="module")
def gelu():
    require_oracle("cc")
    return codegen.load("gelu", backend="c", dtype="float32")


def _arrays(seed, shape=(3, 70)):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape, dtype=np.float32),
            rng.standard_normal(shape, dtype=np.float32))


def test_the_same_buffers_come_back_with_right_results(gelu):
    z1, da1 = _arrays(1)
    z2, da2 = _arrays(2)
    first = gelu.backward(z=z1, da=da1, reuse=True)["dz"]
    want1 = gelu.backward(z=z1, da=da1)["dz"]
    np.testing.assert_array_equal(first, want1)
    second = gelu.backward(z=z2, da=da2, reuse=True)["dz"]
    assert second is first                         # the same buffer, overwritten ...
    np.testing.assert_array_equal(second, gelu.backward(z=z2, da=da2)["dz"])
    assert not np.array_equal(first, want1)        # ... which is the documented rule
    fwd = gelu.forward(z=z1, reuse=True)
    assert gelu.forward(z=z2, reuse=True)["a"] is fwd["a"]     # per entry, per result
    assert fwd["a"] is not second


def test_without_reuse_results_are_fresh(gelu):
    z, da = _arrays(3)
    assert gelu.backward(z=z, da=da)["dz"] is not gelu.backward(z=z, da=da)["dz"]


def test_new_sizes_or_a_kept_buffer_given_as_input_get_a_fresh_buffer(gelu):
    z, da = _arrays(4)
    kept = gelu.forward(z=z, reuse=True)["a"]
    z_big, _ = _arrays(5, (4, 70))
    bigger = gelu.forward(z=z_big, reuse=True)["a"]
    assert bigger.shape == (4, 70) and bigger is not kept
    # the kept result fed back as the input: never written while it is read
    again = gelu.forward(z=bigger, reuse=True)["a"]
    assert again is not bigger
    np.testing.assert_array_equal(again, gelu.forward(z=bigger.copy())["a"])
    assert gelu.forward(z=z_big, reuse=True)["a"] is again


def test_fused_entry_and_numpy_backend_accept_reuse():
    require_oracle("cc")
    c = codegen.load("sigmoid_bce", backend="c", dtype="float64")
    rng = np.random.default_rng(6)
    a = dict(z=rng.standard_normal((5, 4)), t=(rng.random((5, 4)) < 0.5).astype(float))
    r1 = c.forward_backward(reuse=True, **a)
    r2 = c.forward_backward(reuse=True, **a)
    assert r2["dz"] is r1["dz"]
    np.testing.assert_allclose(r2["dz"], codegen.load("sigmoid_bce").forward_backward(
        reuse=True, **a)["dz"])


def test_a_kept_buffer_given_in_out_for_another_result_is_not_handed_out_twice():
    """A result kept from one call passed back in out= for another result (Adam's v_next
    buffer as p_next): the result it was kept for gets a fresh buffer, not the same memory
    twice (both written by the kernel, one result wrong)."""
    require_oracle("cc")
    k = codegen.load("adam", backend="c", dtype="float64")
    rng = np.random.default_rng(0)
    P = 10
    a = dict(p=rng.normal(size=P), g=rng.normal(size=P), m=0.1 * rng.normal(size=P),
             v=np.abs(0.1 * rng.normal(size=P)), step=7, lr=0.01, beta1=0.9,
             beta2=0.999, eps=1e-8)
    want = k.forward(**a)
    first = k.forward(reuse=True, **a)
    got = k.forward(reuse=True, out={"p_next": first["v_next"]}, **a)
    assert got["p_next"] is first["v_next"]
    assert not np.shares_memory(got["p_next"], got["v_next"])
    for n in k.returns:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)
