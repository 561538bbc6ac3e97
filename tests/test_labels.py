"""Integer index tensors (`target t[N] in I`): gathers like z[n, t[n]] and the one-hot
deltas their gradients carry, through both backends, against PyTorch; and every way a
label array can be wrong gets an error naming it (C would otherwise read out of bounds)."""
import numpy as np
import pytest

import codegen
from derive import parse_spec
from derive.evaluate import evaluate

from .oracles import finite_differences, rel_err, require_oracle, tolerance

EMBED = """layer embed  Embedding lookup, scaled
dims N, V, D
input ids[N] in V
param E[V, D], s[D]
output y[N, D]

y[n, d] = E[ids[n], d] * s[d]
"""


@pytest.fixture(scope="module")
def embed():
    layer = parse_spec(EMBED)
    return {b: codegen.load(layer, backend=b) for b in ("numpy", "c")}


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("sizes", [(1, 1, 1), (5, 7, 3), (11, 2, 5)])
def test_embedding_gather_and_scatter(embed, backend, sizes):
    """dE[v, d] = s[d] sum_n [v == ids[n]] dy[n, d]: rows hit twice accumulate, rows never
    hit stay zero (V = 7 > N = 5 leaves some unused; N = 11 > V = 2 repeats)."""
    k = embed[backend]
    N, V, D = sizes
    rng = np.random.default_rng(sum(sizes))
    a = dict(ids=rng.integers(0, V, N), E=rng.normal(size=(V, D)), s=rng.normal(size=D),
             dy=rng.normal(size=(N, D)))
    exact = evaluate(k.derivation, a)
    y = k.forward(ids=a["ids"], E=a["E"], s=a["s"])["y"]
    np.testing.assert_allclose(y, a["E"][a["ids"]] * a["s"], rtol=1e-14)
    g = k.backward(**a)
    for n in ("dE", "ds"):
        assert rel_err(g[n], exact[n]) < tolerance(np.float64, dict(zip("NVD", sizes))), n
        assert rel_err(g[n], finite_differences(k, dict(a), n[1:])) < 1e-6, n
    torch = require_oracle("torch")
    E = torch.tensor(a["E"], requires_grad=True)
    s = torch.tensor(a["s"], requires_grad=True)
    out = torch.nn.functional.embedding(torch.tensor(a["ids"]), E) * s
    (out * torch.tensor(a["dy"])).sum().backward()
    assert rel_err(g["dE"], E.grad.numpy()) < 1e-13
    assert rel_err(g["ds"], s.grad.numpy()) < 1e-13


EMBED_SEQ = """layer embed_seq  Embedding of a batch of sequences, the table stored transposed
dims B, T, V, D
input ids[B, T] in V
param E[D, V]
output y[B, T, D]

y[b, t, d] = E[d, ids[b, t]]
"""


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_embedding_gradient_is_a_scatter_add(embed, backend, tmp_path):
    """dE[v, d] = sum_n [v == ids[n]] dy[n, d] is added row by row at ids[n] (np.add.at),
    not contracted with a V x N one-hot matrix: labels over two axes, a table whose v axis
    comes second, repeated and never-used rows; and the NumPy module has no one-hot left."""
    from codegen.emitter import sources
    layer = parse_spec(EMBED_SEQ)
    k = codegen.load(layer, backend=backend)
    if backend == "numpy":
        src = sources(layer)["embed_seq.py"]
        assert "_scatter_add(V, ids" in src and "np.arange(V)" not in src
        src = sources(parse_spec(EMBED))["embed.py"]
        assert "_scatter_add(V, ids" in src and "np.arange(V)" not in src
    else:
        # C loops over the labels, not over V; a label outside 0..V-1 (a plain C caller's)
        # adds nothing; the source is warning-free C99 with and without OpenMP
        import subprocess
        for lay in (layer, parse_spec(EMBED)):
            files = sources(lay, "c")
            src = files[f"{lay.name}.c"]
            assert "const int64_t bp_at = ids[" in src and "if (0 <= bp_at && bp_at < V)" in src
            for name, text in files.items():
                (tmp_path / name).write_text(text)
            for flags in (["-fopenmp"], ["-Wno-unknown-pragmas"]):
                obj = tmp_path / f"{lay.name}.o"
                r = subprocess.run(require_oracle("cc") + [
                    "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", *flags,
                    "-c", str(tmp_path / f"{lay.name}.c"), "-o", str(obj)],
                    capture_output=True, text=True)
                assert r.returncode == 0 and r.stderr == "", r.stderr
                assert obj.stat().st_size > 0
    B, T, V, D = 2, 3, 4, 5
    rng = np.random.default_rng(7)
    a = dict(ids=np.array([[0, 3, 3], [0, 3, 1]]), E=rng.normal(size=(D, V)),
             dy=rng.normal(size=(B, T, D)))                     # row 2 never used, 3 thrice
    exact = evaluate(k.derivation, a)
    g = k.backward(**a)
    sizes = dict(B=B, T=T, V=V, D=D)
    assert rel_err(g["dE"], exact["dE"]) < tolerance(np.float64, sizes)
    assert np.all(g["dE"][:, 2] == 0)
    torch = require_oracle("torch")
    E = torch.tensor(a["E"], requires_grad=True)
    out = torch.nn.functional.embedding(torch.tensor(a["ids"]), E.T)
    (out * torch.tensor(a["dy"])).sum().backward()
    assert rel_err(g["dE"], E.grad.numpy()) < 1e-13


@pytest.mark.parametrize("backend, dtype", [("numpy", None), ("c", "float32"),
                                            ("c", "float64")])
