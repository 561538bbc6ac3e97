"""Recurrences (derive/recurrence.py, codegen/scan.py): the built-in RNN, GRU and LSTM
against torch.nn at several sequence lengths, both backends and dtypes; random recurrent
specs against finite differences of their own emitted forward; spec errors and bad arrays."""
import re

import numpy as np
import sympy as sp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codegen
from derive import derive
from derive.builtins import builtin
from derive.errors import SpecError
from derive.indices import dim_of
from derive.parser import parse_spec
from derive.pretty import formula

from .oracles import finite_differences, require_oracle, torch_recurrent

RECURRENT = ("rnn_tanh", "rnn_relu", "gru", "lstm")
# (T, N, I, H): lengths 1, 2 and 5, sizes 1 and odd primes
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (5, 2, 3, 5)]


def _arrays(layer, T, N, I, H, rng):
    G = {"gru": 3, "lstm": 4}.get(layer, None)
    blocks = (lambda *s: (G,) + s) if G else (lambda *s: s)
    a = dict(x=rng.normal(size=(T, N, I)), h0=rng.normal(size=(N, H)),
             W_ih=0.5 * rng.normal(size=blocks(H, I)), W_hh=0.5 * rng.normal(size=blocks(H, H)),
             b_ih=rng.normal(size=blocks(H)), b_hh=rng.normal(size=blocks(H)))
    if layer == "lstm":
        a["c0"] = rng.normal(size=(N, H))
    if layer == "rnn_relu":        # every unit active and away from the kink at 0
        a.update(b_ih=np.abs(a["b_ih"]) + 3, W_ih=0.3 * a["W_ih"], W_hh=0.1 * a["W_hh"])
    return a


@pytest.fixture(scope="module")
def kernels():
    return {}


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%d-N%d-I%d-H%d" % s)
@pytest.mark.parametrize("layer", RECURRENT)
def test_equals_torch_nn(kernels, layer, shape, dtype, backend):
    """Every output (the sequence, the last state) and every gradient (inputs, initial
    states, weights, biases) equals torch.nn.RNN/GRU/LSTM.  float64: normwise relative
    error below 1e-10.  float32: the same computation rounded at 2^-24 per operation, over
    T steps of sums of at most 4H + I terms: 50 eps (1 + 4H + I) T, about 2e-4 here."""
    torch = require_oracle("torch")
    T, N, I, H = shape
    key = (layer, backend, dtype)
    if key not in kernels:
        kernels[key] = codegen.load(layer, backend=backend,
                                    **({"dtype": dtype} if backend == "c" else {}))
    k = kernels[key]
    rng = np.random.default_rng(sum(shape) + len(layer))
    a = _arrays(layer, T, N, I, H, rng)
    ups = {"d" + t.name: rng.normal(size=np.shape(a["x"])[:2] + (H,) if t.dims[0] == "T"
                                    else (N, H)) for t in k.layer.upstream}
    cast = {n: np.asarray(v, dtype) for n, v in {**a, **ups}.items()}
    got = k.forward(**{n: cast[n] for n in k.args})
    grads = k.backward(**cast)
    leaves = {n: torch.tensor(cast[n], dtype=torch.float64, requires_grad=True) for n in a}
    want = torch_recurrent(layer, **leaves)
    total = sum((want[n[1:]] * torch.tensor(cast[n], dtype=torch.float64)).sum() for n in ups)
    torch_grads = torch.autograd.grad(total, list(leaves.values()))
    tol = 1e-10 if dtype == "float64" else \
        50 * np.finfo(np.float32).eps * (1 + 4 * H + I) * T
    pairs = [(n, got[n], want[n].detach().numpy()) for n in want]
    pairs += [("d" + n, grads["d" + n], g.numpy()) for n, g in zip(leaves, torch_grads)]
    for name, ours, theirs in pairs:
        assert np.shape(ours) == np.shape(theirs), name
        err = np.linalg.norm(np.asarray(ours, np.float64) - theirs) / \
            max(np.linalg.norm(theirs), 1e-300)
        assert err < tol, (name, err)


