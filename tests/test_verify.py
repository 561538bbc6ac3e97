"""The claim verifier: every catalogue entry gets its expected verdict, and bad claims get
errors that say what was not understood and where."""
import json
import subprocess
import sys

import numpy as np
import pytest

from derive import LayerBuilder, derive
from derive.builtins import builtin
from derive.catalogue import CATALOGUE
from derive.claims import ClaimError, parse_claim
from derive.verify import verify


@pytest.fixture(scope="module")
def derivations():
    return {}


def d_of(cache, name):
    if name not in cache:
        cache[name] = derive(builtin(name))
    return cache[name]


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.name for e in CATALOGUE])
def test_catalogue_entry(derivations, entry):
    v = verify(d_of(derivations, entry.model), entry.claim, timeout=3)
    assert (v.verdict, tuple(v.conditions)) == (entry.verdict, entry.conditions), v.text()
    if v.verdict == "FALSE":
        ce = v.counterexample
        assert ce["sizes"] and ce["inputs"]
        assert not np.allclose(ce["left"], ce["right"])


def test_catalogue_covers_the_issue():
    names = {e.name for e in CATALOGUE}
    assert {"BP1", "BP2", "BP3", "BP4", "softmax-CE", "sigmoid-BCE", "MSE-linear", "tanh",
            "ReLU", "dense-W-batch-mean", "dense-b-batch-mean"} <= names
    assert sum(e.verdict != "HOLDS" for e in CATALOGUE) >= 4


def test_bound_index_names_do_not_matter():
    """sum_i (x_i - mean(x)) = 0 is proven symbolically, not left to numbers."""
    layer = (LayerBuilder("center").dims("I").input("x[I]").output("y[I]")
             .equation("y[i] = x[i] - sum(x[j], j) / I").build())
    v = verify(derive(layer), r"\sum_i (x_i - \frac{1}{I} \sum_j x_j) = 0")
    assert (v.verdict, v.method) == ("HOLDS", "symbolic")
    v = verify(derive(layer), r"\sum_k y_k = 0")
    assert (v.verdict, v.method) == ("HOLDS", "symbolic")


def test_notation_outside_the_grammar_is_refused(derivations):
    d = d_of(derivations, "softmax_cross_entropy")
    general = r"\frac{\partial L}{\partial z} = \frac{1}{N}(y \odot (t \mathbf{1} \mathbf{1}^T) - t)"
    with pytest.raises(ClaimError):      # \mathbf{1} is not a tensor of the layer: refused
        verify(d, general)


def test_explicit_mapping(derivations):
    d = d_of(derivations, "softmax_cross_entropy")
    v = verify(d, r"\frac{\partial L}{\partial z} = \frac{\hat{y} - y}{N}",
               {r"\hat{y}": "y", "y": "t"})
    assert v.verdict == "CONDITIONAL"
    with pytest.raises(ClaimError, match="no tensor 'q'"):
        verify(d, r"\frac{\partial L}{\partial z} = y", {"y": "q"})


@pytest.mark.parametrize("claim, words", [
    (r"\frac{\partial L}{\partial z} = \zeta", "column 33"),
    (r"\frac{\partial L}{\partial z} = y +", "ends too early"),
    (r"\frac{\partial L}{\partial z} = q", "unknown symbol 'q'"),
    (r"\frac{\partial z}{\partial x} = y", "only derivatives of the loss"),
    (r"\frac{\partial L}{\partial z} = W^{l} y", "symbolic layer label"),
    ("", "empty"),
])
def test_unreadable_claims(derivations, claim, words):
    with pytest.raises(ClaimError, match=words.replace("(", r"\(")):
        verify(d_of(derivations, "softmax_cross_entropy"), claim)


def test_ambiguous_symbol(derivations):
    with pytest.raises(ClaimError, match="could be any of W1, W2"):
        verify(d_of(derivations, "mlp2"), r"\frac{\partial L}{\partial W} = \delta x")


