"""Kernel plan: the derivation as ordered statements a backend prints, plus the rewrites
that make generated code numerically stable.

    forward:  every equation, with softmax ratios shifted by their row maximum and log of a
              softmax or sigmoid output rewritten as log-softmax / -softplus(-z);
    backward: the derivation's steps, in order (general forms: a declared condition
              simplifies the documents, never the kernels, so a target that breaks it
              still gets the right gradient).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp

from derive.derivation import Derivation, adjoint_name
from derive.functions import sigmoid, softplus
from derive.indices import dim_of, free_indices
from derive.spec import Layer


class Maximum(sp.Function):
    """max over the indices k1..km of body: Maximum(body, k1, ..., km), one reduction (a
    softmax shift's row maximum, a pooling window).  Only kernels use it."""

    @property
    def bound_indices(self):
        return self.args[1:]


@dataclass(frozen=True)
class Statement:
    name: str                         # the array this statement assigns
    indices: tuple[sp.Idx, ...]       # its axes, in order
    expr: sp.Expr
    formula: str = ""                 # the human-readable line it implements

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(str(dim_of(i)) for i in self.indices)


@dataclass(frozen=True)
class KernelPlan:
    layer: Layer
    derivation: Derivation
    forward: tuple[Statement, ...]
    backward: tuple[Statement, ...]
    args: tuple[str, ...]             # forward's arguments: inputs, params, targets
    returns: tuple[str, ...]          # forward's results: outputs, then intermediates
    reuses: tuple[str, ...]           # forward results the backward pass reads
    upstream: tuple[str, ...]         # upstream gradients backward takes
    gradients: tuple[str, ...]        # backward's results (d + name)

    @property
    def dims_used(self) -> tuple[str, ...]:
        """Dimensions that appear as values in some statement (e.g. 1/N), not as ranges."""
        used = set()
        for st in self.forward + self.backward:
            used |= _value_symbols(st.expr)
        return tuple(d for d in self.layer.dims if d in used)


def _value_symbols(expr) -> set[str]:
    if isinstance(expr, sp.Symbol):
        return {expr.name}
    if isinstance(expr, (sp.Idx, sp.Indexed)):
        return set()
    if isinstance(expr, sp.Sum):
        return _value_symbols(expr.function)
    if isinstance(expr, Maximum):
        return _value_symbols(expr.args[0])
    out = set()
    for a in expr.args:
        out |= _value_symbols(a)
    return out


def plan(derivation: Derivation) -> KernelPlan:
    from derive.pretty import equation as show

    layer = derivation.layer
    defs = {eq.target: eq for eq in layer.equations}
    forward = []
    maxima = {}   # one row maximum per distinct exp-sum, shared by all statements
    from .reductions import lower_reductions
    from .stable_gradients import guard_brackets, stabilize

    for eq in layer.equations:
        expr = _one_softplus(_stable_logs(_stable_ratios(lower_reductions(eq.rhs)), defs))
        temps, expr = _shift_softmax(expr, eq.target, maxima)
        forward += temps
        forward.append(Statement(eq.target, eq.indices, expr, eq.text))
    backward = tuple(Statement(s.name, s.indices, _recompute_cheap(guard_brackets(stabilize(
                               _stable_ratios(lower_reductions(s.expr)), layer)), layer),
                               show(s.lhs, s.expr)) for s in derivation.steps)
    from .reductions import read_saved_argmax
    backward = read_saved_argmax(backward, forward)
    from .shared_sums import share_sums
    backward = share_sums(backward, [adjoint_name(t.name) for t in layer.differentiable],
                          layer, _arithmetic)
    from .shared_arguments import share_arguments
    backward = share_arguments(backward, derivation)
    from .scan import guard_steps, time_dims
    times = time_dims(layer)
    forward = [replace(st, expr=guard_steps(st.expr, times)) for st in forward]
    backward = tuple(replace(st, expr=guard_steps(st.expr, times)) for st in backward)
    forward_names = {eq.target for eq in layer.equations}
    read = set()
    for st in backward:
        read |= {b.label.name for b in st.expr.atoms(sp.IndexedBase)}
        read |= {s.name for s in st.expr.atoms(sp.Symbol)}
    returns = tuple(t.name for t in layer.outputs) + tuple(
        t.name for t in layer.by_role("intermediate"))
    return KernelPlan(
        layer, derivation, tuple(forward), backward,
        args=tuple(t.name for t in layer.by_role("input", "param", "target")),
        returns=returns,
        reuses=tuple(n for n in returns if n in read and n in forward_names),
        upstream=tuple(derivation.upstream),
        gradients=tuple(adjoint_name(t.name) for t in layer.differentiable))


def _exp_in_one_plus(e):
    """u when e is 1 + exp(u), else None."""
    if isinstance(e, sp.Add) and len(e.args) == 2 and sp.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if isinstance(other, sp.exp):
            return other.args[0]
    return None


def _stable_ratios(expr):
    """exp(u) / (1 + exp(u)) = sigmoid(u): the derivative of log(1 + exp(u)) as SymPy writes
    it is inf / inf = NaN once exp(u) overflows (u > 88 in float32)."""
    def rewrite(m):
        for f in m.args:
            u = _exp_in_one_plus(f.base) if isinstance(f, sp.Pow) and f.exp == -1 else None
            if u is not None and sp.exp(u) in m.args:
                return m.func(*(a for a in m.args if a not in (f, sp.exp(u)))) * sigmoid(u)
        return m

    return expr.replace(lambda e: isinstance(e, sp.Mul), rewrite)


def _recompute_cheap(expr, layer):
    """Forward intermediates that are a few arithmetic operations on values the backward
    pass reads anyway (layer norm's xhat = (x - mu) rstd) are recomputed, not read back:
    one array fewer to store, pass and stream through memory."""
    cheap = {eq.target: eq for eq in layer.equations
             if layer.tensors[eq.target].role == "intermediate" and eq.indices
             and not eq.rhs.has(sp.Sum) and not eq.rhs.atoms(sp.Function)
             and _arithmetic(eq.rhs) <= 3}
    if not cheap:
        return expr

    def value(ref):
        eq = cheap[ref.base.label.name]
        return eq.rhs.xreplace(dict(zip(eq.indices, ref.indices)))

    return expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base.label.name in cheap,
                        value)