def test_the_derivation_is_backpropagation_through_time():
    """The delta recursion as textbooks print it: dz[t] = f'(z[t]) (dh[t] + W^T dz[t+1])
    for t < T - 1, dh0 from step 0 only, dW_hh split at the first step, no Piecewise."""
    d = derive(builtin("rnn_tanh"))
    shown = {s.name: formula(s.expr) for s in d.steps}
    assert shown["dz"] == ("(1 - h[t, n, j]**2)*(dhn[n, j]*[T - 1 == t] + "
                           "sum_k(W_hh[k, j]*dz[t + 1, n, k])*[0 <= t + 1 <= T - 1] + "
                           "dh[t, n, j])")
    assert shown["dh0"] == "sum_j(W_hh[j, k]*dz[0, n, j])"
    assert shown["dW_hh"] == ("sum_n(h0[n, k]*dz[0, n, j]) + "
                              "sum_{n,t=1..T - 1}(dz[t, n, j]*h[t - 1, n, k])")
    assert not any("Piecewise" in str(s.expr) for s in d.steps)


def test_one_derivation_serves_every_length():
    """T is symbolic: the same kernels run at T = 1 and T = 7."""
    m = codegen.load("rnn_tanh")
    rng = np.random.default_rng(3)
    for T in (1, 7):
        a = _arrays("rnn_tanh", T, 2, 3, 4, rng)
        assert m.forward(**a)["h"].shape == (T, 2, 4)


SPEC = """layer r
dims T, N, H, D2 = 2
input x[T, N, H]
input h0[N, H]
input s0[D2, N, H]
input q[N]
output h[T, N, H]
{decl}
h[t, n, j] = {rhs}
"""


@pytest.mark.parametrize("decl, rhs, message", [
    ("initial h = h0", "tanh(h[t + 1, n, j] + x[t, n, j])",
     "9:21: h[t + 1, ...] reads a later step"),
    ("initial h = h0", "tanh(h[t - 2, n, j] + x[t, n, j])",
     "9:21: h[t - 2, ...] reads 2 steps back, but the initial state 'h0' holds 1 step"),
    ("", "tanh(h[t - 1, n, j] + x[t, n, j])",
     "9:21: h[t - 1, ...] reads a step of h that may not exist; for a recurrence, "
     "declare the step before 0: 'initial h = h0'"),
    ("initial h = h0", "tanh(h[t, n, j] + x[t, n, j])",
     "9: h[t, ...] reads the step it computes"),
    ("initial h = q", "tanh(h[t - 1, n, j])", "8:13: 'q' has shape [N], but an initial "
     "state of h[T, N, H] is q[N, H]"),
    ("initial x = h0", "tanh(h[t - 1, n, j])", "8:9: 'x' is an input: a recurrence is"),
    ("initial h = h0", "tanh(sum(h[s, n, j], s) + x[t, n, j])",
     "9: h[s, ...]: a recurrence reads an earlier step as h[t - 1, ...]"),
])
def test_spec_errors_name_line_and_column(decl, rhs, message):
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.format(decl=decl, rhs=rhs))
    assert message in str(info.value)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_bad_arrays_get_a_value_error_naming_them(backend):
    m = codegen.load("rnn_tanh", backend=backend)
    rng = np.random.default_rng(0)
    a = _arrays("rnn_tanh", 3, 2, 4, 5, rng)
    for change, words in [(dict(x=np.zeros((0, 2, 4))), "x: dimension T (axis 0) is 0"),
                          (dict(h0=np.zeros((1, 2, 5))), "h0: expected shape (N=2, H)")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            m.forward(**{**a, **change})
    with pytest.raises(ValueError, match=re.escape("dh: expected shape (T=3, N=2, H=5)")):
        m.backward(**a, dh=np.zeros((4, 2, 5)), dhn=np.zeros((2, 5)))


# Random small recurrent layers: one or two recurrent tensors, reads one and two steps
# back, a contraction or not, against central differences of their own emitted forward.
FUNCTIONS = ("tanh", "sigmoid", "sin")


@st.composite
def recurrent_specs(draw):
    f, g = draw(st.sampled_from(FUNCTIONS)), draw(st.sampled_from(FUNCTIONS))
    two_back = draw(st.booleans())
    coupled = draw(st.booleans())
    contraction = draw(st.booleans())
    own = "W[j, k] * h[t - 1, n, k]" if contraction else "w[j] * h[t - 1, n, j]"
    extra = " + 0.5 * h[t - 2, n, j]" if two_back else ""
    lines = ["layer rand", "dims T, N, H" + (", D2 = 2" if two_back else ""),
             "input x[T, N, H]",
             "input h0[D2, N, H]" if two_back else "input h0[N, H]",
             "param W[H, H], w[H]", "output h[T, N, H]", "initial h = h0"]
    if coupled:
        lines += ["input c0[N, H]", "output c[T, N, H]", "initial c = c0",
                  f"c[t, n, j] = {g}(c[t - 1, n, j] * w[j] + x[t, n, j])"]
        drive = "c[t, n, j]"
    else:
        drive = "x[t, n, j]"
    lines.append(f"h[t, n, j] = {f}({own}{extra} + {drive})")
    return "\n".join(lines) + "\n"


def _against_finite_differences(spec, T, seed, backend):
    k = codegen.load(parse_spec(spec), backend=backend,
                     **({"dtype": "float64"} if backend == "c" else {}))
    rng = np.random.default_rng(seed)
    sizes = {"T": T, "N": 2, "H": 3, "D2": 2}
    arrays = {t.name: rng.normal(size=tuple(sizes[d] for d in t.dims))
              for t in k.layer.tensors.values() if t.role in ("input", "param")}
    arrays |= {"d" + t.name: rng.normal(size=tuple(sizes[d] for d in t.dims))
               for t in k.layer.upstream}
    grads = k.backward(**arrays)
    for name in k.gradients:
        fd = finite_differences(k, arrays, name[1:])
        assert np.allclose(grads[name], fd, rtol=1e-6, atol=1e-7), (spec, name)


# each example derives, emits and (C) compiles a new layer: a few seconds each
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=recurrent_specs(), T=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_random_recurrences_against_finite_differences(spec, T, seed):
    _against_finite_differences(spec, T, seed, "numpy")


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=recurrent_specs(), T=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_random_recurrences_in_c_against_finite_differences(spec, T, seed):
    require_oracle("cc")
    _against_finite_differences(spec, T, seed, "c")


def test_the_spec_language_page_shows_what_derive_prints():
    """docs/spec-language.md's recurrence example derives exactly as the page prints it."""
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "spec-language.md").read_text()
    blocks = page.split("## Recurrences", 1)[1].split("```")
    spec, printed = blocks[1], blocks[3]
    steps = derive(parse_spec(spec.strip() + "\n")).steps
    assert [f"{formula(s.lhs)} = {formula(s.expr)}" for s in steps] == \
        printed.strip().splitlines()


