"""A loop nest's C view (the printed text the templates fill in) once per shape.

A deep network's nests are the same nests under other names: fc7's dW7 = sum_n dz7 a6 is
fc6's dW6 = sum_n dz6 a5.  Inside `same_shapes()` (one C emission), a nest of a shape seen
before gets the earlier nest's view with its names replaced, identifier by identifier,
instead of being printed again.  The shape covers everything printing reads: the nest's
fields, and each array's dimensions and kind (a scalar, padded, integer labels) as the
printer knows them.  Where a name could hide inside a longer identifier (a scratch array
_z3_part made from z3), or the renaming would not be one-to-one, the nest is printed.
"""
from __future__ import annotations

import dataclasses
import re

import sympy as sp

from derive.same_shape import cache_for, shape

from .loops import Nest

# a whole identifier: not the F of 1.0F, nor the e of 1e-5
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_]\w*")


def view_by_shape(n: Nest, printer, shapes: dict, make) -> dict:
    """make(n), or the view of a nest of the same shape printed before, renamed."""
    cache = cache_for(view_by_shape)
    if cache is None or n.copies:
        return make(n)
    key, symbols = shape((printer, _fields(n), _context(n, printer, shapes)))
    hit = cache.get(key)
    if hit is None:
        view = make(n)
        cache[key] = (symbols, view)
        return view
    first, view = hit
    names = _names(first, symbols)
    renamed = _renamed(view, names, _pattern(names)) if names is not None else None
    if renamed is None:
        return make(n)
    renamed.update(nest=n, comment=n.comment.replace("*/", "* /"))
    return renamed


def _fields(n: Nest) -> tuple:
    """Every field of n but its comment (text made of the others), names as symbols."""
    return tuple(sp.Symbol(v) if f.name == "target" else v
                 for f in dataclasses.fields(n) if f.name != "comment"
                 for v in [getattr(n, f.name)])


def _context(n: Nest, printer, shapes: dict) -> tuple:
    """What the printer knows of each name n reads or writes, in order of first use."""
    names = [n.target]
    for e in (n.body, n.init) + tuple(n.at or ()):
        for a in sp.preorder_traversal(e):
            if isinstance(a, sp.IndexedBase):
                names.append(a.label.name)
            elif type(a) is sp.Symbol:
                names.append(a.name)
    windows = getattr(printer, "windows", ())         # a convolution's kernel sizes
    out = []
    for name in dict.fromkeys(names):
        out.append((sp.Symbol(name), tuple((sp.Symbol(d), d in windows)
                                           for d in shapes.get(name, ())),
                    name in printer.scalars, name in printer.padded,
                    name in getattr(printer, "integer", ())))
    return tuple(out)


def _names(first, now) -> dict | None:
    """name -> name between two same-shaped symbol lists, the changed ones; None where
    one name would become two, or two one."""
    forward, backward = {}, {}
    for a, b in zip(first, now):
        x, y = a.name, b.name
        if forward.setdefault(x, y) != y or backward.setdefault(y, x) != x:
            return None
    return {x: y for x, y in forward.items() if x != y}


def _pattern(names: dict):
    """Matches a changed name inside a longer identifier."""
    if not names:
        return None
    return re.compile("|".join(re.escape(x) for x in sorted(names, key=len, reverse=True)))


def _renamed(v, names: dict, inside):
    """v with every identifier in its text renamed; None where that is not safe."""
    if isinstance(v, str):
        unsafe = []

        def swap(m):
            word = m.group(0)
            if word in names:
                return names[word]
            if inside is not None and inside.search(word):
                unsafe.append(word)
            return word
        text = _IDENTIFIER.sub(swap, v)
        return None if unsafe else text
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k in ("nest", "comment"):
                out[k] = x           # the caller's own nest and comment replace them
                continue
            out[k] = _renamed(x, names, inside)
            if out[k] is None and x is not None:
                return None
        return out
    if isinstance(v, (list, tuple)):
        out = [_renamed(x, names, inside) for x in v]
        if any(y is None and x is not None for x, y in zip(v, out)):
            return None
        return type(v)(out)
    return None                      # anything else: printed again
