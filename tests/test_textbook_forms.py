"""Gradients in the forms a textbook prints, pinned by structure: the derived formula
equals the expected SymPy expression after canonical renaming of summation indices (the
kernels built from them are checked numerically by the kernel tests, as always)."""
import sympy as sp

from derive import derive, parse_spec
from derive.builtins import builtin
from derive.calculus import contract
from derive.indices import canonical_indices, freshen_bound, tidy_bound
from derive.spec import dim_symbol


def canonical(expr, free):
    """expr multiplied out (every sum a term of its own), its summation
    indices renamed in one fixed way: equal forms compare equal, whatever the factoring."""
    expanded = sp.expand(expr, power_exp=False, power_base=False, log=False)
    return tidy_bound(freshen_bound(contract(expanded)), free)


def assert_form(step, expected):
    free = {i.label.name for i in step.indices}
    assert canonical(step.expr, free) == canonical(expected, free), (step.expr, expected)


def refs(layer, step):
    """A function giving tensor[indices] for this layer, and a summation index over each
    of the step's dimensions."""
    def ref(name, *idx):
        return layer.tensors[name].ref(*idx)
    summed = canonical_indices([i.upper + 1 for i in step.indices],
                               {i.label.name for i in step.indices} | set(layer.tensors))
    return ref, summed


def test_layernorm_dx_is_the_textbook_form():
    """rstd (dxhat - (sum dxhat + xhat sum dxhat xhat) / C): no mu, no identically-zero
    terms, each sum once."""
    d = derive(builtin("layernorm"))
    s = d.step("x")
    ref, (_, k) = refs(d.layer, s)
    n, c = s.indices
    C = c.upper + 1
    dxhat = sp.IndexedBase("dxhat")
    expected = ref("rstd", n) * (dxhat[n, c] - (
        sp.Sum(dxhat[n, k], (k, 0, C - 1))
        + ref("xhat", n, c) * sp.Sum(dxhat[n, k] * ref("xhat", n, k), (k, 0, C - 1))) / C)
    assert_form(s, expected)
    assert [t.name for t in d.steps] == ["dxhat", "dx", "dw", "db"]


BATCHNORM = """layer batchnorm
dims N, C
input x[N, C]
param gamma[C], beta[C]
intermediate mu[C], rstd[C], xhat[N, C]
output y[N, C]

mu[c] = sum(x[n, c], n) / N
rstd[c] = 1 / sqrt(sum((x[n, c] - mu[c])**2, n) / N + 0.00001)
xhat[n, c] = (x[n, c] - mu[c]) * rstd[c]
y[n, c] = gamma[c] * (x[n, c] - mu[c]) * rstd[c] + beta[c]
"""


def test_batchnorm_dgamma_is_sum_of_dy_xhat():
    """y written with (x - mu) rstd rather than xhat: dgamma still folds to sum dy xhat."""
    d = derive(parse_spec(BATCHNORM))
    s = d.step("gamma")
    (c,) = s.indices
    x_n = [i for i in s.expr.atoms(sp.Idx) if i != c][0]     # the summed batch index
    expected = sp.Sum(sp.IndexedBase("dy")[x_n, c] * d.layer.tensors["xhat"].ref(x_n, c),
                      (x_n, 0, x_n.upper))
    assert_form(s, expected)


GROUPNORM = """layer groupnorm
dims N, C, H
input x[N, C, H]
intermediate mu[N], rstd[N], xhat[N, C, H]
output y[N, C, H]

mu[n] = sum(x[n, c, h], c, h) / (C * H)
rstd[n] = 1 / sqrt(sum((x[n, c, h] - mu[n])**2, c, h) / (C * H) + 0.00001)
xhat[n, c, h] = (x[n, c, h] - mu[n]) * rstd[n]
y[n, c, h] = xhat[n, c, h]
"""


def test_mean_over_two_indices_leaves_no_zero_term():
    """sum over c, h of (x - mu) is 0: dx holds no term with sum x - C H mu, and rstd is
    written as rstd, not as the power of the variance it is."""
    dx = derive(parse_spec(GROUPNORM)).step("x").expr
    assert "mu" not in {a.base.label.name for a in dx.atoms(sp.Indexed)}
    assert not any(isinstance(p.base, sp.Add) for p in dx.atoms(sp.Pow))


