"""Pure functions of SymPy expressions computed once per shape, renamed for the rest.

A deep network's layers are the same equations under other names: fc7's
`z7[n, i] = sum_j W7[i, j] a6[n, j] + b7[i]` is fc6's with W7 for W6, D7 for D6.  A
function whose result follows its arguments under a renaming of symbols (a derivative,
a tidier equivalent, common subexpressions) is computed for the first and renamed for the
others.  Two argument lists share a shape when they are the same tree, node by node, up
to a one-to-one renaming of symbols of the same kind and assumptions.

The cache lives only inside `same_shapes()` (one derivation, one C emission), so what a
layer derives never depends on what else the process derived before, and the first of
several same-shaped arguments is computed exactly as without the cache.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import sympy as sp

_caches: contextvars.ContextVar[dict | None] = contextvars.ContextVar("same_shape_caches",
                                                                     default=None)


@contextlib.contextmanager
def same_shapes():
    """Remember results of the functions wrapped by `by_shape` while inside; a nested
    use keeps the outer cache."""
    if _caches.get() is not None:
        yield
        return
    token = _caches.set({})
    try:
        yield
    finally:
        _caches.reset(token)


def cache_for(owner) -> dict | None:
    """The cache of `owner` (a function, a module) inside `same_shapes()`; None outside."""
    caches = _caches.get()
    return None if caches is None else caches.setdefault(owner, {})


def by_shape(f):
    """f(*args), computed once per shape of its arguments inside `same_shapes()` and
    renamed for arguments of the same shape (outside it, f itself)."""
    @functools.wraps(f)
    def wrapper(*args):
        cache = cache_for(f)
        if cache is None:
            return f(*args)
        key, symbols = shape(args)
        hit = cache.get(key)
        if hit is None:
            result = f(*args)
            cache[key] = (symbols, result)
            return result
        first, result = hit
        renaming = {a: b for a, b in zip(first, symbols) if a != b}
        return _renamed(result, renaming) if renaming else result
    return wrapper


def shape(args) -> tuple[tuple, tuple]:
    """(a hashable key equal for arguments of one shape, their symbols in order of first
    appearance): the key lists each node's class and argument count, a symbol's kind,
    assumptions and place in that order, and any other leaf as itself."""
    order: dict = {}
    key: list = []

    def walk(e):
        if isinstance(e, sp.Symbol):
            at = order.get(e)
            if at is None:
                at = order[e] = len(order)
                key.append((type(e), at, tuple(sorted(e.assumptions0.items()))))
            else:
                key.append(at)
        elif isinstance(e, sp.Basic) and e.args:
            key.append((e.func, len(e.args)))
            for a in e.args:
                walk(a)
        elif isinstance(e, (tuple, list)):
            key.append((tuple, len(e)))
            for a in e:
                walk(a)
        else:
            key.append(e)

    for a in args:
        walk(a)
    return tuple(key), tuple(order)


def _renamed(result, renaming: dict):
    if isinstance(result, sp.Basic):
        return result.xreplace(renaming)
    if isinstance(result, (tuple, list)):
        return type(result)(_renamed(r, renaming) for r in result)
    return result
