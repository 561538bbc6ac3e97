"""Derivation documents of convolutions at constants other than the spec's defaults: they
state the constants and the sizes defined from the others (as written and at those
values), write fractions in subscripts and sums' bounds inline, and compile and fit."""
from __future__ import annotations

import pytest

from derive import derive
from derive.builtins import builtin
from derive.document import document

from .test_document_layout import compile_tex


def test_the_document_states_its_constants_and_derived_sizes():
    """backprop latex conv2d --const S=2: S, P and D with their values, and Hout both as
    the spec defines it and at S = 2, in LaTeX and in Markdown."""
    d = derive(builtin("conv2d", dict(S=2)))
    tex, md = document(d, "tex"), document(d, "md")
    general = (r"\left\lfloor \frac{H + 2 P - D \left(\mathrm{KH} - 1\right) - 1}{S} "
               r"\right\rfloor + 1")
    at_s2 = r"\left\lfloor \frac{H - \mathrm{KH}}{2} \right\rfloor + 1"
    for text in (tex, md):
        assert r"S = 2,\ P = 0,\ D = 1" in text
    assert rf"\mathrm{{Hout}} &= {general} \\" + f"\n&= {at_s2}" in tex
    assert rf"$$\mathrm{{Hout}} = {general} = {at_s2}$$" in md
    assert r"$N \times O \times \mathrm{Hout} \times \mathrm{Wout}$" in tex


def test_a_layer_without_constants_states_none():
    tex = document(derive(builtin("dense")), "tex")
    assert "constants this document" not in tex and "Sizes that follow" not in tex


def test_fractions_in_subscripts_and_bounds_are_inline():
    """dx of a strided conv reads dy at (h + 1 - 2 p)/2: written inline, not as a \\frac
    a third of the text's size; the bounds' floor and ceiling too."""
    tex = document(derive(builtin("conv2d", dict(S=2, P=1, D=2))), "tex")
    dx = tex.split(r"\bar{x}_{nchk} &= ")[1].split(r"\end{align*}")[0]
    assert r"\left(h + 1 - 2 p\right)/2" in dx
    assert r"\left\lfloor \left(h + 1\right)/2 \right\rfloor" in dx
    assert r"\frac" not in dx


@pytest.mark.parametrize("name, constants", [
    ("conv2d", dict(S=2, P=1, D=2)), ("conv1d", dict(S=2, P=1, D=2)),
    ("conv2d_grouped", dict(S=2, P=1, D=2)), ("conv2d", dict(S=3, P=2, D=3)),
    ("avgpool2d", dict(S=2)),
])
def test_documents_at_other_constants_compile_and_fit(tmp_path, name, constants):
    errors, over = compile_tex(tmp_path, derive(builtin(name, constants)), name)
    assert not errors, errors
    assert all(w <= 10.0 for w in over), over
