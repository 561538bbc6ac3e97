"""Networks: layers composed by name (derive/network.py) into one ordinary layer."""
import subprocess
import sys

import numpy as np
import pytest

import codegen
from derive import Network, derive, parse_spec
from derive.builtins import builtin
from derive.document import document
from derive.errors import SpecError
from derive.pretty import derivation_text

from .oracles import assert_close

MLP3 = """network mlp3  three dense layers, sigmoids between
for l in 1..3: use dense as fc{l} (x = a{l-1}, W = W{l}, b = b{l}, z = z{l}, J = D{l-1}, I = D{l})
for l in 1..2: use sigmoid as act{l} (z = z{l}, a = a{l})
use softmax_cross_entropy as ce (z = z3)
"""


def test_a_for_line_composes_an_mlp_with_its_own_widths():
    layer = parse_spec(MLP3)
    assert layer.dims == ("N", "D0", "D1", "D2", "D3")
    assert layer.describe()["W2"] == ("param", ("D2", "D1"))
    assert [t.name for t in layer.inputs] == ["a0"]
    assert layer.loss == "L" and layer.describe()["a2"] == ("intermediate", ("N", "D2"))
    assert list(layer.sections) == ["fc1", "act1", "fc2", "act2", "fc3", "ce"]


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_network_kernels_equal_its_layers_chained_by_hand(backend):
    """The composed kernels against the built-in layers' own kernels, run one after the
    other forward and backward (the chain rule by hand)."""
    rng = np.random.default_rng(3)
    sizes = dict(N=5, D0=4, D1=7, D2=3, D3=6)
    a = {"a0": rng.normal(size=(5, 4))}
    for l in (1, 2, 3):
        a[f"W{l}"] = rng.normal(size=(sizes[f"D{l}"], sizes[f"D{l-1}"]))
        a[f"b{l}"] = rng.normal(size=sizes[f"D{l}"])
    t = np.eye(6)[rng.integers(0, 6, 5)]
    got = codegen.load(parse_spec(MLP3), backend=backend).forward_backward(**a, t=t)

    dense, sig = codegen.load("dense"), codegen.load("sigmoid")
    ce = codegen.load("softmax_cross_entropy")
    h, saved = a["a0"], []
    for l in (1, 2, 3):
        saved.append(h)
        z = dense.forward(x=h, W=a[f"W{l}"], b=a[f"b{l}"])["z"]
        if l < 3:
            saved.append(z)
            h = sig.forward(z=z)["a"]
    out = ce.forward_backward(z=z, t=t)
    assert_close(got["L"], out["L"], 1e-12, "L")
    dz = out["dz"]
    for l in (3, 2, 1):
        if l < 3:
            dz = sig.backward(z=saved.pop(), da=dz)["dz"]
        g = dense.backward(x=saved.pop(), W=a[f"W{l}"], b=a[f"b{l}"], dz=dz)
        for name in ("W", "b"):
            assert_close(got[f"d{name}{l}"], g[f"d{name}"], 1e-12, f"d{name}{l}")
        dz = g["dx"]
    assert_close(got["da0"], dz, 1e-12, "da0")


def test_derivation_shows_the_delta_recursion_layer_by_layer():
    d = derive(parse_spec(MLP3))
    text = derivation_text(d)
    heads = [line.strip() for line in text.splitlines() if line.startswith("  layer ")]
    assert heads == ["layer fc3 (dense):", "layer fc2 (dense):", "layer fc1 (dense):"]
    # each delta is the next layer's, through its weights, times sigma' (BP2)
    assert str(d.step("z2").expr) == "(1 - a2[n, d2])*a2[n, d2]*Sum(W3[d3, d2]*dz3[n, d3], (d3, 0, D3 - 1))"
    assert str(d.step("z1").expr) == "(1 - a1[n, d1])*a1[n, d1]*Sum(W2[d2, d1]*dz2[n, d2], (d2, 0, D2 - 1))"


