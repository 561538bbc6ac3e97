"""An output that a later equation reads keeps its own upstream gradient: an LSTM cell's
c_next is read by h_next, and backward takes both dc_next and dh_next, so cells chain."""
from __future__ import annotations

import numpy as np
import pytest

import codegen
from derive import derive, parse_spec
from derive.errors import SpecError
from derive.evaluate import evaluate

from .oracles import rel_err, require_oracle

LSTM = """layer lstm_cell  one LSTM step: both outputs carry upstream gradients
dims N, I, H
input  x[N, I], h[N, H], c[N, H]
param  Wi[H, I], Ui[H, H], Wf[H, I], Uf[H, H], Wg[H, I], Ug[H, H], Wo[H, I], Uo[H, H]
intermediate ig[N, H], fg[N, H], gg[N, H], og[N, H]
output c_next[N, H], h_next[N, H]

ig[n, k] = sigmoid(Wi[k, i] * x[n, i] + Ui[k, j] * h[n, j])
fg[n, k] = sigmoid(Wf[k, i] * x[n, i] + Uf[k, j] * h[n, j])
gg[n, k] = tanh(Wg[k, i] * x[n, i] + Ug[k, j] * h[n, j])
og[n, k] = sigmoid(Wo[k, i] * x[n, i] + Uo[k, j] * h[n, j])
c_next[n, k] = fg[n, k] * c[n, k] + ig[n, k] * gg[n, k]
h_next[n, k] = og[n, k] * tanh(c_next[n, k])
"""
GATES = ("i", "f", "g", "o")


def _arrays(rng, N=3, I=5, H=7):
    a = dict(x=rng.normal(size=(N, I)), h=rng.normal(size=(N, H)), c=rng.normal(size=(N, H)))
    for g in GATES:
        a[f"W{g}"] = 0.5 * rng.normal(size=(H, I))
        a[f"U{g}"] = 0.5 * rng.normal(size=(H, H))
    return a


def _torch_cell(x, h, c, **w):
    import torch
    gate = lambda g: x @ w[f"W{g}"].T + h @ w[f"U{g}"].T
    i, f, o = (torch.sigmoid(gate(g)) for g in "ifo")
    c_next = f * c + i * torch.tanh(gate("g"))
    return {"c_next": c_next, "h_next": o * torch.tanh(c_next)}


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("c", "float64"),
                                            ("numpy", "float32"), ("c", "float32")])
def test_both_upstream_gradients_arrive(backend, dtype):
    torch = require_oracle("torch")
    rng = np.random.default_rng(7)
    arrays = _arrays(rng)
    k = codegen.load(parse_spec(LSTM), backend=backend,
                     **({"dtype": dtype} if backend == "c" else {}))
    assert set(k.upstream) == {"dc_next", "dh_next"}
    leaves = {n: torch.tensor(v, requires_grad=True) for n, v in arrays.items()}
    out = _torch_cell(**leaves)
    up = {n: rng.normal(size=arrays["c"].shape) for n in ("dc_next", "dh_next")}
    total = sum((out[n[1:]] * torch.tensor(v)).sum() for n, v in up.items())
    total.backward()
    cast = {n: v.astype(dtype) for n, v in {**arrays, **up}.items()}
    fwd = k.forward(**{n: cast[n] for n in k.args})
    grads = k.backward(**cast)
    tol = 2e-5 if dtype == "float32" else 1e-12
    for n in ("c_next", "h_next"):
        assert rel_err(fwd[n], out[n].detach().numpy()) < tol
    for n, leaf in leaves.items():
        assert rel_err(grads["d" + n], leaf.grad.numpy()) < tol, n


def test_dropping_dc_next_changes_dc():
    """The upstream dc_next is not silently dropped: dc depends on it."""
    rng = np.random.default_rng(8)
    arrays = _arrays(rng, 2, 3, 4)
    d = derive(parse_spec(LSTM))
    zero = np.zeros((2, 4))
    with_up = evaluate(d, {**arrays, "dc_next": np.ones((2, 4)), "dh_next": zero})
    without = evaluate(d, {**arrays, "dc_next": zero, "dh_next": zero})
    assert np.all(without["dc"] == 0)
    np.testing.assert_allclose(with_up["dc"], with_up["fg"])      # dc = dc_next * f


def test_a_loss_read_by_another_equation_is_refused():
    spec = "layer bad\ndims N\ninput x[N]\noutput y[N]\nloss L\nL = sum(x[n], n)\n" \
           "y[n] = L * x[n]\n"
    with pytest.raises(SpecError, match="the loss 'L' is read by the equation on line 7"):
        parse_spec(spec, "bad.bp")
