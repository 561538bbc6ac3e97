"""Spec text -> Layer.  The text is data: Python's `ast` parses each expression and a
whitelist of node types turns it into SymPy; nothing is eval'd, exec'd or sympified.

Statements, one per line (`#` starts a comment; a statement continues onto the next line
while a bracket is open or after a trailing backslash):

    layer NAME [free text describing it]
    dims N, I, J
    input x[N, J]          (also: param, target, output, intermediate)
    loss L                 (a scalar output; the backward pass seeds dL = 1)
    given sum(t[n, i], i) = 1
    z[n, i] = W[i, j] * x[n, j] + b[i]

Summation rule (Einstein, made strict): an index that is not on the left-hand side and not
bound by an enclosing sum(expr, k, ...) is summed over the smallest additive term in which
it is a plain factor, where the scopes are the right-hand side, each function argument and
each sum body: W[i, j] * x[n, j] sums j over that product, sigmoid(W[i, j] * x[n, j])
sums it inside the sigmoid.  An index that appears only inside parentheses, a denominator
or a power has no such term: that is an error that says to write sum(...).
"""
from __future__ import annotations

import ast
import dataclasses
import operator
import re
from pathlib import Path

import sympy as sp

from .affine import extremes, proven_nonnegative
from .errors import SpecError
from .functions import FUNCTIONS
from .piecewise import SPECIAL, ArgMaxOver, MaxOver, absolute, maximum, min_over, minimum, where
from .indices import free_indices as _free_indices
from .network import is_network
from .names import did_you_mean, layer_name_problem, name_problem
from .pretty import formula
from .spec import ROLES, Condition, Equation, Layer, Tensor, dim_symbol, index
from . import recurrence

MAX_LINE = 2000          # characters; a longer statement is refused, not parsed
MAX_EXPONENT = 64        # literal exponents beyond this are refused (10**10**10 would hang)
DECL_KEYWORDS = ROLES + ("loss",)
OTHER_KEYWORDS = ("layer", "dims", "given", "example", "nograd", "const", "outside", "initial",
                  "section")
SINGLE_EQUALS = re.compile(r"(?<![=<>!])=(?!=)")
EMPTY_BRACKETS = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\[\s*\]")


class _Statement:
    """One statement; `pieces` maps it back to the lines it was written on: (offset in
    text, line, offset in that line) for each line a continued statement spans."""

    def __init__(self, file: str, line: int, text: str, pieces=None):
        self.file, self.line, self.text = file, line, text
        self.pieces = pieces or [(0, line, 0)]

    def error(self, message: str, col: int | None = None) -> SpecError:
        if col is None:
            return SpecError(message, self.file, self.line)
        start, line, at = [p for p in self.pieces if p[0] <= max(col - 1, 0)][-1]
        return SpecError(message, self.file, line, col - start + at)


def _statements(text: str, file: str):
    """The statements of a spec: one per line, where a line continues onto the next while
    a bracket is open or when it ends in a backslash (`layer` lines are free text)."""
    pending = None                      # (text so far, pieces)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        body = raw.split("#", 1)[0].rstrip()
        bad = next((c for c, ch in enumerate(body) if not (ch.isascii() and
                    (ch.isprintable() or ch == "\t"))), None)
        if bad is not None:
            raise SpecError(f"unexpected character {body[bad]!r}; spec statements use "
                            f"printable ASCII only", file, lineno, bad + 1)
        if not body.strip():
            continue
        if pending is None:
            joined, pieces = body, [(0, lineno, 0)]
        else:                           # joined by one space; columns still map back
            joined, pieces = pending[0].rstrip() + " ", pending[1]
            indent = len(body) - len(body.lstrip())
            pieces.append((len(joined), lineno, indent))
            joined += body.lstrip()
        stmt = _Statement(file, pieces[0][1], joined, pieces)
        if len(joined) > MAX_LINE:
            raise stmt.error(f"statement is longer than {MAX_LINE} characters; name parts "
                             f"of it as intermediates (and continue a long one over lines "
                             f"inside brackets)")
        if joined.endswith("\\"):
            pending = (joined[:-1], pieces)
        elif joined.split(None, 1)[0] != "layer" and _unclosed(joined):
            pending = (joined, pieces)
        else:
            pending = None
            yield stmt, joined
    if pending is not None:
        stmt = _Statement(file, pending[1][0][1], pending[0], pending[1])
        opened = _unclosed(pending[0])
        if opened:
            raise stmt.error(f"'{pending[0][opened[-1]]}' is never closed: the statement "
                             f"goes on to the end of the file", opened[-1] + 1)
        raise stmt.error("the last line ends in a backslash, but no line follows")


def _unclosed(text: str) -> list[int]:
    """Positions of the brackets still open at the end of text."""
    stack = []
    for pos, ch in enumerate(text):
        if ch in "([{":
            stack.append(pos)
        elif ch in ")]}" and stack:
            stack.pop()
    return stack


def parse_spec(text: str, file: str = "<spec>", constants: dict | None = None) -> Layer:
    """Parse spec text into a validated Layer; every problem is a SpecError.

    `constants` overrides the values of the spec's `const` statements (a convolution's
    stride S=2, padding P=1): the Layer's source is the text with those values written in.
    """
    if not isinstance(text, str):
        raise SpecError("spec text must be a string", file)
    text = text.removeprefix("\ufeff")   # a byte-order mark some editors write
    if is_network(text):                  # layers composed by name: derive/network.py
        from .network import parse_network

        return parse_network(text, file, constants)
    try:
        return _Parser(text, file, constants).parse()
    except RecursionError:
        raise SpecError("expression is too deeply nested", file) from None


def load_spec(path: str | Path, constants: dict | None = None) -> Layer:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file: {exc}", str(path)) from None
    return parse_spec(text, str(path), constants)


