"""Checks of the newer built-ins beyond the shared three-oracle tests: dropout against
torch's own F.dropout, and the optimizer steps against torch.optim over 5 consecutive
steps (state carried from one call to the next)."""
from __future__ import annotations

import numpy as np
import pytest

import codegen

from .oracles import rel_err, require_oracle


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_dropout_equals_torch_dropout(backend):
    torch = require_oracle("torch")
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64)
    p = 0.3
    y = torch.nn.functional.dropout(x, p, training=True)
    mask = (y != 0).to(torch.float64).numpy()
    k = codegen.load("dropout", backend=backend)
    np.testing.assert_allclose(k.forward(x=x.numpy(), mask=mask, p=p)["y"], y.numpy(),
                               rtol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("name", ["sgd", "sgd_momentum", "adamw", "rmsprop", "adagrad"])
@pytest.mark.parametrize("seed", range(2))
def test_optimizer_equals_torch_optim_over_five_steps(backend, name, seed):
    """Our step called 5 times, its state outputs fed back, against torch.optim stepping
    5 times from its own initial state: no state layout is assumed."""
    torch = require_oracle("torch")
    from .oracles import OPTIMIZERS, optimizer_domain

    k = codegen.load(name, backend=backend)
    rng = np.random.default_rng(seed)
    P = 11
    cls, hyper, state = OPTIMIZERS[name]
    zeros = {ours: np.zeros(P) for ours in state}
    a = optimizer_domain(name, rng, dict(p=rng.normal(size=P), g=np.zeros(P), **zeros))
    if name == "sgd_momentum":          # seed 0: dampening; seed 1: Nesterov (no dampening)
        a.update(nesterov=float(seed), dampening=0.0 if seed else 0.3)
    scalars = {n: v for n, v in a.items() if np.ndim(v) == 0}
    param = torch.nn.Parameter(torch.tensor(a["p"]))
    opt = getattr(torch.optim, cls)([param], foreach=False, **hyper(scalars))
    ours = dict(a)
    for step in range(1, 6):
        g = rng.normal(size=P)
        param.grad = torch.tensor(g)
        opt.step()
        ours.update(g=g, **({"step": float(step)} if "step" in k.args else {}))
        out = k.forward(**{n: ours[n] for n in k.args})
        ours["p"] = out["p_next"]
        for mine, (_, result) in state.items():
            ours[mine] = out[result]
        assert rel_err(ours["p"], param.detach().numpy()) < 1e-13, (step, name)
        for mine, (key, _) in state.items():
            assert rel_err(ours[mine], opt.state[param][key].numpy()) < 1e-13, (step, mine)


@pytest.mark.parametrize("backend, dtype", [("numpy", "float64"), ("c", "float64"),
                                            ("numpy", "float32"), ("c", "float32")])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_with_and_without_causal_mask(backend, dtype, causal):
    torch = require_oracle("torch")
    from .oracles import torch_attention

    rng = np.random.default_rng(causal)
    B, T, D, H, E = 2, 7, 5, 3, 4
    arrays = dict(x=rng.normal(size=(B, T, D)), Wq=rng.normal(size=(H, E, D)),
                  Wk=rng.normal(size=(H, E, D)), Wv=rng.normal(size=(H, E, D)),
                  Wo=rng.normal(size=(D, H, E)))
    k = codegen.load("attention", backend=backend, constants=dict(CAUSAL=causal),
                     **({"dtype": dtype} if backend == "c" else {}))
    leaves = {n: torch.tensor(v, requires_grad=True) for n, v in arrays.items()}
    y = torch_attention(**leaves, causal=bool(causal))["y"]
    dy = rng.normal(size=(B, T, D))
    y.backward(torch.tensor(dy))
    cast = {n: v.astype(dtype) for n, v in arrays.items()}
    got = k.forward(**cast)["y"]
    grads = k.backward(**cast, dy=dy.astype(dtype))
    tol = 1e-4 if dtype == "float32" else 1e-12
    assert rel_err(got, y.detach().numpy()) < tol
    for n, leaf in leaves.items():
        assert rel_err(grads["d" + n], leaf.grad.numpy()) < tol, n
