"""A named pre-activation the backward pass needs as a value is computed there once.

derive.preactivations names the argument of a function that holds a product
(z_h = W x in h = (1 - f) h[t - 1] + f tanh(W x)) for the reverse walk, then writes it out
again, as the forward pass does not store it.  Where a derivative still needs its value
(tanh'(W x) in dz_h, tanh(W x) itself in the gate's dz_f), the written-out product would
be computed by every statement that reads it, and inside a recurrence's loop over t, once
per step.  Here it becomes one backward statement, z_h = W x over all steps, ahead of its
readers, and they read z_h: the product once, as one GEMM.
"""
from __future__ import annotations

import sympy as sp

from derive.calculus import fold, tensor_names

from .plan import Statement


def share_arguments(backward, derivation) -> tuple[Statement, ...]:
    """The backward statements with every named pre-activation whose product they read
    computed first, by a statement of its own (innermost first: an argument may hold an
    inner named one, which it then reads by name)."""
    walked, layer = derivation.walked, derivation.layer
    if walked is None:
        return tuple(backward)
    first, rest = [], list(backward)
    for eq in walked.equations:
        if eq.target in layer.tensors or not eq.rhs.has(sp.Sum):
            continue
        name = lambda m, eq=eq: walked.tensors[eq.target].ref(*[m[i] for i in eq.indices])
        folded = [fold(st.expr, eq.rhs, name) if tensor_names(eq.rhs) <= tensor_names(st.expr)
                  else st.expr for st in rest]
        if all(new == st.expr for new, st in zip(folded, rest)):
            continue
        first.append(Statement(eq.target, eq.indices, eq.rhs, eq.text))
        rest = [Statement(st.name, st.indices, new, st.formula)
                for st, new in zip(rest, folded)]
    return tuple(first + rest)
