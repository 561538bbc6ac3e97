"""Index calculus: differentiate, contract Kronecker deltas, tidy sums.

SymPy differentiates x[n, j] by x[p, q] into KroneckerDelta(n, p) KroneckerDelta(j, q).
Summing those deltas with Sum.doit() would wrap results in Piecewise range guards (sympy
issues 12750, 12751).  We know every index is in range by construction, so contract() does
it directly: sum over k of delta(k, q) f(k) is f(q).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

from .affine import (between, bounds_from, divides, extremes, is_full, proven_nonnegative,
                     solve_for)
from .indices import dim_of, free_indices, freshen_bound, outer_first
from .same_shape import by_shape

_EXPAND = dict(deep=False, mul=True, multinomial=False, power_exp=False, power_base=False,
               log=False, basic=False)


def _is_leaf(e) -> bool:
    return not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol, sp.Number,
                                        sp.IndexedBase))


def contract(expr):
    """Contract deltas against sums, split sums over terms, pull out constant factors.

    The result has sums of one index each, whose bodies all depend on that index.  A
    delta of affine arguments, delta(i + k, r), is solved for one summed index and that
    index's range kept as a bracket the remaining sums absorb into their bounds
    (derive.affine): the adjoint of a shifted read is a gather with exact bounds.
    """
    if _is_leaf(expr):
        return expr
    if isinstance(expr, sp.Sum):
        return _contract_sum(expr.function, outer_first(expr.limits))
    if not (expr.has(sp.Sum) or expr.has(sp.KroneckerDelta)):
        return expr
    return expr.func(*[contract(a) for a in expr.args])


def _contract_sum(body, limits):
    out = []
    for term in _distribute(body):
        factors = sp.Mul.make_args(term)
        # A sum inside the term whose body holds a delta joins this one, so the delta is
        # solved for the best of all summed indices (the outer ones first: the forward
        # output position i in delta(i + k, r), leaving the kernel offset k summed).
        inner = next((f for f in factors if isinstance(f, sp.Sum)
                      and f.function.has(sp.KroneckerDelta)), None)
        if inner is not None:
            rest = sp.Mul(*[f for f in factors if f is not inner])
            out.append(_contract_sum(rest * inner.function,
                                     limits + outer_first(inner.limits)))
            continue
        factors = [contract(f) for f in factors]
        out.append(_eliminate(factors, limits))
    return sp.Add(*out)


def _distribute(body):
    """The terms of body, expanded only as far as the deltas and sums need: a factor that
    holds neither stays whole, so a chain rule product of n local derivatives is not
    multiplied out into 2**n terms (the sums that remain split over their own terms:
    _sum_over)."""
    out = []
    for term in sp.Add.make_args(body):
        factors = sp.Mul.make_args(term)
        plain = sp.Mul(*[f for f in factors if not f.has(sp.KroneckerDelta, sp.Sum)])
        rest = sp.Mul(*[f for f in factors if f.has(sp.KroneckerDelta, sp.Sum)])
        out += [plain * t for t in sp.Add.make_args(sp.expand(rest, **_EXPAND))]
    return out


def _eliminate(factors, limits):
    """One product summed over `limits` (outermost first): solve its deltas for summed
    indices, absorb range brackets into bounds, then nest the sums innermost-last with
    each body holding only the factors that depend on its index."""
    factors, limits = list(factors), [tuple(lim) for lim in limits]
    while True:
        choice = _pick_delta(factors, limits)
        if choice is None:
            break
        d, pos, solution, divisor, numerator = choice
        k, lo, hi = limits.pop(pos)
        factors.remove(d)
        sub = {k: solution}
        factors = [_substitute(f, sub) for f in factors]
        limits = [(j, a.xreplace(sub), b.xreplace(sub)) for j, a, b in limits]
        if solution.atoms(sp.Indexed):
            continue                  # a label's value: in range by the wrappers' checks
        if divisor == 1:
            bracket = between(solution, lo, hi)
        else:                         # k = numerator / divisor, where that divides
            factors.append(divides(divisor, numerator))
            bracket = between(numerator, divisor * lo, divisor * hi)
        if bracket == 0:
            factors = [sp.Integer(0)]
        elif not _implied(bracket):
            factors.append(bracket)
    factors, limits = _absorb(factors, limits)
    for lim in [lim for lim in limits if lim[1] == lim[2]]:
        # a sum over one value (sum_{t=0..0}, an initial state's step) is its term
        limits.remove(lim)
        factors = [_substitute(f, {lim[0]: lim[1]}) for f in factors]
        limits = [(j, a.xreplace({lim[0]: lim[1]}), b.xreplace({lim[0]: lim[1]}))
                  for j, a, b in limits]
    summed = {k for k, _, _ in limits}
    if any(_is_table_delta(f, summed) for f in factors):
        # [v == idx[p, k]] against a table of summed indices: one flat sum of the whole
        # product, so the backends add each summand at row idx[p, k] (a scatter-add,
        # codegen/scatter.py) instead of building the one-hot matrix a nesting needs.
        dep = [f for f in factors if free_indices(f) & summed]
        body = sp.Mul(*dep)
        for lim in reversed(limits):
            body = sp.Sum(body, lim)
        return sp.Mul(*[f for f in factors if f not in dep]) * body
    for lim in reversed(limits):
        factors = [_sum_over(factors, lim)]
    return sp.Mul(*factors)


def _sum_over(factors, lim):
    """sum over lim of the product of factors: those free of its index pulled out, and
    the rest, where a sum of terms depends on the index, split term by term (the sum of
    (x_c - mu) dxhat_c is sum x_c dxhat_c - mu sum dxhat_c, which folds and cancels)."""
    k, lo, hi = lim
    dep = [f for f in factors if k in free_indices(f)]
    indep = sp.Mul(*[f for f in factors if k not in free_indices(f)])
    body = sp.Mul(*dep)
    terms = [body]
    if any(isinstance(f, sp.Add) or isinstance(f, sp.Pow) and isinstance(f.base, sp.Add)
           for f in dep) and _expanded_terms(body) <= EXPANSION_LIMIT:
        terms = sp.Add.make_args(sp.expand(body, **_EXPAND))
    out = []
    for t in terms:
        inner = [f for f in sp.Mul.make_args(t) if k in free_indices(f)]
        outer = sp.Mul(*[f for f in sp.Mul.make_args(t) if k not in free_indices(f)])
        if not inner:
            count = hi - lo + 1
            out.append(outer * (count if is_full(lim) else sp.Max(0, count)))
        else:
            out.append(outer * sp.Sum(sp.Mul(*inner), lim))
    return indep * sp.Add(*out)


def _substitute(f, sub):
    """f with sub applied, renaming f's own summation indices first where a value reads
    one of them: tanh(sum_k w[k] x[n, i + k]) with i = l - k must not become
    tanh(sum_k w[k] x[n, l]) (the k of the solution is the outer sum's, not this one's),
    and the k being solved for must not rename relu(sum_k ...)'s own k."""
    reads = set().union(*(free_indices(v) for v in sub.values())) | set(sub)
    if any(lim[0] in reads for s in f.atoms(sp.Sum) for lim in s.limits):
        f = freshen_bound(f)
    return f.xreplace(sub)