@pytest.mark.parametrize("claim, verdict", [
    ("dW_hh[j, k] = sum(dz[0, n, j] * h0[n, k], n) + sum(dz[t, n, j] * h[t - 1, n, k], t, n)",
     "HOLDS"),
    ("dW_hh[j, k] = sum(dz[t, n, j] * h[t, n, k], t, n)", "FALSE"),   # the unshifted state
    ("dh0[n, k] = sum(W_hh[j, k] * dz[0, n, j], j)", "HOLDS"),
])
def test_verify_decides_claims_about_backpropagation_through_time(claim, verdict):
    """`backprop verify` reads shifted steps in a claim (a step before the first reads 0,
    and says so) and decides it; a wrong one gets a counterexample."""
    from derive.verify import verify

    result = verify(derive(builtin("rnn_tanh")), claim)
    assert result.verdict == verdict, result


ONE_EQUATION = """layer rnn1  an RNN in one equation: its pre-activation's adjoint is a step
dims T, N, H
input  x[T, N, H]
input  h0[N, H]
param  W[H, H]
output h[T, N, H]
initial h = h0
h[t, n, j] = tanh(W[j, k] * h[t - 1, n, k] + x[t, n, j])
"""


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_a_recurrence_in_one_equation_equals_torch(backend):
    """Without a named pre-activation the derivation names it (derive.preactivations,
    which once skipped equations reading their own target): the textbook's delta
    dz_h = (1 - h^2)(dh + W^T dz_h[t + 1]) is the step, with no tanh recomputed, and the
    weight gradient sums over every step a product of H x H blocks (its C once printed a
    size H*H as powf(H, 2))."""
    torch = require_oracle("torch")
    k = codegen.load(parse_spec(ONE_EQUATION), backend=backend,
                     **({"dtype": "float64"} if backend == "c" else {}))
    assert [s.name for s in k.derivation.steps] == ["dz_h", "dx", "dh0", "dW"]
    assert not any(s.expr.has(sp.tanh) for s in k.derivation.steps)
    rng = np.random.default_rng(5)
    a = dict(x=rng.normal(size=(4, 2, 3)), h0=rng.normal(size=(2, 3)),
             W=0.5 * rng.normal(size=(3, 3)))
    dh = rng.normal(size=(4, 2, 3))
    grads = k.backward(**a, dh=dh)
    leaves = {n: torch.tensor(v, requires_grad=True) for n, v in a.items()}
    h, hs = leaves["h0"], []
    for t in range(4):
        h = torch.tanh(h @ leaves["W"].T + leaves["x"][t])
        hs.append(h)
    (torch.stack(hs) * torch.tensor(dh)).sum().backward()
    for n, leaf in leaves.items():
        np.testing.assert_allclose(grads["d" + n], leaf.grad.numpy(), rtol=1e-10, atol=1e-12)


