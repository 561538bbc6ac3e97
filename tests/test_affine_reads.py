"""Random affine reads: y[n, i, j] = f(w[p, q] x[n, a i + b p + c q + d, e j + g p + h q + k])
with strides, offsets of either sign, both window offsets in one slot or spread over two,
and reads past x's edges (zero there), through the derivation and both backends, against
the same sum and its adjoints written as plain loops here.

The derivation solves each read's delta for a summed index and bounds the rest; where two
offsets share a slot the bounds of one read the other.  Such sums came out nested the
wrong way round (SymPy lists a sum of sums innermost first; contract() read the list
outermost first and reversed it on every pass), renamed with their bounds left behind, and
C loops ends that read an inner loop's index: each of these failed here first."""
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codegen
from derive import derive, parse_spec

SPEC = """layer affine_reads  random affine reads of x
dims N, H, W, KP, KQ
dims Hout = H + {grow_h}, Wout = W + {grow_w}
input x[N, H, W]
outside x = 0
param w[KP, KQ]
output y[N, Hout, Wout]
y[n, i, j] = {f}(w[p, q] * x[n, {slot_h}, {slot_w}])
"""


def _affine(terms, constant):
    """'3*i - p + 2' from [(3, 'i'), (-1, 'p')] and 2."""
    out = ""
    for coef, name in terms:
        if coef:
            sign = ("-" if coef < 0 else "") if not out else (" - " if coef < 0 else " + ")
            out += sign + ("" if abs(coef) == 1 else f"{abs(coef)}*") + name
    return out + (f" {'+' if constant > 0 else '-'} {abs(constant)}" if constant else "")


@st.composite
def reads(draw):
    """(row slot coefficients of i, p, q and constant, column slot's of j, p, q and
    constant, growth of Hout and Wout over H and W, the function, sizes)."""
    h = [draw(st.integers(1, 3)), draw(st.sampled_from([0, 1, 2, -1])),
         draw(st.sampled_from([0, 1, -1])), draw(st.integers(-2, 2))]
    w = [draw(st.integers(1, 3)), draw(st.sampled_from([0, 1, -1])),
         draw(st.sampled_from([0, 1, 2, -1])), draw(st.integers(-2, 2))]
    if not (h[1] or w[1]):
        h[1] = 1                       # p is read somewhere
    if not (h[2] or w[2]):
        w[2] = 1                       # and q
    grow = (draw(st.integers(-2, 1)), draw(st.integers(-2, 1)))
    f = draw(st.sampled_from(["", "tanh"]))
    sizes = dict(N=2, H=draw(st.integers(3, 8)), W=draw(st.integers(3, 8)),
                 KP=draw(st.integers(1, 3)), KQ=draw(st.integers(1, 3)))
    return h, w, grow, f, sizes


def _loops(x, w, h, v, Hout, Wout, dy, f):
    """y, dx and dw by plain loops over every (i, j, p, q)."""
    N, H, W = x.shape
    z = np.zeros((N, Hout, Wout))
    at = []
    for i, j, p, q in itertools.product(range(Hout), range(Wout), *map(range, w.shape)):
        r = h[0] * i + h[1] * p + h[2] * q + h[3]
        s = v[0] * j + v[1] * p + v[2] * q + v[3]
        if 0 <= r < H and 0 <= s < W:
            at.append((i, j, p, q, r, s))
            z[:, i, j] += w[p, q] * x[:, r, s]
    y = np.tanh(z) if f else z
    dz = dy * (1 - y ** 2) if f else dy
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for i, j, p, q, r, s in at:
        dx[:, r, s] += w[p, q] * dz[:, i, j]
        dw[p, q] += x[:, r, s] @ dz[:, i, j]
    return y, dx, dw


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reads())
def test_random_affine_reads_against_loops(config):
    h, v, (grow_h, grow_w), f, sizes = config
    text = SPEC.format(grow_h=grow_h, grow_w=grow_w, f=f,
                       slot_h=_affine([(h[0], "i"), (h[1], "p"), (h[2], "q")], h[3]),
                       slot_w=_affine([(v[0], "j"), (v[1], "p"), (v[2], "q")], v[3]))
    layer = parse_spec(text, "affine_reads.bp")
    rng = np.random.default_rng(sizes["H"] * 10 + sizes["W"])
    Hout, Wout = sizes["H"] + grow_h, sizes["W"] + grow_w
    x = rng.normal(size=(sizes["N"], sizes["H"], sizes["W"]))
    w = rng.normal(size=(sizes["KP"], sizes["KQ"]))
    dy = rng.normal(size=(sizes["N"], Hout, Wout))
    want = dict(zip(("y", "dx", "dw"), _loops(x, w, h, v, Hout, Wout, dy, f)))
    for backend in ("numpy", "c"):
        k = codegen.load(layer, backend=backend)
        got = {**k.forward(x=x, w=w), **k.backward(x=x, w=w, dy=dy)}
        for name, value in want.items():
            scale = max(np.abs(value).max(), 1.0)
            assert np.abs(got[name] - value).max() <= 1e-12 * scale, (backend, name, text)


