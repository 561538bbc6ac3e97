"""The derived formulas themselves: closed forms, no leftovers, the textbook results."""
import numpy as np
import pytest
import sympy as sp

from derive import LayerBuilder, derive
from derive.builtins import BUILTINS, builtin
from derive.evaluate import evaluate
from derive.spec import index

N, I, J, C, H = sp.symbols("N I J C H", integer=True, positive=True)
n, i, j, k, c, h = (index("n", "N"), index("i", "I"), index("j", "J"), index("k", "I"),
                    index("c", "C"), index("h", "H"))


def T(name):
    return sp.IndexedBase(name)


@pytest.mark.parametrize("name", BUILTINS)
def test_no_piecewise_delta_or_derivative_left(name):
    d = derive(builtin(name))
    for s in d.steps:
        for e in (s.expr, s.given) if s.given is not None else (s.expr,):
            assert not e.has(sp.Piecewise), s
            # a delta survives only against a gathered label: [i == t[n]], the one-hot
            assert all(any(not isinstance(a, sp.Idx) for a in dl.args)
                       for dl in e.atoms(sp.KroneckerDelta)), s
            assert not e.has(sp.Derivative), s
            assert "~" not in str(e), s   # no internal dummy index names


def same(a, b):
    return sp.expand(a - b) == 0


def test_worked_example():
    """x = 0.5, w = 0.8, z = w x, yhat = sigmoid(z), y = 1, L = -y log(yhat)."""
    v = evaluate(derive(builtin("neuron")), dict(x=0.5, w=0.8, y=1.0))
    assert f"{float(v['yhat']):.6g}" == "0.598688"
    assert f"{float(v['L']):.6g}" == "0.513015"
    assert f"{float(v['dz']):.6g}" == "-0.401312"
    assert f"{float(v['dw']):.6g}" == "-0.200656"


def test_worked_example_kernels():
    import codegen

    k = codegen.load("neuron")
    f = k.forward(x=0.5, w=0.8, y=1.0)
    g = k.backward(x=0.5, w=0.8, y=1.0)
    assert f"{float(f['yhat']):.6g}" == "0.598688"
    assert f"{float(f['L']):.6g}" == "0.513015"
    assert f"{float(g['dw']):.6g}" == "-0.200656"


def test_dense_gradients():
    d = derive(builtin("dense"))
    W, x, dz = T("W"), T("x"), T("dz")
    assert same(d.step("x").expr, sp.Sum(W[i, j] * dz[n, i], (i, 0, I - 1)))
    assert same(d.step("W").expr, sp.Sum(dz[n, i] * x[n, j], (n, 0, N - 1)))
    assert same(d.step("b").expr, sp.Sum(dz[n, i], (n, 0, N - 1)))
    assert d.upstream == ["dz"]


def test_activation_derivatives_in_terms_of_outputs():
    a, da, z = T("a"), T("da"), T("z")
    assert same(derive(builtin("sigmoid")).step("z").expr, da[n, i] * a[n, i] * (1 - a[n, i]))
    assert same(derive(builtin("tanh")).step("z").expr, da[n, i] * (1 - a[n, i] ** 2))
    assert same(derive(builtin("relu")).step("z").expr, da[n, i] * sp.Heaviside(z[n, i], 0))


def test_softmax_jacobian_vector_product():
    y, dy = T("y"), T("dy")
    expected = y[n, i] * (dy[n, i] - sp.Sum(dy[n, k] * y[n, k], (k, 0, I - 1)))
    assert same(derive(builtin("softmax")).step("z").expr, expected)


def test_softmax_cross_entropy_general_and_one_hot_forms():
    s = derive(builtin("softmax_cross_entropy")).step("z")
    y, t = T("y"), T("t")
    general = (y[n, i] * sp.Sum(t[n, k], (k, 0, I - 1)) - t[n, i]) / N
    assert same(s.expr, general)
    assert same(s.given, (y[n, i] - t[n, i]) / N)
    assert [cond.tensor for cond in s.conditions] == ["t"]


def test_without_the_condition_only_the_general_form():
    text = builtin("softmax_cross_entropy").source.replace(
        "given  sum(t[n, i], i) = 1", "")
    from derive import parse_spec

    s = derive(parse_spec(text)).step("z")
    assert s.given is None and s.expr.has(sp.Sum)


