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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codegen
from derive import parse_spec

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
