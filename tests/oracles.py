"""Independent oracles for the kernel tests: random arrays of the right shapes, central
finite differences, and hand-written PyTorch forwards of every built-in layer (written
from the textbook definitions, not from our specs, so they share no code with us)."""
from __future__ import annotations

import numpy as np

SIZES = (1, 2, 3, 5, 7, 11)

# A layer that is not built in, written as a user would, for the backends' user-layer tests.
GATED = """layer gated  a = x (.) sigmoid(W x + b): a gated linear unit, not a built-in
dims N, I
input  x[N, I]
param  W[I, I], b[I]
intermediate g[N, I]
output a[N, I]

g[n, i] = sigmoid(W[i, j] * x[n, j] + b[i])
a[n, i] = x[n, i] * g[n, i]
"""
   # 1 and odd primes, so no axis mix-up hides behind a square


def draw_sizes(layer, rng, ones=False):
    return {d: 1 if ones else int(rng.choice(SIZES)) for d in layer.dims}


def random_arrays(kernels, sizes, rng, one_hot=False):
    """Inputs, parameters, targets and upstream gradients, float64."""
    layer = kernels.layer
    out = {}
    for t in layer.tensors.values():
        shape = tuple(sizes[d] for d in t.dims)
        if t.values is not None:                     # integer indices (class labels)
            out[t.name] = rng.integers(0, sizes[t.values], size=shape)
        elif t.role in ("input", "param"):
            a = rng.normal(size=shape)
            if layer.name == "relu":       # keep finite differences away from the kink
                a = a + np.sign(a) * 0.05
            out[t.name] = a
        elif t.role == "target":
            if t.dims and one_hot:
                rows = np.prod(shape[:-1], dtype=int)
                a = np.eye(shape[-1])[rng.integers(0, shape[-1], rows)].reshape(shape)
            else:
                a = rng.uniform(0.05, 1.0, size=shape)   # soft targets (probabilities)
            out[t.name] = a
    if layer.name == "adam":        # an optimizer's state and hyperparameters have domains
        out.update(v=rng.uniform(0, 2, size=out["v"].shape), step=float(rng.integers(1, 9)),
                   lr=rng.uniform(1e-3, 1e-1), beta1=rng.uniform(0.5, 0.95),
                   beta2=rng.uniform(0.9, 0.999), eps=10.0 ** rng.uniform(-8, -2))
    for t in layer.upstream if layer.differentiable else ():
        out["d" + t.name] = rng.normal(size=tuple(sizes[d] for d in t.dims))
    return out


def objective(kernels, arrays):
    """The scalar whose gradient backward() returns: the loss, or <upstream, outputs>."""
    result = kernels.forward(**{n: arrays[n] for n in kernels.args})
    layer = kernels.layer
    if layer.loss:
        total = float(result[layer.loss])
    else:
        total = 0.0
    for t in layer.upstream:
        total += float(np.sum(arrays["d" + t.name] * result[t.name]))
    return total


def finite_differences(kernels, arrays, name, h=1e-6):
    x = arrays[name]
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + h
        up = objective(kernels, arrays)
        x[i] = keep - h
        down = objective(kernels, arrays)
        x[i] = keep
        grad[i] = (up - down) / (2 * h)
    return grad


def rel_err(a, b):
    """Normwise relative error, measured against at least 1: the test data are O(1), so an
    exactly-zero gradient (layer norm over one element) and its rounding noise agree."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b), 1.0)
    return float(np.linalg.norm(a - b) / scale)


def tolerance(dtype, sizes):
    """Normwise relative tolerance for comparing two float computations of one formula.

    Rounding error of a length-K reduction grows like K * eps; elementwise exp/log/
    division add a few eps each.  50 * eps * (1 + K) covers both with margin:
    float64 ~ 1e-13 and float32 ~ 7e-5 at the largest size here (K = 11).
    """
    k = max(sizes.values(), default=1)
    return 50 * np.finfo(dtype).eps * (1 + k)


def torch_leaves(layer, arrays, names):
    """PyTorch tensors of the arrays: float64 leaves that track gradients, integer index
    tensors as int64 (they have no gradient)."""
    import torch

    return {n: torch.tensor(arrays[n]) if layer.tensors[n].values is not None else
            torch.tensor(arrays[n], dtype=torch.float64, requires_grad=True) for n in names}


def torch_forward(name):
    """Textbook forwards in PyTorch, keyed by built-in layer name."""
    import torch
    import torch.nn.functional as F

    return {
        "dense": lambda x, W, b: {"z": F.linear(x, W, b)},
        "sigmoid": lambda z: {"a": torch.sigmoid(z)},
        "tanh": lambda z: {"a": torch.tanh(z)},
        "relu": lambda z: {"a": torch.relu(z)},
        "gelu": lambda z: {"a": F.gelu(z, approximate="tanh")},
        "softmax": lambda z: {"y": torch.softmax(z, dim=1)},
        "layernorm": lambda x, w, b: {"y": F.layer_norm(x, x.shape[-1:], w, b, eps=1e-5)},
        "mse": lambda y, t: {"L": 0.5 * ((y - t) ** 2).sum() / y.shape[0]},
        # probabilities as targets: -sum t log softmax(z), averaged over the batch
        "softmax_cross_entropy": lambda z, t: {"L": F.cross_entropy(z, t)},
        "softmax_cross_entropy_labels": lambda z, t: {"L": F.cross_entropy(z, t)},
        "sigmoid_bce": lambda z, t: {
            "L": F.binary_cross_entropy_with_logits(z, t, reduction="sum") / z.shape[0]},
        "mlp2": lambda x, W1, b1, W2, b2, t: {
            "L": F.cross_entropy(F.linear(torch.sigmoid(F.linear(x, W1, b1)), W2, b2), t)},
        "neuron": lambda x, w, y: {"L": -y * torch.log(torch.sigmoid(w * x))},
        "adam": torch_adam_step,
    }[name]


def torch_adam_step(p, g, m, v, step, lr, beta1, beta2, eps):
    """One step of torch.optim.Adam (the for-each implementation) from the given state:
    an oracle independent of our formula."""
    import torch

    lr, beta1, beta2, eps, step = (float(x.detach()) for x in (lr, beta1, beta2, eps, step))
    param = torch.nn.Parameter(p.detach().clone())
    param.grad = g.detach().clone()
    opt = torch.optim.Adam([param], lr=lr, betas=(beta1, beta2), eps=eps, foreach=False)
    opt.state[param] = {"step": torch.tensor(step - 1),
                        "exp_avg": m.detach().clone(), "exp_avg_sq": v.detach().clone()}
    opt.step()
    state = opt.state[param]
    return {"p_next": param.detach(), "m_next": state["exp_avg"],
            "v_next": state["exp_avg_sq"]}


def gradients(kernels, **arrays) -> dict:
    """kernels.backward(**arrays); none for a forward-only layer (whose backward refuses)."""
    return kernels.backward(**arrays) if kernels.gradients else {}