def _is_table_delta(f, summed) -> bool:
    """delta(v, g) with g an integer tensor read whose indices are all summed."""
    if not isinstance(f, sp.KroneckerDelta):
        return False
    return any(g.atoms(sp.Indexed) and free_indices(g) and free_indices(g) <= summed
               for g in f.args)


def _pick_delta(factors, limits):
    """(delta, limit position, solution, divisor, numerator) for the delta to eliminate
    next: a unit coefficient first (no divisibility condition), then the outermost."""
    best = None
    for f in factors:
        if not isinstance(f, sp.KroneckerDelta):
            continue
        e = f.args[0] - f.args[1]
        for pos, (k, _, _) in enumerate(limits):
            if k not in free_indices(f):
                continue
            solved = solve_for(k, e)
            if solved is None:
                continue
            solution, divisor = solved
            score = (divisor != 1, pos)
            if best is None or score < best[0]:
                best = (score, (f, pos, solution, divisor, sp.expand(solution * divisor)))
    return best[1] if best else None


def _implied(bracket) -> bool:
    if bracket.is_Integer:                      # decided when it was built
        return bracket == 1
    e, lo, hi = bracket.args
    span = extremes(e)
    return span is not None and proven_nonnegative(span[0] - lo) \
        and proven_nonnegative(hi - span[1])


