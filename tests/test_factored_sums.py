"""codegen/factored_sums.py: an expanded sum printed factored where that is shorter."""
import numpy as np
import sympy as sp

import codegen
from codegen.c_backend import c_sources
from codegen.factored_sums import factored_sums
from codegen.plan import plan

from .oracles import require_oracle

GELU_RECOMPUTE = "bench/layers/gelu_recompute.bp"
c0, c1, c2, c3, k = sp.symbols("bp_acc_c0 bp_acc_c1 bp_acc_c2 bp_acc_c3 k")
n, i = sp.symbols("n i")
da = sp.IndexedBase("da")[n, i]


def test_gelu_backward_sum_is_factored_and_equal():
    """GELU's expanded backward, as the derivation gives it after CSE (c3 = tanh^2):
    the (1 - c3) the terms share is taken out, the half stays outside, the value is the
    same formula."""
    expanded = sp.Mul(sp.Rational(1, 2), -c0 * c3 + c0 - c1 * c3 + c1 + c2 + 1, da)
    got = factored_sums(expanded)
    assert str(got) == "(bp_acc_c2 + (1 - bp_acc_c3)*(bp_acc_c0 + bp_acc_c1) + 1)*da[n, i]/2"
    assert sp.count_ops(got) < sp.count_ops(expanded)
    assert sp.expand(got - expanded) == 0


def test_a_sum_with_nothing_to_share_is_left_alone():
    for e in (c0 + c1 * c2 + 1, k * da + c1, c0 * c1 + c2 * k):
        assert factored_sums(e) == e
    assert str(factored_sums(c0 * c1 + c0 * c2)) == "bp_acc_c0*(bp_acc_c1 + bp_acc_c2)"


def test_array_names_and_indices_are_not_taken_out():
    """`da[n, i]` in two terms is not collected by n or i or da."""
    e = c0 * da + c1 * da ** 2 + 1
    assert factored_sums(e) == e


def test_emitted_gelu_backward_reads_tanh_squared_once_factored():
    """The C of GELU backward from (z, dy) (the bench's layer): one (1 - tanh^2) factor,
    no term of the expanded sum left."""
    kernels = codegen.load(GELU_RECOMPUTE, backend="c", dtype="float32")
    source = c_sources(plan(kernels.derivation))["gelu_recompute.c"]
    lines = [l.strip() for l in source.splitlines() if l.strip().startswith("dz[n*I + i] =")]
    assert lines and all("(1 - bp_acc_c3)*(bp_acc_c0 + bp_acc_c1)" in l for l in lines)
    assert not any("bp_acc_c0*bp_acc_c3" in l for l in lines)


def test_factored_gelu_backward_matches_numpy():
    """The factored C against the generated NumPy module (another printer, unfactored):
    relative 1e-12 in float64 and 2e-5 in float32, absolute where GELU' nears 0 (1e-13
    and 2e-6 of |da|: terms up to 80 |da| at z = -9 cancel there in either form).  Past
    |z| = 10 tanh is +-1 exactly, so dz is da or 0 exactly (NumPy's expanded sum leaves 1e-6 there at
    z = -1e4: c z^3 - c z^3 tanh^2 rounded apart)."""
    require_oracle("cc")
    rng = np.random.default_rng(3)
    z = (rng.standard_normal(4093) * 3)[None, :]
    da = rng.standard_normal(z.shape)
    want = codegen.load(GELU_RECOMPUTE).backward(z=z, da=da)["dz"]
    scale = np.abs(da).max()
    c64 = codegen.load(GELU_RECOMPUTE, backend="c", dtype="float64")
    np.testing.assert_allclose(c64.backward(z=z, da=da)["dz"], want, rtol=1e-12,
                               atol=1e-13 * scale)
    c32 = codegen.load(GELU_RECOMPUTE, backend="c", dtype="float32")
    f32 = dict(z=z.astype(np.float32), da=da.astype(np.float32))
    np.testing.assert_allclose(c32.backward(**f32)["dz"], want, rtol=2e-5, atol=2e-6 * scale)
    far = np.array([[10.0, 88.0, 1e4, 1e12, -10.0, -88.0, -1e4, -1e12]])   # z^3 finite
    ones = np.full(far.shape, 1.5)
    for kernels, dtype in ((c64, np.float64), (c32, np.float32)):
        got = kernels.backward(z=far.astype(dtype), da=ones.astype(dtype))["dz"][0]
        assert list(got) == [1.5] * 4 + [0.0] * 4, (dtype, got)
