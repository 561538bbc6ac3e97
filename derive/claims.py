"""Textbook LaTeX claims -> a small syntax tree.  The grammar (claim_grammar.lark, read by
lark's Earley parser) covers the notation backprop texts use: hats and bars, ^T, layer
superscripts ^{(l)} (numbers, or the symbolic l, l+1, l-1 and L), \\odot, \\sum_i,
\\frac{\\partial L}{\\partial z}, \\partial L / \\partial z, \\nabla_{a} C, Jacobians
\\frac{\\partial y_i}{\\partial z_j}, \\mathbf{1}, indicators [z > 0], \\sqrt{...}, and the
functions of claims.FUNCTIONS with primes and powers.  Anything outside it is refused with
the column where reading stopped and what to write instead; nothing is guessed."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import lark

LOSS_NAMES = {"L", "C", "J", "E", r"\mathcal{L}"}

# LaTeX function names -> the function a claim means (verify.py gives each its formula)
FUNCTIONS = {r"\sigma": "sigmoid", r"\tanh": "tanh", r"\log": "log", r"\ln": "log",
             r"\exp": "exp", r"\sqrt": "sqrt", r"\Phi": "normcdf", r"\phi": "normpdf",
             r"\max": "max", r"\min": "min", "f": "f"}
# \operatorname{...} and \mathrm{...} names, lower-cased
NAMED_FUNCTIONS = {"relu": "relu", "softplus": "softplus", "sigmoid": "sigmoid",
                   "tanh": "tanh", "exp": "exp", "log": "log", "erf": "erf", "sign": "sign",
                   "sgn": "sign", "max": "max", "min": "min"}
TWO_ARGUMENTS = {"max", "min"}
KINKED = {"max", "min", "sign"}          # no derivative at a point: refuse f'(...)


class ClaimError(ValueError):
    """The claim could not be read (or names what this layer does not have)."""

    def __init__(self, message: str, col: int | None = None):
        self.col = col
        self.message = message
        super().__init__(f"column {col}: {message}" if col else message)


@dataclass(frozen=True)
class Node:
    col: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Sym(Node):
    name: str = ""                 # 'x', 'W', '\\delta', 'y' (with decor 'hat')
    decor: str = ""                # hat, bar, tilde, vec, or '' ; fonts are dropped
    indices: tuple = ()            # explicit subscript indices, e.g. ('n', 'j')
    layer: str = ""                # '2' from ^{(2)} or _2; 'l', 'l+1', 'l-1', 'L' symbolic
    transpose: bool = False
    power: Fraction = Fraction(1)


@dataclass(frozen=True)
class Num(Node):
    value: float = 0.0


@dataclass(frozen=True)
class Grad(Node):                  # dL/dX
    of: Sym = None


@dataclass(frozen=True)
class Jacobian(Node):              # dY_i/dX_j: a local derivative
    of: Sym = None
    wrt: Sym = None


@dataclass(frozen=True)
class Bin(Node):
    op: str = ""                   # + - * odot / oslash ('*': matrix product or elementwise)
    a: Node = None
    b: Node = None


@dataclass(frozen=True)
class Neg(Node):
    a: Node = None


@dataclass(frozen=True)
class Post(Node):                  # transpose / power applied to a compound expression
    a: Node = None
    transpose: bool = False
    power: Fraction = Fraction(1)


@dataclass(frozen=True)
class Func(Node):
    name: str = ""                 # a value of FUNCTIONS / NAMED_FUNCTIONS
    args: tuple = ()
    prime: bool = False
    power: Fraction = Fraction(1)  # \tanh^2(z)


@dataclass(frozen=True)
class SumOver(Node):
    index: tuple = ()
    body: Node = None


@dataclass(frozen=True)
class Ones(Node):                  # \mathbf{1}: a column of ones, its length from context
    pass


@dataclass(frozen=True)
class Indicator(Node):             # [a > b]: 1 where the comparison holds, else 0
    op: str = ">"
    a: Node = None
    b: Node = None


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
    try:
        tree = _parser().parse(clean)
    except lark.exceptions.UnexpectedCharacters as exc:
        snippet = clean[exc.column - 1: exc.column + 11]
        raise ClaimError(f"cannot read the claim from '{snippet}': {_advice(clean)}",
                         exc.column) from None
    except lark.exceptions.UnexpectedEOF:
        why = _advice(clean)
        raise ClaimError("the claim ends too early " + (
            f"({why})" if why.startswith("\\") else
            "(an unclosed brace or a missing operand?)"), len(clean)) from None
    except lark.exceptions.UnexpectedInput as exc:
        raise ClaimError("cannot read the claim here: unexpected "
                         f"'{getattr(exc, 'token', '?')}'", getattr(exc, "column", None)) \
            from None
    lhs, rhs = (_build(c) for c in tree.children)
    for side in (lhs, rhs):
        stray = next((n for n in walk(side) if isinstance(n, _Partial)), None)
        if stray is not None:
            raise ClaimError(r"\partial belongs in a derivative: write "
                             r"\frac{\partial L}{\partial z} or \partial L / \partial z",
                             stray.col)
    return Claim(lhs, rhs, clean)


_ADVICE = (
    (r"\\phi(?!\s*(\\left|\\big|\\Big)?\()",
     r"\phi is the normal density and needs an argument, as in \phi(z)"),
    (r"\\Phi(?!\s*(\\left|\\big|\\Big)?\()",
     r"\Phi is the normal distribution function and needs an argument, as in \Phi(z)"),
    (r"\\sigma\s*\^\s*\{?\s*2",
     r"\sigma is the logistic function: write a variance as a tensor of the layer (as v in "
     r"batchnorm) or --map it"),
    (r"\\(max|min)\s*_",
     r"a maximum over an index is not supported: write \max(a, b) of two terms, or "
     r"\operatorname{ReLU}(z) for \max(0, z)"),
    (r"\\int", "integrals are not supported"),
)


def _advice(text: str) -> str:
    """What to write instead of notation the grammar does not cover."""
    for pattern, advice in _ADVICE:
        if re.search(pattern, text):
            return advice
    return ("not part of the supported notation (the README's verify section lists it)")


def walk(node):
    """Every node of a claim's syntax tree."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        for f in dataclasses.fields(n) if dataclasses.is_dataclass(n) else ():
            v = getattr(n, f.name)
            if isinstance(v, Node):
                stack.append(v)
            elif isinstance(v, tuple):
                stack.extend(x for x in v if isinstance(x, Node))


