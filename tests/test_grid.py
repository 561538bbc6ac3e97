"""The symbolic oracle's arithmetic (derive/grid.py) against values written out by hand:
the semantics the kernels are checked against must themselves be right."""
import numpy as np
import pytest
import sympy as sp

from derive.affine import between, divides
from derive.evaluate import _compute
from derive.piecewise import ArgMaxOver, FirstMax, Iverson, MaxOver, Where

i, j, k = (sp.Idx(n) for n in "ijk")
x, y, z, ids = (sp.IndexedBase(n) for n in ("x", "y", "z", "ids"))
rng = np.random.default_rng(0)
X = rng.normal(size=(4, 5))


def at(expr, dims, sizes, outside=None, **arrays):
    indices = [{"I": i, "J": j}[d] for d in dims]
    return _compute(expr, indices, dims, sizes, arrays, outside)


def test_a_sum_below_its_lower_bound_is_empty_not_negated():
    # sum_{k=i+1}^{J-1} x[i, k]: empty for i >= J - 1 (SymPy's doit() would negate it)
    got = at(sp.Sum(x[i, k], (k, i + 1, 4)), ["I"], dict(I=4), x=X)
    want = [X[r, r + 1:].sum() for r in range(4)]
    np.testing.assert_allclose(got, want)


def test_bounds_that_depend_on_an_outer_index():
    got = at(sp.Sum(x[i, k] * x[j, k], (k, 0, sp.Min(i, j))), ["I", "J"], dict(I=4, J=4),
             x=X)
    want = [[X[a, :min(a, b) + 1] @ X[b, :min(a, b) + 1] for b in range(4)]
            for a in range(4)]
    np.testing.assert_allclose(got, want)


def test_a_read_outside_gives_the_padding_or_is_an_error_unless_a_bracket_guards_it():
    shifted = x[i, j - 1]
    padded = at(shifted, ["I", "J"], dict(I=4, J=5), {"x": (0, [4, 5])}, x=X)
    np.testing.assert_allclose(padded, np.pad(X, ((0, 0), (1, 0)))[:, :5])
    guarded = at(between(j - 1, 0, 4) * shifted, ["I", "J"], dict(I=4, J=5),
                 {"x": (None, [4, 5])}, x=X)
    np.testing.assert_allclose(guarded, padded)
    with pytest.raises(IndexError, match=r"x\[i, j - 1\] reads outside x's shape \(4, 5\), first at i = 0, j = 0"):
        at(shifted, ["I", "J"], dict(I=4, J=5), {"x": (None, [4, 5])}, x=X)


def test_a_fractional_subscript_reads_nothing_where_divides_guards_it():
    # y[(j - 1)/2] where 2 | j - 1: a stride-2 read's adjoint
    Y = rng.normal(size=3)
    got = at(divides(2, j - 1) * y[(j - 1) / 2], ["J"], dict(J=5),
             {"y": (0, [3])}, y=Y)
    np.testing.assert_allclose(got, [0, Y[0], 0, Y[1], 0])
    with pytest.raises(IndexError, match="not whole"):
        at(y[(j - 1) / 2], ["J"], dict(J=5), {"y": (0, [3])}, y=Y)