def test_cross_entropy_with_labels_matches_pytorch(backend, dtype):
    torch = require_oracle("torch")
    k = codegen.load("softmax_cross_entropy_labels", backend=backend, dtype=dtype)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(13, 17)) * 4
    t = rng.integers(0, 17, 13)
    zt = torch.tensor(z, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(zt, torch.tensor(t))
    loss.backward()
    zz = z.astype(dtype or np.float64)
    tol = 1e-5 if dtype == "float32" else 1e-13    # float32: ~100 eps over 17 classes
    assert abs(float(k.forward(z=zz, t=t)["L"]) - loss.item()) < tol * max(1, loss.item())
    assert rel_err(k.backward(z=zz, t=t)["dz"], zt.grad.numpy()) < tol


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("labels, words", [
    (np.array([0, 1, 3]), "t: values must lie in 0..I-1 = 0..2; found 3 at (2,)"),
    (np.array([0, -1, 2]), "found -1 at (1,)"),
    (np.array([0.0, 1.0, 2.0]), "t: expected integers (indices into I), got dtype float64"),
    (np.array([0, 1]), "t: expected shape (N=3)"),
])
def test_bad_labels_are_named(backend, labels, words):
    k = codegen.load("softmax_cross_entropy_labels", backend=backend)
    z = np.zeros((3, 3))
    for call in (k.forward, k.backward, k.forward_backward):   # every entry checks them
        with pytest.raises(ValueError) as info:
            call(z=z, t=labels)
        assert words in str(info.value), call.__name__


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_any_integer_dtype_is_accepted(backend):
    k = codegen.load("softmax_cross_entropy_labels", backend=backend)
    z = np.random.default_rng(0).normal(size=(4, 5))
    ref = k.backward(z=z, t=np.array([0, 4, 2, 2]))["dz"]
    for dt in (np.int32, np.uint8, np.int16):
        got = k.backward(z=z, t=np.array([0, 4, 2, 2], dtype=dt))["dz"]
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("I", [1, 2, 17, 33])
def test_one_hot_element_at_both_ends_of_the_row(I):
    """C computes a row as if [i == t[n]] were 0 and the labelled element apart: labels at
    the first and last class, and a single class, agree with the NumPy backend."""
    c = codegen.load("softmax_cross_entropy_labels", backend="c")
    ref = codegen.load("softmax_cross_entropy_labels", backend="numpy")
    z = np.random.default_rng(I).normal(size=(4, I)) * 3
    t = np.array([0, I - 1, I // 2, 0])
    for entry in ("backward", "forward_backward"):
        got = getattr(c, entry)(z=z, t=t)["dz"]
        want = (ref.backward if entry == "backward" else ref.forward_backward)(z=z, t=t)["dz"]
        assert rel_err(got, want) < 1e-14


def test_plain_c_never_writes_outside_the_row_for_a_bad_label():
    """The wrapper refuses labels out of range; C called directly (a plain C program) must
    still not store the labelled element outside dz: it is stored only when 0 <= t < I."""
    k = codegen.load("softmax_cross_entropy_labels", backend="c")
    ffi, lib = k._ffi, k._lib
    N, I = 3, 5
    y = np.full((N, I), 0.2)
    t = np.array([-1, 5, 2], dtype=np.int64)
    buf = np.full(N * I + 2 * I, 7.0)               # dz with a guard band on both sides
    dz = buf[I:-I]
    lib.bp_softmax_cross_entropy_labels_backward_f64(
        N, I, ffi.from_buffer("double[]", y), ffi.from_buffer("int64_t[]", t),
        ffi.from_buffer("double[]", y), ffi.from_buffer("double[]", dz, require_writable=True),
        ffi.NULL)
    assert (buf[:I] == 7.0).all() and (buf[-I:] == 7.0).all()
    np.testing.assert_allclose(dz.reshape(N, I)[:2], 0.2 / N)       # no one-hot at all
    np.testing.assert_allclose(dz.reshape(N, I)[2], [0.2 / N] * 2 + [(0.2 - 1) / N] + [0.2 / N] * 2)


def test_plain_c_scatter_skips_a_bad_label():
    """Called directly, the C scatter adds a row only for labels in 0..V-1: -1 and V add
    nothing anywhere (guard bands intact), the good labels' rows are added."""
    k = codegen.load(parse_spec(EMBED), backend="c")
    ffi, lib = k._ffi, k._lib
    N, V, D = 3, 4, 2
    ids = np.array([-1, 4, 2], dtype=np.int64)
    # ds gathers E[ids[n], d] unchecked (the wrapper checks labels): E sits inside a guard
    # band too, so those reads stay in memory this test owns
    E, s = np.ones(V * D + 2 * D)[D:-D], np.array([2.0, 3.0])
    dy = np.arange(N * D, dtype=float).reshape(N, D) + 1
    buf = np.full(V * D + 2 * D, 7.0)                    # dE with a guard band on both sides
    dE = buf[D:-D]
    ds = np.zeros(D)
    work = np.zeros(int(lib.bp_embed_backward_work(N, V, D)) or 1)
    p = lambda a, t="double[]": ffi.from_buffer(t, a, require_writable=True)
    lib.bp_embed_backward_f64(N, V, D, p(ids, "int64_t[]"), p(E), p(s), p(dy), p(dE), p(ds),
                              p(work))
    assert (buf[:D] == 7.0).all() and (buf[-D:] == 7.0).all()
    want = np.zeros((V, D))
    want[2] = dy[2] * s
    np.testing.assert_array_equal(dE.reshape(V, D), want)
