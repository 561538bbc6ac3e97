"""Random claim text only ever gives a verdict or a ClaimError, whose message never names
the reader's own classes."""
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from derive import derive
from derive.builtins import builtin
from derive.claims import ClaimError
from derive.verify import verify

TOKENS = [r"\frac{\partial L}{\partial z}", r"\frac{\partial L}{\partial W^{(2)}}",
          r"\frac{\partial C}{\partial b^{(1)}_j}", r"\nabla_a C", r"\delta^{(2)}",
          r"\delta", r"\hat{y}", "y", "t", "x", "a", "z", r"W^{(1)}", "^T", "_j", "_n", "_{jk}",
          r"\odot", r"\cdot", "+", "-", "/", "(", ")", "=", "=", r"\sigma'(", r"\tanh(",
          r"\log(", r"\sum_n", r"\sum_{j}", r"\frac{1}{N}", "N", "2", "^2", " ", "{", "}",
          r"\mathbf{1}", r"f'(", r"\operatorname{ReLU}'(", r"\bar{z}^{(2)}", "^{(3)}", "q",
          r"\left(", r"\right)", r"\sqrt{", r"\nabla_{a^{(1)}} C", r"\delta^l", "^{l+1}",
          r"\delta_{ij}", r"\mathbb{1}[", "> 0]", r"\tanh^2(", r"\Phi(", r"\phi(",
          r"\max(0,", r"\operatorname{sign}(", r"\partial C / \partial b^{(1)}",
          r"\frac{\partial y_i}{\partial z_j}", r"w^{(2)}_{jk}", "^{-1/2}"]
MODEL = derive(builtin("mlp2"))
INTERNAL = re.compile(r"\b(Sym|Bin|Num|Neg|Post|Func|Grad|Jacobian|SumOver|Ones|Indicator|"
                      r"_Partial|Tree|Token|atom|term|postfix)\b")


def check(text):
    try:
        v = verify(MODEL, text, timeout=1)
    except ClaimError as exc:
        assert not INTERNAL.search(str(exc)), str(exc)
        return
    assert v.verdict in ("HOLDS", "CONDITIONAL", "FALSE", "ILL-FORMED")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=14).map("".join))
def test_random_claims(text):
    check(text)


ATOMS = [r"\delta^{(2)}", r"\delta^{(1)}", r"\hat{y}", "y", "t", "x", r"a^{(1)}", r"z^{(2)}",
         r"W^{(1)}", r"W^{(2)}", r"b^{(2)}", "N", "2", r"\delta^{(2)}_j", r"a^{(1)}_k",
         r"x_n", r"\bar{z}^{(1)}", r"(W^{(2)})^T", r"\delta^{(2)}_n"]
LHS = [r"\frac{\partial L}{\partial z^{(2)}}", r"\frac{\partial L}{\partial W^{(2)}}",
       r"\frac{\partial C}{\partial b^{(2)}_j}", r"\frac{\partial L}{\partial x}",
       r"\delta^{(1)}", r"\frac{\partial L}{\partial W^{(1)}_{jk}}"]

expressions = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" + ", " - ", r" \odot ", " ", r" \cdot "]),
                  inner).map("".join),
        inner.map(lambda e: f"({e})^T"),
        inner.map(lambda e: rf"\sigma'({e})"),
        inner.map(lambda e: rf"\frac{{{e}}}{{N}}"),
        inner.map(lambda e: rf"\sum_n {e}")),
    max_leaves=5)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(LHS), expressions)
def test_structured_claims(lhs, rhs):
    check(f"{lhs} = {rhs}")
