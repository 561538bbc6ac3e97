"""Layers nobody built in, in shapes the built-ins do not exercise (three-index tensors,
transposed use, scalar parameters, a loss with a regularizer), through both backends."""
import numpy as np
import pytest

import codegen
from derive.evaluate import evaluate

from .oracles import (assert_close, finite_differences, random_arrays, rel_err,
                      require_oracle, tolerance, torch_leaves)

SPECS = {
    "attention": """layer attention  Single-head attention: scores, softmax over keys, values
dims N, T, D
input q[N, T, D], k[N, T, D], v[N, T, D]
intermediate s[N, T, T], p[N, T, T]
output o2[N, T, D]
s[n, i, j] = q[n, i, d] * k[n, j, d] / sqrt(D)
p[n, i, j] = exp(s[n, i, j]) / sum(exp(s[n, i, m]), m)
o2[n, i, d] = p[n, i, j] * v[n, j, d]
""",
    "transposed": """layer transposed  W used transposed, a scalar parameter
dims N, I, J
input x[N, I]
param W[I, J], c
output y[N, J]
y[n, j] = c * tanh(W[i, j] * x[n, i]) + c * c
""",
    "layernorm": """layer layernorm  Layer normalization without the affine part
dims N, C
input x[N, C]
intermediate mu[N], var[N]
output y[N, C]
mu[n] = sum(x[n, c], c) / C
var[n] = sum((x[n, c] - mu[n])**2, c) / C
y[n, c] = (x[n, c] - mu[n]) / sqrt(var[n] + 0.00001)
""",
    "bilinear": """layer bilinear  x^T A y per example, softplus loss, L2 penalty
dims N, I, J
input x[N, I], y[N, J]
param A[I, J]
intermediate s[N]
loss L
s[n] = x[n, i] * A[i, j] * y[n, j]
L = sum(softplus(s[n]), n) / N + sum(A[i, j]**2, i, j) * 0.01
""",
}
SPECS["multi"] = """layer multi  Two outputs, a scalar output that is not a loss, logsumexp
dims N, I
input x[N, I]
param w[I]
output s, y[N], r[N]
s = sum(x[n, i] * w[i], n, i)
y[n] = log(sum(exp(x[n, i]), i))
r[n] = sqrt(sum(x[n, i]**2, i) + 1) ** -1 + w[i] * w[i] * 0.5
"""
SPECS["chain"] = """layer chain  An intermediate used twice, relu and softplus, a weighted loss
dims N, I
input x[N, I]
param w[I]
target t[N, I]
intermediate h[N, I]
loss L
h[n, i] = relu(x[n, i] * w[i]) + softplus(x[n, i] - w[i])
L = sum(t[n, i] * h[n, i] * h[n, i] + exp(-h[n, i]), n, i) / N
"""


def torch_forward(name):
    """Each layer's forward written again in PyTorch from its one-line description, not
    from the spec's equations: the oracle that does not share our parser."""
    import torch
    import torch.nn.functional as F

    return {
        "attention": lambda q, k, v: {"o2": torch.softmax(
            q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v},
        "transposed": lambda x, W, c: {"y": c * torch.tanh(x @ W) + c ** 2},
        "layernorm": lambda x: {"y": F.layer_norm(x, x.shape[-1:], eps=1e-5)},
        "bilinear": lambda x, y, A: {"L": F.softplus(((x @ A) * y).sum(1)).mean()
                                     + 0.01 * (A ** 2).sum()},
        "multi": lambda x, w: {"s": (x @ w).sum(), "y": torch.logsumexp(x, dim=1),
                               "r": (x.pow(2).sum(1) + 1).rsqrt() + 0.5 * w.dot(w)},
        "chain": lambda x, w, t: {"L": ((lambda h: (t * h * h + torch.exp(-h)).sum())(
            torch.relu(x * w) + F.softplus(x - w))) / x.shape[0]},
    }[name]


@pytest.mark.parametrize("name", SPECS)
def test_user_layer_both_backends(tmp_path, name):
    spec = tmp_path / f"{name}.bp"
    spec.write_text(SPECS[name])
    k = codegen.load(str(spec))
    rng = np.random.default_rng(5)
    # distinct sizes; a normalization needs 3 elements or more (over 2 its gradients
    # are O(eps) noise), so the layer norm's C is 3 or 5
    sizes = dict(zip(k.layer.dims, (int(s) for s in rng.permutation([2, 3, 5]))))
    if name == "layernorm" and sizes["C"] == 2:
        sizes = dict(N=2, C=5)
    arrays = random_arrays(k, sizes, rng)
    grads = k.backward(**arrays)
    exact = evaluate(k.derivation, arrays)
    assert k.gradients
    for n in k.gradients:
        assert_close(grads[n], exact[n], tolerance(np.float64, sizes), n)
        assert_close(grads[n], finite_differences(k, arrays, n[1:]), 1e-6, n)
    fwd = k.forward(**{n: arrays[n] for n in k.args})
    for dtype in ("float64", "float32"):
        c = codegen.load(str(spec), backend="c", dtype=dtype)
        a = {n: np.asarray(v, dtype=dtype) for n, v in arrays.items()}
        tol = max(tolerance(np.dtype(dtype), sizes), 50 * np.finfo(dtype).eps)
        cf = c.forward(**{n: a[n] for n in c.args})
        cg = c.backward(**a)
        for n in fwd:
            assert rel_err(cf[n], fwd[n]) < tol, (dtype, n)
        for n in grads:
            assert_close(cg[n], grads[n], tol, (dtype, n))
    torch = require_oracle("torch")
    leaves = torch_leaves(k.layer, arrays, k.args)
    out = torch_forward(name)(**leaves)
    layer = k.layer
    assert set(out) == {t.name for t in layer.outputs}
    total = sum((out[t.name] * torch.tensor(arrays["d" + t.name])).sum()
                for t in layer.upstream)
    if layer.loss:
        total = total + out[layer.loss]
    wanted = [n[1:] for n in k.gradients]
    tol = tolerance(np.float64, sizes)
    for n, value in out.items():
        assert_close(fwd[n], value.detach().numpy(), tol, n)
    for n, g in zip(wanted, torch.autograd.grad(total, [leaves[n] for n in wanted])):
        assert_close(grads["d" + n], g.numpy(), tol, "d" + n)
