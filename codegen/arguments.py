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


def check_backward(layer: str, gradients) -> None:
    """A forward-only layer (every input nograd, like an optimizer step) has no backward
    pass: say so rather than return no gradients."""
    if not gradients:
        raise ValueError(f"{layer}: a forward-only layer (every input and parameter is "
                         f"nograd) has no backward pass; call forward")