def test_nested_activation_is_a_product_of_local_derivatives():
    """sigmoid(tanh(x)): da a (1 - a) (1 - tanh(x)^2), the chain rule's product, each
    local derivative in terms of its own output where it has one."""
    d = derive(parse_spec("layer sg\ndims N, I\ninput x[N, I]\noutput a[N, I]\n\n"
                          "a[n, i] = sigmoid(tanh(x[n, i]))\n"))
    s = d.step("x")
    n, i = s.indices
    a, x = d.layer.tensors["a"].ref(n, i), d.layer.tensors["x"].ref(n, i)
    expected = sp.IndexedBase("da")[n, i] * a * (1 - a) * (1 - sp.tanh(x) ** 2)
    assert sp.simplify(s.expr - expected) == 0
    assert isinstance(s.expr, sp.Mul) and len(s.expr.args) == 4


# ---- the documents: factors and gradients in the order a textbook writes them ------------

def test_document_factors_in_textbook_order():
    """delta1 = (W2^T delta2) (.) a1 (1 - a1): the backpropagated product first, the local
    derivative as a (1 - a), not (1 - a) a W^T delta; W x + b with the product first."""
    from derive.document import document

    tex = document(derive(builtin("mlp2")))
    assert (r"\left(\sum_{c} W^{(2)}_{ch} \bar{z}^{(2)}_{nc}\right) a^{(1)}_{nh} "
            r"\left(1 - a^{(1)}_{nh}\right)") in tex
    assert (r"\left(\bar{z}^{(2)} W^{(2)}\right) \odot a^{(1)} \odot "
            r"\left(1 - a^{(1)}\right)") in tex
    assert r"z^{(1)}_{nh} &= \sum_{d} W^{(1)}_{hd} x_{nd} + b^{(1)}_{h}" in tex
    # the adjoint before the values it meets (delta a^T), a matrix before the adjoint
    assert r"\bar{z}^{(1)}_{nh} &\mathrel{+}= \bar{a}^{(1)}_{nh} a^{(1)}_{nh} \left(1" in tex
    assert r"\bar{W}^{(2)}_{ch} &= \sum_{n} \bar{z}^{(2)}_{nc} a^{(1)}_{nh}" in tex
    # the local derivative in terms of its own output: sigma' = a (1 - a)
    assert r"[h = h'] [n = n'] a^{(1)}_{n',h'} \left(1 - a^{(1)}_{n',h'}\right)" in tex


def test_document_shows_each_gradient_once_complete():
    """A gated unit: the delta dz_g before the dx that reads it (dx's last contribution
    comes through z_g = W x + b), the layer's gradients after it."""
    from derive.document import context

    from .oracles import GATED

    names = [g["name"] for g in context(derive(parse_spec(GATED)))["gradients"]]
    assert names == ["g", r"z^{\mathrm{g}}", "W", "b", "x"]


def test_gradients_keep_the_spec_index_letters():
    """z2[n, g] = W2[g, h] a[n, h]: dW2[g, h] = sum_n dz2[n, g] a[n, h], and dx sums over
    g, the letters the spec wrote (not h, k from the dimension's name and the pool)."""
    layer = parse_spec("layer t\ndims N, H\ninput a[N, H]\nparam W2[H, H]\n"
                       "output z2[N, H]\n\nz2[n, g] = W2[g, h] * a[n, h]\n")
    d = derive(layer)
    assert [i.label.name for i in d.step("W2").indices] == ["g", "h"]
    assert [i.label.name for i in d.step("a").indices] == ["n", "h"]
    from derive.pretty import formula

    assert formula(d.step("a").expr) == "sum_g(W2[g, h]*dz2[n, g])"
    assert formula(d.step("W2").expr) == "sum_n(a[n, h]*dz2[n, g])"


