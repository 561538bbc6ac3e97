"""JAX backend: a kernel plan -> one jax.numpy module per layer, the NumPy backend's
statements printed for jax.numpy, and its derived backward attached with jax.custom_vjp
(templates/jax_module.py.j2 extends the NumPy module's template)."""
from __future__ import annotations

import re

from templates import render

from .numpy_backend import module_context
from .numpy_printer import NumpyPrinter
from .plan import KernelPlan, Statement

TEMPLATE = "jax_module.py.j2"

# `np.` as a module prefix (not the tail of another name or attribute)
_NUMPY_CALL = re.compile(r"(?<![\w.])np\.")


class JaxPrinter(NumpyPrinter):
    """The NumPy printer, its calls sent to jax.numpy: every function it prints (einsum,
    exp, maximum, zeros, ...) has the same name and meaning there.  Helpers that need
    another body in JAX (_window's strided view, _scatter_add's np.add.at) are the
    template's."""

    def statement(self, st: Statement) -> tuple[list[tuple[str, str]], str]:
        temps, code = super().statement(st)
        return [(name, _jnp(text)) for name, text in temps], _jnp(code)

    def _window(self, e):
        self.helpers_used.add("_take")          # a read mostly outside its array gathers
        return super()._window(e)


def _jnp(code: str) -> str:
    return _NUMPY_CALL.sub("jnp.", code)


def jax_source(plan: KernelPlan) -> str:
    context = module_context(plan, JaxPrinter)
    context["step_store"] = "{name} = {name}.at[{t}].set({code})"   # arrays are immutable
    layer = plan.layer
    outputs = [t.name for t in layer.outputs]
    # custom_vjp's residuals: the arguments and the intermediates backward() reuses
    saved = list(plan.args) + [f"result[{n!r}]" for n in plan.reuses]
    # a cotangent per argument: None (zero) for what the derivation does not differentiate
    # (targets, labels, nograd); a loss's gradients scale with its upstream cotangent
    scale = "upstream * " if layer.loss else ""
    cotangents = [f"{scale}g[{'d' + n!r}]" if "d" + n in plan.gradients else "None"
                  for n in plan.args]
    return render(TEMPLATE, **context, xp="jnp", outputs=outputs, loss=layer.loss,
                  saved=saved, cotangents=cotangents,
                  nondifferentiable=[n for n in plan.args if "d" + n not in plan.gradients])
