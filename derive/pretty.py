"""Plain-text formulas for terminals and docstrings: sums as sum_k(...), ReLU' as [z > 0]."""
from __future__ import annotations

import sympy as sp
from sympy.printing.str import StrPrinter

from .affine import is_full
from .indices import printed_order


def index_constant(term, add) -> bool:
    """term is the constant of an index expression (t + 1, T - 1, floor((L - K)/S) + 1):
    written last."""
    return term.is_Number and (add.is_integer is True or add.has(sp.floor, sp.ceiling))


class FormulaPrinter(StrPrinter):
    def _print(self, expr, **kwargs):
        if isinstance(expr, sp.Indexed):       # Indexed's own _sympystr would win
            return self._print_Indexed(expr)
        return super()._print(expr, **kwargs)

    def _print_Idx(self, expr):
        return expr.label.name

    def _print_Indexed(self, expr):
        return f"{expr.base.label.name}[{', '.join(self._index(i) for i in expr.indices)}]"

    def _index(self, i):
        """An index expression; one with fractions over a common denominator, (l + 1)/2."""
        if not isinstance(i, sp.Idx) and any(not r.is_Integer for r in i.atoms(sp.Rational)):
            i = sp.together(i)
        return self._print(i)

    def _print_Sum(self, expr):
        limits = list(expr.limits)
        body = expr.function
        while isinstance(body, sp.Sum):  # sum_n(sum_i(...)) reads better as sum_{n,i}(...)
            limits += list(body.limits)
            body = body.function
        limits = printed_order(limits)
        parts = [self._print(k) if is_full((k, lo, hi)) else
                 f"{self._print(k)}={self._print(lo)}..{self._print(hi)}"
                 for k, lo, hi in limits]
        names = ",".join(parts)
        sub = names if len(parts) == 1 and is_full(limits[0]) else "{" + names + "}"
        return f"sum_{sub}({self._print(body)})"

    def _print_floor(self, expr):
        return f"floor({self._index(expr.args[0])})"

    def _print_ceiling(self, expr):
        return f"ceiling({self._index(expr.args[0])})"

    def _print_between(self, expr):
        e, lo, hi = (self._print(a) for a in expr.args)
        return f"[{lo} <= {e} <= {hi}]"

    def _print_divides(self, expr):
        q, e = (self._print(a) for a in expr.args)
        return f"[{q} | {e}]"

    def _print_Max(self, expr):
        return f"max({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr):
        return f"min({', '.join(self._print(a) for a in expr.args)})"

    def _print_Add(self, expr, order=None):
        # Positive terms first: (y*sum_k(t) - t)/N rather than (-t + y*sum_k(t))/N; in
        # index arithmetic the constant last: dz[t + 1], not dz[1 + t].
        terms = sorted(expr.args, key=lambda t: (t.could_extract_minus_sign(),
                                                 index_constant(t, expr),
                                                 sp.default_sort_key(t)))
        out = self._print(terms[0]) if not terms[0].could_extract_minus_sign() else \
            "-" + self.parenthesize(-terms[0], 50)
        for t in terms[1:]:
            if t.could_extract_minus_sign():       # l + 1 - 2*i; a - (b + c)
                out += " - " + self.parenthesize(-t, 40)
            else:
                out += " + " + self.parenthesize(t, 40)
        return out

    def _print_KroneckerDelta(self, expr):
        a, b = (self._print(x) for x in expr.args)
        return f"[{a} == {b}]"

    def _print_Heaviside(self, expr):
        e = self._print(expr.args[0])
        if len(expr.args) > 1 and expr.args[1] == sp.Rational(1, 2):   # a tie split evenly
            return f"([{e} > 0] + [{e} == 0]/2)"
        return f"[{e} > 0]"

    # piecewise functions (derive.piecewise), written as the spec writes them
    def _print_maximum(self, expr):
        return f"max({', '.join(self._print(a) for a in expr.args)})"

    def _print_minimum(self, expr):
        return f"min({', '.join(self._print(a) for a in expr.args)})"

    def _print_absolute(self, expr):
        return f"abs({self._print(expr.args[0])})"

    def _print_Where(self, expr):
        return f"where({', '.join(self._print(a) for a in expr.args)})"

    def _print_Iverson(self, expr):
        return f"[{self._print(expr.args[0])}]"

    def _print_Equality(self, expr):       # a bracket's [rank == at[..]], as the spec's ==
        return " == ".join(self._print(a) for a in expr.args)

    def _print_And(self, expr):
        return " and ".join(self.parenthesize(a, 30) for a in expr.args)

    def _print_Or(self, expr):
        return " or ".join(self.parenthesize(a, 20) for a in expr.args)

    def _print_Not(self, expr):
        return f"not ({self._print(expr.args[0])})"

    def _print_MaxOver(self, expr):
        ks = ",".join(self._print(k) for k in expr.bound_indices)
        return f"max_{ks if len(expr.bound_indices) == 1 else '{' + ks + '}'}" \
            f"({self._print(expr.body)})"

    def _print_FirstMax(self, expr):
        ks = ",".join(self._print(k) for k in expr.bound_indices)
        at = ", ".join(self._print(a) for a in expr.position)
        return f"[({at}) == argmax_{{{ks}}}({self._print(expr.body)})]"

    def _print_ArgMaxOver(self, expr):
        ks = ",".join(self._print(k) for k in expr.bound_indices)
        return f"argmax_{{{ks}}}({self._print(expr.body)})"

    def _print_Rational(self, expr):
        return decimal(expr) if is_long_number(expr) else super()._print_Rational(expr)

    def _print_Integer(self, expr):
        return decimal(expr) if is_long_number(expr) else super()._print_Integer(expr)

    def _print_Maximum(self, expr):
        ks = ",".join(self._print(k) for k in expr.args[1:])
        return f"max_{ks if len(expr.args) == 2 else '{' + ks + '}'}({self._print(expr.args[0])})"


