"""Two innermost loops over one contiguous stretch run as one loop in the C backend
(codegen/contiguous_rows.py): where every array is read and written as [.., i, j] on its
own last two axes, and nowhere else."""
from __future__ import annotations

import re

import numpy as np
import pytest

import codegen
from codegen.c_backend import c_sources
from codegen.plan import plan

PLANE = """layer plane  Scales each image plane elementwise by g and shifts each channel by s
dims N, C, H, W
input x[N, C, H, W]
param g[H, W], s[C]
output y[N, C, H, W]

y[n, c, i, j] = x[n, c, i, j] * g[i, j] + s[c]
"""

# the mask uses i and j as numbers; t is read transposed: neither walks one stretch
TRIANGLE = """layer triangle  Keeps the lower triangle of each plane and adds a transposed plane
dims N, C, H
input x[N, C, H, H], t[N, C, H, H]
output y[N, C, H, H]

y[n, c, i, j] = where(j > i, 0, x[n, c, i, j]) + t[n, c, j, i]
"""


def _float_c(path) -> str:
    k = codegen.load(str(path))
    (source,) = [t for n, t in c_sources(plan(k.derivation), dtypes=("float32",)).items()
                 if n.endswith(".c")]
    return re.sub(r"/\*.*?\*/", "", source, flags=re.S)


def _spec(tmp_path, text):
    path = tmp_path / f"{text.split()[1]}.bp"
    path.write_text(text)
    return path


def test_planes_walked_as_one_loop(tmp_path):
    code = _float_c(_spec(tmp_path, PLANE))
    # y, dx and ds: one loop over the H x W plane each, the broadcast g read flat
    assert code.count("j = 0; j < H*W; ++j)") == 3
    # dx, large, streams its planes as rows (codegen/streaming.py): the merged row's
    # head, streamed lines and tail
    assert "bp_stream_head(&dx[((n*C + c)*H)*W], sizeof(float), H*W)" in code
    assert "y[((n*C + c)*H)*W + j] = " in code and "g[j]" in code
    # dg sums over n and c outside its rows (in place): its loops stay as they were
    assert "dg[i*W + j] += " in code


def test_index_used_as_a_number_or_transposed_read_keeps_both_loops(tmp_path):
    code = _float_c(_spec(tmp_path, TRIANGLE))
    assert "< H*H; ++" not in code
    assert "bp_select_f32(j > i, " in code and "t[((n*C + c)*H + j)*H + i]" in code


def test_square_plane_extent_prints_as_a_c_product():
    """The flattened extent of a T x T plane (attention's scores) is T*T, not SymPy's T**2."""
    source = c_sources(plan(codegen.load("attention", constants=dict(CAUSAL=1)).derivation))
    code = source["attention.c"]
    assert "**" not in re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    assert "< T*T; ++" in code


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [dict(N=2, C=3, H=5, W=7), dict(N=1, C=1, H=1, W=3),
                                   dict(N=3, C=2, H=4, W=1)])
def test_flattened_plane_equals_numpy(tmp_path, dtype, sizes):
    path = _spec(tmp_path, PLANE)
    rng = np.random.default_rng(sum(sizes.values()))
    N, C, H, W = (sizes[d] for d in "NCHW")
    x, dy = rng.normal(size=(2, N, C, H, W)).astype(dtype)
    g, s = rng.normal(size=(H, W)).astype(dtype), rng.normal(size=C).astype(dtype)
    k = codegen.load(str(path), backend="c", dtype=dtype)
    y = k.forward(x=x, g=g, s=s)["y"]
    grads = k.backward(x=x, g=g, s=s, dy=dy)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, x * g + s[:, None, None], rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["dx"], dy * g, rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["dg"], (dy * x).sum((0, 1)), rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["ds"], dy.sum((0, 2, 3)), rtol=tol, atol=tol)