def _absorb(factors, limits):
    """[lo <= a*k + b <= hi] on a summed k becomes bounds of k's sum (the innermost
    summed index the bracket holds, so the bounds read only outer indices)."""
    limits = list(limits)
    kept = []
    for f in factors:
        target = None
        if isinstance(f, between):
            held = free_indices(f)
            for pos in reversed(range(len(limits))):
                if limits[pos][0] in held:
                    target = pos
                    break
        found = bounds_from(f, limits[target][0]) if target is not None else None
        if found is None:
            kept.append(f)
            continue
        k, lo, hi = limits[target]
        new_lo, new_hi = found
        lo = new_lo if lo == k.lower and _at_least(new_lo, lo) else \
            (lo if _at_least(lo, new_lo) else sp.Max(lo, new_lo))
        hi = new_hi if hi == k.upper and _at_least(hi, new_hi) else \
            (hi if _at_least(new_hi, hi) else sp.Min(hi, new_hi))
        limits[target] = (k, lo, hi)
    return kept, limits


def _at_least(a, b) -> bool:
    """a >= b provably (over the ranges of the indices both hold)."""
    span = extremes(a - b)
    return span is not None and proven_nonnegative(span[0])


def fold(expr, value, name_of):
    """Write `value` (an equation's right-hand side) as its tensor wherever it appears.

    `value` has free indices L; for every way of mapping L onto indices present in expr,
    value(mapped) is replaced by name_of(mapped).  This turns sigma(z)(1 - sigma(z)) into
    a (1 - a) and softmax's exp(z_p) / sum_k exp(z_k) into y_p.
    """
    if not tensor_names(value) <= tensor_names(expr):
        return expr                      # a tensor value reads is absent: nothing to find
    lhs = sorted(free_indices(value), key=str)
    if not lhs:
        return _subs_everywhere(expr, value, name_of({}))
    present = sorted(expr.atoms(sp.Idx), key=str)
    choices = [[i for i in present if dim_of(i) == dim_of(l)] for l in lhs]
    for variant in _bound_variants(value, expr):
        for combo in itertools.product(*choices):
            mapping = dict(zip(lhs, combo))
            pattern = variant.xreplace(mapping)
            if expr.has(*[a for a in pattern.atoms(sp.Indexed)]):
                expr = _subs_everywhere(expr, pattern, name_of(mapping))
                # a mean: sum_k x[n, k] alone is C mu[n] (so sum_k x - C mu cancels)
                coeff, core = pattern.as_independent(*pattern.atoms(sp.Indexed),
                                                     as_Add=False)
                if coeff != 1 and isinstance(core, sp.Sum) and expr.has(core):
                    expr = _subs_everywhere(expr, core, name_of(mapping) / coeff)
    return expr


def tensor_names(expr) -> set[str]:
    """Names of the tensors expr reads by index."""
    return {a.base.label.name for a in expr.atoms(sp.Indexed)}


def _bound_variants(value, expr):
    """value, and value with its summation indices renamed to those summed in expr, all
    at once (a sum is the same sum whatever its bound indices are called), each also in
    the nested one-index-a-sum form contract() writes."""
    ours = [lim[0] for s in value.atoms(sp.Sum) for lim in s.limits]
    if not ours:
        return [value]
    theirs = sorted({lim[0] for s in expr.atoms(sp.Sum) for lim in s.limits}, key=str)
    choices = [[k] + [o for o in theirs if dim_of(o) == dim_of(k) and o != k] for k in ours]
    out = []
    for combo in itertools.islice(itertools.product(*choices), 64):
        if len(set(combo)) < len(combo):
            continue
        renamed = value.xreplace(dict(zip(ours, combo)))
        for form in (renamed, contract(renamed)):
            if form not in out:
                out.append(form)
    return out


