"""A function's argument holding a matrix product gets its adjoint as a step of its own (the
textbook's delta = dh (.) f'(z)), so each product appears once in the derivation and the C
computes it with one GEMM (derive/preactivations.py)."""
import re

import numpy as np
import pytest
import sympy as sp

import codegen
from derive import derive, parse_spec
from derive.evaluate import evaluate
from derive.spec import dim_symbol

from .oracles import GATED, finite_differences, random_arrays, rel_err

RNN3 = """layer rnn3  three unrolled tanh RNN steps, pre-activations not named
dims N, H, D
input  x1[N, D], x2[N, D], x3[N, D], h0[N, H]
param  W[H, H], U[H, D], b[H]
intermediate h1[N, H], h2[N, H]
output h3[N, H]

h1[n, i] = tanh(W[i, j] * h0[n, j] + U[i, k] * x1[n, k] + b[i])
h2[n, i] = tanh(W[i, j] * h1[n, j] + U[i, k] * x2[n, k] + b[i])
h3[n, i] = tanh(W[i, j] * h2[n, j] + U[i, k] * x3[n, k] + b[i])
"""

# the inner tanh's argument is named first (z_y), then the relu's around it (z_y_2); relu'
# is read from the output, tanh' from the argument itself (not stored): written out again
NESTED = """layer nested  a relu of a product plus a tanh of another
dims N, I
input  x[N, I]
param  W[I, I], V[I, I]
output y[N, I]

y[n, i] = relu(W[i, j] * x[n, j] + tanh(V[i, k] * x[n, k]))
"""


def idx(name, dim):
    return sp.Idx(name, dim_symbol(dim))


def same(got, want):
    """Equal as SymPy expressions once both are expanded (bound names agree here)."""
    return sp.expand(got - want) == 0


def test_gated_unit_delta_is_a_step_and_every_product_appears_once():
    d = derive(parse_spec(GATED, "gated.bp"))
    n, i, j = idx("n", "N"), idx("i", "I"), idx("j", "I")     # the spec's own letters
    g, x, W, da, dz = (sp.IndexedBase(s) for s in ("g", "x", "W", "da", "dz_g"))
    assert [s.name for s in d.steps] == ["dz_g", "dx", "dW", "db"]
    assert same(d.step("z_g").expr, da[n, i] * x[n, i] * g[n, i] * (1 - g[n, i]))
    assert same(d.step("x").expr,
                da[n, i] * g[n, i] + sp.Sum(W[j, i] * dz[n, j], (j, 0, j.upper)))
    assert same(d.step("W").expr, sp.Sum(dz[n, i] * x[n, j], (n, 0, n.upper)))
    # g (1 - g) only in the delta: the parameters' gradients read the delta alone
    assert all(s.expr.atoms(sp.IndexedBase) == {dz} | ({x} if s.tensor == "W" else set())
               for s in d.steps if s.tensor in ("W", "b"))


def test_unrolled_rnn_derives_the_textbook_recursion():
    d = derive(parse_spec(RNN3, "rnn3.bp"))
    n, i, j = idx("n", "N"), idx("i", "H"), idx("j", "H")
    W, dz3, h2 = (sp.IndexedBase(s) for s in ("W", "dz3", "h2"))
    assert [s.name for s in d.steps][:3] == ["dz3", "dz2", "dz1"]
    assert same(d.step("z2").expr,
                (1 - h2[n, i] ** 2) * sp.Sum(W[j, i] * dz3[n, j], (j, 0, j.upper)))
    # dW = sum_n sum_t dz_t h_{t-1}^T: three products, not six (no h^2 terms)
    dW = d.step("W").expr
    assert len(sp.Add.make_args(dW.function)) == 3 and "**2" not in str(dW)


def backward_gemm_calls(c_source: str) -> int:
    body = c_source[c_source.index("_backward_f64("):]
    return len(re.findall(r"_gemm_f64\(", body))


def test_c_backward_of_the_rnn_is_gemms(tmp_path):
    """Every matrix product of the backward pass once, through the GEMM: two for the delta
    recursion, three dx_t and dh0, and dW, dU three each, the later ones adding to the
    first (the old expanded form had none: six hand loops, each recomputing (1 - h^2) dh,
    and dW, dU with six products each; dW and dU were then hand loops of three products)."""
    from codegen.c_backend import c_sources
    from codegen.plan import plan

    src = c_sources(plan(derive(parse_spec(RNN3, "rnn3.bp"))))["rnn3.c"]
    assert backward_gemm_calls(src) == 12
    body = src[src.index("_backward_f64("):]
    assert re.search(r"_gemm_f64\(101, 112, 111, H, H, N, 1, dz1, H, h0, H, 0, dW, H\)", body)
    assert re.search(r"_gemm_f64\(101, 112, 111, H, H, N, 1, dz3, H, h2, H, 1, dW, H\)", body)


@pytest.mark.parametrize("spec", [RNN3, NESTED, GATED])
@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_kernels_match_the_oracle_and_finite_differences(tmp_path, spec, backend):
    layer = parse_spec(spec)
    k = codegen.load(layer, backend=backend, cache=tmp_path)
    rng = np.random.default_rng(5)
    sizes = {d: s for d, s in zip(layer.dims, (4, 5, 3))}
    arrays = random_arrays(k, sizes, rng)
    exact = evaluate(derive(layer), arrays)
    grads = k.backward(**arrays)
    for name in k.gradients:
        assert rel_err(grads[name], exact[name]) < 1e-12, name
        assert rel_err(grads[name], finite_differences(k, arrays, name[1:])) < 1e-6, name