def _lowered(layer):
    from codegen.c_backend import lower_for_c
    from codegen.plan import plan
    lay = builtin(layer)
    shapes = {t.name: t.dims for t in lay.tensors.values()}
    shapes.update({"d" + t.name: t.dims for t in lay.tensors.values()})
    loops = lower_for_c(plan(derive(lay)), shapes)
    for t in loops.forward_temps + loops.backward_temps:
        shapes[t.name] = t.dims
    return loops, shapes


def test_each_step_runs_its_products_as_one_gemm():
    """The LSTM's C does per step only what must be done per step, as the issue's kernel
    plan says: the recurrent product of all four gates is one GEMM on the block the step
    points at (h0 first, h[t - 1] after), its adjoint likewise; the input projection, dx
    and dW_ih of all steps are one GEMM each, with (t, n) and (g, j) read as one axis."""
    from codegen.c_backend import _blocks
    loops, shapes = _lowered("lstm")
    for side, reads in (("forward", {"W_hh"}), ("backward", {"W_hh"})):
        (scan,) = [n for n in getattr(loops, side) if n.kind == "scan"]
        steps = [m.step for m in scan.copies if m.step is not None]
        assert len(steps) == 1, side
        (s,) = steps
        assert s.gemm.loops == (), side                      # one GEMM, gates merged
        assert reads <= {a.base.label.name for a in s.nest.body.atoms(sp.Indexed)}
        if side == "forward":                                # h0 at t = 0, h[t - 1] after
            (prev,) = [v for v in s.views if len(v.cases) == 2]
            assert {a for _, a, _ in prev.cases} == {"h0", "h"}
    whole = {n.target: _blocks(n, shapes) for n in loops.forward + loops.backward
             if n.kind == "reduce"}
    for target in ("dx", "dW_ih"):
        assert whole[target] is not None and whole[target].loops == (), target
    projection = [g for n, g in whole.items() if g is not None and str(g.k) == "I"]
    assert projection and all(g.loops == () for g in projection)
    # dW_hh over the steps after the first: da[t] h[t - 1] for t >= 1, one GEMM of K = (T-1) N
    (later,) = [n for n in loops.backward if n.kind == "reduce" and n.bounds]
    assert whole[later.target].loops == () and str(whole[later.target].k) == "N*(T - 1)"


@pytest.mark.parametrize("layer", RECURRENT)
def test_the_loops_without_a_gemm_equal_the_gemm_route(kernels, layer):
    """Plain C callers that supply no GEMM run the loops: the same results (float64,
    sums reassociated: 1e-12 relative)."""
    key = (layer, "c", "float64")
    if key not in kernels:
        kernels[key] = codegen.load(layer, backend="c", dtype="float64")
    k = kernels[key]
    rng = np.random.default_rng(3)
    a = _arrays(layer, 5, 3, 4, 7, rng)
    ups = {"d" + t.name: rng.normal(size=(5, 3, 7) if t.dims[0] == "T" else (3, 7))
           for t in k.layer.upstream}
    results = {}
    try:
        for blas in (True, False):
            k.use_blas(blas)
            results[blas] = {**k.forward(**{n: a[n] for n in k.args}),
                             **k.backward(**a, **ups)}
    finally:
        k.use_blas(True)
    for name, value in results[True].items():
        np.testing.assert_allclose(results[False][name], value, rtol=1e-12, atol=1e-12,
                                   err_msg=name)