def _subs_everywhere(expr, old, new):
    """Algebraic substitution node by node, so it also reaches inside sums whose bound
    index occurs in `old` (Sum.subs refuses those)."""
    if expr == old:
        return new
    if isinstance(expr, sp.Sum):
        return sp.Sum(_subs_everywhere(expr.function, old, new), *expr.limits)
    if _is_leaf(expr):
        return new if expr == old else expr
    rebuilt = expr.func(*[_subs_everywhere(a, old, new) for a in expr.args])
    if rebuilt == old:
        return new
    if isinstance(rebuilt, (sp.Mul, sp.Add, sp.Pow)):
        # Mul/Add/Pow know partial matches: exp(z)/S**2 with old = exp(z)/S gives new/S,
        # and X**(-3/2) with old = X**(-1/2) gives new**3.
        replaced = rebuilt._eval_subs(old, new)
        if replaced is not None:
            return replaced
    if isinstance(rebuilt, sp.Mul):
        # contract() pulls constant factors out of sums; a match may need them back in:
        # (sum_k exp(z_k) dy_k) / S  ->  sum_k (exp(z_k) / S) dy_k  ->  sum_k y_k dy_k.
        factors = sp.Mul.make_args(rebuilt)
        for j, f in enumerate(factors):
            if not isinstance(f, sp.Sum):
                continue
            others = sp.Mul(*(factors[:j] + factors[j + 1:]))
            pushed = sp.Sum(others * f.function, *f.limits)
            body = _subs_everywhere(pushed.function, old, new)
            if body != pushed.function:
                return contract(sp.Sum(body, *f.limits))
    return rebuilt


def merge_sums(expr):
    """sum_k f_k - c sum_k g_k as one sum, sum_k (f_k - c g_k), its body factored: the
    inverse of splitting sums over terms, so that (x_k - mu) reappears and can be folded
    into xhat_k.  Sums merge when they run over whole ranges of the same dimensions."""
    if _is_leaf(expr):
        return expr
    if isinstance(expr, sp.Sum):
        return sp.Sum(merge_sums(expr.function), *expr.limits)
    expr = expr.func(*[merge_sums(a) for a in expr.args])
    if not isinstance(expr, sp.Add):
        return expr
    groups: dict = {}
    rest = []
    for term in expr.args:
        sums = [f for f in sp.Mul.make_args(term) if isinstance(f, sp.Sum)]
        limits, body = _nested_limits(sums[0]) if len(sums) == 1 else (None, None)
        if limits is None:
            rest.append(term)
            continue
        coeff = sp.Mul(*[f for f in sp.Mul.make_args(term) if f is not sums[0]])
        if not free_indices(coeff) <= free_indices(sums[0]):
            rest.append(term)     # xhat_c sum_k g_k: merged, the sum would run per c
            continue
        key = tuple(dim_of(k) for k, _, _ in limits)
        groups.setdefault(key, []).append((coeff, limits, body, term))
    for members in groups.values():
        ks = [k for k, _, _ in members[0][1]]
        if len(members) == 1 or any(set(ks) & free_indices(c) for c, _, _, _ in members):
            rest += [t for _, _, _, t in members]
            continue
        body = sp.Add(*[c * b.xreplace({k: new for (k, _, _), new in zip(lims, ks)})
                        for c, lims, b, _ in members])
        rest.append(sp.Sum(sp.factor_terms(body), *members[0][1]))
    return sp.Add(*rest)


def _nested_limits(s):
    """(limits, body) of sum_k sum_l ... body over whole ranges, else (None, None)."""
    limits = []
    while isinstance(s, sp.Sum):
        limits += list(s.limits)
        s = s.function
    if not all(is_full(lim) for lim in limits):
        return None, None
    return limits, s


