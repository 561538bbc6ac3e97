"""Verifying claimed formulas against the derived truth.

A claim (derive.claims) is read against a layer: each symbol is mapped to a tensor, each
side becomes an index-form SymPy expression with matrix axes made explicit, and then:

  1. shapes: sides whose shapes cannot match are ILL-FORMED (naming the shapes);
  2. symbolic: the gradient on the left is replaced by its derived formula and the
     difference is simplified (sums with different bound-index names are the same sum),
     under a time limit; zero means HOLDS, decided symbolically;
  3. numeric: both sides are evaluated at random points and sizes; if they differ, the
     smallest set of conditions under which they agree (batch size 1, a declared condition
     such as one-hot targets, a scalar target equal to 1 or 0) makes it CONDITIONAL, and
     with none it is FALSE, with the counterexample.

Vectors and matrices are read in two conventions, and a claim holds if it holds in one:
rows are examples (x W^T + b, the library's own), or columns are examples (W a + b, as in
Nielsen's book): a batch tensor x[N, D] is then the D x N matrix x^T.
"""
from __future__ import annotations

import ast
import functools
import itertools
import re
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .calculus import contract, tidy
from .claims import (Bin, Claim, ClaimError, Func, Grad, Neg, Num, Post, Sym, SumOver,
                     parse_claim)
from .derivation import Derivation, adjoint_name
from .evaluate import _compute, evaluate
from .functions import relu, sigmoid, softplus
from .indices import free_indices, freshen_bound, tidy_bound
from .spec import dim_symbol

BATCH = "N"
ONE = sp.Idx("_one", 1)          # the unit axis of a vector (a column: (i, ONE))
FUNCS = {"sigmoid": sigmoid, "tanh": sp.tanh, "log": sp.log, "exp": sp.exp, "relu": relu,
         "softplus": softplus, "sqrt": sp.sqrt}


@dataclass
class Verdict:
    verdict: str                       # HOLDS CONDITIONAL FALSE ILL-FORMED
    method: str                        # symbolic, numeric, shapes
    claim: str
    model: str
    conditions: list = field(default_factory=list)
    counterexample: dict | None = None
    convention: str = ""
    message: str = ""

    def record(self) -> dict:
        out = dict(verdict=self.verdict, method=self.method, claim=self.claim,
                   model=self.model, conditions=self.conditions, message=self.message)
        if self.convention:
            out["convention"] = self.convention
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample
        return out

    def text(self) -> str:
        head = f"{self.verdict} ({self.method})"
        if self.verdict == "CONDITIONAL":
            head += ": holds only if " + "; ".join(self.conditions)
        elif self.message:
            head += ": " + self.message
        lines = [head]
        if self.counterexample:
            ce = self.counterexample
            lines.append(f"  counterexample at sizes {ce['sizes']}:")
            for k, v in ce["inputs"].items():
                lines.append(_show(f"    {k} = ", v, 4))
            lines.append(_show("    left  = ", ce["left"], 6))
            lines.append(_show("    right = ", ce["right"], 6))
        return "\n".join(lines)


def _show(prefix, value, precision):
    return prefix + np.array2string(np.asarray(value), precision=precision, separator=", ",
                                    prefix=prefix)


class IllFormed(Exception):
    pass


# ---- reading a claim against a layer -------------------------------------------------

