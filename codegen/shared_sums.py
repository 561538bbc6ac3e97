"""The backward pass's sums written so that equal ones are computed once, in one pass.

Batch norm's derived dx reads sum_{n,h,w} dxhat with dxhat = w[c] dy, dw is
sum_{n,h,w} (x - mu) dy rstd[c] and dvar sum_{n,h,w} (mu - x) dxhat: three spellings of two
per-channel sums (and dx also sums x, which the forward pass already summed into mu).
Three rewrites of the plan's backward statements make them equal, and the loop lowering
(codegen/loops.py) then computes each distinct sum once:

    a cheap delta is substituted        dxhat[n, c, h, w] -> w[c] dy[n, c, h, w]
    factors free of the summed          sum_n w[c] (mu[c] - x[n, c]) dy[n, c]
    indices move out, signs too           -> -w[c] sum_n (x[n, c] - mu[c]) dy[n, c]
    a forward sum is read back          sum_n x[n, c] -> N mu[c]  (mu[c] = sum_n x[n, c] / N)
"""
from __future__ import annotations

import dataclasses

import sympy as sp

from derive.indices import dim_of, free_indices


def share_sums(backward, gradients, layer, arithmetic):
    """The backward statements rewritten (see the module docstring); `arithmetic(e)`
    counts e's operations, the plan's measure of a delta cheap enough to recompute."""
    backward = _substitute_cheap_deltas(list(backward), set(gradients), arithmetic)
    saved = _forward_sums(layer)
    return tuple(dataclasses.replace(st, expr=_fold_forward_sums(_normalize_sums(st.expr),
                                                                 saved))
                 for st in backward)


def _substitute_cheap_deltas(backward, gradients, arithmetic):
    """A delta that is a few operations on arrays (no sum, no function) is written into
    every statement that reads it, and no longer stored: one array fewer through memory,
    and the sums over it become sums over the arrays it is made of."""
    out = []
    for k, st in enumerate(backward):
        cheap = st.name not in gradients and st.indices and not st.expr.has(sp.Sum) \
            and not st.expr.atoms(sp.Function) and arithmetic(st.expr) <= 3
        if not cheap:
            out.append(st)
            continue

        def value(ref, st=st):
            return st.expr.xreplace(dict(zip(st.indices, ref.indices)))

        reads = lambda e, name=st.name: isinstance(e, sp.Indexed) and e.base.label.name == name
        backward[k + 1:] = [dataclasses.replace(later, expr=later.expr.replace(reads, value))
                            for later in backward[k + 1:]]
    return out


def _normalize_sums(expr):
    """Every sum as c * sum(core): c the summand's factors free of the summed indices
    (and a sign taken out of each sum of terms), so equal cores compare equal."""
    def rewrite(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol)):
            return e
        e = e.func(*[rewrite(a) for a in e.args])
        if not isinstance(e, sp.Sum):
            return e
        summed = {lim[0] for lim in e.limits}
        outside, inside = [], []
        for f in sp.Mul.make_args(e.function):
            if isinstance(f, sp.Add) and f.could_extract_minus_sign():
                outside.append(sp.Integer(-1))
                f = -f
            (inside if free_indices(f) & summed or _reads_summed(f, summed)
             else outside).append(f)
        if not outside:
            return e
        return sp.Mul(*outside) * sp.Sum(sp.Mul(*inside), *e.limits)

    return rewrite(expr)


def _reads_summed(f, summed) -> bool:
    return any(i in summed for i in f.atoms(sp.Idx))


def _forward_sums(layer):
    """(coefficient, sum, target indices, name) of each forward equation that is a
    constant times a sum over every index it does not keep (mu = sum(x) / N)."""
    out = []
    kept = {t.name for t in layer.outputs} | {t.name for t in layer.by_role("intermediate")}
    for eq in layer.equations:
        if eq.target not in kept:
            continue
        coeff, core = sp.Integer(1), eq.rhs
        if isinstance(core, sp.Mul):
            sums = [f for f in core.args if isinstance(f, sp.Sum)]
            rest = [f for f in core.args if not isinstance(f, sp.Sum)]
            if len(sums) != 1 or any(free_indices(f) or f.atoms(sp.Indexed) for f in rest):
                continue
            coeff, core = sp.Mul(*rest), sums[0]
        if isinstance(core, sp.Sum) and coeff != 0:
            out.append((coeff, core, tuple(eq.indices), eq.target))
    return out


def _canonical(s: sp.Sum):
    """A sum with its summed indices renamed by dimension: sums that differ only in the
    names of their summed indices (or the order of their limits) compare equal.  None
    when two summed indices share a dimension."""
    dims = [dim_of(lim[0]) for lim in s.limits]
    if len(set(dims)) != len(dims):
        return None
    names = {lim[0]: sp.Idx(f"_sum_{dim_of(lim[0])}", dim_of(lim[0])) for lim in s.limits}
    limits = sorted((tuple(x.xreplace(names) for x in lim) for lim in s.limits), key=str)
    return s.function.xreplace(names), tuple(limits)


def _fold_forward_sums(expr, saved):
    """A sum equal to one a forward equation computed (up to the names of indices) is
    written as that equation's target over its coefficient: N*H*W*mu[c]."""
    if not saved:
        return expr

    def fold(e):
        key = _canonical(e)
        if key is None:
            return e
        free = sorted(free_indices(e), key=str)
        for coeff, core, indices, name in saved:
            if len(indices) != len(free):
                continue
            # the forward target's indices matched to this sum's free ones by dimension
            match = {}
            for i in indices:
                same = [f for f in free if dim_of(f) == dim_of(i) and f not in match.values()]
                if len(same) != 1:
                    break
                match[i] = same[0]
            else:
                renamed = core.xreplace(match)
                if _canonical(renamed) == key:
                    ref = sp.IndexedBase(name)[tuple(match[i] for i in indices)] \
                        if indices else sp.Symbol(name)
                    return ref / coeff
        return e

    return expr.replace(lambda e: isinstance(e, sp.Sum), fold)