def replace_syms(node, fn):
    """The tree with every Sym s replaced by fn(s) (iteratively: claims may be long)."""
    if isinstance(node, Sym):
        return fn(node)
    if not dataclasses.is_dataclass(node):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        v = getattr(node, f.name)
        if isinstance(v, Node):
            changes[f.name] = replace_syms(v, fn)
        elif isinstance(v, tuple) and any(isinstance(x, Node) for x in v):
            changes[f.name] = tuple(replace_syms(x, fn) for x in v)
    return dataclasses.replace(node, **changes) if changes else node


SYMBOLIC_LAYER = re.compile(r"([lL])([+-]\d+)?")


def symbolic_layers(claim: Claim) -> set[str]:
    """The symbolic layer letters ('l', 'L') a claim uses."""
    return {m.group(1) for side in (claim.lhs, claim.rhs) for n in walk(side)
            if isinstance(n, Sym) and (m := SYMBOLIC_LAYER.fullmatch(n.layer))}


def at_layer(claim: Claim, letter: str, value: int | None) -> Claim:
    """The claim with layer label `letter` (+- k) set to value (+- k); None: no label (a
    layer without numbered tensors)."""
    def fix(s: Sym) -> Sym:
        m = SYMBOLIC_LAYER.fullmatch(s.layer)
        if not m or m.group(1) != letter:
            return s
        if value is None:
            if m.group(2):
                raise ClaimError(f"the label {s.layer} needs numbered layers "
                                 f"(W1, W2, ...)", s.col)
            return dataclasses.replace(s, layer="")
        return dataclasses.replace(s, layer=str(value + int(m.group(2) or 0)))

    return Claim(replace_syms(claim.lhs, fix), replace_syms(claim.rhs, fix), claim.text)


def _col(tree) -> int:
    meta = getattr(tree, "meta", None)
    return getattr(meta, "column", 0) if meta is not None and not meta.empty else 0


_BINARY = {"add": "+", "sub": "-", "mul": "*", "juxt": "*", "hadamard": "odot",
           "div": "/", "ediv": "oslash"}