class Reader:
    """Claim syntax tree -> (SymPy expression, matrix axes) in one convention."""

    def __init__(self, derivation: Derivation, mapping: dict, convention: str):
        self.d = derivation
        self.layer = derivation.layer
        self.mapping = mapping
        self.convention = convention
        self.bound: dict[str, tuple[str, str]] = {}     # claim index -> (dim, where)
        self.fresh = itertools.count()
        self.implied_batch = False

    # symbols -> tensors
    def tensor_name(self, s: Sym) -> str:
        key = _key(s)
        if key in self.mapping:
            return self.mapping[key]
        tensors = self.layer.tensors
        base = s.name.lstrip("\\")
        if s.name == r"\delta":
            z = self._named("z", s.layer)
            if z is None:
                raise ClaimError(f"'{key}': \\delta means dL/dz, and this layer has no "
                                 f"tensor z{s.layer}; map it with --map", s.col)
            return adjoint_name(z)
        if s.decor == "bar":                   # \bar{X} = dL/dX, as in our documents
            name = self._named(base, s.layer)
            if name in self.layer.tensors:
                return adjoint_name(name)
        if s.decor == "hat":
            base += "hat"
        elif s.decor:
            base = f"{base}{s.decor}"
        name = self._named(base, s.layer)
        if name is None:
            known = ", ".join(tensors)
            raise ClaimError(f"unknown symbol '{key}': this layer's tensors are {known} "
                             f"(map it with --map '{key}=TENSOR')", s.col)
        return name

    def _named(self, base, layer):
        name = base + layer
        if name in self.layer.tensors or name in self.layer.dims:
            return name
        if not layer:
            several = sorted(t for t in self.layer.tensors
                             if t[len(base):].isdigit() and t.startswith(base))
            if several:
                raise ClaimError(f"'{base}' could be any of {', '.join(several)}: give the "
                                 f"layer, as in {base}^{{({several[-1][len(base):]})}}, or "
                                 f"--map '{base}=TENSOR'")
        return None

    def idx(self, name, dim, where):
        seen = self.bound.get(name)
        if seen and seen[0] != dim:
            raise IllFormed(f"index {name} runs over {seen[0]} in {seen[1]} but over {dim} "
                            f"in {where}")
        self.bound.setdefault(name, (dim, where))
        return sp.Idx(name, dim_symbol(dim))

    def axis(self, dim):
        return sp.Idx(f"_a{next(self.fresh)}", dim_symbol(dim))

    def leaf(self, name, s: Sym, dims):
        """T as an expression: explicit indices, or matrix axes."""
        if s.indices == ("n",) and len(dims) == 2 and dims[0] == BATCH:
            # x_n, delta_n: the row of example n, read as a column vector
            a = self.axis(dims[1])
            expr = sp.IndexedBase(name)[(self.idx("n", BATCH, name), a)]
            return self.post(expr, (a, ONE), s)
        if s.indices:
            idx = list(s.indices)
            if len(idx) == len(dims) - 1 and dims and dims[0] == BATCH:
                # a per-example formula: the batch index is implied (example 0)
                self.implied_batch = True
                args = [sp.Integer(0)] + [self.idx(i, d, name) for i, d in zip(idx, dims[1:])]
            elif len(idx) != len(dims):
                raise IllFormed(f"{_key(s)} has {len(idx)} indices but {name} has "
                                f"{len(dims)} ({', '.join(dims) or 'a scalar'})")
            else:
                args = [self.idx(i, d, name) for i, d in zip(idx, dims)]
            expr = sp.IndexedBase(name)[tuple(args)] if args else sp.Symbol(name)
            return self.post(expr, (), s)
        if not dims:
            return self.post(sp.Symbol(name), (), s)
        if len(dims) > 2:
            raise IllFormed(f"{name} has {len(dims)} indices; matrix notation covers two")
        axes = tuple(self.axis(d) for d in dims)
        expr = sp.IndexedBase(name)[axes]
        if len(axes) == 1:
            axes = (axes[0], ONE)                      # vectors are columns
        elif self.convention == "columns" and dims[0] == BATCH:
            axes = (axes[1], axes[0])                  # examples as columns
        return self.post(expr, axes, s)

    def post(self, expr, axes, s):
        if s.power != 1:
            expr = expr ** s.power                     # powers are elementwise
        if s.transpose:
            axes = _t(axes)
        return expr, axes

    # the tree
    def read(self, n):
        if isinstance(n, Num):
            v = sp.Rational(str(n.value)) if n.value != int(n.value) else sp.Integer(n.value)
            return v, ()
        if isinstance(n, Sym):
            name = self.tensor_name(n)
            if name in self.layer.dims:
                return dim_symbol(name), ()
            dims = self._dims(name)
            return self.leaf(name, n, dims)
        if isinstance(n, Grad):
            x = self.tensor_name(n.of)
            if x.startswith("d") and x not in self.layer.tensors:
                raise ClaimError(f"'{_key(n.of)}' is already a gradient", n.col)
            if x not in self.layer.tensors or self.layer.tensors[x].role == "target":
                raise ClaimError(f"no gradient with respect to '{_key(n.of)}'", n.col)
            name = adjoint_name(x)
            if x == self.layer.loss:
                return sp.Integer(1), ()
            return self.leaf(name, n.of, self._dims(name))
        if isinstance(n, Neg):
            e, ax = self.read(n.a)
            return -e, ax
        if isinstance(n, Post):
            e, ax = self.read(n.a)
            if n.power != 1:
                e = e ** n.power
            return e, (_t(ax) if n.transpose else ax)
        if isinstance(n, Bin):
            a, ax = self.read(n.a)
            b, bx = self.read(n.b)
            if n.op == "*":
                return self.matmul(a, ax, b, bx)
            if n.op == "/":
                if bx:                                 # elementwise division
                    b = b.xreplace(self.unify(ax, bx, "÷"))
                return a / b, ax
            if n.op == "odot" or n.op in "+-":
                if ax and bx:
                    b = b.xreplace(self.unify(ax, bx, {"odot": "⊙"}.get(n.op, n.op)))
                out = ax or bx
                if n.op == "odot":
                    return a * b, out
                return (a + b if n.op == "+" else a - b), out
        if isinstance(n, Func):
            e, ax = self.read(n.arg)
            f = self.function(n.name, n.arg, n.col)
            s = sp.Dummy("s")
            if n.prime:
                return sp.diff(f(s), s).xreplace({s: e}), ax
            return f(e), ax
        if isinstance(n, SumOver):
            body, ax = self.read(n.body)
            free = {i.label.name: i for i in free_indices(body)}
            limits = []
            for i in n.index:
                if i not in free:
                    raise IllFormed(f"the sum over {i} has no term indexed by {i}")
                k = free[i]
                limits.append((k, 0, k.upper))
            return sp.Sum(body, *limits), ax
        raise ClaimError(f"cannot read {type(n).__name__} here", getattr(n, "col", None))

    def _dims(self, name):
        base = name if name in self.layer.tensors else name[1:]
        return self.layer.tensors[base].dims

    def function(self, name, arg, col):
        if name != "f":
            return FUNCS[name]
        # f is the activation this layer applies to the argument's tensor
        if not isinstance(arg, Sym):
            raise ClaimError("f' needs a tensor argument, as in f'(z)", col)
        target = self.tensor_name(arg)
        found = set()
        for eq in self.layer.equations:
            r = eq.rhs
            if isinstance(r, sp.Function) and len(r.args) == 1 and isinstance(
                    r.args[0], sp.Indexed) and r.args[0].base.label.name == target:
                found.add(type(r))
        if len(found) != 1:
            raise ClaimError(f"f must be the one elementwise function applied to {target}; "
                             f"found {len(found)}", col)
        return found.pop()

    def matmul(self, a, ax, b, bx):
        if not ax or not bx:                       # a scalar factor
            return a * b, ax or bx
        if len(ax) != 2 or len(bx) != 2:
            raise IllFormed("a product of non-matrices")
        r, k1 = ax
        k2, c = bx
        if _dim(k1) != _dim(k2):
            raise IllFormed(f"a product of a {_shape(ax)} and a {_shape(bx)} matrix: the "
                            f"inner sizes {_dim(k1)} and {_dim(k2)} differ")
        if k1 == ONE:
            return a * b, (r, c)                   # an outer product
        k = self.axis(str(_dim(k1)))
        return sp.Sum(a.xreplace({k1: k}) * b.xreplace({k2: k}), (k, 0, k.upper)), (r, c)

    def unify(self, ax, bx, op):
        if len(ax) != len(bx) or any(_dim(p) != _dim(q) for p, q in zip(ax, bx)):
            raise IllFormed(f"'{op}' of a {_shape(ax)} and a {_shape(bx)} matrix")
        return {q: p for p, q in zip(ax, bx) if q != ONE}


