"""Error bounds of sin, cos and erf as the generated C kernels compute them, float and
double (bench/library_math.py): a sample through the kernels, within the bounds that the
full run measured, and NumPy's special values (NaN, Inf, signed zeros)."""
import numpy as np
import pytest

from bench import library_math

from .oracles import require_oracle

# The largest error in ulp of the result (python -m bench.library_math --stride 257
# --doubles 1048576: every 257th float, 2^20 doubles over every binade; docs/kernels.md),
# rounded up to the next half ulp.  float erf is the toolkit's own: 2 ulp over all floats
# (tests/test_vector_math.py); sin and cos are libmvec's, double erf the C library's.
# libmvec picks its variant by the CPU: float sin and cos measured 1.77 and 1.92 ulp in
# the AVX-512 one (a Xeon), 2.03 and 2.33 in the AVX2 one (an EPYC, Zen 1).
BOUNDS = {("sin", "float32"): 2.5, ("cos", "float32"): 2.5, ("erf", "float32"): 2.0,
          ("sin", "float64"): 3.0, ("cos", "float64"): 3.5, ("erf", "float64"): 2.5}


@pytest.mark.parametrize("name, dtype", sorted(BOUNDS))
def test_sampled_inputs_within_the_measured_bounds(name, dtype):
    """Every 4099th float bit pattern (a million floats: every exponent, both signs,
    subnormals, Inf and NaN) or 2^16 doubles with the special values."""
    require_oracle("cc")
    r = library_math.check(name, dtype, stride=4099, count=1 << 16)
    assert r.count > 60000
    assert r.specials == 0, (name, dtype)
    assert r.max_ulp <= BOUNDS[name, dtype], (name, dtype, r.max_ulp, r.worst)


def test_the_comparison_catches_errors_and_wrong_specials():
    """A result off by 3 ulp, a NaN where the reference has none and a zero of the wrong
    sign are all reported."""
    z = np.array([0.5, 1.0, -0.0, 2.0], dtype=np.float32)
    want = np.sin(z.astype(np.float64))
    got = want.astype(np.float32)
    got[0] = np.nextafter(np.nextafter(np.nextafter(got[0], 1), 1), 1)
    got[1], got[2] = np.nan, 0.0
    r = library_math.compare(got, want, z, library_math.Result())
    assert 2.5 < r.max_ulp < 3.5 and r.worst == 0.5 and r.specials == 2
