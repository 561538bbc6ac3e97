"""Textbook LaTeX claims -> a small syntax tree.  The grammar (claim_grammar.lark, read by
lark's Earley parser) covers the notation backprop texts use: hats and bars, ^T, layer
superscripts ^{(l)}, \\odot, \\sum_i, \\frac{\\partial L}{\\partial z}, \\nabla_a C,
\\sigma, \\tanh, \\log, f' and \\sigma'.  Anything outside it is refused with the column
where reading stopped; nothing is guessed."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import lark

LOSS_NAMES = {"L", "C", "J", "E", r"\mathcal{L}"}


class ClaimError(ValueError):
    """The claim could not be read (or names what this layer does not have)."""

    def __init__(self, message: str, col: int | None = None):
        self.col = col
        super().__init__(f"column {col}: {message}" if col else message)


@dataclass(frozen=True)
class Node:
    col: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Sym(Node):
    name: str = ""                 # 'x', 'W', '\\delta', 'y' (with decor 'hat')
    decor: str = ""                # hat, bar, tilde, vec, or '' ; fonts are dropped
    indices: tuple = ()            # explicit subscript indices, e.g. ('n', 'j')
    layer: str = ""                # layer label from ^{(2)} or _2
    transpose: bool = False
    power: int = 1


@dataclass(frozen=True)
class Num(Node):
    value: float = 0.0


@dataclass(frozen=True)
class Grad(Node):                  # dL/dX
    of: Sym = None


@dataclass(frozen=True)
class Bin(Node):
    op: str = ""                   # + - * odot /
    a: Node = None
    b: Node = None


@dataclass(frozen=True)
class Neg(Node):
    a: Node = None


@dataclass(frozen=True)
class Post(Node):                  # transpose / power applied to a compound expression
    a: Node = None
    transpose: bool = False
    power: int = 1


@dataclass(frozen=True)
class Func(Node):
    name: str = ""                 # sigmoid tanh log exp relu softplus sqrt f
    arg: Node = None
    prime: bool = False


@dataclass(frozen=True)
class SumOver(Node):
    index: tuple = ()
    body: Node = None


@dataclass(frozen=True)
class Claim:
    lhs: Node
    rhs: Node
    text: str


_PARSER = None


def _parser():
    global _PARSER
    if _PARSER is None:
        grammar = (Path(__file__).parent / "claim_grammar.lark").read_text()
        _PARSER = lark.Lark(grammar, parser="earley", propagate_positions=True,
                            ambiguity="resolve")
    return _PARSER


def parse_claim(text: str) -> Claim:
    if not isinstance(text, str) or not text.strip():
        raise ClaimError("the claim is empty; write an equation like "
                         r"'\frac{\partial L}{\partial z} = \hat{y} - y'")
    clean = text.strip().strip("$").strip()
    clean = clean.replace(r"\left.", "").replace(r"\right.", "")
    try:
        tree = _parser().parse(clean)
    except lark.exceptions.UnexpectedCharacters as exc:
        snippet = clean[exc.column - 1: exc.column + 11]
        raise ClaimError(f"cannot read the claim from '{snippet}': not part of the supported "
                         f"notation", exc.column) from None
    except lark.exceptions.UnexpectedEOF:
        raise ClaimError("the claim ends too early (an unclosed brace or a missing operand?)",
                         len(clean)) from None
    except lark.exceptions.UnexpectedInput as exc:
        raise ClaimError("cannot read the claim here: unexpected "
                         f"'{getattr(exc, 'token', '?')}'", getattr(exc, "column", None)) \
            from None
    lhs, rhs = (_build(c) for c in tree.children)
    return Claim(lhs, rhs, clean)


def _col(tree) -> int:
    meta = getattr(tree, "meta", None)
    return getattr(meta, "column", 0) if meta is not None and not meta.empty else 0


def _build(t) -> Node:
    if isinstance(t, lark.Token):
        if t.type in ("LETTER", "GREEK"):
            return Sym(t.column, str(t))
        if t.type == "NUMBER":
            return Num(t.column, float(t))
        raise ClaimError(f"unexpected '{t}'", t.column)
    kind = t.data
    col = _col(t)
    kids = [c for c in t.children]
    if kind in ("add", "sub"):
        return Bin(col, "+" if kind == "add" else "-", _build(kids[0]), _build(kids[1]))
    if kind == "mul":
        a, b = kids[0], kids[-1]
        return Bin(col, "*", _build(a), _build(b))
    if kind == "hadamard":
        return Bin(col, "odot", _build(kids[0]), _build(kids[2]))
    if kind == "div":
        return Bin(col, "/", _build(kids[0]), _build(kids[1]))
    if kind == "neg":
        return Neg(col, _build(kids[0]))
    if kind == "number":
        return Num(col, float(kids[0]))
    if kind == "symbol":
        return Sym(col, str(kids[0]))
    if kind == "decorated":
        return Sym(col, str(kids[1]), decor=str(kids[0]).lstrip("\\"))
    if kind == "font":
        font, letter = str(kids[0]), str(kids[1])
        if font == r"\mathcal":
            return Sym(col, r"\mathcal{" + letter + "}")
        return Sym(col, letter)
    if kind == "scripted":
        return _scripted(_build(kids[0]), kids[1:], col)
    if kind == "frac":
        num, den = _build(kids[1]), _build(kids[2])
        if isinstance(num, _Partial) or isinstance(den, _Partial):
            if not (isinstance(num, _Partial) and isinstance(den, _Partial)):
                raise ClaimError(r"\partial must appear in both parts of \frac", col)
            if not (isinstance(num.of, Sym) and _loss_name(num.of)):
                raise ClaimError("only derivatives of the loss (L, C, J, E or \\mathcal{L}) "
                                 "can be claimed", col)
            if not isinstance(den.of, Sym):
                raise ClaimError("the derivative must be taken with respect to one tensor",
                                 col)
            return Grad(col, den.of)
        return Bin(col, "/", num, den)
    if kind == "partial":
        return _Partial(col, _build(kids[1]))
    if kind == "nabla":
        script = kids[1]
        target = _script_text(script)
        of = Sym(col, target[1]) if target[0] == "_" and re.fullmatch(r"[A-Za-z]", target[1]) \
            else None
        loss = _build(kids[2])
        if of is None or not (isinstance(loss, Sym) and _loss_name(loss)):
            raise ClaimError(r"write the gradient as \nabla_{a} L (one tensor, the loss)", col)
        return Grad(col, of)
    if kind == "function":
        name = str(kids[0])
        prime = any(isinstance(k, lark.Tree) and k.data == "prime" for k in kids[1:-1])
        others = [k for k in kids[1:-1] if isinstance(k, lark.Tree) and k.data != "prime"
                  and not isinstance(k, lark.Token)]
        if others:
            raise ClaimError(f"unexpected script on {name}", col)
        body = [k for k in kids[1:] if not (isinstance(k, lark.Tree) and k.data in
                                            ("prime", "script"))
                and not (isinstance(k, lark.Token) and k.type in ("LEFTP", "RIGHTP"))]
        arg = _build(body[-1])
        return Func(col, _FUNC[name], arg, prime)
    if kind == "sum":
        where, text = _script_text(kids[1])
        if where != "_" or not re.fullmatch(r"[a-z](,[a-z])*", text.replace(" ", "")):
            raise ClaimError(r"write a sum as \sum_{i} or \sum_{n,i} (index letters)", col)
        return SumOver(col, tuple(text.replace(" ", "").split(",")), _build(kids[2]))
    if kind == "start":
        raise AssertionError
    raise ClaimError(f"'{kind}' is not supported here", col)


@dataclass(frozen=True)
class _Partial(Node):
    of: Node = None


_FUNC = {r"\sigma": "sigmoid", r"\tanh": "tanh", r"\log": "log", r"\ln": "log",
         r"\exp": "exp", r"\operatorname{ReLU}": "relu", r"\mathrm{ReLU}": "relu",
         r"\operatorname{relu}": "relu", r"\operatorname{softplus}": "softplus",
         r"\sqrt": "sqrt", "f": "f"}


def _loss_name(s: Sym) -> bool:
    return s.name in LOSS_NAMES and not s.indices and not s.decor


def _script_text(script) -> tuple[str, str]:
    if script.data == "prime":
        return "'", ""
    mark, group = script.children
    text = "".join(str(c) for c in group.children) if isinstance(group, lark.Tree) \
        else str(group)
    return str(mark), text.strip()


def _scripted(base: Node, scripts, col) -> Node:
    indices, layer, transpose, power = (), "", False, 1
    for s in scripts:
        mark, text = _script_text(s)
        if mark == "'":
            raise ClaimError("a prime is only understood on a function, as in \\sigma'(z)",
                             col)
        if mark == "_":
            if re.fullmatch(r"\d+", text):
                layer = text
            elif re.fullmatch(r"[a-z](\s*,?\s*[a-z])*", text):
                indices = tuple(c for c in re.sub(r"[\s,]", "", text))
            else:
                raise ClaimError(f"subscript '{text}': expected index letters (jk or j,k) or "
                                 f"a layer number", col)
            continue
        for part in re.findall(r"\(\d+\)|\\top|T|\d+|\(?[a-zA-Z][\w+-]*\)?|\S", text):
            if re.fullmatch(r"\(\d+\)", part):
                layer = part[1:-1]
            elif part in ("T", r"\top"):
                transpose = not transpose
            elif re.fullmatch(r"\d+", part):
                power = int(part)
            else:
                raise ClaimError(f"superscript '{part}': a symbolic layer label is ambiguous;"
                                 f" write the layer number, as in W^{{(2)}}", col)
    if isinstance(base, Sym):
        # (W^{(2)})^T: scripts outside parentheses join those inside
        if (base.indices and indices) or (base.layer and layer) or \
                (base.power != 1 and power != 1):
            raise ClaimError("a symbol with two sets of indices, layers or powers", col)
        if base.power != 1 and (transpose or indices):
            return Post(col, base, transpose, power)
        return Sym(base.col, base.name, base.decor, base.indices or indices,
                   base.layer or layer, base.transpose != transpose,
                   base.power if base.power != 1 else power)
    if indices or layer:
        raise ClaimError("indices or a layer label on a compound expression", col)
    return Post(col, base, transpose, power)
