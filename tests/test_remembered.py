"""What a process remembers between calls (derive/derivation.py's derivations, derive/
evaluate.py's compiled element formulas): the same thing asked again is the same result,
anything that differs is computed anew, and the memory is bounded."""
import numpy as np
import sympy as sp

import derive.derivation as derivation
import derive.evaluate as evaluate
from derive import derive, parse_spec
from derive.builtins import builtin

SPEC = """layer scaled
dims N, I
input x[N, I]
output y[N, I]
y[n, i] = {k} * tanh(x[n, i])
"""


def test_a_layer_parsed_twice_is_derived_once():
    first = derive(builtin("batchnorm"))
    assert derive(builtin("batchnorm")) is first


def test_a_layer_that_differs_anywhere_is_derived_anew():
    two, three = derive(parse_spec(SPEC.format(k=2))), derive(parse_spec(SPEC.format(k=3)))
    assert two is not three
    assert str(two.steps[0].expr).startswith("2*") and str(three.steps[0].expr).startswith("3*")
    # the constants of a spec are part of the layer: stride 1 and stride 2 differ
    s1, s2 = (derive(builtin("conv2d", dict(S=s, P=0))) for s in (1, 2))
    assert s1 is not s2 and str(s1.steps) != str(s2.steps)
    assert derive(builtin("conv2d", dict(S=2, P=0))) is s2


def test_a_network_is_derived_each_time_or_remembered_but_always_right():
    """A network's layer may not pickle alike twice (then it is derived again): either
    way the derivation is the same."""
    from bench.derive_speed import MLP40

    a, b = derive(parse_spec(MLP40)), derive(parse_spec(MLP40))
    assert [str(s.expr) for s in a.steps] == [str(s.expr) for s in b.steps]


def test_the_remembered_derivations_are_bounded(monkeypatch):
    monkeypatch.setattr(derivation, "_DERIVED", type(derivation._DERIVED)())
    monkeypatch.setattr(derivation, "REMEMBERED", 2)
    layers = [parse_spec(SPEC.format(k=k)) for k in (5, 6, 7)]
    first = derive(layers[0])
    derive(layers[1])
    assert derive(layers[0]) is first            # used last: kept
    derive(layers[2])                            # drops the least recently used, k = 6
    assert len(derivation._DERIVED) == 2
    assert derive(layers[0]) is first
    assert derivation._layer_key(layers[1]) not in derivation._DERIVED


def test_compiled_formulas_are_reused_only_for_the_same_formula_and_sizes(monkeypatch):
    monkeypatch.setattr(evaluate, "_COMPILED", type(evaluate._COMPILED)())
    d = derive(parse_spec(SPEC.format(k=2)))
    rng = np.random.default_rng(0)
    x23, x33 = rng.normal(size=(2, 3)), rng.normal(size=(3, 3))
    a = evaluate.evaluate(d, dict(x=x23, dy=np.ones((2, 3))))
    kept = len(evaluate._COMPILED)
    b = evaluate.evaluate(d, dict(x=x23 + 1, dy=np.ones((2, 3))))
    assert len(evaluate._COMPILED) == kept                  # same formulas, same sizes
    np.testing.assert_allclose(b["y"], 2 * np.tanh(x23 + 1))
    np.testing.assert_allclose(a["dx"], 2 * (1 - np.tanh(x23) ** 2))
    c = evaluate.evaluate(d, dict(x=x33, dy=np.ones((3, 3))))  # other sizes: compiled anew
    assert len(evaluate._COMPILED) == 2 * kept
    np.testing.assert_allclose(c["dx"], 2 * (1 - np.tanh(x33) ** 2))
    monkeypatch.setattr(evaluate, "COMPILED_KEPT", 1)
    evaluate.evaluate(d, dict(x=x23[:1], dy=np.ones((1, 3))))    # compiled, then trimmed
    assert len(evaluate._COMPILED) == 1
