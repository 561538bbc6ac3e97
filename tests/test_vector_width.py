"""What the generated C asks of the vector width, read in every built-in's generated C:
functions ask for 256-bit vectors where GCC's tuning would pick 128 (AMD Zen 1), unless
they read or write at a stride and compute no vector math, and the panel GEMM of the recurrences keeps its accumulators within the
vector registers the machine has."""
import re
from pathlib import Path

GENERATED = Path(__file__).resolve().parent.parent / "generated" / "c"


def _entries(name):
    """{entry function name: the attribute macros before `int`} of one layer's C."""
    text = (GENERATED / f"{name}.c").read_text()
    return {m.group(2): m.group(1).split() for m in
            re.finditer(r"^((?:BP_\w+ )*)int (bp_\w+_f(?:32|64))\(", text, re.M)}


def test_functions_ask_for_wide_vectors_unless_they_read_at_a_stride():
    gelu = _entries("gelu")
    assert gelu["bp_gelu_forward_f32"] == ["BP_PREFER_256"]      # tanh
    assert gelu["bp_gelu_backward_f64"] == ["BP_PREFER_256"]     # from the saved tanh
    assert _entries("gelu_erf")["bp_gelu_erf_backward_f64"] == ["BP_PREFER_256"]   # exp
    ce = _entries("softmax_cross_entropy_labels")      # z[n, t[n]]: a gather, no stride
    assert ce["bp_softmax_cross_entropy_labels_forward_backward_f32"] == ["BP_PREFER_256"]
    for name in ("relu", "batchnorm", "layernorm", "dense", "adam", "embedding", "conv2d"):
        assert all(attrs == ["BP_PREFER_256"] for attrs in _entries(name).values()), name
    # a window read at 2 i + p (forward) or written through split copies (backward): the
    # tuning's own 128-bit vectors
    for name in ("maxpool2d", "maxpool2d_indices", "avgpool2d"):
        assert all(not attrs for attrs in _entries(name).values()), name
    text = (GENERATED / "gelu.c").read_text()
    guard = re.search(r"#if (.*)\n#define BP_PREFER_256 (.*)\n#else\n#define BP_PREFER_256\n",
                      text)
    assert guard and "defined(__AVX2__) && !defined(__AVX512F__)" in guard.group(1)
    assert guard.group(2) == '__attribute__((target("prefer-vector-width=256")))'


def test_a_strided_user_layer_keeps_the_tunings_width():
    """The rule reads the nests, not a layer's name: a user's strided 1-D pooling stays at
    128 bits, the same layer at stride 1 (a sliding window, every element read in turn)
    asks for 256."""
    from codegen.c_backend import c_sources
    from codegen.plan import plan
    from derive import derive, parse_spec

    def entries(stride):
        spec = f"""layer pool1d
dims N, L, K = 2, M = (L - K) // {stride} + 1
input x[N, L]
output y[N, M]
y[n, i] = max(x[n, {stride}*i + p], p in K)
"""
        text = c_sources(plan(derive(parse_spec(spec))))["pool1d.c"]
        return re.findall(r"^((?:BP_\w+ )*)int bp_pool1d_\w+_f32\(", text, re.M)
    assert entries(2) == ["", ""]
    assert entries(1) == ["BP_PREFER_256 ", "BP_PREFER_256 "]


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