def _t(axes):
    return (axes[1], axes[0]) if len(axes) == 2 else axes


def _dim(i):
    return 1 if i == ONE else i.upper + 1


def _shape(axes):
    return " x ".join(str(_dim(i)) for i in axes) if axes else "scalar"


def _key(s: Sym) -> str:
    name = s.name
    if s.decor:
        name = rf"\{s.decor}{{{name}}}"
    if s.layer:
        name += f"^{{({s.layer})}}"
    return name


# ---- deciding --------------------------------------------------------------------------

@dataclass
class Reading:
    convention: str
    lhs: sp.Expr
    rhs: sp.Expr
    axes: tuple
    implied_batch: bool


def read_claim(claim: Claim, d: Derivation, mapping: dict) -> tuple[list, str]:
    """Readings of the claim in each convention where its shapes agree, and the shape
    complaint when they agree in none."""
    readings, problems = [], []
    for convention in ("rows", "columns"):
        r = Reader(d, mapping, convention)
        try:
            lhs, lx = r.read(claim.lhs)
            rhs, rx = r.read(claim.rhs)
            if lx and rx:
                rhs = rhs.xreplace(r.unify(lx, rx, "="))
            elif rx and not lx:
                raise IllFormed(f"the left side is a scalar but the right side is "
                                f"{_shape(rx)}")
            axes = lx or rx
            lf = {i for i in free_indices(lhs) if i not in axes}
            rf = {i for i in free_indices(rhs) if i not in axes}
            if lf != rf and lf and rf:
                raise IllFormed(f"free indices differ: {sorted(map(str, lf))} on the left, "
                                f"{sorted(map(str, rf))} on the right")
            readings.append(Reading(convention, lhs, rhs, tuple(axes) + tuple(
                sorted(lf | rf, key=str)), r.implied_batch))
        except IllFormed as exc:
            problems.append(f"{exc} (examples as {convention})")
    return readings, "; ".join(problems)


