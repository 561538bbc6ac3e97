"""Every float through the toolkit's own float functions (templates/c_vector_math.c.j2),
against glibc's double functions (within 1 ulp of double, so exact to a float ulp).

    python -m bench.exhaustive_math [--stride S] [NAME ...]

For each function: the largest error in units of the float result's own ulp (subnormal
results too), where it happens, and how many inputs break NumPy's special values (a NaN
where NumPy has none or the reverse, a wrong Inf, a zero of the wrong sign).  The
functions are compiled with the toolkit's flags and called from an `omp simd` loop, so
what is checked is the vectorized code the kernels run.  --stride 1 (the default) is all
2^32 bit patterns: about a minute per function on one core.  The test
suite checks a sampled subset through the generated kernels (tests/test_vector_math.py)."""
from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

from codegen import build
from templates import render

FUNCTIONS = ("exp", "exp_nonpos", "log", "log1p", "log1p_unit", "tanh", "erf")
# What each is checked against (the double function of its name, unless given here) and on
# which floats: each bit pattern's float x, or FOLD(x) for a function made for a range
# (exp_nonpos: x <= 43, so a float above it is checked as -x: every negative float twice;
# log1p_unit: [0, 1], |x| or 1 / |x|, NaN as it is).
REFERENCE = {"exp_nonpos": "exp", "log1p_unit": "log1p"}
FOLD = {"exp_nonpos": "(x > 43.0F ? -x : x)",
        "log1p_unit": "(fabsf(x) <= 1 || x != x ? fabsf(x) : 1 / fabsf(x))"}

HARNESS = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
%(functions)s

typedef struct { double max_ulp; float worst; int64_t specials; } result_t;

static double ulp_of(float f)
{
    const float a = fabsf(f);
    return a == FLT_MAX ? ldexp(1.0, 104) : (double)nextafterf(a, INFINITY) - a;
}

static void check(float (*fn)(float), double (*ref)(double), float *x, float *got, long n,
                  result_t *r)
{
    (void)fn;
    for (long i = 0; i < n; ++i) {
        const double want = ref((double)x[i]);
        const float rounded = (float)want;
        const float g = got[i];
        if (isnan(want) || isnan(g)) {
            r->specials += isnan(want) != isnan(g);
        } else if (isinf(rounded) || isinf(g)) {
            r->specials += g != rounded;
        } else if (rounded == 0 && g == 0) {
            r->specials += !signbit(g) != !signbit(want);   /* signbit: any nonzero */
        } else {
            const double e = fabs((double)g - want) / ulp_of(rounded);
            if (e > r->max_ulp) { r->max_ulp = e; r->worst = x[i]; }
        }
    }
}

#define CHUNK 65536
#define RUN(NAME, REF, FOLD) \
void run_##NAME(uint64_t stride, result_t *r) \
{ \
    static float x[CHUNK], got[CHUNK]; \
    uint64_t bits = 0; \
    while (bits < 0x100000000ULL) { \
        long n = 0; \
        for (; n < CHUNK && bits < 0x100000000ULL; ++n, bits += stride) { \
            const uint32_t b = (uint32_t)bits; \
            float x0; \
            memcpy(&x0, &b, sizeof b); \
            x[n] = FOLD(x0); \
        } \
        _Pragma("omp simd") \
        for (long i = 0; i < n; ++i) got[i] = bp_##NAME##_f32(x[i]); \
        check(bp_##NAME##_f32, REF, x, got, n, r); \
    } \
}
%(runs)s
"""


class Result(ctypes.Structure):
    _fields_ = [("max_ulp", ctypes.c_double), ("worst", ctypes.c_float),
                ("specials", ctypes.c_int64)]


def compile_checker(names, folder: Path) -> ctypes.CDLL:
    functions = render("c_vector_math.c.j2", helpers=set(FUNCTIONS))
    source = HARNESS % dict(functions=functions,
                            runs="\n".join(f"#define FOLD_{n}(x) {FOLD.get(n, '(x)')}\n"
                                           f"RUN({n}, {REFERENCE.get(n, n)}, FOLD_{n})"
                                           for n in names))
    src, lib = folder / "exhaustive.c", folder / "exhaustive.so"
    src.write_text("#include <float.h>\n" + source)
    cmd = [build.compiler()[0], *build.BASE_FLAGS, *build.opt_flags(), "-fopenmp-simd",
           "-shared", str(src), "-o", str(lib), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"the checker does not compile:\n{r.stderr}")
    return ctypes.CDLL(str(lib))


def results(names=FUNCTIONS, stride: int = 1):
    """(name, Result) of each function, as each is done."""
    with tempfile.TemporaryDirectory() as tmp:
        lib = compile_checker(names, Path(tmp))
        for n in names:
            r = Result()
            getattr(lib, f"run_{n}")(ctypes.c_uint64(stride), ctypes.byref(r))
            yield n, r


def check(names=FUNCTIONS, stride: int = 1) -> dict[str, Result]:
    return dict(results(names, stride))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(FUNCTIONS)}")
    p.add_argument("--stride", type=int, default=1, help="check every S-th bit pattern")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in FUNCTIONS]
    if unknown:
        p.error(f"no function {', '.join(unknown)}; choose from {', '.join(FUNCTIONS)}")
    a.names = a.names or list(FUNCTIONS)
    for n, r in results(a.names, a.stride):
        print(f"{n:6} max {r.max_ulp:.3f} ulp (at {r.worst!r}), "
              f"special-value mismatches: {r.specials}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
