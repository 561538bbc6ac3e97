"""Index bookkeeping on SymPy expressions: free indices, fresh and readable names."""
from __future__ import annotations

import itertools

import sympy as sp

from .affine import is_full

# Readable names tried, after the dimension's own lower-case name, for new indices.
POOL = ("k", "l", "m", "p", "q", "r", "s", "u", "v", "w", "a", "b", "c", "e", "f", "g", "h")
_fresh = itertools.count()


def free_indices(expr) -> set[sp.Idx]:
    """Indices not bound by a sum inside expr."""
    if isinstance(expr, sp.Idx):
        return {expr}
    if isinstance(expr, sp.Indexed):            # z[n, t[n]]: t[n] is a gather, n is free
        out = set()
        for i in expr.indices:
            out |= {i} if isinstance(i, sp.Idx) else free_indices(i)
        return out
    if isinstance(expr, sp.Sum):     # bounds may read the sum's outer indices, in any order
        out = free_indices(expr.function)
        for _, lo, hi in expr.limits:
            out |= free_indices(lo) | free_indices(hi)
        return out - {k for k, _, _ in expr.limits}
    if hasattr(expr, "bound_indices"):      # e.g. a maximum over an index
        bound = set(expr.bound_indices)
        out = free_indices(expr.args[0]) - bound
        for a in expr.args[1:]:             # a position beside the bound ones (FirstMax)
            if a not in bound:
                out |= free_indices(a)
        return out
    if not expr.args or isinstance(expr, (sp.Symbol, sp.Number)):
        return set()
    out: set[sp.Idx] = set()
    for a in expr.args:
        out |= free_indices(a)
    return out


def outer_first(limits) -> list:
    """A sum's limits from the outermost in: each after every one its bounds read.  SymPy
    lists a sum of sums innermost first (Sum(Sum(f, (q, ..)), (p, ..)) is Sum(f, (q, ..),
    (p, ..))); ties keep that order, reversed."""
    todo, out = list(reversed(limits)), []
    while todo:
        own = {k for k, _, _ in todo}
        ready = next((lim for lim in todo
                      if not (free_indices(lim[1]) | free_indices(lim[2])) & (own - {lim[0]})),
                     todo[0])       # (bounds that read each other: no order makes sense)
        out.append(ready)
        todo.remove(ready)
    return out


def printed_order(limits) -> list:
    """A sum's limits as a formula shows them: those over whole ranges first, as listed,
    then the bounded ones, each after every one its bounds read."""
    full = [lim for lim in limits if is_full(lim)]
    bounded = [lim for lim in limits if lim not in full]
    return full + outer_first(list(reversed(bounded)))


def dim_of(i: sp.Idx) -> sp.Symbol:
    return i.upper + 1


def fresh(i: sp.Idx) -> sp.Idx:
    """A new index over the same range, with a name no spec can write (it has a '~')."""
    return sp.Idx(f"{i.label.name}~{next(_fresh)}", dim_of(i))


def readable(dim: sp.Symbol, taken: set[str], prefer=()) -> sp.Idx:
    """A readable index over `dim` whose name is not in `taken`: one of `prefer` (the
    letters the spec itself uses for dim) if free, else dim's own lower-case name, else
    one of POOL.  A preferred name may carry a prime (p', for documents only: no code is
    printed from their formulas)."""
    first = str(dim).lower()
    for name in itertools.chain(prefer, [first], POOL):
        if name not in taken and name.rstrip("'").isidentifier():
            return sp.Idx(name, dim)
    for n in itertools.count(2):
        name = f"{first}{n}"
        if name not in taken:
            return sp.Idx(name, dim)
    raise AssertionError("unreachable")


def canonical_indices(dims, taken: set[str], letters=None, own=()) -> tuple[sp.Idx, ...]:
    """Readable free indices for a tensor with the given dimension symbols.  Tried first:
    `own`, a name per slot (the spec's own for this tensor, slot_letters), then `letters`,
    dimension -> names (user_letters)."""
    out = []
    used = set(taken)
    for k, d in enumerate(dims):
        mine = (own[k],) if k < len(own) and own[k] else ()
        i = readable(d, used, mine + (letters or {}).get(d, ()))
        used.add(i.label.name)
        out.append(i)
    return tuple(out)


def freshen_bound(expr):
    """Rename every summation index in expr to a fresh one (before substituting it)."""
    if isinstance(expr, sp.Sum):
        mapping = {lim[0]: fresh(lim[0]) for lim in expr.limits}
        body = freshen_bound(expr.function).xreplace(mapping)
        return sp.Sum(body, *_renamed_limits(expr.limits, mapping))
    if hasattr(expr, "bound_indices") and expr.bound_indices:   # a max over an index
        mapping = {k: fresh(k) for k in expr.bound_indices}
        return _rebind(expr, mapping, freshen_bound(expr.args[0]))
    if not expr.args or isinstance(expr, (sp.Indexed, sp.Idx, sp.Symbol, sp.Number)):
        return expr
    return expr.func(*[freshen_bound(a) for a in expr.args])