@contextmanager
def time_limit(seconds):
    """SIGALRM-based limit (main thread only); elsewhere no limit is enforced.  After the
    limit the alarm repeats every 50 ms until the block ends: a TimeoutError raised while
    a gc callback runs (hypothesis installs one) is swallowed there, and a single alarm
    would then let SymPy run on without limit."""
    def raise_timeout(signum, frame):
        raise TimeoutError

    try:
        old = signal.signal(signal.SIGALRM, raise_timeout)
    except ValueError:           # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def symbolic_zero(reading: Reading, d: Derivation, seconds: float) -> str:
    """'zero' when lhs - rhs simplifies to 0 with every derived gradient and every forward
    definition substituted; 'timeout' when SymPy does not finish in time; 'unknown' when
    it finishes without reaching zero (then numbers decide)."""
    steps = {adjoint_name(s.tensor): s for s in d.steps}
    upstream = {adjoint_name(t.name) for t in d.layer.upstream}
    defs = {eq.target: eq for eq in d.layer.equations}

    def substitute(e, table):
        for _ in range(len(table) + 2):
            changed = False
            for ref in sorted(e.atoms(sp.Indexed), key=str):
                name = ref.base.label.name
                if name in table:
                    idx, body = table[name]
                    e = e.xreplace({ref: freshen_bound(body).xreplace(dict(zip(idx,
                                                                          ref.indices)))})
                    changed = True
            for sym in sorted(e.atoms(sp.Symbol), key=str):
                if sym.name in table and not table[sym.name][0]:
                    e = e.xreplace({sym: table[sym.name][1]})
                    changed = True
            if not changed:
                break
        return e

    gradients = {n: (s.indices, s.expr) for n, s in steps.items() if n not in upstream}
    forward = {n: (eq.indices, eq.rhs) for n, eq in defs.items()}
    if reading.implied_batch:
        return "unknown"
    try:
        with time_limit(seconds):
            diff = substitute(reading.lhs, gradients) - substitute(reading.rhs, gradients)
            for table in ({}, forward):
                diff = substitute(diff, table) if table else diff
                diff = tidy(contract(diff))
                diff = tidy_bound(freshen_bound(diff), set())
                if diff == 0 or sp.simplify(tidy(diff)) == 0:
                    return "zero"
            return "unknown"
    except TimeoutError:
        return "timeout"
    except Exception:            # noqa: BLE001  SymPy's simplify has internal failures
        return "unknown"        # (StopIteration in sum_add, seen on 1.14): numbers decide


