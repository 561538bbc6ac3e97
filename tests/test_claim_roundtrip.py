"""The verifier reads the toolkit's own LaTeX: every derived gradient, printed by
derive/latex.py in index form, in matrix form with examples as rows, and in matrix form
with examples as columns (as Nielsen writes), is a claim that HOLDS; the same claim with a
dropped transpose, a wrong sign or a missing 1/N does not.

CI runs a bounded number of random examples (BACKPROP_CLAIM_EXAMPLES, default 12 each);
set it higher for a longer search."""
import dataclasses
import os
from datetime import timedelta

import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from derive import derive
from derive.catalogue import catalogue_layer
from derive.derivation import adjoint_name
from derive.spec import dim_symbol
from derive.latex import (Apply, Divide, Hadamard, Leaf, MatrixConverter, NoMatrixForm,
                          Ones, Product, Scalar, Sum_, _T, _transpose, index_latex,
                          tex_adjoint)
from derive.verify import verify

# layernorm and gelu name tensors with several letters (rstd, th), which LaTeX prints as
# a product of letters; every other layer's formulas read back unambiguously
LAYERS = ("dense", "sigmoid", "tanh", "relu", "softmax", "mse", "softmax_cross_entropy",
          "sigmoid_bce", "mlp2", "neuron", "batchnorm", "attention")
DERIVED = {name: derive(catalogue_layer(name)) for name in LAYERS}
STEPS = [(name, step) for name, d in DERIVED.items() for step in d.steps]
FORMS = ("index form", "examples as rows", "examples as columns")
EXAMPLES = int(os.environ.get("BACKPROP_CLAIM_EXAMPLES", "12"))
BOUNDED = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=120),
                   suppress_health_check=[HealthCheck.too_slow], database=None)


def shapes(layer):
    out = {t.name: t.dims for t in layer.tensors.values()}
    out.update({adjoint_name(n): dims for n, dims in list(out.items())})
    return out


def is_batch(dims) -> bool:
    return len(dims) == 2 and dims[0] == "N"


def to_columns(node, dims, batch_valued):
    """A rows-convention matrix form rewritten with examples as columns: a batch matrix
    X (N x D) becomes X^T, and a batch-valued formula is transposed as a whole, pushed
    through products and elementwise operations as a person would write it."""
    def flip(n):
        if isinstance(n, Leaf) and is_batch(dims[n.name]):
            return dataclasses.replace(n, transposed=not n.transposed)
        return children_mapped(n, flip)
    return flip(transpose(node) if batch_valued else node)


def children_mapped(n, fn):
    """n with fn applied to each child node (factors, terms, arguments)."""
    fields = {}
    for f in dataclasses.fields(n):
        v = getattr(n, f.name)
        if isinstance(v, tuple):
            fields[f.name] = tuple(fn(x) if hasattr(x, "latex") else
                                   (x[0], fn(x[1])) if isinstance(x, tuple) else x for x in v)
        elif hasattr(v, "latex"):
            fields[f.name] = fn(v)
    return dataclasses.replace(n, **fields) if fields else n


def nodes(n):
    yield n
    for f in dataclasses.fields(n):
        v = getattr(n, f.name)
        for x in (v if isinstance(v, tuple) else (v,)):
            x = x[1] if isinstance(x, tuple) else x
            if hasattr(x, "latex"):
                yield from nodes(x)


def transpose(n):
    """n^T, pushed inside: elementwise operations commute with the transpose."""
    if isinstance(n, (Leaf, Ones, Product)):
        return _transpose(n)
    if isinstance(n, _T):
        return n.node
    if isinstance(n, Scalar):
        return n
    if isinstance(n, (Divide, Sum_, Hadamard, Apply)):      # elementwise
        return children_mapped(n, transpose)
    return _T(n)


def claim_text(name, step, form, expr=None):
    """The step's formula as a claim `lhs = rhs` in one of FORMS (None: no matrix form)."""
    d = DERIVED[name]
    dims = shapes(d.layer)
    adjoints = {adjoint_name(t) for t in d.layer.tensors}
    expr = step.expr if expr is None else expr
    if form == "index form":
        return f"{index_latex(step.lhs, adjoints)} = {index_latex(expr, adjoints)}"
    try:
        node = MatrixConverter(dims, adjoints).convert(expr, step.indices)
    except NoMatrixForm:
        return None
    lhs = tex_adjoint(step.tensor)
    if form == "examples as columns":
        node = to_columns(node, dims, is_batch(d.layer.tensors[step.tensor].dims))
    return f"{lhs} = {node.latex()}"


def test_every_step_prints_in_every_form():
    """The forms the property tests draw from exist (a matrix form for each step here)."""
    for name, step in STEPS:
        for form in FORMS:
            assert claim_text(name, step, form), (name, step.tensor, form)


@BOUNDED
@given(st.sampled_from(STEPS), st.sampled_from(FORMS))
def test_printed_formulas_hold(step_of, form):
    name, step = step_of
    text = claim_text(name, step, form)
    v = verify(DERIVED[name], text, timeout=3)
    assert v.verdict == "HOLDS", f"{name}: {text}\n{v.text()}"


def perturbations(name, step):
    """(kind, claim text) of each perturbation that applies to the step's formula."""
    out = []
    for form in FORMS:
        out.append(("wrong sign", claim_text(name, step, form, -step.expr)))
    N = dim_symbol("N")
    if any(p.base == N and p.exp.is_negative for p in step.expr.atoms(sp.Pow)):
        for form in FORMS:
            out.append(("missing 1/N", claim_text(name, step, form, step.expr * N)))
    d = DERIVED[name]
    dims = shapes(d.layer)
    adjoints = {adjoint_name(t) for t in d.layer.tensors}
    try:
        node = MatrixConverter(dims, adjoints).convert(step.expr, step.indices)
    except NoMatrixForm:
        return out
    # (with a \mathbf{1} in the formula, a dropped transpose can be the same formula with
    # examples as columns: z^T 1 and z 1 are both dL/db)
    transposed = [n for n in nodes(node) if isinstance(n, Leaf) and n.transposed]
    if transposed and not any(isinstance(n, Ones) for n in nodes(node)):
        dropped = drop_transpose(node, transposed[0])
        out.append(("dropped transpose", f"{tex_adjoint(step.tensor)} = {dropped.latex()}"))
    return [(kind, text) for kind, text in out if text]


def drop_transpose(node, leaf):
    if node is leaf:
        return dataclasses.replace(leaf, transposed=False)
    return children_mapped(node, lambda n: drop_transpose(n, leaf))


PERTURBED = [(name, kind, text) for name, step in STEPS
             for kind, text in perturbations(name, step)]


def test_every_kind_of_perturbation_is_drawn():
    assert {kind for _, kind, _ in PERTURBED} == {"wrong sign", "missing 1/N",
                                                   "dropped transpose"}


@BOUNDED
@given(st.sampled_from(PERTURBED))
def test_perturbed_formulas_do_not_hold(perturbed):
    name, kind, text = perturbed
    v = verify(DERIVED[name], text, timeout=3)
    assert v.verdict != "HOLDS", f"{name}, {kind}: {text}\n{v.text()}"
    if kind == "missing 1/N" and v.verdict == "CONDITIONAL":
        assert "batch size 1" in v.conditions
