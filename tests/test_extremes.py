"""Every built-in at inputs of +-1e4 and at float32's exp overflow edge (+-88.7, where
exp(z) is finite on one side and inf on the other): wherever torch's forward and gradients
are finite, ours are finite too and equal to torch's (layers to torch.nn.functional,
optimizer steps to torch.optim), in both dtypes and both backends."""
from __future__ import annotations

import numpy as np
import pytest

import codegen
from derive.builtins import BUILTINS, builtin

from .oracles import OnFirstUse, draw_sizes, random_arrays, require_oracle, torch_forward

EDGES = {"1e4": 1e4, "exp32-below": 88.7, "exp32-above": 88.75}
DTYPES = ("float32", "float64")
# A recurrent layer's inputs reach its functions through matrix products, so the float32
# exp edges of its inputs are no edges there (its gates see hundreds); it is swept at
# +-1e4, where every gate saturates.  (At +-88.7 its gates' 1 - tanh(a)**2 comes from a
# tanh rounded near -1, in torch as in ours: NumPy's tanh rounds differently from torch's
# there, and the gradient differs by more than rounding.)
RECURRENT = ("rnn_tanh", "rnn_relu", "gru", "lstm")
CASES = [(n, e, d) for n in BUILTINS for e in EDGES for d in DTYPES
         if n not in RECURRENT or e == "1e4"]


@pytest.fixture(scope="module")
def kernels(builtin_numpy_kernels):
    """kernels(name, backend, dtype): the session's NumPy kernels (they follow the arrays'
    dtype: one load serves both), and C kernels built here when first asked for."""
    c = OnFirstUse(lambda key: codegen.load(key[0], backend="c", dtype=key[1]))
    return lambda name, backend, dtype: \
        builtin_numpy_kernels[name] if backend == "numpy" else c[name, dtype]


def _extreme_arrays(k, edge, rng):
    """The layer's usual random arrays, with every differentiable input (and an
    optimizer's gradient) at +-edge, signs mixed."""
    sizes = draw_sizes(k.layer, rng)
    arrays = random_arrays(k, sizes, rng)
    for t in k.layer.inputs:
        if t.values is None and (not t.nograd or t.name == "g") and t.dims:
            arrays[t.name] = edge * np.where(rng.random(arrays[t.name].shape) < 0.5, -1, 1)
    return arrays


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("name, edge, dtype", CASES)
def test_extreme_inputs_stay_finite_and_equal_torch(kernels, backend, name, edge, dtype):
    torch = require_oracle("torch")
    k = kernels(name, backend, dtype)
    rng = np.random.default_rng(sum(map(ord, name + edge)))
    arrays = _extreme_arrays(k, EDGES[edge], rng)
    cast = {n: v if k.layer.tensors.get(n[1:] if n not in k.layer.tensors else n).values
            is not None else np.asarray(v, dtype) for n, v in arrays.items()}
    got = k.forward(**{n: cast[n] for n in k.args})
    grads = k.backward(**cast) if k.gradients else {}
    # torch in our dtype says where the values are finite; torch in float64 on the same
    # (rounded) inputs gives them, so float32 is held to its own rounding, not torch's
    finite = _torch_results(torch, k, name, cast, getattr(torch, dtype))
    values = _torch_results(torch, k, name, cast, torch.float64)
    results = [(n, got[n] if n in got else grads[n], values[n], finite[n]) for n in values]
    tol = 1e-3 if dtype == "float32" else 1e-9
    assert results
    for n, ours, theirs, in_dtype in results:
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        finite = np.isfinite(in_dtype) & np.isfinite(theirs)
        assert np.all(np.isfinite(ours[finite])), (n, ours[finite & ~np.isfinite(ours)])
        scale = np.abs(theirs[finite]).max(initial=0) or 1.0
        err = lambda v: np.abs(v[finite] - theirs[finite]).max(initial=0) / scale
        # as accurate as torch in the same dtype (an ill-conditioned case, a saturated
        # softmax over scores of 1e5, is as far from float64 in torch as in ours)
        assert err(ours) < max(tol, 4 * err(in_dtype)), (n, err(ours), err(in_dtype))

def _torch_results(torch, k, name, arrays, tdtype):
    """torch's outputs and gradients (d + name), as float64 NumPy arrays."""
    leaves = {n: torch.tensor(arrays[n]) if k.layer.tensors[n].values is not None else
              torch.tensor(np.asarray(arrays[n]), dtype=tdtype, requires_grad=True)
              for n in k.args}
    want = torch_forward(name)(**leaves)
    out = {n: v.detach().to(torch.float64).numpy() for n, v in want.items()}
    if k.gradients:
        total = sum((want[t.name] * torch.tensor(np.asarray(arrays["d" + t.name]),
                                                 dtype=tdtype)).sum()
                    for t in k.layer.upstream)
        if k.layer.loss:
            total = total + want[k.layer.loss]
        names = [g[1:] for g in k.gradients]
        grads = torch.autograd.grad(total, [leaves[n] for n in names])
        out.update({"d" + n: g.to(torch.float64).numpy() for n, g in zip(names, grads)})
    return out
