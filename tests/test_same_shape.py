"""Work done once per shape (derive/same_shape.py, codegen/view_shapes.py): a deep
network's layers are one structure under other names."""
import sympy as sp

import codegen.view_shapes as view_shapes
import derive.same_shape as same_shape
from derive import derive, parse_spec
from derive.same_shape import by_shape, same_shapes, shape

from .test_network import MLP3

N = sp.Symbol("N", integer=True, positive=True)


def _dense(k: int):
    """fc_k's z[n, i] = sum_j W_k[i, j] a_{k-1}[n, j] + b_k[i], with its own widths."""
    d_in, d_out = (sp.Symbol(f"D{k - 1}", integer=True, positive=True),
                   sp.Symbol(f"D{k}", integer=True, positive=True))
    n, i, j = sp.Idx("n", N), sp.Idx(f"d{k}", d_out), sp.Idx(f"d{k - 1}", d_in)
    W, a, b = (sp.IndexedBase(f"W{k}"), sp.IndexedBase(f"a{k - 1}"),
               sp.IndexedBase(f"b{k}"))
    return sp.Sum(W[i, j] * a[n, j], (j, 0, d_in - 1)) + b[i], W[i, j]


def test_a_same_shaped_call_is_the_first_result_renamed():
    calls = []

    @by_shape
    def d(expr, wrt):
        calls.append(expr)
        return sp.diff(expr, wrt)

    with same_shapes():
        first = d(*_dense(2))
        again = d(*_dense(7))
    assert len(calls) == 1
    assert again == sp.diff(*_dense(7)) and again != first
    assert d(*_dense(7)) == again and len(calls) == 2      # outside: computed


def test_a_shape_covers_assumptions_and_leaves():
    x, y = sp.Symbol("x"), sp.Symbol("y")
    assert shape((x + 1,))[0] == shape((y + 1,))[0]
    assert shape((x + 1,))[0] != shape((y + 2,))[0]
    assert shape((x + 1,))[0] != shape((sp.Symbol("x", positive=True) + 1,))[0]
    assert shape((x * y,))[0] != shape((x * x,))[0]        # two names are not one


def test_the_cache_lives_inside_one_scope():
    calls = []
    f = by_shape(lambda e: calls.append(e) or e)
    with same_shapes():
        f(sp.Symbol("x"))
    with same_shapes():
        f(sp.Symbol("x"))
    assert len(calls) == 2


def test_an_mlp_derives_and_prints_the_same_without_the_cache(monkeypatch):
    """The shared work changes nothing: a three-layer MLP's derivation and C sources
    equal those computed layer by layer, and the C views were really renamed."""
    from codegen.c_backend import c_sources
    from codegen.plan import plan

    renamed = []
    real = view_shapes._renamed

    def counting(v, names, inside):
        out = real(v, names, inside)
        renamed.append(out is not None)
        return out

    monkeypatch.setattr(view_shapes, "_renamed", counting)
    d = derive(parse_spec(MLP3))
    shared = ([(str(s.lhs), str(s.expr)) for s in d.steps], c_sources(plan(d)))
    assert sum(renamed) >= 4
    monkeypatch.setattr(same_shape, "cache_for", lambda owner: None)
    monkeypatch.setattr(view_shapes, "cache_for", lambda owner: None)
    d = derive(parse_spec(MLP3))
    assert ([(str(s.lhs), str(s.expr)) for s in d.steps], c_sources(plan(d))) == shared


def test_a_name_inside_a_longer_identifier_is_not_renamed():
    """A scratch array named after a tensor (_z3_part from z3) would keep the old name:
    such a view is printed again."""
    names = {"z3": "z4", "D3": "D4"}
    pattern = view_shapes._pattern(names)
    assert view_shapes._renamed({"value": "z3[n*D3 + i]", "nest": None}, names, pattern) \
        == {"value": "z4[n*D4 + i]", "nest": None}
    assert view_shapes._renamed({"value": "_z3_part[0]"}, names, pattern) is None
    literals = {"F": "G", "e": "f"}                  # dimensions named like a suffix
    assert view_shapes._renamed({"v": "1.0F*e[0] + 1e-5F"}, literals,
                                view_shapes._pattern(literals)) == {"v": "1.0F*f[0] + 1e-5F"}
    assert view_shapes._renamed({"g": object()}, names, pattern) is None
