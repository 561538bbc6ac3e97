"""Where bp_log1p_unit_f32's coefficients (templates/c_vector_math.c.j2) come from.

    python -m bench.fit_log1p

log1p(e) for e in [0, 1] (softplus' log1p(exp(-|x|))) as e + e^2 Q(e), Q of degree 7:
weighted least squares on 4000 Chebyshev nodes in float64 (NumPy's log1p is exact to
double, far below a float ulp), weighted by e^2 / ulp(log1p(e)) so the error is fitted in
ulp of the result, then rounded to float.  No division, where the former 2 atanh(e / (2 + e))
series divided once a vector.  Prints the fit's largest error in ulp on a fine grid
(evaluated in float64: the float evaluation adds its own, which bench/exhaustive_math.py
measures) and the coefficients, highest degree first, as the template's Horner chain takes
them."""
from __future__ import annotations

import numpy as np

DEGREE = 7


def _nodes(a, b, n=4000):
    k = np.arange(n)
    return (a + b) / 2 + (b - a) / 2 * np.cos((2 * k + 1) * np.pi / (2 * n))


def fit():
    """(coefficients of Q lowest degree first, as float32; largest error in ulp)."""
    e = _nodes(1e-6, 1.0)
    q = (np.log1p(e) - e) / e ** 2
    weight = e ** 2 / np.spacing(np.log1p(e).astype(np.float32)).astype(np.float64)
    basis = np.vander(e, DEGREE + 1, increasing=True)
    c = np.linalg.lstsq(basis * weight[:, None], q * weight, rcond=None)[0].astype(np.float32)
    grid = np.linspace(1e-6, 1.0, 200001)
    want = np.log1p(grid)
    got = grid + grid ** 2 * np.polyval(c[::-1].astype(np.float64), grid)
    return c, float(np.max(np.abs(got - want) / np.spacing(want.astype(np.float32))))


def main() -> int:
    coefficients, err = fit()
    print(f"Q(e), e in [0, 1]: {err:.3f} ulp; " +
          ", ".join(f"{c:.9e}" for c in coefficients[::-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