def _build(t) -> Node:
    # left-nested chains (a + b + c ..., products of many factors) are built in a loop:
    # a claim of a thousand factors must not exhaust Python's recursion limit
    if isinstance(t, lark.Tree) and t.data in _BINARY:
        chain = []
        while isinstance(t, lark.Tree) and t.data in _BINARY:
            chain.append(t)
            t = t.children[0]
        node = _build(t)
        for link in reversed(chain):
            node = _binary(link, node)
        return node
    if isinstance(t, lark.Token):
        if t.type in ("LETTER", "GREEK", "SINGLE"):
            return Sym(t.column, str(t))
        if t.type == "NUMBER":
            return Num(t.column, float(t))
        raise ClaimError(f"unexpected '{t}'", t.column)
    kind = t.data
    col = _col(t)
    kids = list(t.children)
    if kind == "neg":
        return Neg(col, _build(kids[0]))
    if kind == "number":
        return Num(col, float(kids[0]))
    if kind == "paren":
        return _build(kids[1])
    if kind == "symbol":
        return Sym(col, str(kids[0]))
    if kind == "decorated":
        decor = str(kids[0]).lstrip("\\")
        inner = kids[1]
        if isinstance(inner, lark.Tree):       # \bar{\hat{x}}: the adjoint of xhat
            sym = _build(inner)
            return Sym(col, sym.name, f"{decor} {sym.decor}".strip())
        return Sym(col, str(inner), decor=decor)
    if kind == "font":
        font, letter = str(kids[0]), str(kids[1])
        if font == r"\mathcal":
            return Sym(col, r"\mathcal{" + letter + "}")
        return Sym(col, letter)
    if kind == "ones":
        return Ones(col)
    if kind == "iverson":
        (cmp,) = [k for k in kids if isinstance(k, lark.Tree)]
        a, op, b = cmp.children
        op = {r"\ge": ">=", r"\geq": ">=", r"\le": "<=", r"\leq": "<="}.get(str(op), str(op))
        return Indicator(col, op, _build(a), _build(b))
    if kind == "scripted":
        return _scripted(_build(kids[0]), kids[1:], col)
    if kind == "sqrt":
        return Func(col, "sqrt", (_build(kids[1]),))
    if kind == "frac":
        num, den = _build(kids[1]), _build(kids[2])
        return _derivative(num, den, col) or Bin(col, "/", num, den)
    if kind == "partial":
        return _Partial(col, _build(kids[1]))
    if kind == "nabla":
        of, loss = _build(kids[-2]), _build(kids[-1])
        if not isinstance(of, Sym):
            raise ClaimError(r"write the gradient as \nabla_{a} L (one tensor, the loss)", col)
        if not (isinstance(loss, Sym) and _loss_name(loss)):
            raise ClaimError(r"\nabla is read only for the loss (L, C, J, E, \mathcal{L}): "
                             r"write a local derivative as a Jacobian, "
                             r"\frac{\partial y_i}{\partial x_j}", col)
        return Grad(col, of)
    if kind == "function":
        return _function(kids, col)
    if kind == "sum":
        where, text = _script_text(kids[1])
        if where != "_" or not re.fullmatch(r"[a-z](,[a-z])*", text.replace(" ", "")):
            raise ClaimError(r"write a sum as \sum_{i} or \sum_{n,i} (index letters)", col)
        return SumOver(col, tuple(text.replace(" ", "").split(",")), _build(kids[2]))
    raise ClaimError("this notation is not supported here", col)


def _binary(t, a) -> Node:
    kind, col = t.data, _col(t)
    b = _build(t.children[-1])
    if kind == "div":
        return _derivative(a, b, col) or Bin(col, "/", a, b)
    return Bin(col, _BINARY[kind], a, b)


def _derivative(num, den, col):
    """dL/dX as Grad, dY/dX as Jacobian; None when the fraction has no \\partial."""
    if not (isinstance(num, _Partial) or isinstance(den, _Partial)):
        return None
    if not (isinstance(num, _Partial) and isinstance(den, _Partial)):
        raise ClaimError(r"\partial must appear in both parts of the fraction", col)
    if not isinstance(den.of, Sym):
        raise ClaimError("the derivative must be taken with respect to one tensor", col)
    if not isinstance(num.of, Sym):
        raise ClaimError("a derivative of one tensor: the loss (L, C, J, E or "
                         r"\mathcal{L}), or a tensor of the layer (a Jacobian, "
                         r"\frac{\partial y_i}{\partial z_j})", col)
    if _loss_name(num.of):
        return Grad(col, den.of)
    return Jacobian(col, num.of, den.of)