class _Parser:
    def __init__(self, text: str, file: str, overrides: dict | None = None):
        self.text, self.file = text, file
        self.overrides = dict(overrides or {})
        self.rewrites: list[tuple[int, int, int, str]] = []   # (line, start, end, value)
        self.name: str | None = None
        self.doc = ""
        self.dims: dict[str, int] = {}          # name -> declaring line
        self.tensors: dict[str, Tensor] = {}
        self.loss: str | None = None
        self.equations: list[Equation] = []
        self.conditions_src: list[tuple[_Statement, str, int]] = []
        self.example: dict[str, float] = {}
        self.constants: dict[str, int] = {}      # const S = 2: substituted as numbers
        self.dim_defs: dict[str, sp.Expr] = {}   # dims Lout = (L - K) // S + 1
        self.dim_formulas: dict[str, sp.Expr] = {}   # the same with S a symbol
        self.reads_to_check: list = []            # shifted reads, checked at the end
        self.initial: dict[str, tuple] = {}       # recurrent tensor -> (state, stmt, col)
        self.section = ""                         # the layer of a network, for documents
        self.sections: dict[str, str] = {}        # section name -> its description

    # ---- statements -------------------------------------------------------------------
    def parse(self) -> Layer:
        for stmt, body in _statements(self.text, self.file):
            self._statement(stmt, body)
        return self._finish()

    def _statement(self, stmt: _Statement, body: str) -> None:
        stripped = body.lstrip()
        start = len(body) - len(stripped)
        word = stripped.split(None, 1)[0]
        rest_col = start + len(word)
        rest = body[rest_col:]
        if self.name is None and word != "layer":
            raise stmt.error("a spec starts with 'layer NAME'", start + 1)
        if word == "layer":
            self._layer(stmt, rest, rest_col)
        elif word == "dims":
            self._dims(stmt, rest, rest_col)
        elif word in DECL_KEYWORDS:
            self._declare(stmt, word, rest, rest_col)
        elif word == "given":
            self.conditions_src.append((stmt, rest, rest_col))
        elif word == "example":
            self._example(stmt, rest, rest_col)
        elif word == "nograd":
            self._nograd(stmt, rest, rest_col)
        elif word == "const":
            self._const(stmt, rest, rest_col)
        elif word == "outside":
            self._outside(stmt, rest, rest_col)
        elif word == "initial":
            self._initial(stmt, rest, rest_col)
        elif word == "section":
            self._section(stmt, rest, rest_col)
        else:
            self._equation(stmt, body)

    def _layer(self, stmt, rest, col):
        if self.name is not None:
            raise stmt.error("'layer' appears twice", 1)
        parts = rest.split(None, 1)
        if not parts:
            raise stmt.error("'layer' needs a name", col + 1)
        problem = layer_name_problem(parts[0])
        if problem:
            raise stmt.error(problem, col + rest.index(parts[0]) + 1)
        self.name = parts[0]
        self.doc = parts[1].strip() if len(parts) > 1 else ""

    def _section(self, stmt, rest, col):
        """section NAME [description]: the equations after it come from one layer of a
        network (derive/network.py writes these); documents group the gradients by it."""
        parts = rest.split(None, 1)
        problem = layer_name_problem(parts[0]) if parts else "'section' needs a name"
        if problem:
            raise stmt.error(problem, col + 1)
        if parts[0] in self.sections:
            raise stmt.error(f"section '{parts[0]}' appears twice", col + 1)
        self.section = parts[0]
        self.sections[parts[0]] = parts[1].strip() if len(parts) > 1 else ""

    def _dims(self, stmt, rest, col):
        """dims N, C, L, K, Lout = (L + 2*P - K) // S + 1: names, and derived dimensions
        defined by integer arithmetic of earlier ones and constants (floor division)."""
        for text, c in _items(rest, col):
            name, _, definition = text.partition("=")
            sh = self._parse_expr(stmt, name, c)
            if not isinstance(sh.node, ast.Name):
                raise stmt.error("'dims' takes a comma-separated list of names, each "
                                 "optionally defined: Lout = (L - K) // S + 1",
                                 sh.col(sh.node))
            self._check_name(stmt, sh.node.id, sh.col(sh.node))
            self._check_new(stmt, sh.node.id, sh.col(sh.node))
            if definition.strip():
                at = c + len(name) + 1
                value = self._dim_definition(stmt, self._parse_expr(stmt, definition, at))
                if value.is_Integer and value < 1:
                    raise stmt.error(f"dimension {sh.node.id} = {value}: a dimension is at "
                                     f"least 1", at + 1)
                self.dim_defs[sh.node.id] = value
                self.dim_formulas[sh.node.id] = self._dim_definition(
                    stmt, self._parse_expr(stmt, definition, at), general=True)
            self.dims[sh.node.id] = stmt.line

    def _dim_definition(self, stmt, sh, general=False) -> sp.Expr:
        """Integer arithmetic of dimensions and constants: + - * and // (floor).
        `general`: the constants kept as symbols (for documents), the checks made once."""
        def conv(node):
            if isinstance(node, ast.BinOp):
                a, b = conv(node.left), conv(node.right)
                op = type(node.op)
                if op in _ARITH:
                    return _ARITH[op](a, b)
                if op is ast.FloorDiv:
                    if not general and not (b.is_Integer and b > 0):
                        named = node.right.id if isinstance(node.right, ast.Name) else None
                        what = f"{named} = {b}" if named in self.constants else str(b)
                        raise stmt.error(f"floor division in a dimension is by a positive "
                                         f"integer constant, not {what}"
                                         + (" (a stride is at least 1)" if named else ""),
                                         sh.col(node.right))
                    return sp.floor(a / b)
                if op is ast.Div:
                    raise stmt.error("a dimension's size is an integer: write // (floor "
                                     "division, as PyTorch computes output sizes), not /",
                                     sh.col(node))
                raise stmt.error("a dimension is defined with + - * and // only",
                                 sh.col(node))
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                return -conv(node.operand)
            if isinstance(node, ast.Constant) and type(node.value) is int:
                return sp.Integer(node.value)
            if isinstance(node, ast.Name):
                if node.id in self.constants:
                    return sp.Symbol(node.id, integer=True) if general else \
                        sp.Integer(self.constants[node.id])
                if node.id in self.dims:
                    return dim_symbol(node.id)
                raise stmt.error(f"'{node.id}' is not a dimension or constant declared "
                                 f"before this line", sh.col(node))
            raise stmt.error("a dimension is defined by integer arithmetic of dimensions "
                             "and constants", sh.col(node))
        return conv(sh.node)

    def _const(self, stmt, rest, col):
        """const S = 2, P = 1: integer constants, written into subscripts and dimension
        definitions as their values."""
        for text, c in _items(rest, col):
            m = re.fullmatch(r"(\s*)([A-Za-z][A-Za-z0-9_]*)\s*=\s*(-?\s*\d+)\s*", text)
            if not m:
                raise stmt.error("const takes 'NAME = integer' pairs separated by commas, "
                                 "e.g. const S = 2, P = 1",
                                 c + len(text) - len(text.lstrip()) + 1)
            name, where = m.group(2), c + len(m.group(1)) + 1
            self._check_name(stmt, name, where)
            self._check_new(stmt, name, where)
            if name in self.constants:
                raise stmt.error(f"constant '{name}' is declared twice", where)
            value = int(m.group(3).replace(" ", ""))
            if name in self.overrides:
                value = self.overrides[name]
                try:                       # any integer type: np.int64(2) too, not 2.0
                    value = operator.index(value) if not isinstance(value, bool) else None
                except TypeError:
                    value = None
                if value is None:
                    raise SpecError(f"constant {name} must be set to an integer, not "
                                    f"{self.overrides[name]!r}", self.file, stmt.line)
                start = c + m.start(3)
                self.rewrites.append((stmt.line, start, c + m.end(3), str(value)))
            if abs(value) > 10**6:
                raise stmt.error(f"constant {name} = {value} is too large", where)
            self.constants[name] = value

    def _outside(self, stmt, rest, col):
        """outside x = 0: reads of x outside its range give 0 (zero padding)."""
        m = re.fullmatch(r"(\s*)([A-Za-z][A-Za-z0-9_]*)\s*=\s*(\S+)\s*", rest)
        if not m:
            raise stmt.error("outside takes 'TENSOR = 0': what reads outside the tensor's "
                             "range give (zero padding)", col + 1)
        name, where = m.group(2), col + len(m.group(1)) + 1
        t = self.tensors.get(name)
        if t is None:
            raise stmt.error(f"'{name}' is not declared (declare it before 'outside')", where)
        if t.role not in ("input", "param", "target") or t.values is not None:
            what = "a label" if t.values is not None else \
                ("an " if t.role[0] in "aeiou" else "a ") + t.role
            raise stmt.error(f"'{name}' is {what}: "
                             f"only arrays the layer reads from its caller can be padded",
                             where)
        if m.group(3) != "0":
            raise stmt.error("only zero padding is supported: write 'outside "
                             f"{name} = 0'", col + rest.index(m.group(3)) + 1)
        self.tensors[name] = dataclasses.replace(t, outside=sp.Integer(0))

    def _initial(self, stmt, rest, col):
        """initial h = h0: h reads its own earlier steps (h[t - 1, ...]), and h0 holds the
        step before 0 (derive/recurrence.py)."""
        m = re.fullmatch(r"(\s*)([A-Za-z][A-Za-z0-9_]*)\s*=\s*([A-Za-z][A-Za-z0-9_]*)\s*",
                         rest)
        if not m:
            raise stmt.error("initial takes 'TENSOR = STATE': the tensor that reads its "
                             "earlier steps (h[t - 1, ...]) and the input holding the step "
                             "before 0, e.g. initial h = h0", col + 1)
        name, state = m.group(2), m.group(3)
        where, at = col + len(m.group(1)) + 1, col + m.start(3) + 1
        h, h0 = self.tensors.get(name), self.tensors.get(state)
        for n, t, c in ((name, h, where), (state, h0, at)):
            if t is None:
                raise stmt.error(f"'{n}' is not declared (declare it before 'initial')", c)
        if h.role not in ("output", "intermediate") or not h.dims:
            raise stmt.error(f"'{name}' is {_a(h.role)}{'' if h.dims else ' scalar'}: a "
                             f"recurrence is an output or intermediate whose first axis is "
                             f"time, like h[T, N, H]", where)
        if name in self.initial:
            raise stmt.error(f"'{name}' already has an initial state "
                             f"('{self.initial[name][0]}')", where)
        if h0.role not in ("input", "param") or h0.values is not None:
            raise stmt.error(f"the initial state '{state}' is {_a(h0.role)}: it must be an "
                             f"input or parameter the caller gives", at)
        if recurrence.depth(h, h0, self.dim_defs) is None:
            rest_dims = ", ".join(h.dims[1:])
            raise stmt.error(f"'{state}' has shape [{', '.join(h0.dims)}], but an initial "
                             f"state of {name}[{', '.join(h.dims)}] is {state}[{rest_dims}] "
                             f"(the step before 0) or {state}[D, {rest_dims}] with D "
                             f"defined as the number of steps it holds (dims D = 2)", at)
        self.initial[name] = (state, stmt, where)

    def _declare(self, stmt, role, rest, col):
        sh = self._parse_expr(stmt, rest, col)
        items = sh.node.elts if isinstance(sh.node, ast.Tuple) else [sh.node]
        for item in items:
            c = sh.col(item)
            values = None
            if isinstance(item, ast.Compare):         # t[N] in I: integers indexing I
                values = self._values_of(stmt, role, item, sh)
                item = item.left
            if isinstance(item, ast.Name):
                name, dims = item.id, ()
            elif isinstance(item, ast.Subscript) and isinstance(item.value, ast.Name):
                name = item.value.id
                slots = item.slice.elts if isinstance(item.slice, ast.Tuple) else [item.slice]
                dims = []
                for s in slots:
                    sc = sh.col(s)
                    if not isinstance(s, ast.Name):
                        raise stmt.error(f"dimensions of '{name}' must be names declared "
                                         f"with 'dims'", sc)
                    if s.id not in self.dims:
                        raise stmt.error(f"undeclared dimension '{s.id}' in the shape of "
                                         f"'{name}'; declare it with 'dims {s.id}'", sc)
                    dims.append(s.id)
                dims = tuple(dims)
            else:
                raise stmt.error(f"'{role}' takes declarations like x[N, J] or L", c)
            self._check_name(stmt, name, c)
            self._check_new(stmt, name, c)
            if role == "loss":
                if dims:
                    raise stmt.error(f"the loss '{name}' must be a scalar (no indices)", c)
                if self.loss is not None:
                    raise stmt.error(f"a layer has one loss; '{self.loss}' is already it", c)
                self.loss = name
                role = "output"
            self.tensors[name] = Tensor(name, role, dims, stmt.line, values)

    def _nograd(self, stmt, rest, col):
        """nograd lr, step: inputs or parameters the backward pass leaves alone
        (hyperparameters, optimizer state)."""
        sh = self._parse_expr(stmt, rest, col)
        items = sh.node.elts if isinstance(sh.node, ast.Tuple) else [sh.node]
        for item in items:
            c = sh.col(item)
            if not isinstance(item, ast.Name):
                raise stmt.error("'nograd' takes a comma-separated list of tensor names", c)
            t = self.tensors.get(item.id)
            if t is None:
                raise stmt.error(f"'{item.id}' is not declared (declare it before "
                                 f"'nograd')", c)
            if t.role not in ("input", "param"):
                raise stmt.error(f"'{item.id}' is declared as {t.role}; only inputs and "
                                 f"parameters have gradients to leave out", c)
            self.tensors[item.id] = dataclasses.replace(t, nograd=True)

    def _values_of(self, stmt, role, item, sh) -> str:
        c = sh.col(item)
        if len(item.ops) != 1 or not isinstance(item.ops[0], ast.In) \
                or not isinstance(item.comparators[0], ast.Name):
            raise stmt.error("an integer tensor is declared like t[N] in I (its values "
                             "index dimension I)", c)
        if role not in ("input", "target"):
            raise stmt.error(f"only inputs and targets can hold integer indices, not a "
                             f"{role}", c)
        dim = item.comparators[0].id
        if dim not in self.dims:
            raise stmt.error(f"undeclared dimension '{dim}' after 'in'; declare it with "
                             f"'dims {dim}'", sh.col(item.comparators[0]))
        return dim

    def _check_name(self, stmt, name, col):
        problem = name_problem(name)
        if problem:
            raise stmt.error(problem, col)

    def _check_new(self, stmt, name, col):
        if name in self.constants:
            raise stmt.error(f"'{name}' is already declared as a constant", col)
        if name in self.dims:
            raise stmt.error(f"'{name}' is already declared as a dimension on line "
                             f"{self.dims[name]}", col)
        if name in self.tensors:
            raise stmt.error(f"'{name}' is already declared on line "
                             f"{self.tensors[name].line}", col)
        if self.name == name:
            raise stmt.error(f"'{name}' is the layer's own name", col)

    def _parse_expr(self, stmt, source, col) -> ast.expr:
        stripped = source.strip()
        lead = len(source) - len(source.lstrip())
        if not stripped:
            raise stmt.error("expected an expression", col + 1)
        if "^" in stripped:
            raise stmt.error("'^' is not a power here; write ** for powers",
                             col + source.index("^") + 1)
        empty = EMPTY_BRACKETS.search(source)
        if empty:
            raise stmt.error(f"'{empty.group(1)}[]' has no indices: a scalar is written "
                             f"without brackets ('{empty.group(1)}')", col + empty.start() + 1)
        try:
            tree = ast.parse(stripped, mode="eval")
        except SyntaxError as exc:
            c = col + lead + (exc.offset or 1)
            raise stmt.error(f"cannot parse: {exc.msg}", c) from None
        except (ValueError, MemoryError) as exc:
            raise stmt.error(f"cannot parse: {exc}", col + lead + 1) from None
        for node in ast.walk(tree):            # 1e-400 underflows to 0 as it is parsed
            written = ast.get_source_segment(stripped, node) \
                if isinstance(node, ast.Constant) and node.value == 0 else None
            if written and re.search(r"[1-9]", written.lower().split("e")[0]):
                raise stmt.error(f"{written} is too small for a float (it would become 0); "
                                 f"write 0 if you mean it", col + lead + node.col_offset + 1)
        # Keep the column shift so errors point into the original line.
        return _Shifted(tree.body, col + lead)

    def _example(self, stmt, rest, col):
        """example x = 0.5, w = 0.8, N = 2: values for a document's worked example (an
        array is filled with its value) and sizes for its dimensions."""
        offset = col
        for item in rest.split(","):
            m = re.fullmatch(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(\S+)\s*", item)
            if not m:
                raise stmt.error("example takes 'name = number' pairs separated by commas",
                                 offset + 1)
            name, value = m.group(1), m.group(2)
            where = offset + item.index(name) + 1
            try:
                number = float(value)
            except ValueError:
                raise stmt.error(f"'{value}' is not a number", offset + item.index(value) + 1)\
                    from None
            if number != number or number in (float("inf"), float("-inf")):
                raise stmt.error("example values must be finite", where)
            if name in self.dims:
                if number != int(number) or not 1 <= number <= 16:
                    raise stmt.error(f"example size of {name} must be an integer from 1 to 16",
                                     where)
                self.example[name] = int(number)
            elif name in self.tensors and \
                    self.tensors[name].role in ("input", "param", "target"):
                t = self.tensors[name]
                if t.values is not None and (number != int(number) or number < 0):
                    raise stmt.error(f"'{name}' holds indices into {t.values}: its example "
                                     f"value must be an integer from 0", where)
                self.example[name] = number         # an array is filled with it
            else:
                raise stmt.error(f"'{name}' is not a dimension or an input, parameter or "
                                 f"target of this layer", where)
            offset += len(item) + 1

    # ---- equations --------------------------------------------------------------------
    def _split_equals(self, stmt, body) -> tuple[int, str, str]:
        hits = [m.start() for m in SINGLE_EQUALS.finditer(body)]
        if not body.strip():
            raise stmt.error("expected a condition like 'given sum(t[n, i], i) = 1'", 1)
        if not hits:
            word = body.split()[0]
            raise stmt.error(f"unknown statement '{word}': expected a declaration "
                             f"({', '.join(OTHER_KEYWORDS[:2] + DECL_KEYWORDS + OTHER_KEYWORDS[2:])}) "
                             f"or an equation 'name[...] = ...'", body.index(word) + 1)
        if len(hits) > 1:
            raise stmt.error("an equation has exactly one '='", hits[1] + 1)
        at = hits[0]
        return at, body[:at], body[at + 1:]

    def _equation(self, stmt, body):
        at, lhs_src, rhs_src = self._split_equals(stmt, body)
        lhs = self._parse_expr(stmt, lhs_src, 0)
        if isinstance(lhs.node, ast.Name):
            name, slots = lhs.node.id, []
        elif isinstance(lhs.node, ast.Subscript) and isinstance(lhs.node.value, ast.Name):
            name = lhs.node.value.id
            sl = lhs.node.slice
            slots = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        else:
            raise stmt.error("the left-hand side must be a tensor like z[n, i] or L",
                             lhs.col(lhs.node))
        lcol = lhs.col(lhs.node)
        tensor = self.tensors.get(name)
        if tensor is None:
            hint = "; declare it as output, intermediate or loss" if name not in self.dims \
                else " (it is a dimension)"
            raise stmt.error(f"undeclared tensor '{name}'{hint}", lcol)
        if tensor.role in ("input", "param", "target"):
            raise stmt.error(f"'{name}' is declared as {tensor.role} on line {tensor.line} "
                             f"and cannot be assigned", lcol)
        for eq in self.equations:
            if eq.target == name:
                raise stmt.error(f"'{name}' is assigned twice (first on line {eq.line})", lcol)
        scope = _Expr(self, stmt, lhs.shift)
        lhs_indices = scope.bind_lhs(tensor, slots, lcol)
        rhs = self._parse_expr(stmt, rhs_src, at + 1)
        scope.shift = rhs.shift
        expr = scope.rhs(rhs.node, lhs_indices)
        self.equations.append(Equation(name, tuple(lhs_indices), expr, stmt.line,
                                       body.strip(), self.section))

    # ---- conditions -------------------------------------------------------------------
    def _condition(self, stmt, rest, col) -> Condition:
        at, lhs_src, rhs_src = self._split_equals(stmt, " " * col + rest)
        lhs = self._parse_expr(stmt, lhs_src[col:], col)
        node = lhs.node
        form = ("a condition has the form sum(T[n, i], i) = value, e.g. one-hot rows "
                "'given sum(t[n, i], i) = 1'")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "sum" and len(node.args) == 2 and not node.keywords
                and isinstance(node.args[0], ast.Subscript)
                and isinstance(node.args[0].value, ast.Name)
                and isinstance(node.args[1], ast.Name)):
            raise stmt.error(form, lhs.col(node))
        sub, summed = node.args
        tname = sub.value.id
        tensor = self.tensors.get(tname)
        if tensor is None:
            raise stmt.error(f"undeclared tensor '{tname}'", lhs.col(sub))
        slots = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
        names = [s.id if isinstance(s, ast.Name) else None for s in slots]
        if None in names or len(set(names)) != len(names):
            raise stmt.error(form, lhs.col(sub))
        if len(names) != len(tensor.dims):
            raise stmt.error(f"'{tname}' has {len(tensor.dims)} indices "
                             f"[{', '.join(tensor.dims)}], not {len(names)}", lhs.col(sub))
        if summed.id not in names:
            raise stmt.error(f"the summed index '{summed.id}' is not an index of '{tname}'",
                             lhs.col(summed))
        rhs = self._parse_expr(stmt, rhs_src, at + 1)
        value = _Expr(self, stmt, rhs.shift).scalar(rhs.node)
        return Condition(tname, names.index(summed.id), value, stmt.line,
                         rest.strip())

    # ---- whole-layer checks -------------------------------------------------------------
    def _finish(self) -> Layer:
        if self.name is None:
            raise SpecError("empty spec: a spec starts with 'layer NAME'", self.file)
        unknown = sorted(set(self.overrides) - set(self.constants))
        if unknown:
            raise SpecError(f"'{unknown[0]}' is not a constant of layer {self.name}; its "
                            f"constants: {', '.join(self.constants) or 'none'}", self.file)
        conditions = tuple(self._condition(*c) for c in self.conditions_src)
        self._recurrences()
        unsafe = {check[2] for check in self.reads_to_check if not self._check_read(*check)}
        for t in list(self.tensors.values()):
            if t.outside is not None and t.name not in unsafe:
                # every read stays inside (padding 0): no read needs a guard
                self.tensors[t.name] = dataclasses.replace(t, outside=None)
        assigned = {eq.target for eq in self.equations}
        for t in self.tensors.values():
            if t.role in ("output", "intermediate") and t.name not in assigned:
                raise SpecError(f"{'loss' if t.name == self.loss else t.role} '{t.name}' "
                                f"is declared but no equation assigns it", self.file, t.line)
        if not any(t.role == "output" for t in self.tensors.values()):
            raise SpecError("the layer declares no output or loss", self.file)
        names = set(self.tensors) | set(self.dims)
        for t in self.tensors.values():
            problem = name_problem("d" + t.name) if t.role != "target" else None
            if problem and "reserved" not in problem:
                raise SpecError(f"the gradient of '{t.name}' would be named 'd{t.name}', but "
                                f"{problem.split(' ', 1)[1]}; rename '{t.name}'", self.file,
                                t.line)
            if "d" + t.name in names:
                raise SpecError(f"'d{t.name}' names the gradient of '{t.name}' but is "
                                f"already declared; rename one of them", self.file, t.line)
        readers = {}
        for eq in self.equations:
            for name in eq.reads:
                readers.setdefault(name, eq)
        if self.loss in readers:      # its adjoint is the seed 1, nothing else
            raise SpecError(f"the loss '{self.loss}' is read by the equation on line "
                            f"{readers[self.loss].line}; a loss is the last value computed",
                            self.file, self.tensors[self.loss].line)
        ordered = self._ordered()
        # sections in the order data flows through them (as their equations run)
        flow = list(dict.fromkeys(eq.section for eq in ordered if eq.section))
        sections = {s: self.sections[s] for s in flow + [s for s in self.sections
                                                        if s not in flow]}
        return Layer(self.name, self.doc, tuple(self.dims), dict(self.tensors),
                     tuple(ordered), conditions, self.loss, self._source(), self.file,
                     dict(self.example), dict(self.constants), dict(self.dim_defs), sections,
                     dim_formulas=dict(self.dim_formulas))

    def _recurrences(self):
        """Reads of earlier steps, h[t - d, ...], written as guarded reads of h and of its
        initial state (derive/recurrence.py); any other read of a later or unknown step is
        an error at its column."""
        for name, (state, _, _) in self.initial.items():
            h, h0 = self.tensors[name], self.tensors[state]
            self.tensors[name] = dataclasses.replace(h, initial=state)
        checks = {}
        for check in self.reads_to_check:
            checks.setdefault((check[0].line, check[2], check[4]), check)
        for pos, eq in enumerate(self.equations):
            sub, earlier, same = {}, set(), set()
            for read in sorted(eq.rhs.atoms(sp.Indexed), key=sp.default_sort_key):
                name = read.base.label.name
                if name not in self.initial:
                    continue
                state, _, _ = self.initial[name]
                h, h0 = self.tensors[name], self.tensors[state]
                time = read.indices[0]
                check = checks.get((eq.line, name, time))
                stmt, col = (check[0], check[1]) if check else (None, None)

                def fail(message):
                    if stmt is not None:
                        raise stmt.error(message, col)
                    raise SpecError(message, self.file, eq.line)
                written = check[5] if check else formula(time)
                back = recurrence.step_back(time, eq.indices)
                if back is None:
                    if _free_indices(time):
                        fail(f"{name}[{written}, ...]: a recurrence reads an earlier "
                             f"step as {name}[t - 1, ...], with t the left-hand side's "
                             f"index over {h.dims[0]}")
                    same.add(name)            # a fixed step (T - 1): read when complete
                    continue
                t, d = back
                if str(t.upper + 1) != h.dims[0]:
                    fail(f"index '{t}' runs over {t.upper + 1}, but {name}'s first axis "
                         f"(time) is {h.dims[0]}")
                if d < 0:
                    fail(f"{name}[{written}, ...] reads a later step; a recurrence "
                         f"reads only earlier ones ({name}[{t} - 1, ...])")
                if d == 0:
                    if name == eq.target:
                        fail(f"{name}[{t}, ...] reads the step it computes; the step "
                             f"before is {name}[{t} - 1, ...]")
                    same.add(name)
                    continue
                steps = recurrence.depth(h, h0, self.dim_defs)
                if d > steps:
                    fail(f"{name}[{written}, ...] reads {d} steps back, but the "
                         f"initial state '{state}' holds {steps} step"
                         f"{'s' if steps > 1 else ''} before 0; give it a leading axis "
                         f"of {d} steps ({state}[D, {', '.join(h0.dims[-len(h.dims) + 1:])}]"
                         f" with dims D = {d})")
                if check is not None:     # every read of this step on this line is checked
                    key = (eq.line, name, time)
                    self.reads_to_check = [c for c in self.reads_to_check
                                           if (c[0].line, c[2], c[4]) != key]
                sub[read] = recurrence.guarded_read(read, t, d, h0, steps)
                earlier.add(name)
            if sub:
                self.equations[pos] = dataclasses.replace(
                    eq, rhs=eq.rhs.xreplace(sub), earlier=frozenset(earlier - same),
                    written=eq.rhs)

    def _check_read(self, stmt, col, name, dim, expr, text, bound=None):
        """A shifted read stays inside its axis for every size, or the tensor declares
        what it reads as outside (zero padding)."""
        span = extremes(expr)
        top = dim_symbol(dim) - 1
        if span is not None and proven_nonnegative(span[0], self.dim_defs) \
                and proven_nonnegative(top - span[1], self.dim_defs):
            return True
        if self.tensors[name].outside is not None:
            return False
        if bound is not None:
            index, (other, at) = bound
            raise stmt.error(f"index '{index}' runs over {dim} here but over {other} at "
                             f"column {at}; an index has one dimension, or reads inside a "
                             f"larger axis when its range provably fits (e.g. dims {other} "
                             f"= {dim} - 1), or with 'outside {name} = 0'", col)
        where = f"runs from {formula(span[0])} to {formula(span[1])}" if span else "varies"
        if self.tensors[name].role in ("output", "intermediate") \
                and name not in self.initial and dim == self.tensors[name].dims[0]:
            raise stmt.error(f"{name}[{text}, ...] reads a step of {name} that may not "
                             f"exist; for a recurrence, declare the step before 0: "
                             f"'initial {name} = {name}0' with an input {name}0", col)
        raise stmt.error(f"{name}[..., {text}, ...] can read outside {name}: the subscript "
                         f"{where}, the axis {dim} from 0 to {formula(top)}; declare "
                         f"'outside {name} = 0' for zero padding, or define the output size "
                         f"so that reads stay inside (e.g. dims Lout = L - K + 1)", col)

    def _source(self) -> str:
        """The spec text, with overridden constants written in (it keys the kernel cache
        and heads the generated files)."""
        if not self.rewrites:
            return self.text
        lines = self.text.splitlines(keepends=True)
        for line, start, end, value in sorted(self.rewrites, reverse=True):
            row = lines[line - 1]
            lines[line - 1] = row[:start] + value + row[end:]
        return "".join(lines)

    def _ordered(self) -> list[Equation]:
        """Equations in dependency order; a cycle is an error naming its lines."""
        by_target = {eq.target: eq for eq in self.equations}
        order, state = [], {}

        def visit(eq, path):
            mark = state.get(eq.target)
            if mark == "done":
                return
            if mark == "open":
                cycle = path[path.index(eq.target):] + [eq.target]
                lines = ", ".join(str(by_target[n].line) for n in cycle[:-1])
                raise SpecError(f"the equations form a cycle: {' -> '.join(cycle)} "
                                f"(lines {lines})", self.file, eq.line)
            state[eq.target] = "open"
            for dep in sorted(eq.reads - eq.earlier):   # earlier steps are done by then
                if dep in by_target:
                    visit(by_target[dep], path + [eq.target])
            state[eq.target] = "done"
            order.append(eq)

        for eq in self.equations:
            visit(eq, [])
        return order