def _one_softplus(expr):
    """softplus(-a) = softplus(a) - a: binary cross-entropy's (1 - t) softplus(z) +
    t softplus(-z) becomes softplus(z) - t z, one exp and one log1p per element instead
    of two.  Kept only when it leaves fewer softplus calls."""
    flipped = expr.replace(
        lambda e: isinstance(e, softplus) and e.args[0].could_extract_minus_sign(),
        lambda e: softplus(-e.args[0]) + e.args[0])

    def expand_sums(e):
        if isinstance(e, sp.Sum):
            return sp.Sum(sp.expand(expand_sums(e.function)), *e.limits)
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        return e.func(*[expand_sums(a) for a in e.args])

    flipped = expand_sums(flipped)
    count = lambda e: sum(1 for _ in sp.preorder_traversal(e) if isinstance(_, softplus))
    return flipped if count(flipped) < count(expr) else expr


def _arithmetic(e) -> int:
    """Additions, products and powers in e, not counting those inside array references."""
    if isinstance(e, (sp.Indexed, sp.Symbol, sp.Number)):
        return 0
    return isinstance(e, (sp.Add, sp.Mul, sp.Pow)) + sum(_arithmetic(a) for a in e.args)


def _softmax_parts(expr):
    """(numerator exponent g, sum) when expr is exp(g) / sum_k exp(h) with g = h[k := i]."""
    if not isinstance(expr, sp.Mul):
        return None
    exps = [f for f in expr.args if isinstance(f, sp.exp)]
    sums = [f.base for f in expr.args if isinstance(f, sp.Pow) and f.exp == -1
            and isinstance(f.base, sp.Sum) and len(f.base.limits) == 1
            and isinstance(f.base.function, sp.exp)]
    for s in sums:
        k = s.limits[0][0]
        h = s.function.args[0]
        for e in exps:
            g = e.args[0]
            # the numerator's index: a free index, or a gathered one (z[n, t[n]])
            gathered = [x for a in g.atoms(sp.Indexed) for x in a.indices
                        if not isinstance(x, sp.Idx)]
            for i in [i for i in free_indices(g) if dim_of(i) == dim_of(k)] + gathered:
                if h.xreplace({k: i}) == g:
                    return e, s, k
    return None