def apply_conditions(expr, conditions, layer):
    """Replace sum_k T[.., k, ..] by the declared value; returns (expr, conditions used)."""
    used = []
    for c in conditions:
        def rule(s, c=c):
            body = s.function
            k = s.limits[0][0]
            return (isinstance(body, sp.Indexed) and body.base.label.name == c.tensor
                    and len(s.limits) == 1 and body.indices[c.slot] == k)

        new = expr.replace(lambda e: isinstance(e, sp.Sum) and rule(e), lambda e: c.value)
        if new != expr:
            used.append(c)
            expr = new
    return expr, used


@by_shape
def tidy(expr):
    """A readable equivalent: the smallest of a few cheap rewrites, by operation count.

    sympy.simplify is avoided: on sums of indexed terms it is slow and rarely better.
    """
    expr = _gather_deltas(contract(expr))
    candidates = [expr]
    if _expanded_terms(expr) > EXPANSION_LIMIT:
        return expr          # multiplying out a long chain rule product only makes it longer
    try:
        expanded = contract(sp.expand(expr, **_EXPAND))
        candidates.append(expanded)
        candidates.append(sp.factor_terms(expanded))
        if not expr.has(sp.Sum):
            candidates.append(sp.factor_terms(sp.cancel(expr)))
        else:
            candidates.append(_cancel_terms(expanded))
    except (sp.PolynomialError, TypeError):  # cancel refuses some non-rational forms
        pass
    return min(candidates, key=complexity)


EXPANSION_LIMIT = 64


def _expanded_terms(expr) -> int:
    """How many terms expanding expr's top level would make (without making them)."""
    total = 0
    for term in sp.Add.make_args(expr):
        count = 1
        for f in sp.Mul.make_args(term):
            base, e = (f.base, f.exp) if isinstance(f, sp.Pow) else (f, sp.S.One)
            if isinstance(base, sp.Add) and e.is_Integer and e > 0:
                count *= len(base.args) ** int(e)
        total += count
    return total


def _gather_deltas(expr):
    """In a product with delta(i, t[n]) (an index against a gathered integer), the other
    factors only matter where i = t[n]: write them so, and y[n, i] / y[n, t[n]] cancels."""
    if _is_leaf(expr):
        return expr
    expr = expr.func(*[_gather_deltas(a) for a in expr.args])
    if not isinstance(expr, sp.Mul):
        return expr
    for d in [f for f in expr.args if isinstance(f, sp.KroneckerDelta)]:
        a, b = d.args
        if isinstance(b, sp.Idx) and not isinstance(a, sp.Idx):
            a, b = b, a
        if isinstance(a, sp.Idx) and not isinstance(b, sp.Idx) and b.atoms(sp.Indexed):
            rest = sp.Mul(*[f for f in expr.args if f is not d])
            return d * rest.xreplace({a: b})
    return expr


def complexity(e) -> "Complexity":
    """Operation count, with long constants (a decimal literal as a rational, or the
    common denominator cancel() makes of several) counted as costly as three operations;
    ties go to the shorter printed form."""
    longs = sum(1 for r in e.atoms(sp.Rational) if abs(r.q) > 10**4 or abs(r.p) > 10**9)
    return Complexity(sp.count_ops(e) + 3 * longs, e)


@dataclass(frozen=True, eq=False)
class Complexity:
    """A key for min(): the printed length is only computed to break a tie of operation
    counts between different expressions (printing costs more than counting)."""
    ops: int
    expr: sp.Expr

    def __lt__(self, other: "Complexity") -> bool:
        if self.ops != other.ops:
            return self.ops < other.ops
        return self.expr != other.expr and len(str(self.expr)) < len(str(other.expr))


def _cancel_terms(expr):
    """cancel() applied to sum-free factors of each term (sums stay intact)."""
    out = []
    for term in sp.Add.make_args(expr):
        sums = [f for f in sp.Mul.make_args(term) if f.has(sp.Sum)]
        plain = sp.Mul(*[f for f in sp.Mul.make_args(term) if not f.has(sp.Sum)])
        out.append(sp.cancel(plain) * sp.Mul(*sums))
    return sp.factor_terms(sp.Add(*out))
