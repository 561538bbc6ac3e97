"""The toolkit's own float functions (templates/c_vector_math.c.j2): their error bounds on a
sample of every float, their special values as NumPy's, and the name table through which
the C kernels call them (codegen/c_printer.py, OWN_FUNCTIONS)."""
import re

import numpy as np
import pytest
import sympy as sp

import codegen
from bench import exhaustive_math
from codegen.c_backend import c_sources
from codegen.c_printer import OWN_FUNCTIONS, own_function
from codegen.loader import resolve
from codegen.plan import plan
from derive import derive, parse_spec

from .oracles import require_oracle

# The largest error over all 2^32 floats (python -m bench.exhaustive_math), in ulp of the
# float result, rounded up: what the README promises and the sample must not exceed.
# exp_nonpos over the floats <= 43 only, log1p_unit over [0, 1] (bench/exhaustive_math.py,
# FOLD).
BOUNDS = {"exp": 1.02, "exp_nonpos": 1.02, "log": 1.0, "log1p": 2.0, "log1p_unit": 2.0,
          "tanh": 2.0, "erf": 2.0}


def test_sampled_floats_within_the_exhaustive_bounds(tmp_path):
    """Every 4099th bit pattern (a prime stride: 1,047,810 floats, every exponent and both
    signs, subnormals, Inf and NaN patterns), through the functions compiled with the
    toolkit's flags and called from an omp simd loop, against glibc's double functions."""
    require_oracle("cc")
    results = exhaustive_math.check(stride=4099)
    assert set(results) == set(BOUNDS)
    for name, r in results.items():
        assert r.specials == 0, name
        assert r.max_ulp <= BOUNDS[name], (name, r.max_ulp, r.worst)


def test_the_checker_catches_a_wrong_function(monkeypatch):
    """A function off by a few ulp, or with a wrong special value, is reported."""
    require_oracle("cc")
    source = exhaustive_math.render("c_vector_math.c.j2", helpers=set(exhaustive_math.FUNCTIONS))
    broken = source.replace("/ fmaf(s, q, s + 1), x);", "/ fmaf(s, q, s + 1) * 1.000001F, x);")
    broken = broken.replace("const float special = x == 0 ? -HUGE_VALF",
                            "const float special = x == 0 ? HUGE_VALF")
    assert broken.count("1.000001F") == 1 and "? HUGE_VALF" in broken
    # exp_nonpos with its subnormal results flushed to 0
    scaled = "fmaf(q, s, s) * 5.42101086242752217e-20F"
    assert broken.count(scaled) == 1
    broken = broken.replace(scaled, f"({scaled} < 1.17549435e-38F ? 0 : {scaled})")
    monkeypatch.setattr(exhaustive_math, "render", lambda *a, **k: broken)
    results = exhaustive_math.check(("tanh", "log", "exp_nonpos"), stride=65537)
    assert results["tanh"].max_ulp > 4 and results["log"].specials > 0
    assert results["exp_nonpos"].max_ulp > 4


SPECIAL = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1.1754942e-38, 1e-10, -1e-10,
                    0.5, -0.5, 0.7853981, 0.7853982, 1.0, -1.0, 1.5707964, 3.1415927, 3.9, -3.9,
                    4.0, 88.0, -88.0, 89.0, -104.0, 16777216.0, 1e30, -1e30, 3.4028235e38,
                    -3.4028235e38, np.inf, -np.inf, np.nan], dtype=np.float32)

LAYERS = {
    "tanh": ("y[n, i] = tanh(z[n, i])", np.tanh),
    "log": ("y[n, i] = log(z[n, i])", np.log),
    "log1p": ("y[n, i] = log(1 + z[n, i])", np.log1p),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_special_values_through_a_kernel_as_numpy(name):
    """Through a generated kernel (which calls bp_NAME_f32): NaN where NumPy has NaN, the
    same Infs, zeros of the same sign, subnormal inputs and results within the bound."""
    line, reference = LAYERS[name]
    spec = f"layer {name}_of  {name}, alone\ndims N, I\ninput z[N, I]\noutput y[N, I]\n\n{line}\n"
    layer = parse_spec(spec)
    source = c_sources(plan(derive(layer)))[f"{name}_of.c"]
    assert f"= bp_{name}_f32(" in source
    k = codegen.load(layer, backend="c", dtype="float32")
    z = SPECIAL.reshape(1, -1)
    got = k.forward(z=z)["y"][0]
    with np.errstate(all="ignore"):
        want = reference(SPECIAL.astype(np.float64))
    rounded = want.astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want)), (SPECIAL, got)
    exact = np.isinf(rounded) | (rounded == 0)
    assert np.array_equal(got[exact], rounded[exact])
    assert np.array_equal(np.signbit(got[exact]), np.signbit(rounded[exact]))
    fin = ~exact & ~np.isnan(want)
    err = np.abs(got[fin] - want[fin]) / np.spacing(np.abs(rounded[fin]))
    assert err.max() <= BOUNDS[name], (err.max(), SPECIAL[fin][err.argmax()])