def is_long_number(expr) -> bool:
    """A rational that reads better as a decimal: one a decimal literal turned into, like
    3989422804014327/5000000000000000 (0.7978845608028654)."""
    if not isinstance(expr, sp.Rational):
        return False
    return abs(expr.q) > 10**4 or abs(expr.p) > 10**9


def decimal(expr) -> str:
    return repr(float(expr))


def formula(expr) -> str:
    return FormulaPrinter(dict(order="none")).doprint(expr)


def equation(lhs, rhs) -> str:
    return f"{formula(lhs)} = {formula(rhs)}"


def derivation_text(derivation) -> str:
    """The whole derivation as readable text: forward equations, then every gradient."""
    layer = derivation.layer
    lines = [f"layer {layer.name}" + (f": {layer.doc}" if layer.doc else ""), "",
             "forward:"]
    lines += [f"  {eq.text}" for eq in layer.equations]
    if layer.constants:
        lines.append("  with " + ", ".join(f"{k} = {v}" for k, v in layer.constants.items())
                     + "".join(f"; {d} = {formula(e)}" for d, e in layer.dim_defs.items()))
    elif layer.dim_defs:
        lines.append("  with " + "; ".join(f"{d} = {formula(e)}"
                                           for d, e in layer.dim_defs.items()))
    if layer.conditions:
        lines += ["", "conditions:"] + [f"  {c.text}" for c in layer.conditions]
    if not layer.differentiable:
        return "\n".join(lines + ["", "backward: none (every input is nograd: a forward-only "
                                       "layer)"])
    seed = (f"the loss {layer.loss} (dL/d{layer.loss} = 1)" if layer.loss else "")
    ups = ", ".join(derivation.upstream)
    lines += ["", "backward" + (f", from {seed}" if seed else "") +
              (f"{' and' if seed else ', from'} the upstream gradient{'s' if len(derivation.upstream) > 1 else ''} {ups}" if ups else "") + ":"]
    # a network's gradients layer by layer, from the last: the delta recursion (BP2)
    walked = derivation.walked or layer      # a named pre-activation's layer is its reader's
    for section, steps in walked.by_section(derivation.steps, lambda s: s.tensor):
        pad = "  " if not section else "    "
        if section:
            lines.append(f"  layer {section} ({layer.sections[section]}):")
        for s in steps:
            lines.append(f"{pad}{equation(s.lhs, s.expr)}")
            if s.given is not None:
                conds = "; ".join(c.text for c in s.conditions)
                lines.append(f"{pad}  = {formula(s.given)}    (given {conds})")
    return "\n".join(lines)
