"""Pre-activations named for the reverse walk: the textbook's delta as a step of its own.

`g = sigmoid(W x + b)` written in one line has no name for W x + b, so the chain rule sends
dg g (1 - g) to x, W and b each on its own: the local derivative is expanded into every
reader and each matrix product appears in several formulas (the C then carries one GEMM
plus a hand-written loop pass per product).  Walking the layer as if it read

    z_g = W x + b,   g = sigmoid(z_g)

makes dz_g = dg g (1 - g) an adjoint with three readers, hence a step, and dx = W^T dz_g,
dW = dz_g x^T each a single product.  Only the walk sees z_g: the forward pass and its
stored values are the layer's own, and a backward formula that still needs the argument
(relu'(z) = [z > 0]) reads the argument itself, written out again (the kernel plan then
computes it once, codegen/shared_arguments.py).  A recurrence's own equation is named too:
h = tanh(W h[t - 1] + U x) walks as z_h = W h[t - 1] + U x, h = tanh(z_h), so its delta
dz_h = (1 - h^2)(dh + W^T dz_h[t + 1]) is the step BPTT writes.
"""
from __future__ import annotations

import re
from dataclasses import replace

import sympy as sp

from .functions import FUNCTIONS, relu
from .indices import free_indices, freshen_bound
from .spec import Equation, Layer, Tensor

ELEMENTWISE = tuple({f for f in FUNCTIONS.values() if isinstance(f, type)})   # not sqrt: a Pow


def name_preactivations(layer: Layer, needed: set[str]) -> Layer:
    """`layer` with every function argument that holds a contraction and reads two or more
    tensors in `needed` (so its adjoint has two or more readers) computed by an equation
    of its own, placed just before its reader."""
    taken = set(layer.tensors) | set(layer.dims) | {"d" + t for t in layer.tensors}
    tensors, equations, needed = dict(layer.tensors), [], set(needed)
    for eq in layer.equations:
        rhs = eq.rhs
        # innermost first: sigmoid(W x + tanh(U x)) names U x, then W x + z
        while eq.indices:
            arg = next(iter(_contraction_arguments(rhs, eq.indices, needed)), None)
            if arg is None:
                break
            name = _preactivation_name(eq.target, taken)
            taken |= {name, "d" + name}
            needed.add(name)
            t = Tensor(name, "intermediate", layer.tensors[eq.target].dims, eq.line)
            tensors[name] = t
            idx = ", ".join(i.label.name for i in eq.indices)
            equations.append(Equation(name, eq.indices, arg, eq.line,
                                      f"{name}[{idx}] = {arg}", eq.section))
            rhs = rhs.xreplace({arg: t.ref(*eq.indices)})
        equations.append(eq if rhs == eq.rhs else replace(eq, rhs=rhs))
    if len(equations) == len(layer.equations):
        return layer
    return replace(layer, tensors=tensors, equations=tuple(equations))


def written_out(expr, walked: Layer, layer: Layer):
    """expr with every named pre-activation (a tensor of `walked` the forward pass does not
    compute) replaced by the argument it names, so the kernels read only stored values."""
    named = {eq.target: eq for eq in walked.equations if eq.target not in layer.tensors}
    expr = _relu_steps_by_output(expr, walked, named)

    def value(ref):
        eq = named[ref.base.label.name]
        return freshen_bound(eq.rhs).xreplace(dict(zip(eq.indices, ref.indices)))

    while tensor_reads(expr) & set(named):       # an argument may hold an inner one
        expr = expr.replace(lambda e: isinstance(e, sp.Indexed)
                            and e.base.label.name in named, value)
    return expr


def _relu_steps_by_output(expr, walked, named):
    """relu'(z) = [z > 0] is [y > 0] for y = relu(z): read from the stored output, not
    from the argument recomputed (a convolution's, in a conv + relu layer)."""
    for eq in walked.equations:
        if isinstance(eq.rhs, relu) and isinstance(eq.rhs.args[0], sp.Indexed) \
                and eq.rhs.args[0].base.label.name in named \
                and tuple(eq.rhs.args[0].indices) == eq.indices:
            z, y = eq.rhs.args[0].base, walked.tensors[eq.target]
            expr = expr.replace(
                lambda e: isinstance(e, sp.Heaviside) and isinstance(e.args[0], sp.Indexed)
                and e.args[0].base == z,
                lambda e: e.func(y.ref(*e.args[0].indices), *e.args[1:]))
    return expr


def tensor_reads(expr) -> set[str]:
    return {a.base.label.name for a in expr.atoms(sp.Indexed)}


def _contraction_arguments(rhs, indices, needed) -> list[sp.Expr]:
    """Arguments of one-argument functions in rhs that hold a contraction (a sum of a
    product of two tensors over a shared index) outside any function of their own, span
    the left-hand side's indices and read two or more tensors in `needed`, innermost
    first."""
    found = []
    for f in sp.postorder_traversal(rhs):
        if isinstance(f, ELEMENTWISE) and len(f.args) == 1:
            arg = f.args[0]
            if free_indices(arg) == set(indices) and len(tensor_reads(arg) & needed) >= 2 \
                    and any(_is_contraction(s) for s in _own_sums(arg)):
                found.append(arg)
    return found


def _own_sums(arg):
    """The sums in arg not inside a function of their own."""
    if isinstance(arg, sp.Sum):
        return [arg]
    if isinstance(arg, ELEMENTWISE) or not arg.args:
        return []
    return [s for a in arg.args for s in _own_sums(a)]


def _is_contraction(s: sp.Sum) -> bool:
    bound = {lim[0] for lim in s.limits}
    for k in bound:
        # a factor may be a sum of reads: a recurrence's h[t - 1] is read as
        # h[t - 1] [t >= 1] + h0 [t = 0] (derive.recurrence)
        reading = [f for f in sp.Mul.make_args(s.function)
                   if k in free_indices(f) and f.atoms(sp.Indexed)]
        if len(reading) >= 2:
            return True
    return False


def _preactivation_name(target: str, taken: set[str]) -> str:
    """z1 for h1 (the layer number kept), z_g for g; a number added on a clash."""
    m = re.fullmatch(r"[A-Za-z]+(\d+)", target)
    first = f"z{m.group(1)}" if m else f"z_{target}"
    name, n = first, 2
    while name in taken:
        name, n = f"{first}_{n}", n + 1
    return name