class _Shifted:
    """An ast node plus the column of its source text within the statement's line."""

    def __init__(self, node: ast.expr, shift: int):
        self.node, self.shift = node, shift

    def col(self, node) -> int:
        return self.shift + getattr(node, "col_offset", 0) + 1


class _Expr:
    """Converts one statement's ast to SymPy, binding each index to one dimension."""

    def __init__(self, parser: _Parser, stmt: _Statement, shift: int):
        self.p, self.stmt, self.shift = parser, stmt, shift
        self.bound: dict[str, tuple[str, int]] = {}   # index -> (dimension, column)
        self.lhs: set[str] = set()
        self.root = None                              # the right-hand side's ast

    def col(self, node) -> int:
        return self.shift + getattr(node, "col_offset", 0) + 1

    def err(self, message, node) -> SpecError:
        return self.stmt.error(message, self.col(node))

    # index bookkeeping
    def bind(self, name: str, dim: str, node) -> sp.Idx:
        if name in self.p.tensors or name in self.p.dims:
            kind = "dimension" if name in self.p.dims else "tensor"
            raise self.err(f"'{name}' is a {kind}, not an index", node)
        problem = name_problem(name)
        if problem:
            raise self.err(problem, node)
        seen = self.bound.get(name)
        if seen is not None and seen[0] != dim:
            raise self.err(f"index '{name}' runs over {dim} here but over {seen[0]} at "
                           f"column {seen[1]}; an index has one dimension", node)
        if seen is None:
            self.bound[name] = (dim, self.col(node))
        return index(name, dim)

    def bind_lhs(self, tensor: Tensor, slots, col) -> list[sp.Idx]:
        if len(slots) != len(tensor.dims):
            raise self.stmt.error(f"'{tensor.name}' has {len(tensor.dims)} indices "
                                  f"[{', '.join(tensor.dims)}], not {len(slots)}", col)
        out = []
        for s, dim in zip(slots, tensor.dims):
            if not isinstance(s, ast.Name):
                raise self.err("left-hand side indices must be plain names", s)
            if s.id in self.lhs:
                raise self.err(f"index '{s.id}' appears twice on the left-hand side", s)
            self.lhs.add(s.id)
            out.append(self.bind(s.id, dim, s))
        return out

    # expressions
    def rhs(self, node, lhs_indices) -> sp.Expr:
        self.root = node
        expr = self.scope(node, frozenset(self.lhs))
        used = {i.label.name for i in _free_indices(expr)}
        missing = [i for i in lhs_indices if i.label.name not in used]
        if missing:
            name = missing[0].label.name
            written = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            if name in written:
                raise self.err(f"left-hand index '{name}' cancels out: the right-hand side "
                               f"simplifies to {expr}, which does not depend on it", node)
            raise self.err(f"left-hand index '{name}' does not appear on the right-hand "
                           f"side; both sides must have the same free indices", node)
        return expr

    def scope(self, node, allowed: frozenset) -> sp.Expr:
        """One summation scope (the right-hand side, a function argument or a sum body):
        an index not bound outside is summed over the additive term of this scope in
        which it is a plain factor."""
        terms = []
        for sign, term in _additive_terms(node, +1):
            bare, stuck = {}, {}
            _index_uses(term, bare, stuck, outer=True)
            implicit = [n for n in bare if n not in allowed and n not in self.p.tensors
                        and n not in self.p.constants and n not in self.p.dims]
            inner = allowed | frozenset(implicit)
            expr = self.convert(term, inner)
            for name, where in stuck.items():
                if name not in inner and name not in self.p.tensors \
                        and name not in self.p.constants and name not in self.p.dims:
                    raise self.err(
                        f"index '{name}' is not bound here and appears only inside "
                        f"parentheses, a denominator or a power, so where its sum goes is "
                        f"ambiguous; write sum(..., {name})", where)
            summed = [index(n, self.bound[n][0]) for n in implicit]
            if summed:
                expr = sp.Sum(expr, *[(k, 0, k.upper) for k in summed])
            terms.append(sign * expr)
        return sp.Add(*terms)

    def scalar(self, node) -> sp.Expr:
        expr = self.convert(node, frozenset())
        if _free_indices(expr) or expr.atoms(sp.Indexed):
            raise self.err("a condition's value must be a constant", node)
        return expr

    def convert(self, node, allowed: frozenset) -> sp.Expr:
        """ast -> SymPy; `allowed` holds the index names in scope at this node."""
        expr = self._convert(node, allowed)
        if expr.has(sp.zoo, sp.nan, sp.oo, sp.I):
            raise self.err("this is not a finite real number (a division by zero, or the "
                           "root or log of a negative constant)", node)
        return expr

    def _convert(self, node, allowed: frozenset) -> sp.Expr:
        if isinstance(node, ast.BinOp):
            a = self.convert(node.left, allowed)
            b = self.convert(node.right, allowed)
            op = type(node.op)
            if op in _ARITH:
                return _ARITH[op](a, b)
            if op is ast.Div:
                return a / b
            if op is ast.Pow:
                # a tensor-valued exponent (x[n, i]**y[n, i], beta1**step) is any
                # expression; a number is bounded, as 10**10**10 would hang
                if b.is_Number and abs(b) > MAX_EXPONENT:
                    raise self.err(f"numeric exponents must be of size at most "
                                   f"{MAX_EXPONENT}", node.right)
                if a.is_Number and a == 0 and b.is_negative:
                    raise self.err("0 to a negative power", node)
                return sp.Pow(a, b)
            raise self.err(f"operator '{_OPS.get(op, op.__name__)}' is not part of the "
                           f"spec language (use + - * / **)", node)
        if isinstance(node, ast.UnaryOp):
            v = self.convert(node.operand, allowed)
            if isinstance(node.op, ast.USub):
                return -v
            if isinstance(node.op, ast.UAdd):
                return v
            raise self.err("only unary + and - are allowed", node)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.err(f"unexpected constant {v!r}; only numbers are allowed", node)
            if isinstance(v, float):
                if v != v or v in (float("inf"), float("-inf")):
                    raise self.err("numbers must be finite", node)
                text = repr(v)
                digits = len(text.replace("-", "").replace(".", "").split("e")[0].strip("0"))
                # Short decimals stay exact (0.5 -> 1/2); long ones (0.7978845608028654)
                # are floats, so products of constants do not grow 40-digit fractions.
                return sp.Rational(text) if digits <= 6 else sp.Float(text, 17)
            if abs(v) > 10**12:
                raise self.err("integer literal is too large", node)
            return sp.Integer(v)
        if isinstance(node, ast.Name):
            return self.name(node, allowed)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, allowed)
        if isinstance(node, ast.Call):
            return self.call(node, allowed)
        if isinstance(node, (ast.Compare, ast.BoolOp)):
            raise self.err(f"{_describe(node)} is allowed only as the condition of "
                           f"where(cond, a, b)", node)
        raise self.err(f"{_describe(node)} is not part of the spec language", node)

    def name(self, node, allowed):
        n = node.id
        if n in self.p.dims:
            return dim_symbol(n)
        t = self.p.tensors.get(n)
        if t is not None:
            if t.values is not None:
                raise self.err(f"'{n}' holds an integer index into {t.values}; use it only "
                               f"inside another tensor's brackets, like x[{n}]", node)
            if t.dims:
                raise self.err(f"'{n}' needs {len(t.dims)} indices [{', '.join(t.dims)}]",
                               node)
            return sp.Symbol(n)
        if n in self.bound or n in allowed:
            raise self.err(f"index '{n}' can only be used to index a tensor", node)
        if n in FUNCTIONS or n in SPECIAL or n == "sum":
            raise self.err(f"'{n}' is a function; call it like {n}(...)", node)
        raise self.err(f"undeclared name '{n}': not a tensor or dimension of this layer",
                       node)

    def subscript(self, node, allowed, as_index=False):
        if not isinstance(node.value, ast.Name):
            raise self.err("only a tensor name can be indexed", node)
        n = node.value.id
        t = self.p.tensors.get(n)
        if t is None:
            if n in self.p.dims:
                raise self.err(f"'{n}' is a dimension, not a tensor: it takes no indices",
                               node)
            raise self.err(f"undeclared tensor '{n}'{did_you_mean(n, self.p.tensors)}; "
                           f"declare it first (input, param, target, ...)", node)
        slots = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if len(slots) != len(t.dims):
            raise self.err(f"'{n}' has {len(t.dims)} indices [{', '.join(t.dims)}], not "
                           f"{len(slots)}", node)
        if t.values is not None and not as_index:
            raise self.err(f"'{n}' holds integer indices into {t.values}; use it only "
                           f"inside another tensor's brackets, like x[n, {n}[...]]", node)
        idx = []
        for s, dim in zip(slots, t.dims):
            gather = s.value if isinstance(s, ast.Subscript) else s
            inner = self.p.tensors.get(gather.id) if isinstance(gather, ast.Name) else None
            if inner is not None and inner.values is not None:
                if inner.values != dim:
                    raise self.err(f"'{inner.name}' holds indices into {inner.values}, but "
                                   f"this slot of '{n}' runs over {dim}", s)
                idx.append(self.subscript(s, allowed, as_index=True)
                           if isinstance(s, ast.Subscript) else sp.Symbol(inner.name))
                continue
            if isinstance(s, ast.Name) and s.id not in self.p.constants:
                seen = self.bound.get(s.id)
                if seen is not None and seen[0] != dim and not as_index \
                        and s.id not in self.p.dims:
                    # i over M = L - 1 reading x's L axis (cropping): a shifted read,
                    # range-checked like x[n, i + 1]
                    idx.append(self.affine(s, t, dim, bound=(s.id, seen)))
                    continue
                idx.append(self.bind(s.id, dim, s))
                continue
            if as_index:
                raise self.err(f"indices of the label '{n}' must be plain index names", s)
            if isinstance(s, ast.Subscript):
                raise self.err(f"indices of '{n}' must be plain index names or an integer "
                               f"tensor (declared like 't[N] in {dim}'), or affine in "
                               f"indices like 2*i + k - 1", s)
            idx.append(self.affine(s, t, dim))
        names = [i.label.name for i in idx if isinstance(i, sp.Idx)]
        if len(set(names)) != len(names):
            raise self.err(f"'{n}' uses an index twice (a diagonal); use distinct indices",
                           node)
        return t.base[tuple(idx)]

    def affine(self, node, tensor: Tensor, dim: str, bound=None) -> sp.Expr:
        """A subscript like 2*i + k - P: integer constants times indices, plus a constant
        (numbers, constants, dimensions).  Its range is checked when the spec is complete
        (an `outside` statement may come later).  `bound`: (name, (dimension, column)) of
        a plain index already bound to another dimension, for the error if it can leave."""
        expr = self._affine(node)
        if not expr.atoms(sp.Idx) and not expr.is_Integer and not expr.free_symbols:
            raise self.err("a subscript is an index, an integer or an affine expression "
                           "of indices like 2*i + k - 1", node)
        self.p.reads_to_check.append((self.stmt, self.col(node), tensor.name, dim, expr,
                                      ast.unparse(node), bound))
        return expr

    def _affine(self, node) -> sp.Expr:
        not_affine = ("a subscript must be affine in its indices: integer constants times "
                      "indices plus a constant, like 2*i + k - 1")
        if isinstance(node, ast.BinOp):
            a, b = self._affine(node.left), self._affine(node.right)
            op = type(node.op)
            if op in (ast.Add, ast.Sub):
                return _ARITH[op](a, b)
            if op is ast.Mult:
                if a.atoms(sp.Idx) and b.atoms(sp.Idx):
                    raise self.err(f"{not_affine} (a product of two indices is not)", node)
                coeff, other = (b, node.right) if a.atoms(sp.Idx) else (a, node.left)
                if (a.atoms(sp.Idx) or b.atoms(sp.Idx)) and isinstance(other, ast.Name) \
                        and other.id in self.p.constants and coeff <= 0:
                    raise self.err(f"{other.id} = {coeff} multiplies an index: a stride or "
                                   f"dilation is a positive integer", other)
                if (a.atoms(sp.Idx) or b.atoms(sp.Idx)) and coeff == 0:
                    raise self.err("an index times 0 vanishes from the subscript: a stride "
                                   "or dilation is a positive integer", node)
                if (a.atoms(sp.Idx) or b.atoms(sp.Idx)) and not coeff.is_Integer:
                    sizes = sorted(str(d) for d in coeff.free_symbols)
                    if sizes:            # K*i: a size is known only when the kernel runs
                        raise self.err(
                            f"dimension {' and '.join(sizes)} multiplies an index: an "
                            f"index's coefficient in a subscript is an integer constant "
                            f"('const {sizes[0]} = 2'), not a dimension; or split the axis "
                            f"in two, one per index (an axis [Lout, {sizes[0]}] read at "
                            f"[i, k])", other)
                    raise self.err(f"{not_affine} (an index's coefficient is an integer "
                                   f"constant)", node)
                return a * b
            shown = {ast.Div: "/", **_OPS}.get(op, op.__name__)
            raise self.err(f"{not_affine}; '{shown}' is not allowed in a subscript", node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self._affine(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return sp.Integer(node.value)
        if isinstance(node, ast.Name):
            n = node.id
            if n in self.p.constants:
                return sp.Integer(self.p.constants[n])
            if n in self.p.dims:
                return dim_symbol(n)
            t = self.p.tensors.get(n)
            if t is not None:
                raise self.err(f"'{n}' is a tensor; a subscript is affine in indices "
                               f"(labels stand alone in their slot, like x[{n}[n]])", node)
            if n not in self.bound:
                self._bind_from_plain_use(n, node)
            return index(n, self.bound[n][0])
        raise self.err(not_affine, node)

    def _bind_from_plain_use(self, name: str, node) -> None:
        """An index used in a shifted subscript takes its dimension from a plain use
        elsewhere in the equation (W[o, c, k] * x[n, c, i + k]) or from sum(..., k in K)."""
        for sub in ast.walk(self.root):
            if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) \
                    and sub.value.id in self.p.tensors:
                t = self.p.tensors[sub.value.id]
                slots = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
                for s, dim in zip(slots, t.dims):
                    if isinstance(s, ast.Name) and s.id == name:
                        self.bind(name, dim, s)
                        return
        problem = name_problem(name)
        if problem:
            raise self.err(problem, node)
        raise self.err(f"index '{name}' appears only in shifted subscripts, so its range is "
                       f"unknown: write sum(..., {name} in K) with the dimension K it runs "
                       f"over", node)

    def _is_new_index(self, node, allowed) -> bool:
        """max(x[n, k], k): an argument naming no tensor, dimension, constant or index
        already bound makes max a reduction over it (also `k in K`)."""
        if isinstance(node, ast.Compare) and len(node.ops) == 1 \
                and isinstance(node.ops[0], ast.In):
            node = node.left
        return isinstance(node, ast.Name) and node.id not in self.p.tensors \
            and node.id not in self.p.dims and node.id not in self.p.constants \
            and node.id not in allowed and node.id not in self.lhs

    def reduction(self, node, allowed, fname):
        """sum/max/min(body, k, ...): the body and the indices it reduces over."""
        verb = {"sum": "summed", "max": "maximized over", "min": "minimized over",
                "argmax": "searched"}[fname]
        ks = []
        for a in node.args[1:]:
            if isinstance(a, ast.Compare) and isinstance(a.left, ast.Name) \
                    and len(a.ops) == 1 and isinstance(a.ops[0], ast.In) \
                    and isinstance(a.comparators[0], ast.Name):
                dim = a.comparators[0].id          # sum(..., k in K): k runs over K
                if dim not in self.p.dims:
                    raise self.err(f"'{dim}' is not a dimension of this layer",
                                   a.comparators[0])
                self.bind(a.left.id, dim, a.left)
                a = a.left
            if not isinstance(a, ast.Name):
                raise self.err(f"{fname}'s second and later arguments are index names "
                               "(or 'k in K' to give an index its dimension)", a)
            if a.id in allowed or a.id in self.lhs:
                raise self.err(f"index '{a.id}' is already bound here and cannot be "
                               f"{verb} again", a)
            if a.id in [k.id for k in ks]:
                raise self.err(f"index '{a.id}' is {verb} twice", a)
            ks.append(a)
        body = self.scope(node.args[0], allowed | {a.id for a in ks})
        free = {i.label.name for i in _free_indices(body)}
        for a in ks:
            if a.id not in free:
                raise self.err(f"index '{a.id}' is {verb} but not used inside the "
                               f"{fname}", a)
        return body, [index(a.id, self.bound[a.id][0]) for a in ks]

    def piecewise(self, node, allowed, fname):
        """where(cond, a, b), max(a, b), min(a, b), abs(a)."""
        arity = {"where": 3, "max": 2, "min": 2, "abs": 1}[fname]
        if len(node.args) != arity:
            usage = {"where": "where(cond, a, b)", "max": "max(a, b) or max(x[..., k], k)",
                     "min": "min(a, b) or min(x[..., k], k)", "abs": "abs(a)"}[fname]
            raise self.err(f"{fname}() takes {arity} argument{'s' * (arity > 1)}: "
                           f"{usage}", node)
        if fname == "where":
            cond = self.condition(node.args[0], allowed)
            a, b = (self.scope(x, allowed) for x in node.args[1:])
            return where(cond, a, b)
        args = [self.scope(x, allowed) for x in node.args]
        return {"max": maximum, "min": minimum, "abs": absolute}[fname](*args)

    def condition(self, node, allowed):
        """where's condition: comparisons < <= > >= (chained or joined by and/or)."""
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v, allowed) for v in node.values]
            return sp.And(*parts) if isinstance(node.op, ast.And) else sp.Or(*parts)
        if not isinstance(node, ast.Compare):
            raise self.err(f"where's condition must be a comparison like x[n, i] > 0 "
                           f"(< <= > >=, joined by and/or), not {_describe(node)}", node)
        sides = [self._affine(x) if self._index_arithmetic(x, allowed) else
                 self.scope(x, allowed) for x in [node.left, *node.comparators]]
        out = []
        for op, a, b in zip(node.ops, sides, sides[1:]):
            rel = _RELATIONS.get(type(op))
            if rel is None:
                raise self.err(f"'{_COMPARE_TEXT.get(type(op), type(op).__name__)}' is not "
                               f"a condition where() takes; compare with < <= > >=", node)
            out.append(rel(a, b))
        return sp.And(*out)

    def _index_arithmetic(self, node, allowed) -> bool:
        """A comparison side made of indices in scope, constants and numbers only (a
        causal mask's u <= t, a switch CAUSAL > 0): compared as integers."""
        names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
        return bool(names) and all(
            n in allowed or n in self.p.constants or n in self.p.dims for n in names) \
            and not any(isinstance(n, (ast.Subscript, ast.Call)) for n in ast.walk(node))

    def call(self, node, allowed):
        if not isinstance(node.func, ast.Name):
            raise self.err("only named functions can be called", node)
        fname = node.func.id
        if node.keywords:
            raise self.err(f"{fname}() takes no keyword arguments", node.keywords[0].value)
        if fname in ("max", "min") and len(node.args) >= 2 and all(
                self._is_new_index(a, allowed) for a in node.args[1:]):
            body, ks = self.reduction(node, allowed, fname)
            return MaxOver(body, *ks) if fname == "max" else min_over(body, *ks)
        if fname == "argmax":
            if len(node.args) < 2 or not all(self._is_new_index(a, allowed)
                                             for a in node.args[1:]):
                raise self.err("argmax takes an expression and the new indices it searches: "
                               "argmax(x[n, c, S*i + p], p in K)", node)
            body, ks = self.reduction(node, allowed, fname)
            return ArgMaxOver(body, *ks)
        if fname in SPECIAL:
            return self.piecewise(node, allowed, fname)
        if fname == "sum":
            if len(node.args) < 2:
                raise self.err("sum needs an expression and the indices it sums: "
                               "sum(expr, k)", node)
            body, ks = self.reduction(node, allowed, fname)
            return sp.Sum(body, *[(k, 0, k.upper) for k in ks])
        f = FUNCTIONS.get(fname)
        if f is None:
            known = sorted([*FUNCTIONS, *SPECIAL])
            raise self.err(f"unknown function '{fname}'"
                           f"{did_you_mean(fname, [*known, 'sum'])}; known: "
                           f"{', '.join(known)}, sum", node.func)
        if len(node.args) != 1:
            raise self.err(f"{fname}() takes exactly one argument", node)
        arg = self.scope(node.args[0], allowed)
        if fname == "log" and arg.is_Number and arg <= 0:
            raise self.err("log of a non-positive constant", node.args[0])
        return f(arg)