def _function(kids, col) -> Node:
    token = str(kids[0])
    m = re.fullmatch(r"\\(?:operatorname|mathrm)\{([A-Za-z]+)\}", token)
    if m:
        name = NAMED_FUNCTIONS.get(m.group(1).lower())
        if name is None:
            known = ", ".join(sorted(set(NAMED_FUNCTIONS)))
            raise ClaimError(f"unknown function '{m.group(1)}': \\operatorname{{...}} knows "
                             f"{known}; other functions: \\sigma, \\tanh, \\log, \\exp, "
                             r"\sqrt, \Phi, \phi, \max, \min", col)
    else:
        name = FUNCTIONS[token]
    scripts = [k for k in kids[1:] if isinstance(k, lark.Tree)
               and k.data in ("prime", "script")]
    args = [_build(k) for k in kids[1:] if not isinstance(k, lark.Token)
            and k not in scripts]
    prime, power = False, Fraction(1)
    for s in scripts:
        mark, text = _script_text(s)
        if mark == "'":
            prime = True
        elif mark == "^" and re.fullmatch(r"\d+", text):
            power = Fraction(int(text))
        elif mark == "_" and name in TWO_ARGUMENTS:
            raise ClaimError(rf"a {name}imum over an index (\{name}_{text}) is not "
                             rf"supported: write \{name}(a, b) of two terms, or "
                             r"\operatorname{ReLU}(z) for \max(0, z)", col)
        else:
            raise ClaimError(f"unexpected script {mark}{{{text}}} on {token}: a function "
                             r"takes a prime (\sigma'(z)) or a power (\tanh^2(z))", col)
    want = 2 if name in TWO_ARGUMENTS else 1
    if len(args) != want:
        raise ClaimError(f"{token} takes {want} argument{'s' if want > 1 else ''}, "
                         f"got {len(args)}", col)
    if prime and name in KINKED:
        raise ClaimError(f"{token} has no derivative at its kink; write the derivative out, "
                         r"e.g. \mathbb{1}[z > 0] for \max(0, z)", col)
    return Func(col, name, tuple(args), prime, power)


@dataclass(frozen=True)
class _Partial(Node):
    of: Node = None


def _loss_name(s: Sym) -> bool:
    return s.name in LOSS_NAMES and not s.indices and not s.decor


def _script_text(script) -> tuple[str, str]:
    if script.data == "prime":
        return "'", ""
    mark, group = script.children
    text = "".join(str(c) for c in group.children) if isinstance(group, lark.Tree) \
        else str(group)
    return str(mark), text.strip()


_LABEL = r"[lL]\s*(?:[+-]\s*\d+)?"
_SUPERSCRIPT = re.compile(rf"\(\s*(?:\d+|{_LABEL})\s*\)|\[\s*(?:\d+|{_LABEL})\s*\]|"
                          rf"{_LABEL}|\\top|T|-?\d+(?:/\d+)?|\\odot|"
                          r"-?\s*\\[dt]?frac\{\d+\}\{\d+\}|\S")


# one slot of a shifted subscript: integer multiples of index letters plus an integer
_TERM = r"(?:\d*\s*[a-z]|\d+)"
_SHIFTED = re.compile(rf"\s*-?\s*{_TERM}(?:\s*[+-]\s*{_TERM})*\s*")


def _scripted(base: Node, scripts, col) -> Node:
    indices, layer, transpose, power = (), "", False, Fraction(1)
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
            elif all(_SHIFTED.fullmatch(part) for part in text.split(",")):
                # X_{i+r, j+s}: a shifted read (a convolution's), each slot kept as text
                indices = tuple(re.sub(r"\s", "", part) for part in text.split(","))
            else:
                raise ClaimError(f"subscript '{text}': expected index letters (jk or j,k), "
                                 f"shifted indices (i+r, j-s) or a layer number", col)
            continue
        for part in _SUPERSCRIPT.findall(text):
            label = re.sub(r"[\s()\[\]]", "", part)
            if part in ("T", r"\top"):
                transpose = not transpose
            elif re.fullmatch(r"\d+", label) and part != label:
                layer = label                                    # (2) or [2]
            elif SYMBOLIC_LAYER.fullmatch(label):
                layer = label                                    # l, l+1, (l-1), L
            elif re.fullmatch(r"-?\d+(/\d+)?", part):
                power = Fraction(part)
            elif part == r"\odot":
                continue                                         # x^{\odot 2}: elementwise
            elif "frac" in part:                                 # x^{\frac{3}{2}}
                p, q = re.findall(r"\d+", part)
                power = Fraction(int(p), int(q)) * (-1 if part.startswith("-") else 1)
            else:
                raise ClaimError(f"superscript '{part}': expected a layer, as in W^{{(2)}} or "
                                 f"W^{{l}}, a transpose ^T, or a power ^2", col)
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