def candidate_conditions(layer) -> list[tuple[str, dict]]:
    """Conditions a claim may need: (description, how to generate data under it)."""
    out = []
    if BATCH in layer.dims:
        out.append(("batch size 1", {"size": {BATCH: 1}}))
    for c in layer.conditions:
        out.append((f"{c.text}", {"condition": c}))
    for t in layer.targets:
        if not t.dims:
            out.append((f"{t.name} = 1", {"value": (t.name, 1.0)}))
            out.append((f"{t.name} = 0", {"value": (t.name, 0.0)}))
    return out


def _draw(layer, rng, rules):
    sizes = {dim: int(rng.choice([1, 2, 3, 5])) for dim in layer.dims}
    values = {}
    for r in rules:
        sizes.update(r.get("size", {}))
    for t in layer.tensors.values():
        shape = tuple(sizes[x] for x in t.dims)
        if t.role in ("input", "param"):
            values[t.name] = rng.normal(size=shape)
        elif t.role == "target":
            values[t.name] = rng.uniform(0.05, 1.0, size=shape)
    for r in rules:
        if "condition" in r:
            c = r["condition"]
            t = layer.tensors[c.tensor]
            shape = tuple(sizes[x] for x in t.dims)
            a = np.moveaxis(np.zeros(shape), c.slot, -1)
            flat = a.reshape(-1, a.shape[-1])
            flat[np.arange(len(flat)), rng.integers(0, a.shape[-1], len(flat))] = \
                float(c.value)
            values[c.tensor] = np.moveaxis(flat.reshape(a.shape), -1, c.slot)
        if "value" in r:
            values[r["value"][0]] = np.asarray(r["value"][1])
    for t in layer.upstream:
        values[adjoint_name(t.name)] = rng.normal(size=tuple(sizes[x] for x in t.dims))
    return sizes, values


def _sides(reading: Reading, d: Derivation, sizes, values):
    full = evaluate(d, values, every_adjoint=True)
    axes = [a for a in reading.axes if a != ONE]
    dims = [str(a.upper + 1) for a in axes]
    one = {ONE: sp.Integer(0)}
    left = _compute(reading.lhs.xreplace(one), axes, dims, sizes, full)
    right = _compute(reading.rhs.xreplace(one), axes, dims, sizes, full)
    return left, right


def _agree(left, right) -> bool:
    scale = max(float(np.max(np.abs(left), initial=0)), float(np.max(np.abs(right),
                                                                     initial=0)), 1.0)
    return left.shape == right.shape and bool(np.allclose(left, right, rtol=1e-8,
                                                          atol=1e-10 * scale))


def numeric_check(reading, d, rules, trials=6, seed=0):
    """None if the sides agree at every trial, else the first counterexample."""
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        sizes, values = _draw(d.layer, rng, rules)
        try:
            with np.errstate(all="ignore"):
                left, right = _sides(reading, d, sizes, values)
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            return dict(sizes=sizes, inputs={}, left=[], right=[], error=str(exc))
        if not _agree(left, right):
            return dict(sizes=sizes, inputs={k: np.asarray(v).tolist() for k, v in
                                             values.items()},
                        left=left.tolist(), right=right.tolist())
    return None


def is_spec_claim(text: str) -> bool:
    """A claim in the spec language: no backslash, and a tensor on the left."""
    return "\\" not in text and bool(re.match(r"\s*[A-Za-z]\w*\s*(\[[^\]]*\])?\s*=[^=]",
                                              text))