def _renamed_limits(limits, mapping):
    """A sum's limits with its indices renamed by `mapping`, in the bounds too: an inner
    index's bounds may read an outer one (sum_p sum_{q=max(0, h - p - L)..} after a delta
    on h - p - q), and left unrenamed they would read an index no sum binds."""
    return [(mapping[k], lo.xreplace(mapping), hi.xreplace(mapping)) for k, lo, hi in limits]


def _rebind(expr, mapping, body):
    """expr (a reduction with bound_indices) with those renamed by `mapping` in its body
    and in its own argument list; its other arguments (a position) left as they are."""
    bound = set(expr.bound_indices)
    rest = [mapping.get(a, a) if a in bound else a for a in expr.args[1:]]
    return expr.func(body.xreplace(mapping), *rest)


def respelled(k: sp.Idx, taken: set[str], letters=None, primed=False) -> sp.Idx:
    """A readable name for index k not in `taken`: one of `letters` (dimension -> names)
    first.  `primed` (documents only): k's own letter first, then that letter primed, then
    `letters` and their primes (sum_{k'} W_{j,k'} h_{n,k'} beside a free k)."""
    spec = tuple((letters or {}).get(dim_of(k), ()))
    stem = k.label.name.split("~")[0].rstrip("'")
    if primed and stem.isidentifier():
        spec = (stem, f"{stem}'") + spec + tuple(f"{n}'" for n in spec)
    return readable(dim_of(k), taken, spec)


def tidy_bound(expr, taken: set[str], letters=None, primed=False):
    """Give every summation index a readable name unused in its scope (one of `letters`,
    dimension -> names, first; `primed`: see respelled)."""
    letters = letters or {}
    name = lambda k, scope: respelled(k, scope, letters, primed)
    if isinstance(expr, sp.Sum):
        scope = set(taken) | {i.label.name for i in free_indices(expr)}
        mapping = {}
        for k, lo, hi in expr.limits:
            new = name(k, scope)
            scope.add(new.label.name)
            mapping[k] = new
        body = expr.function.xreplace(mapping)
        body = tidy_bound(body, scope, letters, primed)
        return sp.Sum(body, *_renamed_limits(expr.limits, mapping))
    if hasattr(expr, "bound_indices") and expr.bound_indices:   # a max over an index
        scope = set(taken) | {i.label.name for i in free_indices(expr)}
        mapping = {}
        for k in expr.bound_indices:
            mapping[k] = name(k, scope)
            scope.add(mapping[k].label.name)
        return _rebind(expr, mapping, tidy_bound(expr.args[0], scope, letters, primed))
    if not expr.args or isinstance(expr, (sp.Indexed, sp.Idx, sp.Symbol, sp.Number)):
        return expr
    # a free index anywhere in this term is taken inside each of its factors' sums too:
    # y[n, c] * sum_k t[n, k] must not become y[n, c] * sum_c t[n, c], which reads as one c
    # (and which contract and simplify then took as one: a wrong claim HOLDS)
    taken = set(taken) | {i.label.name for i in free_indices(expr)}
    return expr.func(*[tidy_bound(a, taken, letters, primed) for a in expr.args])


def user_letters(equations) -> dict[sp.Symbol, tuple[str, ...]]:
    """dimension -> the index names the equations use for it, in order of first use
    (W[i, j] * x[n, j]: I -> (i, j)), so printed gradients keep the spec's letters."""
    out: dict = {}
    for eq in equations:
        for i in itertools.chain(eq.indices, sp.preorder_traversal(eq.rhs)):
            if isinstance(i, sp.Idx) and i.label.name.isidentifier():
                names = out.setdefault(dim_of(i), [])
                if i.label.name not in names:
                    names.append(i.label.name)
    return {d: tuple(names) for d, names in out.items()}


def slot_letters(equations) -> dict[str, tuple]:
    """tensor -> the index names the spec first writes in its slots (None where a slot
    holds an expression): W[i, j] * x[n, j] gives W (i, j) and x (n, j)."""
    out: dict = {}
    # a read at the left-hand side's indices first: softmax's z[n, i], not the z[n, k]
    # of its sum
    for free_only in (True, False):
        for eq in equations:
            out.setdefault(eq.target, tuple(i.label.name for i in eq.indices))
            for r in sp.preorder_traversal(eq.rhs):
                if isinstance(r, sp.Indexed) and (
                        not free_only or set(r.atoms(sp.Idx)) <= set(eq.indices)):
                    out.setdefault(r.base.label.name, tuple(
                        i.label.name if isinstance(i, sp.Idx) and i.label.name.isidentifier()
                        else None for i in r.indices))
    return out