CHAIN = """layer chain3  three window offsets, chained: r's bounds read q's, q's read p's
dims N, H, W, KP, KQ, KR
dims Hout = H - KP - KQ + 2, Wout = W - KQ - KR + 2
input x[N, H, W]
outside x = 0
param w[KP, KQ, KR]
output y[N, Hout, Wout]
y[n, i, j] = w[p, q, r] * x[n, i + p + q, j + q + r]
"""

NESTED = """layer nested_tanh  a function of an inner sum over two offsets, a third outside
dims N, H, W, KP, KQ, KR
dims Hout = H - 1, Wout = W - 1
input x[N, H, W]
outside x = 0
param w[KP, KR], v[KQ]
output y[N, Hout, Wout]
y[n, i, j] = v[q] * tanh(w[p, r] * x[n, i + q + r - 1, j + r + p - 1])
"""


def _chain_loops(x, w, dy):
    N, H, W = x.shape
    Hout, Wout = dy.shape[1:]
    y, dx, dw = np.zeros_like(dy), np.zeros_like(x), np.zeros_like(w)
    for i, j, p, q, r in itertools.product(range(Hout), range(Wout), *map(range, w.shape)):
        y[:, i, j] += w[p, q, r] * x[:, i + p + q, j + q + r]
        dx[:, i + p + q, j + q + r] += w[p, q, r] * dy[:, i, j]
        dw[p, q, r] += x[:, i + p + q, j + q + r] @ dy[:, i, j]
    return dict(y=y, dx=dx, dw=dw)


def _nested_loops(x, w, v, dy):
    N, H, W = x.shape
    Hout, Wout = dy.shape[1:]
    z, at = np.zeros((N, Hout, Wout, len(v))), []
    for i, j, q, p, r in itertools.product(range(Hout), range(Wout), range(len(v)),
                                           *map(range, w.shape)):
        a, b = i + q + r - 1, j + r + p - 1
        if 0 <= a < H and 0 <= b < W:
            z[:, i, j, q] += w[p, r] * x[:, a, b]
            at.append((i, j, q, p, r, a, b))
    t = np.tanh(z)
    dz = dy[..., None] * v * (1 - t ** 2)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for i, j, q, p, r, a, b in at:
        dx[:, a, b] += w[p, r] * dz[:, i, j, q]
        dw[p, r] += x[:, a, b] @ dz[:, i, j, q]
    return dict(y=t @ v, dx=dx, dw=dw, dv=np.einsum("nij,nijq->q", dy, t))


