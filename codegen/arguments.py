"""Checking the names of the arrays a caller passes, shared by every backend's wrapper."""
from __future__ import annotations


def check_fusable(layer: str, loss, upstream) -> None:
    """forward_backward is for a layer that ends in its loss (no upstream gradients); the
    same rule the C backend uses to emit its fused kernel (codegen.loops.fusable)."""
    if loss and not upstream:
        return
    why = (f"this one takes upstream gradients ({', '.join(upstream)})" if upstream
           else "this one has no loss")
    raise ValueError(f"{layer}: forward_backward needs a layer that ends in its loss; {why}: "
                     f"call forward, then backward")


def check_names(layer: str, arrays: dict, required, optional=()) -> None:
    """ValueError naming what is missing or unexpected, and what is expected."""
    missing = [n for n in required if n not in arrays]
    if missing:
        raise ValueError(f"{layer}: missing array{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} (expects {', '.join(required)})")
    unknown = [n for n in arrays if n not in required and n not in optional]
    if unknown:
        raise ValueError(f"{layer}: unexpected array{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)} (expects {', '.join(required)})")


def dim_program(expr):
    """A derived dimension's definition as plain data the wrapper evaluates without SymPy
    (it is kept in the warm-load index): ints, dimension names, ["+", ...], ["*", ...] and
    ["//", numerator, divisor]."""
    import sympy as sp

    if expr.is_Integer:
        return int(expr)
    if isinstance(expr, sp.Symbol):
        return expr.name
    if isinstance(expr, sp.floor):
        num, den = sp.fraction(sp.together(expr.args[0]))
        return ["//", dim_program(sp.expand(num)), int(den)]
    if isinstance(expr, (sp.Add, sp.Mul)):
        return ["+" if isinstance(expr, sp.Add) else "*"] + [dim_program(a) for a in expr.args]
    raise ValueError(f"a dimension cannot be defined as {expr}")


def run_program(program, sizes: dict) -> int:
    if isinstance(program, int):
        return program
    if isinstance(program, str):
        return sizes[program]
    op, *args = program
    values = [run_program(a, sizes) for a in args]
    if op == "//":
        return values[0] // values[1]
    out = 0 if op == "+" else 1
    for v in values:
        out = out + v if op == "+" else out * v
    return out


def derive_sizes(layer: str, defs: dict, sizes: dict) -> None:
    """Sizes of the dimensions the spec defines from others (output sizes of a
    convolution), added to `sizes` (dim -> (size, where it came from)), and checked
    against an array that has them: a ValueError naming both."""
    for name, (needs, program, text) in defs.items():
        missing = [d for d in needs if d not in sizes]
        if missing:
            if name in sizes:
                continue
            raise ValueError(f"{layer}: no array gives the size of dimension {missing[0]}, "
                             f"needed for {name} = {text}")
        size = run_program(program, {d: sizes[d][0] for d in needs})
        given = ", ".join(f"{d} = {sizes[d][0]}" for d in needs)
        rule = f"{name} = {text}" + (f" = {size}" if text != str(size) else "") + \
            (f" with {given}" if given else "")   # K = 5 fixed by the spec: no 'with'
        if name in sizes and sizes[name][0] != size:
            raise ValueError(f"{sizes[name][1]}: dimension {name} is {sizes[name][0]}, but "
                             f"{rule}")
        if size < 1:
            raise ValueError(f"{layer}: dimension {rule}: it "
                             f"must be at least 1 (an input smaller than its window?)")
        sizes.setdefault(name, (size, f"{name} = {text}"))


def check_backward(layer: str, gradients) -> None:
    """A forward-only layer (every input nograd, like an optimizer step) has no backward
    pass: say so rather than return no gradients."""
    if not gradients:
        raise ValueError(f"{layer}: a forward-only layer (every input and parameter is "
                         f"nograd) has no backward pass; call forward")