def test_a_step_runs_its_gate_math_as_one_pass():
    """Inside the loop over t, the LSTM's gates, cell and output share one parallel loop
    over the batch: the row of h[t, n, j] is n once t is held."""
    from codegen.loops import Group, fuse
    loops, _ = _lowered("lstm")
    (scan,) = [n for n in loops.forward if n.kind == "scan"]
    parts = fuse(list(scan.copies), alone=lambda m: m.step is not None, fixed={scan.loops[0]})
    groups = [p for p in parts if isinstance(p, Group)]
    assert len(groups) == 1
    assert {n.target for n in groups[0].nests} == {"ig", "fg", "gg", "og", "c", "h"}


def test_both_products_of_the_gates_accumulate_into_a():
    """a = W_ih x[t] + b_ih + W_hh h[t - 1] + b_hh: the biases and the input projection of
    all steps are written into a before the steps, and each step's recurrent product adds
    to a[t] (beta = 1), with no scratch array per product and no pass adding them."""
    loops, _ = _lowered("lstm")
    (scan,) = [n for n in loops.forward if n.kind == "scan"]
    writers = [n for n in loops.forward if n.target == "a" and n is not scan]
    (step,) = [m for m in scan.copies if m.target == "a"]
    assert len(writers) == 1 and writers[0].kind == "reduce"
    assert loops.forward.index(writers[0]) < loops.forward.index(scan)
    assert step.step is not None and step.init == sp.IndexedBase("a")[step.out]
    assert {str(dim_of(i)) for i in step.reduced} == {"H"}        # W_hh h[t - 1], per step
    assert not [t for t in loops.forward_temps if t.name.startswith("_s")]


def test_a_step_s_weight_is_packed_once_before_the_steps():
    """The recurrent weight a step multiplies by is the same at every step: it is packed
    into panels once, before the loop over t (forward: W_hh^T; backward: W_hh), and each
    step's GEMM reads those panels (codegen/panel_steps) instead of a BLAS re-packing it."""
    from codegen.c_backend import c_sources
    from codegen.plan import plan
    loops, _ = _lowered("lstm")
    for side in ("forward", "backward"):
        (scan,) = [n for n in getattr(loops, side) if n.kind == "scan"]
        (s,) = [m.step for m in scan.copies if m.step is not None]
        assert s.panels is not None and s.panels.block.name == "W_hh", side
        assert s.panels.name in {t.name for t in getattr(loops, side + "_temps")}
    source = c_sources(plan(derive(builtin("lstm"))))["lstm.c"]
    body = source[source.index("int bp_lstm_forward_f32("):]
    scan = body[body.index("/* a recurrence: step by step */"):]
    pack, steps = scan.index("bp_lstm_panel_pack_f32("), scan.index("for (ptrdiff_t t = 0; t < T")
    assert pack < steps and "bp_lstm_panel_gemm_f32(" in scan[steps:]