def _items(text: str, col: int):
    """Comma-separated items of a statement at bracket depth 0, with their columns."""
    out, depth, start = [], 0, 0
    for pos, ch in enumerate(text + ","):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append((text[start:pos], col + start))
            start = pos + 1
    return [(t, c) for t, c in out if t.strip()] or [(text, col)]


_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_RELATIONS = {ast.Lt: sp.StrictLessThan, ast.LtE: sp.LessThan, ast.Gt: sp.StrictGreaterThan,
              ast.GtE: sp.GreaterThan}
_COMPARE_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in",
                 ast.Is: "is", ast.IsNot: "is not"}
_OPS = {ast.BitXor: "^", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@",
        ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>"}


def _a(role: str) -> str:
    """'an input', 'a param'."""
    return ("an " if role[0] in "aeiou" else "a ") + role


def _describe(node) -> str:
    return {ast.Compare: "a comparison", ast.BoolOp: "'and'/'or'", ast.Lambda: "lambda",
            ast.Attribute: "attribute access", ast.List: "a list", ast.Tuple: "a tuple",
            ast.Dict: "a dict", ast.IfExp: "'if'"}.get(type(node), type(node).__name__)


def _additive_terms(node, sign):
    """Top-level additive terms of an ast expression, with their signs."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        yield from _additive_terms(node.left, sign)
        yield from _additive_terms(node.right, sign if isinstance(node.op, ast.Add)
                                   else -sign)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        yield from _additive_terms(node.operand, -sign if isinstance(node.op, ast.USub)
                                   else sign)
    else:
        yield sign, node


def _index_uses(node, bare, stuck, outer):
    """Index names used as plain factors of a term (`bare`), or only inside parentheses,
    a denominator or a power (`stuck`).  Function calls and sums are scopes of their own
    and are not entered."""
    if isinstance(node, ast.Subscript):
        sl = node.slice
        for s in (sl.elts if isinstance(sl, ast.Tuple) else [sl]):
            if isinstance(s, ast.Name):
                (bare if outer else stuck).setdefault(s.id, s)
            elif isinstance(s, ast.Subscript):      # a gather z[n, t[n]]
                _index_uses(s, bare, stuck, outer)
            else:                                   # a shifted read x[n, i + k]
                for sub in ast.walk(s):
                    if isinstance(sub, ast.Name):
                        (bare if outer else stuck).setdefault(sub.id, sub)
        return
    if isinstance(node, ast.Call):
        return
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        _index_uses(node.left, bare, stuck, outer)
        _index_uses(node.right, bare, stuck, outer)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        _index_uses(node.left, bare, stuck, outer)
        _index_uses(node.right, bare, stuck, False)
    elif isinstance(node, ast.UnaryOp):
        _index_uses(node.operand, bare, stuck, outer)
    else:
        for child in ast.iter_child_nodes(node):
            _index_uses(child, bare, stuck, False)
