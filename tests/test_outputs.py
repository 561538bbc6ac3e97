"""Results into the caller's arrays (out=), updates in place for layers computed element
by element, and every misuse refused with the array named."""
import numpy as np
import pytest

import codegen

from .oracles import require_oracle, rel_err


@pytest.fixture(scope="module")
def adam():
    return {dt: codegen.load("adam", backend="c", dtype=dt) for dt in ("float32", "float64")}


def adam_arrays(P, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return dict(p=rng.normal(size=P).astype(dtype), g=rng.normal(size=P).astype(dtype),
                m=(0.1 * rng.normal(size=P)).astype(dtype),
                v=np.abs(0.1 * rng.normal(size=P)).astype(dtype),
                step=7, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("P", [1, 15, 17, 100_003])    # around the vector width, and threads
def test_adam_in_place_equals_out_of_place(adam, dtype, P):
    k = adam[dtype]
    a = adam_arrays(P, dtype)
    ref = k.forward(**a)
    b = {n: v.copy() if isinstance(v, np.ndarray) else v for n, v in a.items()}
    got = k.forward(out={"p_next": b["p"], "m_next": b["m"], "v_next": b["v"]}, **b)
    for name, source in (("p_next", "p"), ("m_next", "m"), ("v_next", "v")):
        assert got[name] is b[source]
        # the in-place loop groups the arithmetic differently: a few ulp
        assert rel_err(b[source], ref[name]) < 20 * np.finfo(dtype).eps, name


def test_adam_in_place_against_pytorch(adam):
    torch = require_oracle("torch")
    from .oracles import torch_adam_step

    a = adam_arrays(1000, "float64", seed=3)
    want = torch_adam_step(**{n: torch.tensor(v, dtype=torch.float64) for n, v in a.items()})
    b = {n: v.copy() if isinstance(v, np.ndarray) else v for n, v in a.items()}
    adam["float64"].forward(out={"p_next": b["p"], "m_next": b["m"], "v_next": b["v"]}, **b)
    for name, source in (("p_next", "p"), ("m_next", "m"), ("v_next", "v")):
        assert rel_err(b[source], want[name].numpy()) < 1e-13, name


def test_preallocated_outputs_are_filled_and_returned():
    k = codegen.load("layernorm", backend="c", dtype="float64")
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(5, 7)), rng.normal(size=7), rng.normal(size=7)
    ref = k.forward(x=x, w=w, b=b)
    y = np.full((5, 7), np.nan)
    got = k.forward(out={"y": y}, x=x, w=w, b=b)       # some results given, others fresh
    assert got["y"] is y and np.array_equal(y, ref["y"])
    dy = rng.normal(size=(5, 7))
    fresh = k.backward(x=x, w=w, b=b, dy=dy)
    grads = {n: np.full_like(v, np.nan) for n, v in fresh.items()}
    out = k.backward(out=grads, x=x, w=w, b=b, dy=dy)
    assert set(out) == set(fresh) == {"dx", "dw", "db"}
    for n in grads:
        assert out[n] is grads[n] and np.array_equal(grads[n], fresh[n]), n


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_results_into_given_arrays(dtype):
    """forward_backward(out=...): the given arrays (some of the results) are filled with
    the values a fresh call returns, the others allocated."""
    k = codegen.load("mlp2", backend="c", dtype=dtype)
    rng = np.random.default_rng(2)
    N, D, H, C = 5, 3, 7, 2
    a = dict(x=rng.normal(size=(N, D)), W1=rng.normal(size=(H, D)), b1=rng.normal(size=H),
             W2=rng.normal(size=(C, H)), b2=rng.normal(size=C), t=np.eye(C)[[0, 1, 1, 0, 1]])
    a = {n: v.astype(dtype) for n, v in a.items()}
    fresh = k.forward_backward(**a)
    given = {n: np.full_like(fresh[n], np.nan) for n in ("L", "dW1", "dx")}
    got = k.forward_backward(out=given, **a)
    assert set(got) == set(fresh) == {"L", "dx", "dW1", "db1", "dW2", "db2"}
    for n, v in fresh.items():
        assert np.array_equal(got[n], v) and np.any(v != 0), n
        assert (got[n] is given.get(n)) == (n in given), n


@pytest.mark.parametrize("bad, words", [
    ({"y": np.empty((5, 7), np.float32)}, "out['y']: expected a writeable C-contiguous "
                                          "float64 array of shape (5, 7)"),
    ({"y": np.empty((7, 5))}, "of shape (5, 7), got float64 (7, 5)"),
    ({"y": np.empty((5, 14))[:, ::2]}, "with strides (112, 16) (not C-contiguous)"),
    ({"y": np.lib.stride_tricks.as_strided(np.empty((5, 7)), writeable=False)},
     "got float64 (5, 7) that is read-only"),
    ({"yy": np.empty((5, 7))}, "out has no result named yy"),
    ({"y": [[0.0] * 7] * 5}, "got list"),
])
def test_bad_outputs_are_named(bad, words):
    k = codegen.load("layernorm", backend="c", dtype="float64")
    x = np.ones((5, 7))
    with pytest.raises(ValueError) as info:
        k.forward(out=bad, x=x, w=np.ones(7), b=np.ones(7))
    assert words in str(info.value)


def test_overlapping_outputs_are_refused():
    k = codegen.load("softmax", backend="c", dtype="float64")
    z = np.random.default_rng(0).normal(size=(4, 6))
    # softmax reads a whole row before writing it: not element by element, no in place
    with pytest.raises(ValueError, match=r"out\['y'\] overlaps z.*element by element"):
        k.forward(out={"y": z}, z=z)
    a = codegen.load("adam", backend="c", dtype="float64")
    arrays = adam_arrays(10, "float64")
    big = np.zeros(11)
    arrays["p"] = big[:10]
    with pytest.raises(ValueError, match=r"out\['p_next'\] overlaps p:"):   # shifted by one
        a.forward(out={"p_next": big[1:]}, **arrays)
    shared = np.zeros(10)
    with pytest.raises(ValueError, match=r"out\['v_next'\] overlaps p_next"):
        a.forward(out={"p_next": shared, "v_next": shared}, **arrays)
    # arrays that only touch (the output starts at the byte after the input) share nothing
    touching = np.zeros(20)
    arrays["p"] = touching[:10]
    arrays["p"][:] = adam_arrays(10, "float64")["p"]
    want = a.forward(**arrays)["p_next"]
    got = a.forward(out={"p_next": touching[10:]}, **arrays)["p_next"]
    assert got.base is touching
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "gelu"])
def test_activations_in_place(name, dtype):
    """An activation may overwrite its input: a = f(z) into z's buffer, intermediates too."""
    k = codegen.load(name, backend="c", dtype=dtype)
    z = np.random.default_rng(2).normal(size=(7, 33)).astype(dtype)
    z[0, :3] = [np.nan, np.inf, -np.inf]
    ref = k.forward(z=z)
    (out_name,) = [t.name for t in k.layer.outputs]
    buf = z.copy()
    got = k.forward(out={out_name: buf}, z=buf)
    assert got[out_name] is buf
    # the same formulas, grouped per element: a few ulp (normwise; NaN and Inf in place)
    for n in k.returns:
        a, b = got[n], ref[n]
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[np.isinf(b)],
                                                                           b[np.isinf(b)])
        fine = np.isfinite(b)
        assert rel_err(a[fine], b[fine]) < 20 * np.finfo(dtype).eps, n


def test_numpy_backend_says_out_is_for_c():
    d = codegen.load("dense")
    arrays = dict(x=np.ones((2, 3)), W=np.ones((4, 3)), b=np.ones(4))
    for call in (lambda: d.forward(out={"z": np.ones((2, 4))}, **arrays),
                 lambda: d.backward(out={}, dz=np.ones((2, 4)), **arrays)):
        with pytest.raises(ValueError, match=r'out= .* supported by the C backend, '
                                             r'codegen.load\(..., backend="c"\)'):
            call()


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_backward_of_a_forward_only_layer_says_so(backend):
    a = codegen.load("adam", backend=backend)
    arrays = dict(p=np.ones(3), g=np.ones(3), m=np.ones(3), v=np.ones(3), step=1.0, lr=0.1,
                  beta1=0.9, beta2=0.999, eps=1e-8)
    with pytest.raises(ValueError, match="adam: a forward-only layer .* has no backward pass"):
        a.backward(**arrays)
    assert set(a.forward(**arrays)) == {"p_next", "m_next", "v_next"}
