"""What the generated C asks of the vector width, read in every built-in's generated C:
functions that compute vector math ask for 256-bit vectors where GCC's tuning would pick
128 (AMD Zen 1), and the panel GEMM of the recurrences keeps its accumulators within the
vector registers the machine has."""
import re
from pathlib import Path

GENERATED = Path(__file__).resolve().parent.parent / "generated" / "c"


def _entries(name):
    """{entry function name: the attribute macros before `int`} of one layer's C."""
    text = (GENERATED / f"{name}.c").read_text()
    return {m.group(2): m.group(1).split() for m in
            re.finditer(r"^((?:BP_\w+ )*)int (bp_\w+_f(?:32|64))\(", text, re.M)}


def test_functions_computing_vector_math_ask_for_wide_vectors():
    gelu = _entries("gelu")
    assert gelu["bp_gelu_forward_f32"] == ["BP_MATH_WIDE"]      # tanh
    assert gelu["bp_gelu_backward_f64"] == []              # from the saved tanh
    assert _entries("gelu_erf")["bp_gelu_erf_backward_f64"] == ["BP_MATH_WIDE"]   # exp
    ce = _entries("softmax_cross_entropy_labels")
    assert ce["bp_softmax_cross_entropy_labels_forward_backward_f32"] == ["BP_MATH_WIDE"]
    # compares, selects, loads, adds and multiplies only: the tuning's own choice
    for name in ("relu", "maxpool2d", "batchnorm", "dense", "adam"):
        assert all(not attrs for attrs in _entries(name).values()), name
    text = (GENERATED / "gelu.c").read_text()
    guard = re.search(r"#if (.*)\n#define BP_MATH_WIDE (.*)\n#else\n#define BP_MATH_WIDE\n",
                      text)
    assert guard and "defined(__AVX2__) && !defined(__AVX512F__)" in guard.group(1)
    assert guard.group(2) == '__attribute__((target("prefer-vector-width=256")))'


def test_panel_gemm_accumulates_16_floats_a_row_where_vectors_are_256_bits():
    """4 rows x a 64-column panel is 16 AVX-512 registers of 32, but 32 AVX2 registers of
    16: the kernel then takes a panel 16 columns at a time (8 registers)."""
    text = (GENERATED / "lstm.c").read_text()
    chunks = re.search(r"#if defined\(__AVX512F__\)\n#define BP_PANEL_CHUNK_F32 64\n"
                       r"#define BP_PANEL_CHUNK_F64 32\n#else\n#define BP_PANEL_CHUNK_F32 16\n"
                       r"#define BP_PANEL_CHUNK_F64 8\n#endif", text)
    assert chunks
    assert "float acc[4][BP_PANEL_CHUNK_F32];" in text
    assert "for (ptrdiff_t c0 = 0; c0 < w; c0 += BP_PANEL_CHUNK_F32) {" in text