def _code_of(function: str) -> list[str]:
    """The statements of one own float function, comments left out."""
    source = exhaustive_math.render("c_vector_math.c.j2", helpers=set(exhaustive_math.FUNCTIONS))
    body = source[source.index(f"static inline float {function}(float "):]
    body = re.sub(r"/\*.*?\*/", "", body[:body.index("\n}\n")], flags=re.S)
    return [line.strip() for line in body.splitlines()[2:] if line.strip()]


def test_tanh_is_one_form_one_division():
    """-m / (2 + m) over the whole range, numerator and divisor each one fma from (2^k, q):
    one division and one select (the clamp) a vector, no second form chosen past 0.55."""
    code = _code_of("bp_tanh_f32")
    assert sum(line.count(" / ") for line in code) == 1, code
    assert sum(line.count(" ? ") for line in code) == 1, code
    assert code[-1] == "return copysignf(-fmaf(s, q, s - 1) / fmaf(s, q, s + 1), x);"


def test_own_functions_by_name_and_dtype():
    """The table decides: float tanh, log, log1p, erf, exp are the toolkit's; double ones
    stay the C library's (libmvec), and so do float sin and cos (libmvec's vector sinf is
    5x faster than an exact reduction); a function outside the table prints as libm's."""
    z = sp.Symbol("z")
    for name in ("exp", "log", "tanh", "erf"):
        f = getattr(sp, name)(z)
        assert own_function(f, "float32") == f"bp_{name}_f32"
        assert own_function(f, "float64") is None
    for f in (sp.sin(z), sp.cos(z), sp.atan(z)):
        assert own_function(f, "float32") is None
    assert OWN_FUNCTIONS["float64"]["Heaviside"] == "step"


def test_erf_coefficients_are_the_documented_fit():
    """bp_erf_f32's coefficients are what bench/fit_erf.py computes (so they can be
    rederived), and each fit alone is well inside the bound."""
    from bench import fit_erf
    template = exhaustive_math.render("c_vector_math.c.j2", helpers={"erf"})
    for coefficients, err in fit_erf.fits():
        assert err < 0.5
        for c in coefficients:
            assert f"{c:.9e}F" in template, c


def test_log1p_unit_coefficients_are_the_documented_fit():
    """bp_log1p_unit_f32's coefficients are what bench/fit_log1p.py computes, the fit alone
    well inside the bound, and the function divides nowhere."""
    from bench import fit_log1p
    coefficients, err = fit_log1p.fit()
    assert err < 1
    template = exhaustive_math.render("c_vector_math.c.j2", helpers={"log1p_unit"})
    for c in coefficients:
        assert f"{c:.9e}F" in template, c
    assert not any(" / " in line for line in _code_of("bp_log1p_unit_f32"))


def test_an_exp_below_its_row_maximum_is_the_range_limited_one():
    """softmax's exp(z_i - m) and its sum's exp(z_k - m), m the row maximum, call
    bp_exp_nonpos_f32 (codegen/exp_ranges.py: the plan's own Maximum statement says the
    argument is <= 0); an exp the plan knows nothing of stays bp_exp_f32; double's are
    the library's exp."""
    softmax = c_sources(plan(derive(resolve("softmax"))))["softmax.c"]
    assert "= bp_exp_nonpos_f32(bp_" in softmax and "bp_exp_f32(" not in softmax
    assert "= exp(bp_" in softmax                                # the double kernels
    spec = "layer plain_exp  exp, alone\ndims N, I\ninput z[N, I]\noutput y[N, I]\n\n" \
        "y[n, i] = exp(z[n, i])\n"
    plain = c_sources(plan(derive(parse_spec(spec))))["plain_exp.c"]
    assert "= bp_exp_f32(z[" in plain and "bp_exp_nonpos_f32" not in plain


def test_softmax_rows_that_underflow_as_numpy():
    """Rows whose exps leave the normal range (subnormal, rounded to 0), and rows holding
    -Inf, Inf or NaN, through the float softmax kernel against NumPy's float64 softmax
    rounded: zeros and NaNs where NumPy has them, the rest within 2 ulp (the exp's
    1.02 and the product by 1/s)."""
    rows = np.array([[0.0, -80.0, -87.5, -95.0, -100.0, -103.9, -104.5, -200.0],
                     [30.0, -57.5, -65.0, -73.3, -74.0, -3e38, -np.inf, 29.5],
                     [1.0, 2.0, np.nan, 3.0, 4.0, 5.0, 6.0, 7.0],
                     [1.0, np.inf, 2.0, 3.0, 4.0, 5.0, -np.inf, 7.0],
                     [-np.inf] * 8], dtype=np.float32)
    got = codegen.load("softmax", backend="c", dtype="float32").forward(z=rows)["y"]
    z = rows.astype(np.float64)
    with np.errstate(all="ignore"):
        e = np.exp(z - z.max(1, keepdims=True))
        want = e / e.sum(1, keepdims=True)
    rounded = want.astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want)), got
    assert np.array_equal(got[rounded == 0], rounded[rounded == 0])
    fin = ~np.isnan(want) & (rounded != 0)
    assert np.any(np.abs(rounded[fin]) < np.finfo(np.float32).tiny)   # subnormals checked
    err = np.abs(got[fin] - want[fin]) / np.spacing(np.abs(rounded[fin]))
    assert err.max() <= 2, (err.max(), got[fin][err.argmax()], want[fin][err.argmax()])