def test_max_argmax_and_first_max_send_ties_to_the_first_position():
    T = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    kk = sp.Idx("k", (0, 3))
    np.testing.assert_allclose(at(MaxOver(x[i, kk], kk), ["I"], dict(I=2), x=T), [3, 2])
    np.testing.assert_allclose(at(ArgMaxOver(x[i, kk], kk), ["I"], dict(I=2), x=T), [1, 0])
    first = at(FirstMax(x[i, kk], kk, j), ["I", "J"], dict(I=2, J=4), x=T)
    np.testing.assert_allclose(first, [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_subscripts_read_from_a_tensor_gather():
    got = at(x[ids[j], i], ["J", "I"], dict(I=5, J=3), x=X, ids=np.array([3, 0, 3]))
    np.testing.assert_allclose(got, X[[3, 0, 3]])


def test_functions_and_piecewise_element_by_element():
    expr = sp.Piecewise((sp.exp(x[i, j]), x[i, j] < 0),
                        (sp.tanh(x[i, j]) + sp.KroneckerDelta(i, j), True))
    got = at(expr, ["I", "J"], dict(I=4, J=5), x=X)
    want = np.where(X < 0, np.exp(X), np.tanh(X) + np.eye(4, 5))
    np.testing.assert_allclose(got, want)


def test_fractional_index_arithmetic_lands_on_whole_subscripts():
    # sum_p [3 | j - 3p + 2] y[j/3 - p + 2/3], a stride-3 read's adjoint: j/3 - p + 2/3 is
    # whole where the bracket holds, though not in floats (1/3 - 1 + 2/3 = -1.1e-16)
    p = sp.Idx("p")
    Y = rng.normal(size=3)
    expr = sp.Sum(divides(3, j - 3 * p + 2) * y[j / 3 - p + sp.Rational(2, 3)],
                  (p, sp.Max(0, sp.ceiling(j / 3 + sp.Rational(5, 3)) - 3),
                   sp.Min(2, sp.floor(j / 3 + sp.Rational(2, 3)))))
    got = at(expr, ["J"], dict(J=7), {"y": (None, [3])}, y=Y)
    want = [sum(Y[(r + 2) // 3 - q] for q in range(3)
                if (r - 3 * q + 2) % 3 == 0 and 0 <= (r + 2) // 3 - q < 3) for r in range(7)]
    np.testing.assert_allclose(got, want)


def test_a_max_whose_body_does_not_read_its_index():
    # the body has no axis for k: the max over k is the body itself (a review found the
    # free axis reduced in its place)
    kk = sp.Idx("k", (0, 2))
    col = np.array([1.0, 2.0, 0.0])
    T = np.stack([col, col], axis=1)
    np.testing.assert_allclose(at(MaxOver(x[i, 0], kk), ["I"], dict(I=3), x=T), col)
    np.testing.assert_allclose(at(ArgMaxOver(x[i, 0], kk), ["I"], dict(I=3), x=T), 0)


def test_a_branch_not_taken_reads_nothing():
    Y = rng.normal(size=4)
    for expr in (sp.Piecewise((y[i - 1], i >= 1), (0, True)), Where(i >= 1, y[i - 1], 0)):
        got = at(expr, ["I"], dict(I=4), {"y": (None, [4])}, y=Y)
        np.testing.assert_allclose(got, [0, *Y[:3]])


def test_the_error_names_the_read_that_is_outside():
    Y, Z = rng.normal(size=4), rng.normal(size=4)
    with pytest.raises(IndexError, match=r"^z\[i - 1\] reads outside"):
        at(between(i - 1, 0, 3) * y[i - 1] + z[i - 1], ["I"], dict(I=4),
           {"y": (None, [4]), "z": (None, [4])}, y=Y, z=Z)


def test_brackets_that_read_tensors_still_guard():
    # [ids[n] >= 0] E[ids[n], j] with an id of -1: 0 there, not NaN
    got = at(Iverson(ids[j] >= 0) * x[ids[j], i], ["J", "I"], dict(I=5, J=3), x=X,
             ids=np.array([2, -1, 0]))
    np.testing.assert_allclose(got, [X[2], np.zeros(5), X[0]])
    # a stride's adjoint read with no shape given: the fraction guarded by divides
    Y = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(at(divides(2, j) * y[j / 2], ["J"], dict(J=7), y=Y),
                               [1, 0, 2, 0, 3, 0, 4])


def test_values_are_not_rounded_and_index_powers_do_not_wrap():
    got = at(sp.Float(1e-10) * sp.KroneckerDelta(i, 1) + (i + 10) ** 20, ["I"], dict(I=2))
    np.testing.assert_allclose(got, [10.0 ** 20, 1e-10 + 11.0 ** 20], rtol=1e-15)
    with pytest.raises(ZeroDivisionError):
        at(1 / i, ["I"], dict(I=2))