def test_a_gate_s_adjoint_is_computed_only_for_its_own_gate():
    """da[t, n, g, j] is one term per gate, picked by [g = 0] .. [g = 3]: the C runs one
    copy per gate with g written as its number (codegen/loops.split_by_value), all four in
    the step's one pass over the batch, instead of a loop over g that evaluated every
    gate's term (and tanh(c)) four times and kept one.  GRU's dah (in its step) and dai
    (after it) likewise; test_equals_torch_nn holds their values."""
    from codegen.c_backend import c_sources
    from codegen.loops import leaves
    from codegen.plan import plan
    for name, arrays, gates in (("lstm", ("da",), 4), ("gru", ("dah", "dai"), 3)):
        loops, _ = _lowered(name)
        for array in arrays:
            copies = [n for n in leaves(loops.backward) if n.target == array]
            assert sorted(dict(n.subs)[n.out[2]] for n in copies) == list(range(gates))
            assert not any(n.body.has(sp.KroneckerDelta) for n in copies), name
        (scan,) = [n for n in loops.backward if n.kind == "scan"]
        inside = [n for n in scan.copies if n.target == arrays[0]]
        assert len(inside) == gates, name
        source = c_sources(plan(derive(builtin(name))))[f"{name}.c"]
        body = source[source.index(f"int bp_{name}_backward_f32("):]
        body = body[:body.index("\n}\n")]
        assert " == g)" not in body, name
        if name == "lstm":
            step = body[body.index("from the last */"):body.index("/* dx[t, n, i]")]
            # one parallel loop over n after the GEMM's barrier: dc and the four gates
            assert step.count("BP_OMP(for)") == 3, step        # fill, loops' fallback, pass
            stores = re.findall(r"da\[\(\(t\*N \+ n\)\*4(?: \+ (\d))?\)\*H \+ j\] =", step)
            assert sorted(int(g or 0) for g in stores) == [0, 1, 2, 3], stores


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_panel_gemm_equals_the_loops_at_ragged_sizes(kernels, dtype):
    """The panel GEMM's edges: 7 rows (a block of 4 and 3 single rows), 4H = 524 columns
    (a part-filled last panel), K = H = 131 forward and 4H = 524 backward (blocks of 128
    panel rows, the last part-filled).
    Against the loops of a plain C build (use_blas(False)) in float64: 1e-12 relative in
    float64; in float32 the float64 bound of test_equals_torch_nn, 50 eps (1 + 4H + I) T."""
    T, N, I, H = 2, 7, 3, 131
    key = ("lstm", "c", dtype)
    if key not in kernels:
        kernels[key] = codegen.load("lstm", backend="c", dtype=dtype)
    loops_key = ("lstm", "c", "float64")
    if loops_key not in kernels:
        kernels[loops_key] = codegen.load("lstm", backend="c", dtype="float64")
    rng = np.random.default_rng(11)
    a = _arrays("lstm", T, N, I, H, rng)
    a.update(W_hh=a["W_hh"] / np.sqrt(H), W_ih=a["W_ih"] / np.sqrt(I))   # gates unsaturated
    k, ref = kernels[key], kernels[loops_key]
    ups = {"d" + t.name: rng.normal(size=(T, N, H) if t.dims[0] == "T" else (N, H))
           for t in k.layer.upstream}
    cast = {n: np.asarray(v, dtype) for n, v in {**a, **ups}.items()}
    got = {**k.forward(**{n: cast[n] for n in k.args}), **k.backward(**cast)}
    try:
        ref.use_blas(False)
        want = {**ref.forward(**{n: a[n] for n in ref.args}), **ref.backward(**a, **ups)}
    finally:
        ref.use_blas(True)
    tol = 1e-12 if dtype == "float64" else \
        50 * np.finfo(np.float32).eps * (1 + 4 * H + I) * T
    for name, value in want.items():
        err = np.linalg.norm(got[name] - value) / max(np.linalg.norm(value), 1e-300)
        assert err < tol, (name, err)


def test_the_steps_run_in_one_thread_team():
    """An LSTM's steps start no thread team of their own: one parallel region holds the
    loop over t, its loops are `omp for` and the panel GEMM ends at a barrier.  A part
    with a reduction clause (private to a region) keeps the team per step."""
    from codegen.c_backend import _scan_in_one_team, c_sources
    from codegen.plan import plan
    source = c_sources(plan(derive(builtin("lstm"))))["lstm.c"]
    for entry in ("forward", "backward"):
        body = source[source.index(f"int bp_lstm_{entry}_f32("):]
        body = body[:body.index("\n}\n")]
        scan = body[body.index("/* a recurrence"):]
        scan = scan[:scan.index("\n    }\n") + 7]          # to the region's closing brace
        steps = scan[scan.index("for (ptrdiff_t t"):]
        assert scan.count("BP_OMP(parallel") == 1 and "BP_OMP(parallel" not in steps, entry
        assert "BP_OMP(for)" in steps and "BP_OMP(barrier)" in steps, entry
    step = {"step": {"panels": {"name": "P"}, "work": "N*H*H"}, "pragma": ""}
    fine = {"pragma": "#pragma omp parallel for if (N*H >= BP_PARALLEL_MIN)"}
    summed = {"pragma": "#pragma omp parallel for reduction(+:db[0:H]) if (N*H >= 1)"}
    assert _scan_in_one_team([step, fine])[1]["pragma"] == "#pragma omp for"
    assert fine["pragma"].startswith("#pragma omp parallel for")      # a copy was changed
    assert _scan_in_one_team([step, summed]) is None