def test_document_has_a_section_per_layer():
    md = document(derive(builtin("mlp2")), "md")
    heads = [line for line in md.splitlines() if line.startswith("## Layer")]
    assert heads == ["## Layer `ce` (softmax_cross_entropy)", "## Layer `fc2` (dense)",
                     "## Layer `act1` (sigmoid)", "## Layer `fc1` (dense)"]
    assert r"\section{Layer \texttt{fc1} (dense)}" in document(derive(builtin("mlp2")), "tex")


def test_python_network_is_the_builtin_mlp2():
    net = (Network("mlp2", "Two-layer perceptron: dense, sigmoid, dense, softmax + "
                           "cross-entropy")
           .use("dense", "fc1", W="W1", b="b1", z="z1", J="D", I="H", j="d", i="h")
           .use("sigmoid", "act1", z="z1", a="a1", i="h")
           .use("dense", "fc2", x="a1", W="W2", b="b2", z="z2", I="C", j="h", i="c")
           .use("softmax_cross_entropy", "ce", z="z2", i="c"))
    assert net.build().source == builtin("mlp2").source


def test_python_loop_and_a_layer_object():
    swish = parse_spec("layer swish\ndims N, I\ninput x[N, I]\noutput y[N, I]\n"
                       "y[n, i] = x[n, i] * sigmoid(x[n, i])\n")
    net = Network("deep")
    for l in range(1, 4):
        net.use("dense", f"fc{l}", x=f"h{l-1}", W=f"W{l}", b=f"b{l}", z=f"z{l}", I="H",
                J="H")
        net.use(swish, f"act{l}", x=f"z{l}", y=f"h{l}")
    layer = net.build()
    assert [t.name for t in layer.outputs] == ["h3"] and layer.dims == ("N", "H")
    assert [s.tensor for s in derive(layer).steps if not s.is_gradient] == \
        ["z3", "z2", "z1"]


def test_dimensions_of_one_name_are_one():
    """Without renames, dimensions are shared by name as tensors are: two branches reading
    their own inputs share the batch N, and a chain of dense layers is square."""
    layer = parse_spec("network two\nuse dense as fc1\n"
                       "use dense as fc2 (x = x2, W = W2, b = b2, z = z2)\n")
    assert layer.dims == ("N", "J", "I")
    square = parse_spec("network sq\nfor l in 1..3: use dense as fc{l} (x = a{l-1}, "
                        "W = W{l}, b = b{l}, z = a{l})\n")
    assert square.describe()["W2"] == ("param", ("I", "I"))
    assert square.describe()["W1"] == ("param", ("I", "J"))


def test_python_renames_are_checked():
    with pytest.raises(SpecError, match=r"<Network n>: fc1: 'W = W 1': renames are written"):
        Network("n").use("dense", "fc1", W="W 1")


def test_wiring_names_the_dimensions():
    layer = parse_spec("network two\nuse dense as fc1 (z = h, I = H)\n"
                       "use dense as fc2 (x = h, W = W2, b = b2, z = y)\n")
    # fc2's J is fc1's H (its x is h); its own I stays a dimension of its own
    assert layer.describe()["W2"] == ("param", ("I", "H"))
    assert layer.describe()["h"] == ("intermediate", ("N", "H"))


def test_a_spec_file_beside_the_network(tmp_path):
    (tmp_path / "swish.bp").write_text("layer swish\ndims N, I\ninput x[N, I]\n"
                                       "output y[N, I]\ny[n, i] = x[n, i] * sigmoid(x[n, i])\n")
    (tmp_path / "net.bp").write_text("network net\nuse dense (z = z)\n"
                                     "use swish.bp as act (x = z, y = a)\n")
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "derive", str(tmp_path / "net.bp")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "layer dense (dense):\n    dz[n, i] = " in r.stdout and "sigmoid(z[n, i])" in r.stdout
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "compose",
                        str(tmp_path / "net.bp")], capture_output=True, text=True)
    assert r.stdout.startswith("layer net\n") and "section act swish\n" in r.stdout
    assert parse_spec(r.stdout).source == r.stdout


