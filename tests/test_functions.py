"""sin, cos, erf, log1p, expm1 and tensor-valued exponents x**y: forward and gradients in
both backends and both dtypes against torch, and against the symbolic oracle."""
from __future__ import annotations

import numpy as np
import pytest

import codegen
from derive import derive, parse_spec
from derive.evaluate import evaluate

from .oracles import finite_differences, rel_err, require_oracle

SPEC = """layer trig  the transcendental functions and a tensor exponent
dims N, I
input  x[N, I], y[N, I]
output a[N, I], b[N, I]

a[n, i] = sin(x[n, i]) * cos(y[n, i]) + erf(x[n, i] * y[n, i]) + log1p(y[n, i]**2)
b[n, i] = expm1(x[n, i] / 4) + (y[n, i]**2 + 1) ** x[n, i]
"""


def _torch(x, y):
    import torch
    return {"a": torch.sin(x) * torch.cos(y) + torch.erf(x * y) + torch.log1p(y ** 2),
            "b": torch.expm1(x / 4) + (y ** 2 + 1) ** x}


def _arrays(rng, shape=(3, 5)):
    return rng.normal(size=shape), rng.normal(size=shape)


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("numpy", "float32"),
                                            ("c", "float64"), ("c", "float32")])
def test_functions_against_torch(backend, dtype):
    torch = require_oracle("torch")
    rng = np.random.default_rng(3)
    x, y = _arrays(rng)
    k = codegen.load(parse_spec(SPEC), backend=backend,
                     **({"dtype": dtype} if backend == "c" else {}))
    xt, yt = (torch.tensor(v, requires_grad=True) for v in (x, y))
    out = _torch(xt, yt)
    da, db = rng.normal(size=x.shape), rng.normal(size=x.shape)
    ((out["a"] * torch.tensor(da)).sum() + (out["b"] * torch.tensor(db)).sum()).backward()
    cast = lambda v: v.astype(dtype)
    fwd = k.forward(x=cast(x), y=cast(y))
    grads = k.backward(x=cast(x), y=cast(y), da=cast(da), db=cast(db))
    tol = 1e-5 if dtype == "float32" else 1e-13
    for name in ("a", "b"):
        assert fwd[name].dtype == dtype
        assert rel_err(fwd[name], out[name].detach().numpy()) < tol, name
    assert rel_err(grads["dx"], xt.grad.numpy()) < tol
    assert rel_err(grads["dy"], yt.grad.numpy()) < tol


def test_functions_against_the_symbolic_oracle_and_finite_differences():
    rng = np.random.default_rng(4)
    x, y = _arrays(rng, (2, 3))
    arrays = dict(x=x, y=y, da=rng.normal(size=x.shape), db=rng.normal(size=x.shape))
    k = codegen.load(parse_spec(SPEC))
    values = evaluate(derive(k.layer), arrays)
    grads = k.backward(**arrays)
    for name in ("dx", "dy"):
        assert rel_err(grads[name], values[name]) < 1e-13
        assert rel_err(grads[name], finite_differences(k, arrays, name[1:])) < 1e-7
