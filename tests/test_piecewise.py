"""Piecewise functions (where, max, min, abs, max/min over an index): PyTorch's derivative
conventions at the ties and kinks, in the NumPy and C backends and the symbolic oracle;
their printing; and the spec errors around them."""
from __future__ import annotations

import numpy as np
import pytest

import codegen
from derive import derive, parse_spec
from derive.errors import SpecError
from derive.evaluate import evaluate
from derive.pretty import derivation_text

from .oracles import rel_err, require_oracle

BACKENDS = [("numpy", "float64"), ("numpy", "float32"), ("c", "float64"), ("c", "float32")]

KINKS = """layer kinks  where, max, min and abs at their ties and kinks
dims N, I
input  x[N, I], y[N, I]
output a[N, I]

a[n, i] = where(x[n, i] > 0 and y[n, i] < 1, x[n, i] * y[n, i], 0.01 * x[n, i]) \\
    + 2 * max(x[n, i], y[n, i]) + 3 * abs(x[n, i]) + 5 * min(x[n, i], 0) \\
    + 7 * relu(y[n, i]) + where(x[n, i] <= -1 or y[n, i] >= 2, y[n, i], -y[n, i])
"""


def _torch_kinks(x, y):
    import torch
    zero = torch.zeros_like(x)
    return (torch.where((x > 0) & (y < 1), x * y, 0.01 * x) + 2 * torch.maximum(x, y)
            + 3 * torch.abs(x) + 5 * torch.minimum(x, zero) + 7 * torch.relu(y)
            + torch.where((x <= -1) | (y >= 2), y, -y))


def _kink_inputs():
    """Values with ties (x = y), kinks (x = 0, y = 0) and every branch of the wheres."""
    x = np.array([[0.0, 1.5, -2.0, 0.5, 0.0], [-1.0, 0.25, 3.0, -0.5, 2.0]])
    y = np.array([[0.0, 1.5, 0.5, 0.0, 2.0], [-1.0, 0.25, 3.0, 0.75, 0.0]])
    return x, y


@pytest.mark.parametrize("backend, dtype", BACKENDS)
def test_ties_and_kinks_follow_pytorch(backend, dtype):
    """torch.maximum/minimum split a tie evenly, abs'(0) = 0, relu'(0) = 0, where routes
    the gradient into the branch taken: exactly these numbers, in every backend."""
    torch = require_oracle("torch")
    x, y = _kink_inputs()
    k = codegen.load(parse_spec(KINKS), backend=backend,
                     **({"dtype": dtype} if backend == "c" else {}))
    xt, yt = (torch.tensor(v, requires_grad=True) for v in (x, y))
    out = _torch_kinks(xt, yt)
    da = np.linspace(0.5, 1.5, x.size).reshape(x.shape)
    out.backward(torch.tensor(da))
    got_a = k.forward(x=x.astype(dtype), y=y.astype(dtype))["a"]
    got = k.backward(x=x.astype(dtype), y=y.astype(dtype), da=da.astype(dtype))
    tol = 1e-6 if dtype == "float32" else 1e-14
    assert got_a.dtype == dtype and got["dx"].dtype == dtype
    np.testing.assert_allclose(got_a, out.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(got["dx"], xt.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(got["dy"], yt.grad.numpy(), rtol=tol, atol=tol)


def test_ties_and_kinks_in_the_symbolic_oracle():
    torch = require_oracle("torch")
    x, y = _kink_inputs()
    xt, yt = (torch.tensor(v, requires_grad=True) for v in (x, y))
    da = np.linspace(0.5, 1.5, x.size).reshape(x.shape)
    _torch_kinks(xt, yt).backward(torch.tensor(da))
    values = evaluate(derive(parse_spec(KINKS)), dict(x=x, y=y, da=da))
    np.testing.assert_allclose(values["dx"], xt.grad.numpy(), atol=1e-14)
    np.testing.assert_allclose(values["dy"], yt.grad.numpy(), atol=1e-14)


def _pool_inputs(rng, shape):
    """Small integers: most windows hold a tie, some several."""
    return rng.integers(-2, 3, size=shape).astype(np.float64)


@pytest.mark.parametrize("backend, dtype", BACKENDS)
@pytest.mark.parametrize("K, S, H, W", [(2, 2, 5, 7), (3, 1, 5, 4), (3, 2, 7, 3), (1, 1, 1, 2)])
def test_maxpool_ties_go_to_the_first_maximum(backend, dtype, K, S, H, W):
    """max_pool2d's gradient goes to the window's first maximal element (row-major), as
    torch's; overlapping windows (stride < K) add up."""
    torch = require_oracle("torch")
    rng = np.random.default_rng(K * 100 + S * 10 + H)
    x = _pool_inputs(rng, (2, 3, H, W))
    k = codegen.load("maxpool2d", backend=backend, constants=dict(K=K, S=S),
                     **({"dtype": dtype} if backend == "c" else {}))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, K, S)
    dy = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    y = k.forward(x=x.astype(dtype))["y"]
    dx = k.backward(x=x.astype(dtype), dy=dy.astype(dtype))["dx"]
    np.testing.assert_array_equal(y, yt.detach().numpy())
    assert np.linalg.norm(xt.grad.numpy()) > 0
    assert rel_err(dx, xt.grad.numpy()) < (1e-6 if dtype == "float32" else 1e-14)


def test_maxpool_ties_in_the_symbolic_oracle():
    torch = require_oracle("torch")
    rng = np.random.default_rng(5)
    x = _pool_inputs(rng, (1, 2, 5, 5))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 3, 1)
    dy = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.tensor(dy))
    layer = codegen.load("maxpool2d", constants=dict(K=3, S=1)).layer
    values = evaluate(derive(layer), dict(x=x, dy=dy))
    np.testing.assert_array_equal(values["y"], yt.detach().numpy())
    np.testing.assert_allclose(values["dx"], xt.grad.numpy(), atol=1e-14)


