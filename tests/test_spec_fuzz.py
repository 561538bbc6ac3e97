"""Random and mutated spec text only ever yields a Layer or a SpecError.

Accepted specs go on through derivation and NumPy source generation, which must not fail
either: whatever the parser lets through, the rest of the pipeline can handle.
"""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codegen.numpy_backend import numpy_source
from codegen.plan import plan
from derive import SpecError, derive, parse_spec
from derive.builtins import BUILTINS, builtin_text

FUZZ = settings(max_examples=300, deadline=None,   # speed belongs in bench/, not in tests
                suppress_health_check=[HealthCheck.too_slow])

TOKENS = ["layer", "dims", "input", "param", "target", "output", "intermediate", "loss",
          "given", "sum", "exp", "log", "sigmoid", "relu", "tanh", "softplus", "sqrt",
          "x", "y", "z", "W", "b", "t", "L", "N", "I", "J", "n", "i", "j", "k",
          "[", "]", "(", ")", ",", "=", "==", "+", "-", "*", "/", "**", "^", "#", " ",
          "\n", "0", "1", "2.5", "1e309", "10**10**10", "\t", "\x00", "\u00e9", ":",
          "lambda", "import", "__import__", "'s'", "@", "%", ".", "for", "int"]


def pipeline(text):
    try:
        layer = parse_spec(text, "fuzz.bp")
    except SpecError as exc:
        assert exc.file == "fuzz.bp"
        return
    numpy_source(plan(derive(layer)))


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_token_soup(text):
    pipeline(text)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    pipeline(text)


@st.composite
def mutated_builtin(draw):
    text = builtin_text(draw(st.sampled_from(BUILTINS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "swap", "duplicate"]))
        if kind in ("swap", "duplicate"):
            lines = text.split("\n")
            a = draw(st.integers(0, len(lines) - 1))
            b = draw(st.integers(0, len(lines) - 1))
            if kind == "swap":
                lines[a], lines[b] = lines[b], lines[a]
            else:
                lines.insert(b, lines[a])
            text = "\n".join(lines)
            continue
        pos = draw(st.integers(0, max(len(text) - 1, 0)))
        piece = draw(st.sampled_from(TOKENS))
        if kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 8)):]
        elif kind == "insert":
            text = text[:pos] + piece + text[pos:]
        else:
            text = text[:pos] + piece + text[pos + len(piece):]
    return text


@FUZZ
@given(mutated_builtin())
def test_mutated_builtins(text):
    pipeline(text)


def test_deep_nesting_is_refused_not_crashed():
    """Text that would exhaust the parser's recursion is refused with a SpecError that
    says why, never a RecursionError."""
    import pytest

    long = "layer d\ndims N\ninput x[N]\noutput y[N]\ny[n] = " + "+".join(["x[n]"] * 1500)
    with pytest.raises(SpecError, match="statement is longer than 2000 characters") as info:
        parse_spec(long)
    assert info.value.line == 5
    parens = "layer d\ndims N\ninput x[N]\noutput y[N]\ny[n] = " + "(" * 300 + "x[n]" + ")" * 300
    with pytest.raises(SpecError, match="too many nested parentheses") as info:
        parse_spec(parens)
    assert info.value.line == 5
