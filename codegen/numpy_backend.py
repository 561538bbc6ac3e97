"""NumPy backend: a kernel plan -> one readable Python module per layer."""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive.pretty import formula

from derive.indices import dim_of

from .numpy_printer import NumpyPrinter
from .plan import KernelPlan, Statement, const_flag
from .scan import Scan, schedule, time_dims
from templates import render
from .version import VERSION

TEMPLATE = "numpy_module.py.j2"


@dataclass(frozen=True)
class Printed:
    name: str
    code: str
    formula: str
    temps: tuple = ()       # (name, code) pairs computed first
    scan: bool = False      # (a PrintedScan is one)


def _printed(printer, st) -> Printed:
    temps, code = printer.statement(st)
    return Printed(st.name, code, st.formula, tuple(temps))


@dataclass(frozen=True)
class PrintedScan:
    """A recurrence: `items` computed step by step in a loop over `index` (codegen/scan.py)
    into arrays allocated first."""
    index: str
    dim: str
    reverse: bool
    items: tuple
    allocs: tuple           # (name, shape code)
    scan: bool = True


def _printed_all(printer, statements, layer) -> list:
    """Statements printed in the order the scan schedule gives, recurrences as loops."""
    shapes = {t.name: t.dims for t in layer.tensors.values()}
    shapes |= {"d" + n: d for n, d in shapes.items()}
    shapes |= {st.name: st.dims for st in statements}
    out = []
    for item in schedule(statements, lambda st: st.name, lambda st: st.expr.atoms(sp.Indexed),
                         shapes, time_dims(layer)):
        if not isinstance(item, Scan):
            out.append(_printed(printer, item))
            continue
        t = item.index
        step = sp.Symbol(t.label.name, integer=True)
        members = []
        for st in item.items:
            rest = tuple(i for i in st.indices if i != t)
            members.append(_printed(printer, Statement(st.name, rest, printer.at_step(
                st.expr.xreplace({t: step}), step), st.formula)))
        dim = str(dim_of(t))
        printer.dims_used.add(dim)
        allocs = tuple((st.name, printer.shape(st)) for st in item.items)
        out.append(PrintedScan(t.label.name, dim, item.reverse, tuple(members), allocs))
    return out


def numpy_source(plan: KernelPlan) -> str:
    return render(TEMPLATE, **module_context(plan, NumpyPrinter), xp="np")


def module_context(plan: KernelPlan, printer_class) -> dict:
    """What a Python module's template lays out: the printed statements, formulas, shapes
    (shared by the NumPy and JAX backends, which differ in printer and template)."""
    layer = plan.layer
    slots = {t.name: t.dims for t in layer.tensors.values()}      # each array's axes
    steps = {s.name: plan.derivation.tensor(s.tensor).dims         # dh_total, dz_g too
             for s in plan.derivation.steps}
    steps |= {st.name: st.dims for st in plan.backward}           # and z_h (shared_arguments)
    printer = printer_class(layer.dims, slots | {"d" + n: d for n, d in slots.items()}
                            | steps)
    forward = _printed_all(printer, plan.forward, layer)
    forward_dims = _ordered(layer.dims, printer.dims_used)
    printer.dims_used = set()
    backward = _printed_all(printer, plan.backward, layer)
    backward_dims = _ordered(layer.dims, printer.dims_used)
    deriv = plan.derivation
    backward_formulas = []
    for s in deriv.steps:
        backward_formulas.append(f"{formula(s.lhs)} = {formula(s.expr)}")
        if s.given is not None:
            conds = "; ".join(c.text for c in s.conditions)
            backward_formulas.append(f"    = {formula(s.given)}    (given {conds})")
    dim_defs = [(name, [d for d in layer.dims if sp.Symbol(d, integer=True, positive=True)
                        in expr.free_symbols], printer.integer_code(expr), formula(expr))
                for name, expr in layer.dim_defs.items()]
    shapes = [(t.name, t.dims) for t in layer.tensors.values()]
    shapes += [("d" + t.name, t.dims) for t in layer.upstream]
    seed = f"seeded with d{layer.loss} = 1" if layer.loss else \
        "from the upstream gradient" + ("s " if len(plan.upstream) > 1 else " ") + \
        ", ".join(plan.upstream)
    return dict(
        name=layer.name,
        doc=layer.doc or f"layer {layer.name}",
        version=VERSION,
        forward_formulas=[eq.text for eq in layer.equations],
        backward_formulas=backward_formulas,
        seed=seed,
        conditions=[c.text for c in layer.conditions],
        shapes_doc=", ".join(f"{n}[{', '.join(d)}]" if d else n for n, d in shapes),
        tensors=[(t.name, t.role, t.dims) for t in layer.tensors.values()],
        indices={t.name: t.values for t in layer.tensors.values() if t.values is not None},
        shapes=shapes,
        args=list(plan.args),
        returns=list(plan.returns),
        upstream=list(plan.upstream),
        reuses=list(plan.reuses),
        gradients=list(plan.gradients),
        helpers=sorted(printer.helpers_used),
        forward=forward,
        forward_dims=forward_dims,
        backward=backward,
        backward_dims=backward_dims,
        dim_defs=dim_defs,
        const_flag=const_flag(layer),
        step_store="{name}[{t}] = {code}",       # one step of a recurrence, in place
    )


def _ordered(all_dims, used):
    return [d for d in all_dims if d in used]
