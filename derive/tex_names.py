"""Names as LaTeX: any identifier the parser accepts renders, with every script braced.

A name is a stem, optional tags after underscores and an optional layer number:
W1 -> W^{(1)}, w_1 -> w^{(1)}, x_in -> x^{\\mathrm{in}}, xhat -> \\hat{x},
rstd -> \\mathrm{rstd} (a multi-letter stem is set upright, as one word),
sigma -> \\sigma.  The adjoint bar spans the whole stem: \\overline{\\mathrm{rstd}}.
Tags and layer numbers go up, so the index subscript stays free for the indices.
"""
from __future__ import annotations

import re

from sympy.printing.latex import greek_letters_set

# accent suffix -> (command for one glyph, command spanning several)
ACCENTS = {"hat": (r"\hat", r"\widehat"), "bar": (r"\bar", r"\overline"),
           "tilde": (r"\tilde", r"\widetilde"), "dot": (r"\dot", r"\dot"),
           "vec": (r"\vec", r"\overrightarrow")}
ALIASES = {"eps": r"\epsilon", "lamda": r"\lambda", "lam": r"\lambda"}
GREEK = {g: "\\" + g for g in greek_letters_set} | \
    {g.capitalize(): "\\" + g.capitalize() for g in
     ("gamma", "delta", "theta", "lambda", "xi", "pi", "sigma", "upsilon", "phi", "psi",
      "omega")}


def split_name(name: str) -> tuple[str, list[str], str]:
    """(stem, tags, layer): 'x_in' -> ('x', ['in'], ''), 'W1' / 'W_1' -> ('W', [], '1')."""
    head, *tags = name.split("_")
    tags = [t for t in tags if t]
    m = re.fullmatch(r"(.*?[A-Za-z])(\d+)", head)
    stem, layer = (m.group(1), m.group(2)) if m else (head, "")
    if not layer and tags and tags[-1].isdigit():
        layer = tags.pop()
    return stem, tags, layer


def _glyph(stem: str) -> tuple[str, bool]:
    """(LaTeX, is it one glyph) for a stem without accent."""
    if stem in ALIASES:
        return ALIASES[stem], True
    if stem in GREEK:
        return GREEK[stem], True
    if len(stem) == 1:
        return stem, True
    return r"\mathrm{%s}" % stem, False


def stem_tex(stem: str) -> tuple[str, bool]:
    """xhat -> (\\hat{x}, True); rstdhat -> (\\widehat{\\mathrm{rstd}}, False)."""
    for suffix, (one, wide) in ACCENTS.items():
        if stem.endswith(suffix) and len(stem) > len(suffix):
            body, single = _glyph(stem[:-len(suffix)])
            return (one if single else wide) + "{" + body + "}", single
    return _glyph(stem)


def tex_name(name: str, bar: bool = False) -> str:
    """A tensor's (or with `bar`, its adjoint's) name in LaTeX, scripts braced."""
    stem, tags, layer = split_name(name)
    body, single = stem_tex(stem)
    if bar:
        body = (r"\bar{%s}" if single else r"\overline{%s}") % body
    sup = [r"\mathrm{%s}" % t.replace("_", r"\_") for t in tags]
    if layer:
        sup.append(f"({layer})")
    return body + ("^{" + ",".join(sup) + "}" if sup else "")


def tex_index(name: str) -> str:
    """An index name: n, n_{2} for n2, \\mathrm{in} for a word (inside a subscript), n'
    for n' (a document's renamed index)."""
    if name.endswith("'"):
        return tex_index(name[:-1]) + "'"
    stem, tags, layer = split_name(name)
    body, _ = stem_tex(stem)
    sub = tags + ([layer] if layer else [])
    return body + ("_{" + ",".join(sub) + "}" if sub else "")


def has_top_script(tex: str, mark: str = "^") -> bool:
    """Does `tex` carry a sub/superscript (`mark`) outside every brace group?  Another
    script of the same kind then needs the whole wrapped first."""
    depth = 0
    for ch in tex:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == mark and depth == 0:
            return True
    return False
