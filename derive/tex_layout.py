"""Long displayed formulas broken across lines, so that none runs off the page.

A formula's right-hand side is cut at its outermost + and - (and \\odot); a term still too
long is opened at its widest parenthesis, \\left( ... \\right) becoming \\Bigl( ... \\Bigr)
(sized delimiters that need not close on the same line), and cut inside.  Widths are
estimated from the LaTeX text in units of about one italic letter; the page of the
document template is about 88 units wide.
"""
from __future__ import annotations

import re

LINE_UNITS = 66          # the text width (~490 pt at 11 pt) in letters, with a margin

# how wide things print, in letters: a binary operator with its spaces, big operators...
_WIDE = {r"\sum": 1.8, r"\odot": 2.2, r"\oslash": 2.2, r"\cdot": 1.2, r"\quad": 2.0,
         r"\qquad": 4.0, r"\mathrel": 0.0, r"\left": 0.0, r"\right": 0.0, r"\Bigl": 0.0,
         r"\Bigr": 0.0, r"\mathrm": 0.0, r"\operatorname": 0.0, r"\mathbf": 0.0,
         r"\mathbb": 0.0, r"\text": 0.0, r"\hat": 0.0, r"\bar": 0.0, r"\widehat": 0.0,
         r"\overline": 0.0, r"\tilde": 0.0, r"\widetilde": 0.0, r"\dot": 0.0, r"\vec": 0.0,
         r"\overrightarrow": 0.0, r"\sqrt": 1.2, r"\max": 2.2, r"\min": 2.2,
         r"\exp": 2.2, r"\log": 2.2, r"\tanh": 3.0, r"\sigma": 1.0, r"\,": 0.2,
         r"\;": 0.3, r"\!": -0.2}
_COMMAND = re.compile(r"\\([A-Za-z]+|.)")


def width(tex: str) -> float:
    """Estimated printed width of `tex` in letters."""
    total, k = 0.0, 0
    while k < len(tex):
        ch = tex[k]
        if ch in "_^":
            group, k = _group(tex, k + 1)
            total += 0.72 * width(group)
            continue
        if ch == "\\":
            m = _COMMAND.match(tex, k)
            cmd = m.group(0)
            k = m.end()
            if cmd == r"\frac":
                num, k = _group(tex, k)
                den, k = _group(tex, k)
                total += max(width(num), width(den)) + 0.4
            elif cmd in _WIDE:
                total += _WIDE[cmd]
            else:
                total += 1.0          # a Greek letter or a symbol
            continue
        if ch in "{} &":
            k += 1
            continue
        total += 2.2 if ch in "+-=<>" else 0.7 if ch in "()[]|" else 0.5 if ch in ",." else 1.0
        k += 1
    return total


def _group(tex, k):
    """The brace group (or single token) starting at tex[k]; returns (content, end)."""
    if k < len(tex) and tex[k] == "{":
        depth = 0
        for j in range(k, len(tex)):
            depth += {"{": 1, "}": -1}.get(tex[j], 0)
            if depth == 0:
                return tex[k + 1:j], j + 1
        return tex[k + 1:], len(tex)
    if k < len(tex) and tex[k] == "\\":
        m = _COMMAND.match(tex, k)
        return m.group(0), m.end()
    return tex[k:k + 1], k + 1


def _top_level(tex):
    """Yield (position, depth-zero) for each character, depth counting braces,
    \\left ... \\right pairs and environments (a line never breaks inside \\begin{cases}
    ... \\end{cases}: its own & and \\\\ belong to it)."""
    depth, k = 0, 0
    while k < len(tex):
        if tex.startswith(r"\begin{", k) or tex.startswith(r"\end{", k):
            yield k, depth == 0
            depth += 1 if tex.startswith(r"\begin{", k) else -1
            k = tex.index("}", k) + 1
            continue
        if tex.startswith(r"\left", k) and not tex[k + 5:k + 6].isalpha():
            yield k, depth == 0
            depth += 1
            k += 5
            continue
        if tex.startswith(r"\right", k) and not tex[k + 6:k + 7].isalpha():
            depth -= 1
            yield k, depth == 0
            k += 6
            continue
        ch = tex[k]
        if ch == "\\":                          # a command; \{ is not a brace
            yield k, depth == 0
            k = _COMMAND.match(tex, k).end()
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        yield k, depth == 0
        k += 1


_BREAK = re.compile(r" (\+|-|\\odot) ")


def _chunks(tex) -> list[str]:
    """tex cut before each outermost binary + - \\odot (the operator starts the chunk)."""
    cuts = [k for k, top in _top_level(tex) if top and _BREAK.match(tex, k)]
    bounds = [0] + cuts + [len(tex)]
    return [tex[a:b].strip() for a, b in zip(bounds, bounds[1:]) if tex[a:b].strip()]