def _shift_softmax(expr, target, maxima):
    """Shift every exp-sum by its maximum m = max_k g_k, so logits of 1e4 do not overflow:
    exp(g_i) / sum_k exp(g_k)  ->  exp(g_i - m) / sum_k exp(g_k - m)
    log(sum_k exp(g_k))        ->  m + log(sum_k exp(g_k - m))
    Returns (new temp statements computing each m, expr)."""
    temps = []

    def maximum_of(s):
        k = s.limits[0][0]
        h = s.function.args[0]
        free = tuple(sorted(free_indices(s), key=lambda i: str(i)))
        key = (h.xreplace({k: sp.Idx("_", dim_of(k))}), free)
        if key not in maxima:
            # A leading underscore: no spec can name a tensor like this, so no clash.
            name = f"_{target}_max{len(temps) or ''}"
            m = sp.IndexedBase(name)[free] if free else sp.Symbol(name)
            temps.append(Statement(name, free, Maximum(h, k),
                                   f"maximum over {k} of {h}, for a stable exp-sum"))
            maxima[key] = m
        m = maxima[key]
        return m, sp.Sum(sp.exp(h - m), *s.limits)

    def rewrite(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        e = e.func(*[rewrite(a) for a in e.args])
        if isinstance(e, sp.log) and _is_exp_sum(e.args[0]):
            m, shifted = maximum_of(e.args[0])
            return m + sp.log(shifted)
        parts = _softmax_parts(e)
        if parts is None:
            return e
        num, s, k = parts
        m, shifted = maximum_of(s)
        return e.xreplace({num: sp.exp(num.args[0] - m), s: shifted})

    expr = rewrite(expr)
    return temps, expr


def _is_exp_sum(e) -> bool:
    return isinstance(e, sp.Sum) and len(e.limits) == 1 and isinstance(e.function, sp.exp)


def _stable_logs(expr, defs):
    """log of a tensor defined as a softmax or a sigmoid, computed without taking log(0):
    log(softmax_i) = g_i - log sum_k exp(g_k);  log(sigmoid(a)) = -softplus(-a);
    log(1 - sigmoid(a)) = -softplus(a);  log(1 + exp(a)) = softplus(a)."""
    def definition(ref):
        name = ref.base.label.name if isinstance(ref, sp.Indexed) else getattr(ref, "name", None)
        eq = defs.get(name)
        if eq is None:
            return None
        idx = ref.indices if isinstance(ref, sp.Indexed) else ()
        return eq.rhs.xreplace(dict(zip(eq.indices, idx)))

    def rewrite(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        e = e.func(*[rewrite(a) for a in e.args])
        if not isinstance(e, sp.log):
            return e
        arg = e.args[0]
        u = _exp_in_one_plus(arg)
        if u is not None:                       # log(1 + exp(u)) overflows for u > 88
            return softplus(u)
        ref, flip = arg, False
        if isinstance(arg, sp.Add) and len(arg.args) == 2 and sp.Integer(1) in arg.args:
            other = arg.args[0] if arg.args[1] == 1 else arg.args[1]
            if isinstance(-other, (sp.Indexed, sp.Symbol)):
                ref, flip = -other, True
        if not isinstance(ref, (sp.Indexed, sp.Symbol)):
            return e
        value = definition(ref)
        if value is None:
            return e
        if isinstance(value, sigmoid):
            a = value.args[0]
            return -softplus(a) if flip else -softplus(-a)
        parts = _softmax_parts(value)
        if parts is not None and not flip:
            num, s, _ = parts
            if value == num / s:
                return num.args[0] - sp.log(s)
        return e

    return rewrite(expr)


def const_flag(layer) -> str:
    """' --const S=2,P=1' for a layer with constants: the command that regenerates it."""
    pairs = ",".join(f"{k}={v}" for k, v in layer.constants.items())
    return f" --const {pairs}" if pairs else ""