def test_losses():
    y, t = T("y"), T("t")
    assert same(derive(builtin("mse")).step("y").expr, (y[n, i] - t[n, i]) / N)
    assert same(derive(builtin("sigmoid_bce")).step("z").expr, (y[n, i] - t[n, i]) / N)


def test_mlp2_hidden_delta_is_the_textbook_recursion():
    """delta1 = (W2^T delta2) (.) sigma'(z1), with sigma'(z1) = a1 (1 - a1)."""
    d = derive(builtin("mlp2"))
    W2, dz2, a1, y, t = T("W2"), T("dz2"), T("a1"), T("y"), T("t")
    assert same(d.step("z1").expr,
                sp.Sum(W2[c, h] * dz2[n, c], (c, 0, C - 1)) * a1[n, h] * (1 - a1[n, h]))
    assert same(d.step("z2").given, (y[n, c] - t[n, c]) / N)
    assert [s.name for s in d.steps] == ["dz2", "dz1", "dx", "dW1", "db1", "dW2", "db2"]
    assert sorted(d.gradients) == ["W1", "W2", "b1", "b2", "x"]


def test_given_forms_agree_numerically_when_the_condition_holds():
    d = derive(builtin("mlp2"))
    rng = np.random.default_rng(0)
    sizes = dict(N=3, D=2, H=5, C=3)
    arrays = {name: rng.normal(size=[sizes[x] for x in t.dims])
              for name, t in d.layer.tensors.items() if t.role in ("input", "param")}
    arrays["t"] = np.eye(3)[[0, 2, 1]]
    general, given = evaluate(d, arrays), evaluate(d, arrays, given=True)
    for s in d.steps:
        np.testing.assert_allclose(general[s.name], given[s.name], rtol=1e-12, atol=1e-15)


def test_reused_tensor_accumulates_adjoints():
    """x is read by two equations: its gradient is the sum of both contributions."""
    layer = (LayerBuilder("twice").dims("N").input("x[N]").intermediate("u[N]")
             .output("y[N]").equation("u[n] = x[n] * x[n]", "y[n] = u[n] + 3 * x[n]")
             .build())
    x, dy = T("x"), T("dy")
    m = index("n", "N")
    assert same(derive(layer).step("x").expr, dy[m] * (2 * x[m] + 3))


def test_unused_input_gets_zero_gradient():
    layer = (LayerBuilder("unused").dims("N").input("x[N]", "v[N]").output("y[N]")
             .equation("y[n] = 2 * x[n]").build())
    assert derive(layer).step("v").expr == 0


def test_gated_unit_from_a_spec_file(tmp_path):
    spec = tmp_path / "gated.bp"
    from .oracles import GATED

    spec.write_text(GATED)
    from derive import load_spec

    d = derive(load_spec(spec))
    # the sigmoid's argument W x + b is named for the walk: its adjoint dz_g is the step
    assert [s.name for s in d.steps] == ["dz_g", "dx", "dW", "db"]
    text = str(d.step("x").expr)
    assert "g[n, i]" in text and "Sum" in text and "dz_g" in text


def test_decimal_literals():
    """Short decimals stay exact; long ones are floats, so constants stay readable."""
    from derive import parse_spec
    from derive.pretty import derivation_text

    layer = parse_spec("layer d\ndims N\ninput x[N]\noutput y[N]\n"
                       "y[n] = 0.5 * x[n] + 0.7978845608028654 * x[n]**3\n")
    rhs = layer.equations[0].rhs
    assert sp.Rational(1, 2) in rhs.atoms(sp.Rational)
    assert any(isinstance(a, sp.Float) for a in rhs.atoms(sp.Number))
    text = derivation_text(derive(builtin("gelu")))
    assert "0.7978845608028654" in text and "/1000000" not in text


def test_large_integer_constants_print_as_c_floating_constants():
    from codegen.c_printer import KernelCPrinter

    x = sp.Symbol("x")
    code = KernelCPrinter("float64", {}, set()).code(10**21 * x + 3)
    assert "1000000000000000000000" not in code and "e+21" in code and "3" in code


def test_integer_labels_gather_and_their_one_hot():
    """-log y[n, t[n]] of a softmax: dz = (y - [i == t[n]]) / N, the textbook result
    for integer class labels, with no sum over classes left."""
    d = derive(builtin("softmax_cross_entropy_labels"))
    (step,) = d.steps
    t = sp.IndexedBase("t")
    assert same(step.expr, (T("y")[n, i] - sp.KroneckerDelta(i, t[n])) / N)