def test_one_gemm_from_zero_writes_without_a_fill():
    """dx of all steps is one GEMM from a start of 0: it overwrites dx (beta = 0), with
    no pass that fills it with zeros first."""
    from codegen.c_backend import c_sources
    from codegen.plan import plan
    source = c_sources(plan(derive(builtin("lstm"))))["lstm.c"]
    body = source[source.index("int bp_lstm_backward_f32("):]
    projection = body[body.index("/* dx[t, n, i] = "):body.index("/* dh0[n, k] = ")]
    gemm = projection[:projection.index("} else {")]          # the GEMM route
    assert "= 0;" not in gemm and ", 4*H, 1, da, 4*H, W_ih + bp_a, I, 0, dx + bp_a, I)" in gemm


def test_the_document_starts_a_recurrent_output_s_total_from_its_upstream_gradient():
    """h is an output and later steps read it: its section first says that h-bar^total
    starts as the upstream gradient h-bar, then every contribution adds to h-bar^total."""
    from derive.document import document
    md = document(derive(builtin("rnn_tanh")), "md")
    section = md[md.index(r"### $\partial L / \partial h_{tnj}$"):]
    section = section[:section.index("###", 3)]
    start = section.index(r"$$\bar{h}^{\mathrm{total}}_{tnj} = \bar{h}_{tnj}$$")
    assert start < section.index(r"\bar{h}^{\mathrm{total}}_{tnj} \mathrel{+}=")
    assert r"\bar{h}_{tnj} \mathrel{+}=" not in section


LEAKY = """layer leaky  a leaky RNN with a learned leak per unit
dims T, N, I, H
input  x[T, N, I]
input  h0[N, H]
param  U[H, I], W[H, H], a[H]
output h[T, N, H]
initial h = h0
h[t, n, j] = sigmoid(a[j]) * h[t - 1, n, j] + (1 - sigmoid(a[j])) * tanh(U[j, i] * x[t, n, i] + W[j, k] * h[t - 1, n, k])
"""


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_one_equation_may_read_the_earlier_step_at_two_places(tmp_path, backend):
    """h[t - 1, n, j] and h[t - 1, n, k] on one line (a leak and the recurrent product)
    are two reads of the same step: the spec parses, and both kernels equal torch's
    autograd through the same loop (float64)."""
    torch = require_oracle("torch")
    spec = tmp_path / "leaky.bp"
    spec.write_text(LEAKY)
    k = codegen.load(str(spec), backend=backend)
    rng = np.random.default_rng(5)
    T, N, I, H = 4, 3, 2, 5
    a = dict(x=rng.normal(size=(T, N, I)), h0=rng.normal(size=(N, H)),
             U=0.5 * rng.normal(size=(H, I)), W=0.5 * rng.normal(size=(H, H)),
             a=rng.normal(size=H))
    dh = rng.normal(size=(T, N, H))
    got = k.forward(**a)["h"]
    grads = k.backward(**a, dh=dh)
    leaves = {n: torch.tensor(v, requires_grad=True) for n, v in a.items()}
    prev, hs = leaves["h0"], []
    for t in range(T):
        s = torch.sigmoid(leaves["a"])
        prev = s * prev + (1 - s) * torch.tanh(leaves["x"][t] @ leaves["U"].T
                                               + prev @ leaves["W"].T)
        hs.append(prev)
    h = torch.stack(hs)
    (h * torch.tensor(dh)).sum().backward()
    np.testing.assert_allclose(got, h.detach().numpy(), rtol=1e-12, atol=1e-12)
    for n, leaf in leaves.items():
        np.testing.assert_allclose(grads["d" + n], leaf.grad.numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=n)