def test_min_over_an_index_goes_to_the_first_minimum():
    """min(x[n, k], k): the whole gradient to the first minimal element, as torch.min
    over a dimension (which returns the first index)."""
    torch = require_oracle("torch")
    spec = """layer rowmin
dims N, K
input x[N, K]
output y[N]
y[n] = min(x[n, k], k)
"""
    x = np.array([[1.0, -2.0, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0], [5.0, 4.0, 3.0, 2.0]])
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.min(xt, dim=1).values
    dy = np.array([1.0, 2.0, 3.0])
    yt.backward(torch.tensor(dy))
    for backend in ("numpy", "c"):
        k = codegen.load(parse_spec(spec), backend=backend)
        np.testing.assert_array_equal(k.forward(x=x)["y"], yt.detach().numpy())
        np.testing.assert_array_equal(k.backward(x=x, dy=dy)["dx"], xt.grad.numpy())


def test_derivation_text_shows_the_conventions():
    text = derivation_text(derive(parse_spec(KINKS)))
    assert "[x[n, i] == 0]/2" in text or "[x[n, i] - y[n, i] == 0]/2" in text
    assert "sign(x[n, i])" in text
    assert "[x[n, i] > 0 and y[n, i] < 1]" in text
    pool = derivation_text(derive(codegen.load("maxpool2d").layer))
    assert "== argmax_{" in pool and "dy[n, c, i, j]" in pool


def test_latex_of_the_new_constructs():
    from derive.latex import index_latex

    d = derive(parse_spec(KINKS))
    tex = index_latex(d.step("x").expr, {"da"})
    assert r"\tfrac{1}{2}" in tex and r"\operatorname{sign}" in tex
    forward = index_latex(parse_spec(KINKS).equations[0].rhs)
    assert r"\begin{cases}" in forward and r"\left|x_{ni}\right|" in forward
    pool = derive(codegen.load("maxpool2d").layer)
    assert r"\operatorname{argmax}_{" in index_latex(pool.step("x").expr, {"dy"})



def test_gradient_names_the_saved_argmax():
    """Where the forward saves the search (maxpool2d_indices' at), dx is written at the
    saved position, as a textbook does, in the text and in LaTeX; where it does not
    (maxpool2d), the search stays written out."""
    from derive.latex import index_latex

    d = derive(codegen.load("maxpool2d_indices").layer)
    text = derivation_text(d).split("backward")[-1]
    assert "[KW*(h - 2*i) + w - 2*j == at[n, c, i, j]]" in text and "argmax" not in text
    tex = index_latex(d.step("x").expr, {"dy"})
    assert r"= \mathrm{at}_{ncij}\right]" in tex and "argmax" not in tex
    pool = derivation_text(derive(codegen.load("maxpool2d").layer)).split("backward")[-1]
    assert "== argmax_{p,q}(x[n, c, 2*i + p, 2*j + q])" in pool


BAD = [
    ("a[n, i] = x[n, i] > 0", "7:11", "a comparison is allowed only as the condition of "
                                      "where(cond, a, b)"),
    ("a[n, i] = x[n, i] * (x[n, i] > 0 and x[n, i] < 1)", "7:22",
     "'and'/'or' is allowed only as the condition of where"),
    ("a[n, i] = where(x[n, i], 1, 0)", "7:17", "where's condition must be a comparison"),
    ("a[n, i] = where(x[n, i] == 0, 1, 0)", "7:17", "'==' is not a condition where() takes"),
    ("a[n, i] = where(x[n, i] > 0, 1)", "7:11", "where() takes 3 arguments"),
    ("a[n, i] = maxx(x[n, i], 0)", "7:11", "unknown function 'maxx' (did you mean 'max'?)"),
    ("a[n, i] = abbs(x[n, i])", "7:11", "unknown function 'abbs' (did you mean 'abs'?)"),
    ("a[n, i] = max(x[n, i], 0, 1)", "7:11", "max() takes 2 arguments"),
    ("a[n, i] = x[n, i] + max(x[n, i], k)", "7:34", "index 'k' is maximized over but not used"),
    ("a[n, i] = argmax(x[n, i])", "7:11", "argmax takes an expression and the new indices"),
    ("a[n, i] = argmax(x[n, i], i)", "7:11", "argmax takes an expression and the new indices"),
    ("a[n, i] = argmaxx(x[n, i], k)", "7:11", "(did you mean 'argmax'?)"),
]


@pytest.mark.parametrize("line, where, message", BAD)
def test_bad_piecewise_specs_are_one_line_errors(line, where, message):
    spec = f"layer bad\ndims N, I\ninput x[N, I]\noutput a[N, I]\n\n\n{line}\n"
    with pytest.raises(SpecError) as info:
        parse_spec(spec, "bad.bp")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"bad.bp:{where}: "), text
    assert message in text, text
