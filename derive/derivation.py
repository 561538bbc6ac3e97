"""Reverse mode over a layer's equations: the adjoint (gradient) of every tensor.

For an equation Y[L] = F and a tensor X that F reads, the contribution to X's adjoint is

    dX[P] += sum over L of dY[L] * dF/dX[P]

with the Kronecker deltas contracted (derive.calculus).  Each contribution is then written
in terms of Y itself where F appears (sigma(z)(1 - sigma(z)) becomes a(1 - a)).

Which adjoints become steps of their own: the gradient of every input and parameter, and
every intermediate adjoint used by two or more others (the delta of a dense layer feeds dW,
db and dx).  An adjoint used once is inlined into its user, which is how the textbook
recursion delta1 = (W2^T delta2) (.) f'(z1) appears: da1 is inlined into dz1.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import sympy as sp

from .calculus import (apply_conditions, complexity, contract, fold, merge_sums,
                       tensor_names, tidy)
from .indices import (canonical_indices, freshen_bound, fresh, slot_letters, tidy_bound,
                      user_letters)
from .preactivations import name_preactivations, written_out
from .saved_argmax import name_saved_argmax
from .same_shape import by_shape, same_shapes
from .spec import Condition, Equation, Layer, dim_symbol


def adjoint_name(tensor: str) -> str:
    return "d" + tensor


@dataclass(frozen=True)
class Step:
    """One computed adjoint: name[indices] = expr."""
    tensor: str
    indices: tuple[sp.Idx, ...]
    expr: sp.Expr                            # general form: what kernels compute
    given: sp.Expr | None = None             # simplified under declared conditions
    conditions: tuple[Condition, ...] = ()   # the conditions `given` relies on
    is_gradient: bool = False                # an input's or parameter's gradient
    label: str = ""                          # its array's name, when not d + tensor

    @property
    def name(self) -> str:
        return self.label or adjoint_name(self.tensor)

    @property
    def lhs(self):
        if not self.indices:
            return sp.Symbol(self.name)
        return sp.IndexedBase(self.name)[self.indices]

    @property
    def simplest(self) -> sp.Expr:
        return self.given if self.given is not None else self.expr


@dataclass(frozen=True)
class Contribution:
    """dX += this, from one equation (kept for documents: the chain rule, term by term)."""
    equation: Equation
    tensor: str
    expr: sp.Expr
    # a term the forward values cancel (layer norm's rstd -> mu, (sum_c x - C mu) ... = 0
    # as mu is the mean): the term before they were written in, and their equations
    before: sp.Expr | None = None
    cancelled_by: tuple[Equation, ...] = ()


@dataclass(frozen=True)
class Derivation:
    layer: Layer
    steps: tuple[Step, ...]                      # in the order the backward pass runs them
    contributions: tuple[Contribution, ...] = field(default=())
    # the layer as the reverse walk read it: with the pre-activations it named (z_g of
    # g = sigmoid(W x + b), derive.preactivations); their steps' and contributions' tensors
    walked: Layer | None = None
    canon: dict = field(default_factory=dict)    # tensor -> the indices its adjoint has

    def indices(self, name: str) -> tuple:
        """The free indices of name's adjoint, as the steps and contributions write them
        (the spec's own letters where free: dW[i, j] for W[i, j])."""
        if name in self.canon:
            return self.canon[name]
        taken = set((self.walked or self.layer).tensors) | set(self.layer.dims)
        return canonical_indices([dim_symbol(d) for d in self.tensor(name).dims], taken)

    def tensor(self, name: str):
        """A tensor of the layer, or a pre-activation the derivation named."""
        return (self.walked or self.layer).tensors[name]

    @property
    def gradients(self) -> dict[str, Step]:
        return {s.tensor: s for s in self.steps if s.is_gradient}

    def step(self, tensor: str) -> Step:
        for s in self.steps:
            if s.tensor == tensor:
                return s
        raise KeyError(tensor)

    def _repr_latex_(self) -> str:
        """Jupyter shows a derivation as its gradients in index form."""
        from .latex import index_latex

        adjoints = {adjoint_name(t) for t in self.layer.tensors}
        lines = [f"{index_latex(s.lhs, adjoints)} &= {index_latex(s.simplest, adjoints)}"
                 for s in self.steps]
        return r"$$\begin{aligned}" + r" \\ ".join(lines) + r"\end{aligned}$$"

    @property
    def upstream(self) -> list[str]:
        """Names of the upstream gradients the backward pass takes (none when nothing is
        differentiated: a forward-only layer such as an optimizer step)."""
        if not self.layer.differentiable:
            return []
        return [adjoint_name(t.name) for t in self.layer.upstream]


# Derivations this process made, by the layer they are of (its pickled form: two layers
# equal field by field, parsed apart, share one), the most recently used last.  derive is
# a pure function of the layer, so a second call for the same layer (a layer loaded for
# NumPy, then C, then its document; a test suite's checks of one built-in) returns the
# first's result, which no one changes (frozen dataclasses, and no code writes into their
# dicts): batch norm's 7 s were derived 27 times in one run of the tests.
_DERIVED: OrderedDict[bytes, Derivation] = OrderedDict()
REMEMBERED = 64


def derive(layer: Layer) -> Derivation:
    """The layer's backward pass (see the module's docstring); remembered per layer."""
    key = _layer_key(layer)
    if key is not None and key in _DERIVED:
        _DERIVED.move_to_end(key)
        return _DERIVED[key]
    derivation = _derive(layer)
    if key is not None:
        _DERIVED[key] = derivation
        while len(_DERIVED) > REMEMBERED:
            _DERIVED.popitem(last=False)
    return derivation


def _layer_key(layer: Layer) -> bytes | None:
    """The layer pickled without pickle's memo: each value written out in full, so the
    bytes do not depend on which equal subexpressions happen to be one object (SymPy's
    cache makes a layer parsed after a derivation share more of them).  Where that mode
    fails (a network's layer), pickled as usual: a key all the same, which may only miss
    more often.  None for a layer holding something unpicklable: derived each time."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    try:
        pickler.dump(layer)
        return out.getvalue()
    except Exception:
        pass
    try:
        return pickle.dumps(layer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None


@same_shapes()     # a deep network's layers share their shapes: each derived once
def _derive(layer: Layer) -> Derivation:
    needed = _needed(layer)
    walked = name_preactivations(layer, needed)
    needed = _needed(walked)
    taken = set(walked.tensors) | set(layer.dims)
    # the spec's own index letters; a network's come from its layers' specs, where one
    # letter stands for several widths: there the dimensions name the indices (d2, d3)
    letters, own = ({}, {}) if layer.sections else \
        (user_letters(layer.equations), slot_letters(walked.equations))
    canon = {t.name: canonical_indices([dim_symbol(d) for d in t.dims], taken, letters,
                                       own.get(t.name, ()))
             for t in walked.tensors.values()}

    def adjoint_ref(name, idx):
        return sp.IndexedBase(adjoint_name(name))[tuple(idx)] if idx \
            else sp.Symbol(adjoint_name(name))

    # 1. Local contributions, walking the equations backwards.  A recurrence's adjoint
    # (its total: the upstream gradient plus what the next steps send back) is seeded
    # like an intermediate's, as its readers at later steps come earlier in this walk.
    recurrent = {t.name for t in layer.tensors.values() if t.initial}
    defs: dict[str, sp.Expr] = {
        t.name: sp.IndexedBase(upstream_name(t.name))[tuple(canon[t.name])]
        for t in layer.outputs if t.name in recurrent and t.name in needed}
    contributions = []
    value_reads = {e.target: tensor_names(e.rhs) for e in layer.equations}
    for eq in reversed(walked.equations):
        mapping = {i: fresh(i) for i in eq.indices}
        rhs = freshen_bound(eq.rhs).xreplace(mapping)
        lhs = [mapping[i] for i in eq.indices]
        y = walked.tensors[eq.target]
        seed = sp.Integer(1) if eq.target == layer.loss else adjoint_ref(eq.target, lhs)
        if y.role == "output" and eq.target in defs and eq.target not in recurrent:
            # An output a later equation reads (an LSTM's c_next, read by h_next): its
            # adjoint is its upstream gradient plus what the readers send back, all
            # complete here (readers come later); inlined into this equation's seed, as
            # the upstream array already holds the name d<output>.
            back = freshen_bound(defs.pop(eq.target))
            seed = seed + back.xreplace(dict(zip(canon[eq.target], lhs)))
        for xname in sorted(eq.reads & set(walked.tensors)):
            x = walked.tensors[xname]
            if xname not in needed:
                continue
            term = _local_term(seed, rhs, x.ref(*canon[xname]), y.ref(*lhs), tuple(lhs))
            if term == 0:
                continue
            term = written_out(term, walked, layer)
            # Then every other forward value that appears (sum_c x[n, c] / C as mu[n]),
            # so that terms which cancel once named do cancel.
            before, folded_in = term, []
            term = _fold_values(term, layer, value_reads, skip=eq, used=folded_in)
            flat = _cancels_flat(term, layer, value_reads, eq, folded_in)
            if flat is not None:
                before, term = flat, sp.Integer(0)
            free = {i.label.name for i in canon[xname]}
            shown = min((term, merge_sums(term)), key=complexity)   # one sum, not two
            tidied = lambda e: name_saved_argmax(
                tidy_bound(freshen_bound(e), taken | free, letters), layer.equations)
            cancels = term == 0 and folded_in
            contributions.append(Contribution(
                eq, xname, tidied(shown), tidied(before) if cancels else None,
                tuple(folded_in) if cancels else ()))
            defs[xname] = defs.get(xname, sp.Integer(0)) + term

    # 2. Decide which adjoints are steps, inline the others.
    computed = [eq.target for eq in reversed(walked.equations)
                if eq.target in defs] + [t.name for t in layer.differentiable]
    uses = Counter()
    for expr in defs.values():
        for name in _adjoints_read(expr, walked):
            uses[name] += 1
    gradients = {t.name for t in layer.differentiable}
    kept = [n for n in computed if n in gradients or uses[n] >= 2]

    resolved: dict[str, sp.Expr] = {}
    steps = []
    for name in computed:
        expr = defs.get(name, sp.Integer(0))
        for ref in sorted(_adjoint_refs(expr, walked), key=str):
            target = ref.base.label.name[1:] if isinstance(ref, sp.Indexed) else ref.name[1:]
            if target in resolved and target not in kept:
                body = freshen_bound(resolved[target])
                if isinstance(ref, sp.Indexed):
                    body = body.xreplace(dict(zip(canon[target], ref.indices)))
                expr = expr.xreplace({ref: body})
        expr = tidy(expr)
        # sums merged back and every forward value folded in once more: the textbook's
        # sum_k dxhat_k xhat_k, where the terms had split it into x_k and mu
        # (kept merged where that is smaller: sum_k W_ki dg_k g_k (1 - g_k) is one matrix
        # product, where its split form has two)
        merged = merge_sums(expr)
        if merged != expr or expr.has(sp.Sum):       # (only sums hide such values)
            refolded = tidy(_fold_values(merged, layer, value_reads))
            expr = min((expr, refolded, merge_sums(refolded)), key=complexity)
        resolved[name] = expr
        if name not in kept:
            continue
        free = {i.label.name for i in canon[name]}
        expr = name_saved_argmax(tidy_bound(freshen_bound(expr), taken | free, letters),
                                 layer.equations)
        given, used = apply_conditions(expr, layer.conditions, layer)
        if used:
            given = tidy_bound(freshen_bound(tidy(given)), taken | free, letters)
        steps.append(Step(name, canon[name], expr, given if used else None, tuple(used),
                          name in gradients))
    return _name_totals(Derivation(layer, tuple(steps), tuple(contributions), walked,
                                   canon), recurrent)


@by_shape
def _local_term(seed, rhs, x, y, lhs):
    """The chain rule's term of one read x of y[lhs] = rhs: sum over lhs of
    seed * d rhs / dx, contracted, with y written where rhs appears (0 where rhs does
    not depend on x)."""
    local = sp.diff(rhs, x)
    if local == 0:
        return local
    term = seed * local
    if lhs:
        term = sp.Sum(term, *[(l, 0, l.upper) for l in lhs])
    return fold(contract(term), rhs,
                lambda m: y.base[tuple(m[l] for l in lhs)] if lhs else y)


def upstream_name(tensor: str) -> str:
    """While deriving, the upstream gradient of a recurrent output, apart from its total
    adjoint d<tensor>; renamed by _name_totals."""
    return adjoint_name(tensor) + "__up"


def total_name(tensor: str) -> str:
    """The array holding a recurrent output's total adjoint, where it is a step: the
    upstream gradient keeps the name d<tensor> every output's has."""
    return adjoint_name(tensor) + "_total"


def _name_totals(deriv: Derivation, recurrent) -> Derivation:
    """Recurrent outputs' adjoints renamed for the kernels: the upstream gradient is
    d<h>, as for any output, and the total adjoint d<h>_total."""
    outputs = [t.name for t in deriv.layer.outputs if t.name in recurrent]
    if not outputs:
        return deriv
    rename = {}
    for h in outputs:
        for old, new in ((adjoint_name(h), total_name(h)), (upstream_name(h), adjoint_name(h))):
            rename[sp.IndexedBase(old)] = sp.IndexedBase(new)
    fix = lambda e: e.xreplace(rename) if e is not None else None
    steps = tuple(dataclasses.replace(
        s, expr=fix(s.expr), given=fix(s.given),
        label=total_name(s.tensor) if s.tensor in outputs else s.label) for s in deriv.steps)
    contributions = tuple(dataclasses.replace(c, expr=fix(c.expr))
                          for c in deriv.contributions)
    return dataclasses.replace(deriv, steps=steps, contributions=contributions)


def _needed(layer):
    """Tensors whose adjoint matters: the differentiable ones and every value computed from
    them (not labels, not `nograd` hyperparameters, not what depends only on those)."""
    needed = {t.name for t in layer.differentiable}
    for eq in layer.equations:
        if eq.reads & needed:
            needed.add(eq.target)
    return needed


def _fold_values(term, layer, value_reads, skip=None, used=None):
    """term with every forward value but `skip`'s written as its tensor (sum_c x[n, c] / C
    as mu[n]), so that terms which cancel once named do cancel; the equations folded in
    are appended to `used`."""
    present = tensor_names(term)
    for other in layer.equations:
        if other is skip or other.target == layer.loss \
                or not value_reads[other.target] <= present:
            continue     # (a value is only found where all it reads is present)
        t = layer.tensors[other.target]
        folded = fold(term, other.rhs, lambda m, t=t, o=other:
                      t.ref(*[m[l] for l in o.indices]))
        if folded != term:
            term = contract(folded)
            present = tensor_names(term)
            if used is not None:
                used.append(other)
    return term


def _cancels_flat(term, layer, value_reads, skip, used):
    """term multiplied out, where a sum of sums cancels only so: sum_c (sum_h x - H mu) is
    sum_{c,h} x - C H mu, 0 for mu the mean over c and h (None where it does not cancel;
    the equations that cancel it appended to `used`)."""
    if not any(isinstance(s.function, sp.Add) and s.function.has(sp.Sum)
               for s in term.atoms(sp.Sum)):
        return None
    flat, folded = contract(sp.expand(term)), []
    if _fold_values(flat, layer, value_reads, skip, folded) != 0:
        return None
    used += folded
    return sp.factor_terms(flat)      # (sum_{c,h} x - C H mu) rstd^3 drstd / (C H)


def _adjoint_refs(expr, layer):
    indexed = {adjoint_name(t.name) for t in layer.tensors.values() if t.dims}
    scalar = {adjoint_name(t.name) for t in layer.tensors.values() if not t.dims}
    refs = {a for a in expr.atoms(sp.Indexed) if a.base.label.name in indexed}
    refs |= {s for s in expr.atoms(sp.Symbol) if s.name in scalar}
    return refs


def _adjoints_read(expr, layer):
    out = set()
    for ref in _adjoint_refs(expr, layer):
        out.add(ref.base.label.name[1:] if isinstance(ref, sp.Indexed) else ref.name[1:])
    return out