def test_a_contribution_that_cancels_says_why():
    """Layer norm's rstd sends mu the term (sum_c x - C mu) rstd^3 drstd / C, which is 0
    as mu is the mean: the derivation keeps that term and the equation cancelling it, and
    the document shows it and says why (not "the brackets collapse the sums" to 0).  A
    mean over two indices cancels only once its nested sums are multiplied out."""
    from derive.document import document

    d = derive(builtin("layernorm"))
    cancelled = [c for c in d.contributions if c.cancelled_by]
    assert [(c.equation.target, c.tensor) for c in cancelled] == [("rstd", "mu")]
    c = cancelled[0]
    assert c.expr == 0 and [e.target for e in c.cancelled_by] == ["mu"]
    n = d.indices("mu")[0]
    ref = lambda name, *i: d.layer.tensors[name].ref(*i)
    k = sp.Idx("k", dim_symbol("C"))
    C = dim_symbol("C")
    want = (sp.Sum(ref("x", n, k), (k, 0, C - 1)) - C * ref("mu", n)) \
        * sp.IndexedBase("drstd")[n] * ref("rstd", n) ** 3 / C
    assert canonical(c.before - want, {"n"}) == 0, c.before
    tex = document(d)
    assert (r"which is 0: $\mu_{n}$ is the mean of $x_{nc}$ over $c$, so "
            r"$\sum_{c} x_{nc} = C \mu_{n}$: the deviations from a mean sum to zero, "
            r"$\sum_{c} \left(x_{nc} - \mu_{n}\right) = 0$. This contribution cancels") in tex
    assert "which is 0:" in document(d, "md")
    two = derive(parse_spec(GROUPNORM))
    assert [(c.equation.target, c.tensor) for c in two.contributions if c.cancelled_by] \
        == [("rstd", "mu")]
    assert r"\sum_{c,h} \left(x_{nch} - \mu_{n}\right) = 0" in document(two)


def test_brackets_are_solved_for_their_index():
    """[t = 0] and [t >= 1], not [-1 <= t - 1 <= -1] and [0 <= t - 1 <= T - 1]: a bound the
    index's own range implies is left out."""
    from derive.affine import between
    from derive.latex import IndexLatexPrinter

    T = dim_symbol("T")
    t = sp.Idx("t", T)
    show = IndexLatexPrinter(brackets=True).doprint
    assert show(between(t - 1, -1, -1)) == r"\left[t = 0\right]"
    assert show(between(t - 1, 0, T - 1)) == r"\left[t \ge 1\right]"
    assert show(between(t + 1, 0, T - 1)) == r"\left[t \le T - 2\right]"
    assert show(between(t - 1, 0, T - 3)) == r"\left[1 \le t \le T - 2\right]"
    assert show(between(2 * t - 1, 0, T - 1)) == r"\left[0 \le 2 t - 1 \le T - 1\right]"


def test_documents_introduce_named_values_and_local_derivatives_in_own_terms():
    """A user's gated recurrence: the pre-activations the walk names are shown before they
    are used, and h's total adjoint is hbar^total in the chain rule and in the results
    alike.  Layer norm's drstd/dx reads rstd^3, not the variance's -3/2 power."""
    from derive.document import document

    from .test_preactivation_steps import MGU

    tex = document(derive(parse_spec(MGU)))
    named = tex.index("the walk names it")
    assert tex.index(r"z^{\mathrm{h}}_{tnj} &= \sum_{i} W_{ji} x_{tni}") > named
    assert named < tex.index(r"\partial L / \partial z^{\mathrm{h}}_{tnj}")
    assert r"\sum_{t',n',j'} \bar{h}^{\mathrm{total}}_{t',n',j'} \frac{\partial h_{t',n',j'}}" \
        in tex
    assert r"\bar{h}_{t',n',j'} \frac" not in tex
    ln = document(derive(builtin("layernorm")))
    assert (r"\frac{\partial \mathrm{rstd}_{n'}}{\partial x_{nc}} &= - \frac{\mathrm{rstd}_{n'}^{3}"
            r" \sum_{c'} [c = c'] [n = n'] \left(x_{n',c'} - \mu_{n'}\right)}{C}") in ln
    assert r"gradients of $\mu$ and $x$, where it is used" in ln
