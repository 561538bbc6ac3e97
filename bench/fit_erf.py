"""Where bp_erf_f32's coefficients (templates/c_vector_math.c.j2) come from.

    python -m bench.fit_erf

Weighted least squares on 4000 Chebyshev nodes against mpmath (40 digits), in float64,
then rounded to float: for |x| < 0.921875, erf(x) = x + x r(x^2), r of degree 5, weighted
for relative error; for 0.921875 <= t <= 4, log(erfc(t)) = Q(t) of degree 8, weighted by
erfc(t) / ulp(erf(t)) (an error e in Q moves erf by erfc e).  Prints each fit's largest
error in ulp of erf on a fine grid (evaluated in float64: the float evaluation adds its own,
which bench/exhaustive_math.py measures) and the coefficients, highest degree first, as the
template's Horner chains take them."""
from __future__ import annotations

import numpy as np

SPLIT, TOP = 0.921875, 4.0


def _nodes(a, b, n=4000):
    k = np.arange(n)
    return (a + b) / 2 + (b - a) / 2 * np.cos((2 * k + 1) * np.pi / (2 * n))


def _fit(x, y, degree, weight):
    basis = np.vander(x, degree + 1, increasing=True)
    return np.linalg.lstsq(basis * weight[:, None], y * weight, rcond=None)[0].astype(np.float32)


def fits():
    import mpmath as mp

    mp.mp.dps = 40
    erf = np.vectorize(lambda v: float(mp.erf(v)))
    x = _nodes(1e-6, SPLIT)
    r = erf(x) / x - 1
    small = _fit(x * x, r, 5, 1 / (1 + r))
    t = _nodes(SPLIT, TOP)
    erfc = np.vectorize(lambda v: float(mp.erfc(v)))(t)
    large = _fit(t, np.log(erfc), 8, erfc / np.spacing((1 - erfc).astype(np.float32)))
    grid_small, grid_large = np.linspace(1e-6, SPLIT, 20001), np.linspace(SPLIT, TOP, 20001)
    ulp = lambda want: np.spacing(want.astype(np.float32)).astype(np.float64)
    got = grid_small + grid_small * np.polyval(small[::-1].astype(np.float64), grid_small ** 2)
    err_small = np.max(np.abs(got - erf(grid_small)) / ulp(erf(grid_small)))
    got = 1 - np.exp(np.polyval(large[::-1].astype(np.float64), grid_large))
    err_large = np.max(np.abs(got - erf(grid_large)) / ulp(erf(grid_large)))
    return (small, err_small), (large, err_large)


def main() -> int:
    for name, (coefficients, err) in zip(("r(s), |x| < 0.921875", "Q(t), t in [0.921875, 4]"),
                                         fits()):
        print(f"{name}: {err:.3f} ulp; " + ", ".join(f"{c:.9e}" for c in coefficients[::-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