def test_chained_and_nested_window_offsets_in_both_backends():
    """Bounds in a chain (a review found the C's loops placed p, whose bounds read q,
    outside q once q had moved inside r: 'q' undeclared), and two offsets of a read inside
    tanh, a third outside it (the NumPy backend offset both bounded indices at once and
    left one reading the other: KeyError)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 7, 6))
    cases = [(CHAIN, dict(w=rng.normal(size=(2, 3, 2))), _chain_loops),
             (NESTED, dict(w=rng.normal(size=(2, 2)), v=rng.normal(size=3)), _nested_loops)]
    for text, params, loops in cases:
        layer = parse_spec(text)
        k0 = codegen.load(layer)
        dy = rng.normal(size=k0.forward(x=x, **params)["y"].shape)
        want = loops(x, *params.values(), dy)
        for backend in ("numpy", "c"):
            k = codegen.load(layer, backend=backend)
            got = {**k.forward(x=x, **params), **k.backward(x=x, dy=dy, **params)}
            for name, value in want.items():
                assert np.abs(got[name] - value).max() <= 1e-12 * np.abs(value).max(), \
                    (layer.name, backend, name)


MAX_OF_A_PAIR = """layer max_of_a_pair  a maximum over two offsets summed in one subscript
const A = 2, B = 3
dims N, H, KP = A, KQ = B
dims Hout = H - KP - KQ + 2
input x[N, H]
output y[N, Hout]
y[n, i] = max(x[n, i + p + q], p in KP, q in KQ)
"""


def test_a_maximum_whose_offsets_bounds_read_each_other():
    """NumPy: y and dx (to the first maximal (p, q) in rank order) against loops.  C: no
    loop order scans that window in rank order with each bound defined before its loop, so
    the backend says so, naming the bounds, instead of emitting C that does not compile."""
    layer = parse_spec(MAX_OF_A_PAIR)
    rng = np.random.default_rng(12)
    x = np.round(rng.normal(size=(2, 9)), 1)          # ties: the first in rank order wins
    x[0, 3:6] = 2.0
    dy = rng.normal(size=(2, 6))
    y, dx = np.zeros((2, 6)), np.zeros_like(x)
    for n, i in itertools.product(range(2), range(6)):
        window = [(x[n, i + p + q], p, q) for p in range(2) for q in range(3)]
        best = max(v for v, _, _ in window)
        p, q = next((p, q) for v, p, q in window if v == best)
        y[n, i] = best
        dx[n, i + p + q] += dy[n, i]
    k = codegen.load(layer)
    assert np.array_equal(k.forward(x=x)["y"], y)
    assert np.abs(k.backward(x=x, dy=dy)["dx"] - dx).max() <= 1e-12
    with pytest.raises(ValueError, match=r"cannot yet scan a maximum over window offsets "
                                         r"whose bounds read a later offset \(p from"):
        codegen.load(layer, backend="c")


ALIAS = """layer alias  an output size defined as another dimension
dims N, H, K
dims Hout = H
input x[N, H]
outside x = 0
param w[K]
output y[N, Hout]
y[n, i] = w[k] * x[n, i + k - 1]
"""


def test_a_dimension_defined_as_another_has_its_size():
    """dims Hout = H: substituting H's size into a bare symbol gave a Python int, which
    the size inference took for a SymPy number (AttributeError in the symbolic evaluator
    and in `backprop latex`)."""
    from derive.evaluate import evaluate
    layer = parse_spec(ALIAS)
    assert layer.dim_sizes({"N": 2, "H": 5, "K": 3})["Hout"] == 5
    v = evaluate(derive(layer), dict(x=np.ones((2, 5)), w=np.ones(3), dy=np.ones((2, 5))))
    np.testing.assert_array_equal(v["y"], [[2, 3, 3, 3, 2]] * 2)
    np.testing.assert_array_equal(v["dx"], [[2, 3, 3, 3, 2]] * 2)


TABLE_BESIDE_SHIFT = """layer table_beside_shift  a label read beside a shifted one
dims N, V, H, KP
dims Hout = H // 2
input ids[N, KP] in V
input x[V, H]
outside x = 0
param w[KP]
output y[N, Hout]
y[n, i] = w[p] * x[ids[n, p], 2*i + p - 1]
"""


def test_a_label_read_beside_a_shifted_subscript_is_zero_outside():
    """x[ids[n, p], 2*i + p - 1] at i = p = 0 reads column -1: 0 (outside x = 0).  The
    NumPy backend indexed x with it directly, and -1 wrapped to the last column (y and dw
    off by 0.7 where a review tried it); C and the symbolic oracle were right."""
    layer = parse_spec(TABLE_BESIDE_SHIFT)
    rng = np.random.default_rng(13)
    ids = rng.integers(0, 5, size=(3, 3))
    x, w, dy = rng.normal(size=(5, 8)), rng.normal(size=3), rng.normal(size=(3, 4))
    y, dx, dw = np.zeros((3, 4)), np.zeros_like(x), np.zeros_like(w)
    for n, i, p in itertools.product(range(3), range(4), range(3)):
        if 0 <= 2 * i + p - 1 < 8:
            y[n, i] += w[p] * x[ids[n, p], 2 * i + p - 1]
            dx[ids[n, p], 2 * i + p - 1] += w[p] * dy[n, i]
            dw[p] += x[ids[n, p], 2 * i + p - 1] * dy[n, i]
    for backend in ("numpy", "c"):
        k = codegen.load(layer, backend=backend)
        got = {**k.forward(x=x, ids=ids, w=w), **k.backward(x=x, ids=ids, w=w, dy=dy)}
        for name, value in (("y", y), ("dx", dx), ("dw", dw)):
            assert np.abs(got[name] - value).max() <= 1e-12, (backend, name)
