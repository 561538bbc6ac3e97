"""The error of sin, cos and erf as the generated C kernels compute them, float and double:
through a kernel y = f(z) compiled with the toolkit's flags (so what is measured is the
vector code the kernels run: libmvec's sin/cos, the toolkit's own float erf, the C
library's double erf), against references a precision level above.

    python -m bench.library_math [--stride S] [--doubles N] [NAME ...]

float: every S-th of the 2^32 bit patterns (--stride 1, the default: all of them, a few
minutes per function), against glibc's double functions (within 1 ulp of double, so exact
to a float ulp).  double: N doubles (default 2^22) spread over every exponent that matters
(|z| from 1e-300 to 1e300, both signs, uniform in the bit pattern), against sinl/cosl
(x86's 80-bit long double) and, for erf, mpmath at 40 digits (math.erf at zeros and
infinities, whose signs mpmath drops).  Errors are in units of the result's own ulp;
NaN/Inf/signed-zero mismatches against NumPy are counted apart.  The test suite runs a
sample (tests/test_library_math.py)."""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import numpy as np

FUNCTIONS = ("sin", "cos", "erf")
DTYPES = ("float32", "float64")


@dataclass
class Result:
    max_ulp: float = 0.0
    worst: float = float("nan")
    specials: int = 0
    count: int = 0


def kernel(name: str, dtype: str):
    """The generated C kernel of y = name(z), element by element."""
    import codegen
    from derive import parse_spec

    spec = (f"layer {name}_of  {name}, alone\ndims N\ninput z[N]\noutput y[N]\n\n"
            f"y[n] = {name}(z[n])\n")
    k = codegen.load(parse_spec(spec), backend="c", dtype=dtype)
    return lambda z: k.forward(z=z, out={"y": np.empty_like(z)})["y"]


def reference(name: str, z: np.ndarray) -> np.ndarray:
    """name(z) a precision level above z's dtype (float64 for float32, long double or
    mpmath for float64), as float64 / long double."""
    if z.dtype == np.float32:
        wide = z.astype(np.float64)
        return _erf(wide) if name == "erf" else getattr(np, name)(wide)
    if name == "erf":
        import mpmath
        with mpmath.workdps(40):       # kept to 25 digits: a long double holds 19
            return np.array([np.longdouble(mpmath.nstr(mpmath.erf(mpmath.mpf(float(v))), 25))
                             if np.isfinite(v) and v != 0 else np.longdouble(math.erf(v))
                             if not np.isnan(v) else np.nan for v in z], dtype=np.longdouble)
    return getattr(np, name)(z.astype(np.longdouble))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


def compare(got: np.ndarray, want: np.ndarray, z: np.ndarray, r: Result) -> Result:
    """Fold one chunk into r: ulp errors of finite nonzero results, special mismatches."""
    rounded = want.astype(got.dtype)
    nan = np.isnan(want) | np.isnan(got)
    r.specials += int(np.count_nonzero(np.isnan(want) != np.isnan(got)))
    exact = ~nan & (np.isinf(rounded) | np.isinf(got) | (rounded == 0))
    r.specials += int(np.count_nonzero(exact & ((got != rounded) |
                                                (np.signbit(got) != np.signbit(rounded)))))
    fin = ~nan & ~exact
    if fin.any():
        ulp = np.spacing(np.abs(rounded[fin])).astype(np.longdouble)
        err = (np.abs(got[fin].astype(np.longdouble) - want[fin]) / ulp).astype(np.float64)
        k = int(err.argmax())
        if err[k] > r.max_ulp:
            r.max_ulp, r.worst = float(err[k]), float(z[fin][k])
    r.count += got.size
    return r


def floats(stride: int, chunk: int = 1 << 22):
    """Every stride-th float32 bit pattern, in chunks."""
    for start in range(0, 1 << 32, stride * chunk):
        bits = np.arange(start, min(start + stride * chunk, 1 << 32), stride, dtype=np.uint64)
        yield bits.astype(np.uint32).view(np.float32)


def doubles(count: int, seed: int = 0) -> np.ndarray:
    """count doubles, uniform in the bit pattern between 1e-300 and 1e300 (every binade
    equally), both signs, plus the special values."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array([1e-300, 1e300]).view(np.uint64)
    bits = rng.integers(int(lo), int(hi), size=count, dtype=np.uint64)
    z = bits.view(np.float64) * rng.choice([-1.0, 1.0], size=count)
    specials = [0.0, -0.0, 5e-324, -5e-324, 1.0, -1.0, np.pi, 1e-8, 6.0, -6.0, 1e22,
                np.inf, -np.inf, np.nan]
    return np.concatenate([np.array(specials), z])


def check(name: str, dtype: str, stride: int = 1, count: int = 1 << 22) -> Result:
    f, r = kernel(name, dtype), Result()
    chunks = floats(stride) if dtype == "float32" else np.array_split(doubles(count),
                                                                       max(1, count >> 16))
    for z in chunks:
        with np.errstate(all="ignore"):
            compare(f(np.ascontiguousarray(z)), reference(name, z), z, r)
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(FUNCTIONS)}")
    p.add_argument("--stride", type=int, default=1, help="check every S-th float")
    p.add_argument("--doubles", type=int, default=1 << 22, help="how many doubles")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in FUNCTIONS]
    if unknown:
        p.error(f"no function {', '.join(unknown)}; choose from {', '.join(FUNCTIONS)}")
    for n in a.names or FUNCTIONS:
        for dtype in DTYPES:
            r = check(n, dtype, a.stride, a.doubles)
            print(f"{n:4} {dtype}: max {r.max_ulp:.3f} ulp (at {r.worst!r}) over {r.count} "
                  f"inputs, special-value mismatches: {r.specials}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
