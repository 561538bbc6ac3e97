"""Derivations of deep compositions stay linear in the depth: the formulas of nested
functions, of a chain of intermediates and of a deep MLP grow in proportion to the depth
(not 2**depth, as when every chain rule product was multiplied out).  Time is measured
by bench/derive_speed.py, not here."""
import pytest
import sympy as sp

from bench.deep_specs import chain, mlp, nested
from derive import derive, parse_spec


def printed_size(d):
    return sum(len(str(s.expr)) for s in d.steps)


def distinct_size(d):
    """Distinct subexpressions: a value used twice (tanh(x) inside tanh(tanh(x))) counts
    once, as in the kernels' common subexpressions."""
    return len({e for s in d.steps for e in sp.preorder_traversal(s.expr)})


@pytest.mark.parametrize("maker, depth, size", [
    (nested, 12, distinct_size), (chain, 8, printed_size), (mlp, 4, printed_size)])
def test_formula_size_is_linear_in_depth(maker, depth, size):
    small, large = (size(derive(parse_spec(maker(d)))) for d in (depth, 2 * depth))
    assert large <= 2.3 * small, (small, large)


def test_chain_rule_product_stays_factored():
    """tanh(tanh(x)): the gradient is da (1 - a^2)(1 - tanh(x)^2), two local derivatives,
    not their expansion into four terms."""
    d = derive(parse_spec(nested(2)))
    dx = d.step("x").expr
    assert isinstance(dx, sp.Mul)
    assert sum(isinstance(f, sp.Add) for f in dx.args) == 2