def test_parser_refuses_rather_than_guesses():
    claim = parse_claim(r"\frac{\partial L}{\partial W^{(2)}} = \delta^{(2)} (a^{(1)})^T")
    assert claim.lhs.of.layer == "2" and claim.rhs.b.transpose
    with pytest.raises(ClaimError):
        parse_claim(r"\frac{\partial L}{\partial z} = \int y")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "codegen.cli", "verify", *args],
                          capture_output=True, text=True, timeout=600)


def test_cli_first_word_and_json():
    r = cli("--model", "neuron", r"\frac{\partial L}{\partial z} = \hat{y} - y")
    assert r.returncode == 0 and r.stdout.split()[0] == "CONDITIONAL"
    r = cli("--model", "tanh", "--json",
            r"\frac{\partial L}{\partial z} = \frac{\partial L}{\partial a} \odot (1 - a)")
    record = json.loads(r.stdout)
    assert record["verdict"] == "FALSE" and record["method"] == "numeric"
    assert set(record["counterexample"]) >= {"sizes", "inputs", "left", "right"}
    r = cli("--model", "dense", "--json", r"\frac{\partial L}{\partial W} = \delta x")
    record = json.loads(r.stdout)
    assert record["verdict"] == "ILL-FORMED" and "N x I" in record["message"]
    r = cli("--model", "dense", r"\frac{\partial L}{\partial W} = \delta^T x")
    assert r.stdout.startswith("HOLDS (symbolic)")


def test_cli_unreadable_claim_exits_nonzero():
    r = cli("--model", "dense", r"\frac{\partial L}{\partial W} = \zeta x")
    assert r.returncode == 2 and "column" in r.stderr and "Traceback" not in r.stderr
    r = cli("--model", "mlp2", r"\frac{\partial L}{\partial W} = x",
            "--map", r"W")
    assert r.returncode == 2 and "SYMBOL=TENSOR" in r.stderr


def test_cli_catalogue():
    r = cli("--catalogue", "--timeout", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(CATALOGUE)} of {len(CATALOGUE)} claims got their expected verdict" in r.stdout


@pytest.mark.parametrize("claim, verdict, method", [
    ("dz[n, i] = (y[n, i] * sum(t[n, k], k) - t[n, i]) / N", "HOLDS", "symbolic"),
    ("dz[n, i] = (y[n, i] - t[n, i]) / N", "CONDITIONAL", "numeric"),
    ("dz[n, i] = y[n, i] * t[n, i]", "FALSE", "numeric"),
    ("dz[n, i] = y[n, j] * t[n, j]", "ILL-FORMED", "shapes"),
])
def test_claims_in_the_spec_language(derivations, claim, verdict, method):
    v = verify(d_of(derivations, "softmax_cross_entropy"), claim, timeout=3)
    assert (v.verdict, v.method) == (verdict, method), v.text()


def test_spec_language_claim_errors(derivations):
    with pytest.raises(ClaimError, match="unknown tensor 'dq'"):
        verify(d_of(derivations, "dense"), "dq[n] = 1")
    with pytest.raises(ClaimError, match="unknown function 'sinh'"):
        verify(d_of(derivations, "dense"), "dx[n, j] = sinh(x[n, j])")


def test_time_limit_fires_again_when_a_timeout_is_swallowed():
    """A TimeoutError raised inside a gc callback is ignored by Python; the limit must not
    end with it (the alarm repeats until the block is left)."""
    import time

    from derive.verify import time_limit
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        with time_limit(0.05):
            try:
                while True:
                    time.sleep(0.001)
            except TimeoutError:
                pass                                  # swallowed, as in a gc callback
            while time.perf_counter() - start < 5:
                time.sleep(0.001)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("claim", [
    r"\frac{\partial L}{\partial z} = " + " ".join(["y"] * 1400),
    "dz = " + " * ".join(["y"] * 1400),
])
def test_a_claim_of_1400_factors_is_a_clear_error(claim):
    # at Python's default limit: hypothesis, run earlier in the session, may leave it raised
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        with pytest.raises(ClaimError, match="nested too deeply to verify"):
            verify(derive(builtin("neuron")), claim)
    finally:
        sys.setrecursionlimit(limit)