@pytest.mark.parametrize("text, message", [
    ("network n\nuse dense (q = r)", ":2: dense: dense has no tensor, dimension, constant or "
                                     "index named 'q'; its names: I, J, N, W, b, i, j, n, x, z"),
    ("network n\nuse dense as a\nuse dense as b (W = W2, b = b2)",
     ":3: b: z is computed by both a and b; rename one (z = ...)"),
    ("network n\nuse mse as a\nuse mse as b (y = y2, t = t2, L = L2)",
     ":3: b: a network has one loss; L is already it"),
    ("network n\nuse dense\nuse dense (W = W2, b = b2, z = z2)",
     ":3: dense: two layers are named 'dense'; name them apart with 'as'"),
    ("network n\nuse dense as fc1 (I = H)\nuse dense as fc2 (x = z, z = y, W = W2, b = b2, "
     "J = K)", ":3: fc2: wiring makes dimensions H and K one; rename one to the other"),
    ("network n\nuse dense (z = h)\nuse softmax_cross_entropy_labels (z = y, t = h)",
     ":3: softmax_cross_entropy_labels: t[N] is wired to h, which has 2 indices"),
    ("network n\nuse densse", ":2: cannot use 'densse': 'densse' is neither a built-in layer "
                              "(did you mean 'dense'?)"),
    ("network n\nuse nothere.bp", ":2: cannot use 'nothere.bp': "),
    ("network n\nfor l in 1..: use dense", ":2: expected 'for l in 1..L: use ...'"),
    ("network n\nfor l in 1..3: use dense as fc{2*l}", ":2: only {l}, {l-K} and {l+K}"),
    ("network n\nuse dense as fc1 (W: W1)", ":2: 'W: W1': renames are written 'name = new_name'"),
    ("network n\nuse dense as fc1 (W = 1W)", ":2: 'W = 1W': renames are written 'name = new_name'"),
    ("network n\nlayer x", ":2: a network has 'use LAYER [as NAME] (a = b, ...)'"),
    ("network n", "the network uses no layer"),
])
def test_bad_networks_get_one_line_errors(text, message):
    with pytest.raises(SpecError) as info:
        parse_spec(text, "net.bp")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_40_layer_mlp_composes_derives_and_emits_both_backends():
    """The deep case of bench/derive_speed.py (which times it): one delta per layer, each
    from the next, and both backends' sources."""
    from bench.derive_speed import MLP40
    from codegen.c_backend import c_sources
    from codegen.numpy_backend import numpy_source
    from codegen.plan import plan

    d = derive(parse_spec(MLP40))
    assert len(d.layer.sections) == 80
    deltas = [s for s in d.steps if not s.is_gradient]
    assert [s.tensor for s in deltas] == [f"z{l}" for l in range(40, 0, -1)]
    assert "dz12[" in str(d.step("z11").expr) and "W12[" in str(d.step("z11").expr)
    kplan = plan(d)
    assert "dW1" in numpy_source(kplan)
    assert "bp_mlp40_forward_backward" in c_sources(kplan)["mlp40.h"]


def test_an_edit_to_a_used_layer_changes_the_cache_key(tmp_path):
    """The warm kernel cache is found from spec text alone: a network's includes a digest
    of the layers it uses, so editing one of them is a miss, not the old kernels."""
    from derive.builtins import spec_source

    swish, net = tmp_path / "swish.bp", tmp_path / "net.bp"
    swish.write_text("layer swish\ndims N, I\ninput x[N, I]\noutput y[N, I]\n"
                     "y[n, i] = x[n, i] * sigmoid(x[n, i])\n")
    net.write_text("network net\nuse dense (z = z)\nuse swish.bp as act (x = z, y = a)\n")
    before = spec_source(str(net))
    assert parse_spec(*before).source == parse_spec(net.read_text(), str(net)).source
    swish.write_text(swish.read_text().replace("x[n, i] * sigmoid", "2 * x[n, i] * sigmoid"))
    assert spec_source(str(net)) != before
    swish.unlink()
    assert spec_source(str(net)) is None