def test_stored_values_only_no_named_argument_reaches_the_kernels():
    """The named arguments exist for the walk only: the forward pass returns the layer's own
    values, and a derivative that needs one (relu') reads the argument written out."""
    layer = parse_spec(NESTED)
    d = derive(layer)
    assert [s.name for s in d.steps][:2] == ["dz_y_2", "dz_y"]
    n, i = idx("n", "N"), idx("i", "I")
    y, dy = sp.IndexedBase("y"), sp.IndexedBase("dy")
    assert d.step("z_y_2").expr == sp.Heaviside(y[n, i], 0) * dy[n, i]
    reads = {b.label.name for s in d.steps for b in s.expr.atoms(sp.IndexedBase)}
    assert not reads & {"z_y", "z_y_2"}
    from codegen.plan import plan

    assert plan(d).returns == ("y",)


# a minimal gated unit, written as a user would: tanh(W x) has no name, and h's own
# equation reads h[t - 1] (the naming once skipped such equations: dx and dW then
# recomputed tanh(W x), and dz_f inside the loop over t once per step)
MGU = """layer mgu  a minimal gated unit
dims T, N, I, H
input  x[T, N, I]
input  h0[N, H]
param  U[H, I], V[H, H], W[H, I]
intermediate f[T, N, H]
output h[T, N, H]
initial h = h0
f[t, n, j] = sigmoid(U[j, i] * x[t, n, i] + V[j, k] * h[t - 1, n, k])
h[t, n, j] = (1 - f[t, n, j]) * h[t - 1, n, j] + f[t, n, j] * tanh(W[j, i] * x[t, n, i])
"""


def test_gated_recurrence_names_its_candidate_and_computes_each_product_once():
    """dz_h = dh f (1 - tanh^2(W x)) is a step, so dx and dW read it (one product each);
    the backward needs tanh(W x) itself (in dz_f and dz_h), and the kernel plan computes
    W x there once, over all steps, as z_h (codegen/shared_arguments.py)."""
    from codegen.plan import plan

    d = derive(parse_spec(MGU))
    assert [s.name for s in d.steps][:3] == ["dh_total", "dz_h", "dz_f"]
    t, n, i, j = idx("t", "T"), idx("n", "N"), idx("i", "I"), idx("j", "H")
    W, U, x, dz_f, dz_h = (sp.IndexedBase(s) for s in ("W", "U", "x", "dz_f", "dz_h"))
    assert same(d.step("x").expr, sp.Sum(U[j, i] * dz_f[t, n, j] + W[j, i] * dz_h[t, n, j],
                                         (j, 0, j.upper)))
    assert same(d.step("W").expr, sp.Sum(dz_h[t, n, j] * x[t, n, i],
                                         (t, 0, t.upper), (n, 0, n.upper)))
    p = plan(d)
    assert p.backward[0].name == "z_h"
    wx = [st.name for st in p.backward for s in st.expr.atoms(sp.Sum)
          if {b.label.name for b in s.atoms(sp.IndexedBase)} == {"W", "x"}]
    assert wx == ["z_h"], wx
    assert not any(f.args[0].has(sp.Sum) for st in p.backward for f in st.expr.atoms(sp.tanh))


def _torch_mgu(torch, x, h0, U, V, W):
    h, hs = h0, []
    for t in range(x.shape[0]):
        f = torch.sigmoid(x[t] @ U.T + h @ V.T)
        h = (1 - f) * h + f * torch.tanh(x[t] @ W.T)
        hs.append(h)
    return torch.stack(hs)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_gated_recurrence_equals_torch_autograd(tmp_path, backend):
    from .oracles import require_oracle

    torch = require_oracle("torch")
    k = codegen.load(parse_spec(MGU), backend=backend, cache=tmp_path,
                     **({"dtype": "float64"} if backend == "c" else {}))
    if backend == "numpy":      # W x once in the backward, as one einsum; no tanh of one
        source = k.path.read_text()
        body = source[source.index("def backward"):]
        assert len(re.findall(r"np\.einsum\('ji,tni->tnj', W, x", body)) == 1
        assert "tanh(np.einsum" not in body
        # dx = sum_j (U dz_f + W dz_h): two matrix products, not one T x N x I x H broadcast
        assert "np.einsum('ji,tnj->tni', U, dz_f" in body and ".sum(axis=3)" not in body
    rng = np.random.default_rng(3)
    T, N, I, H = 5, 3, 7, 5
    a = dict(x=rng.normal(size=(T, N, I)), h0=rng.normal(size=(N, H)),
             U=0.5 * rng.normal(size=(H, I)), V=0.5 * rng.normal(size=(H, H)),
             W=0.5 * rng.normal(size=(H, I)))
    dh = rng.normal(size=(T, N, H))
    got = k.forward(**a)["h"]
    grads = k.backward(**a, dh=dh)
    leaves = {name: torch.tensor(v, requires_grad=True) for name, v in a.items()}
    h = _torch_mgu(torch, **leaves)
    (h * torch.tensor(dh)).sum().backward()
    np.testing.assert_allclose(got, h.detach().numpy(), rtol=1e-12, atol=1e-13)
    for name, leaf in leaves.items():
        np.testing.assert_allclose(grads["d" + name], leaf.grad.numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)