def _widest_paren(tex):
    """(start, inner start, inner end, end) of the outermost \\left( ... \\right) of
    `tex` whose inside has outermost operators to cut at, the widest first."""
    found, opened = [], None
    depth = braces = 0
    k = 0
    while k < len(tex):
        if tex.startswith(r"\begin{", k) or tex.startswith(r"\end{", k):
            braces += 1 if tex.startswith(r"\begin{", k) else -1   # not inside cases
            k = tex.index("}", k) + 1
            continue
        if tex[k] == "\\" and tex[k + 1:k + 2] in "{}":
            k += 2
            continue
        if tex[k] in "{}":
            braces += 1 if tex[k] == "{" else -1
            k += 1
            continue
        if braces:
            k += 1
            continue
        if tex.startswith(r"\left(", k):
            if depth == 0:
                opened = k
            depth += 1
            k += 6
            continue
        if tex.startswith(r"\left", k) and not tex[k + 5:k + 6].isalpha():
            depth += 1
            k += 5
            continue
        if tex.startswith(r"\right", k) and not tex[k + 6:k + 7].isalpha():
            depth -= 1
            if depth == 0 and opened is not None and tex.startswith(r"\right)", k):
                found.append((opened, opened + 6, k, k + 7))
            if depth == 0:
                opened = None
            k += 6
            continue
        k += 1
    found = [f for f in found if _breakable(tex[f[1]:f[2]])]
    return max(found, key=lambda f: f[2] - f[1], default=None)


def _breakable(tex) -> bool:
    """Can tex be cut: an outermost operator, two factors, a fraction to open?"""
    return len(_chunks(tex)) > 1 or len(_factors(tex)) > 1 or _open_fraction(tex, 0) != tex


def _unbrace_functions(tex):
    """sympy prints \\tanh{\\left(x\\right)}: the braces would stop a cut inside."""
    return re.sub(r"(\\[A-Za-z]+(?:\^\{[^{}]*\})?)\{(\\left\((?:[^{}]|\{[^{}]*\})*\\right\))\}",
                  r"\1\2", tex)


def _open_fraction(tex, budget):
    """\\frac{long}{d} at the top of `tex` as \\frac{1}{d} \\left(long\\right), which can be
    cut inside (a fraction cannot)."""
    for k, top in _top_level(tex):
        if top and tex.startswith(r"\frac{", k):
            num, j = _group(tex, k + 5)
            den, end = _group(tex, j)
            if width(num) > budget and (len(_chunks(num)) > 1 or len(_factors(num)) > 1):
                return tex[:k] + rf"\frac{{1}}{{{den}}} \left({num}\right)" + tex[end:]
    return tex


_BIG = re.compile(r"\\(sum|max|min|prod)\b")


def _factors(tex) -> list[str]:
    """A term cut at its outermost spaces into factors; a sum sign keeps its body (all
    that follows), a leading sign stays with the first factor."""
    cuts = [k for k, top in _top_level(tex) if top and tex[k] == " "]
    bounds = [0] + cuts + [len(tex)]
    parts = [tex[a:b].strip() for a, b in zip(bounds, bounds[1:]) if tex[a:b].strip()]
    out: list[str] = []
    for part in parts:
        if out and (out[-1] in ("+", "-", r"\odot") or _BIG.match(out[-1])):
            out[-1] += " " + part
        else:
            out.append(part)
    return out


def _pieces(tex, budget) -> list[tuple[str, bool]]:
    """tex as (piece, is it a factor continuing a product) pairs, each piece (but for an
    unbreakable one) at most `budget` wide; a piece that opens a parenthesis leaves it
    open for the pieces after it."""
    out = []
    for chunk in _chunks(tex):
        if width(chunk) <= budget:
            out.append((chunk, False))
            continue
        chunk = _unbrace_functions(_open_fraction(chunk, budget))
        factors = _factors(chunk)
        if len(factors) > 1:
            for k, f in enumerate(factors):
                pieces = _pieces(f, budget) if width(f) > budget else [(f, False)]
                out.append((pieces[0][0], k > 0))
                out.extend(pieces[1:])
            continue
        paren = _widest_paren(chunk)
        if paren is None:
            out.append((chunk, False))
            continue
        start, a, b, end = paren
        inner = _pieces(chunk[a:b], budget)
        inner[0] = (chunk[:start] + r"\Bigl(" + inner[0][0], inner[0][1])
        inner[-1] = (inner[-1][0] + r"\Bigr)" + chunk[end:], inner[-1][1])
        out.extend(inner)
    return out


def lines(rhs: str, budget: float = LINE_UNITS) -> list[str]:
    """rhs filled greedily into lines of at most `budget` letters; a line that continues
    a product starts with \\times."""
    out: list[str] = []
    for piece, factor in _pieces(rhs, budget):
        if out and width(out[-1]) + width(piece) + 1 <= budget:
            out[-1] += " " + piece
        else:
            out.append((r"\times " if factor and out else "") + piece)
    return out


def aligned(lhs: str, rhs: str, rel: str = "=") -> str:
    """Rows for align*/aligned: lhs &rel rhs, continued on lines of their own that start
    a quad in from the relation."""
    budget = max(LINE_UNITS - width(lhs) - width(rel), 24)
    first, *rest = lines(rhs, budget)
    rows = [f"{lhs} &{rel} {first}"] + [rf"&\quad {r}" for r in rest]
    return " \\\\\n".join(rows)