def read_spec_claim(text: str, d: Derivation) -> Reading:
    """`dz[n, i] = (y[n, i] - t[n, i]) / N`, read by the spec parser with each tensor's
    gradient dX declared beside it."""
    from .errors import SpecError
    from .parser import _Expr, _Parser, _Statement
    from .spec import Tensor

    layer = d.layer
    p = _Parser("", "<claim>")
    p.name = layer.name
    p.dims = {dim: 0 for dim in layer.dims}
    p.tensors = dict(layer.tensors)
    for t in layer.tensors.values():
        if t.role != "target":
            p.tensors[adjoint_name(t.name)] = Tensor(adjoint_name(t.name), "output", t.dims, 0)
    stmt = _Statement("<claim>", 1, text)
    try:
        at, lhs_src, rhs_src = p._split_equals(stmt, text)
        lhs = p._parse_expr(stmt, lhs_src, 0)
        node = lhs.node
        if isinstance(node, ast.Name):
            name, slots = node.id, []
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            name = node.value.id
            sl = node.slice
            slots = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        else:
            raise ClaimError("the left-hand side must be a tensor like dz[n, i]", 1)
        tensor = p.tensors.get(name)
        if tensor is None:
            raise ClaimError(f"unknown tensor '{name}' on the left (gradients are d + name)", 1)
        scope = _Expr(p, stmt, lhs.shift)
        indices = scope.bind_lhs(tensor, slots, lhs.col(node))
        rhs = p._parse_expr(stmt, rhs_src, at + 1)
        scope.shift = rhs.shift
        expr = scope.rhs(rhs.node, indices)
    except SpecError as exc:
        if "does not appear on the right-hand side" in exc.message or \
                "runs over" in exc.message:
            raise IllFormed(exc.message) from None
        raise ClaimError(exc.message, exc.col) from None
    lhs_expr = tensor.ref(*indices)
    return Reading("index form", lhs_expr, expr, tuple(indices), False)


def _too_deep_is_a_claim_error(fn):
    """A claim of ~1,400 factors nests deeper than Python's recursion limit somewhere in
    reading or SymPy: say so instead of 'maximum recursion depth exceeded'."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecursionError:
            raise ClaimError("the claim is nested too deeply to verify (a product or sum "
                             "of about a thousand terms or more); write it shorter, e.g. "
                             "with powers or sums") from None
    return wrapper


@_too_deep_is_a_claim_error
def verify(d: Derivation, claim_text: str, mapping: dict | None = None,
           timeout: float = 5.0) -> Verdict:
    mapping = dict(mapping or {})
    if is_spec_claim(claim_text or ""):
        base = dict(claim=claim_text.strip(), model=d.layer.name)
        try:
            reading = read_spec_claim(claim_text, d)
        except IllFormed as exc:
            return Verdict("ILL-FORMED", "shapes", message=str(exc), **base)
        return _decide([reading], "", base, d, timeout)
    claim = parse_claim(claim_text)
    for key, value in mapping.items():
        base = value[1:] if value.startswith("d") and value[1:] in d.layer.tensors else value
        if base not in d.layer.tensors:
            raise ClaimError(f"--map {key}={value}: this layer has no tensor '{value}'")
    readings, problems = read_claim(claim, d, mapping)
    return _decide(readings, problems, dict(claim=claim.text, model=d.layer.name), d,
                   timeout)


def _decide(readings, problems, base, d, timeout) -> Verdict:
    if not readings:
        return Verdict("ILL-FORMED", "shapes", message=problems, **base)
    outcomes = []
    for reading in readings:
        outcome = symbolic_zero(reading, d, timeout)
        if outcome == "zero":
            return Verdict("HOLDS", "symbolic", convention=_conv(reading, readings),
                           message="equal for all sizes and values", **base)
        outcomes.append(outcome)
    why = ("SymPy did not decide within the time limit" if "timeout" in outcomes else
           "SymPy's simplification did not reach zero")
    first_counter = None
    for reading in readings:
        counter = numeric_check(reading, d, [])
        if counter is None:
            return Verdict("HOLDS", "numeric", convention=_conv(reading, readings),
                           message=f"equal at random points and sizes ({why})", **base)
        first_counter = first_counter or counter
    conditions = candidate_conditions(d.layer)
    for size in (1, 2):
        for combo in itertools.combinations(conditions, size):
            rules = [c[1] for c in combo]
            for reading in readings:
                if numeric_check(reading, d, rules) is None:
                    return Verdict("CONDITIONAL", "numeric", conditions=[c[0] for c in combo],
                                   convention=_conv(reading, readings), **base)
    return Verdict("FALSE", "numeric", counterexample=first_counter,
                   message="the two sides differ", **base)


def _conv(reading, readings):
    if reading.convention == "index form":
        return "index form"
    return f"examples as {reading.convention}"
