"""exps whose argument the plan knows to be at most 0, marked so the C backend calls an exp
made for that range.

A stable exp-sum is shifted by its row maximum (codegen/plan.py, _shift_softmax):
exp(g_k - m), m = max_k g_k, so its argument is <= 0, or NaN where the row holds one.
float C's bp_exp_f32 pays for the whole float range: an upper clamp for overflow and a
result scaled by two powers of two so a subnormal one rounds once; bp_exp_nonpos_f32
(templates/c_vector_math.c.j2) needs neither and runs 25 instructions a 16-float vector in
softmax + CE's exp pass against 31.  The fact comes from the plan's own statement m =
Maximum(g, k), not from a layer's name: any exp whose argument is a value minus the row
maximum of that value is marked, wherever the derivation put it.  Only the C backend marks
them (NumPy's np.exp has one form for every range)."""
from __future__ import annotations

import dataclasses

import sympy as sp

from derive.indices import free_indices

from .plan import KernelPlan, Maximum


class exp_nonpositive(sp.exp):
    """exp(u) with u <= 0 or NaN: an exp (every rewrite that looks for one still finds it)
    that the C printer prints as the range-limited function in float."""

    def as_base_exp(self):
        # a factor of its own: SymPy's products collect exp(u) as E**u and rebuild a plain
        # exp from it, which would drop the mark (softmax's numerator exp(g_i - m) / s)
        return self, sp.S.One


def nonpositive_exps(plan: KernelPlan) -> KernelPlan:
    """The plan with every exp(h[k := j] - m) marked, m a statement Maximum(h, k)."""
    maxima = [(st, st.expr) for st in plan.forward + plan.backward
              if isinstance(st.expr, Maximum) and len(st.expr.bound_indices) == 1]
    if not maxima:
        return plan

    def mark(e):
        return exp_nonpositive(e.args[0]) if _below_a_maximum(e.args[0], maxima) else e

    def marked(st):
        new = st.expr.replace(lambda e: type(e) is sp.exp, mark)
        return st if new == st.expr else dataclasses.replace(st, expr=new)

    return dataclasses.replace(plan, forward=tuple(map(marked, plan.forward)),
                               backward=tuple(map(marked, plan.backward)))


def _below_a_maximum(u, maxima) -> bool:
    """u = h' - m[free'] where m[free] = max_k h and h' is h at those free indices and
    some k."""
    for st, mx in maxima:
        refs = [a for a in u.atoms(sp.Indexed) if a.base.label.name == st.name] or \
            [s for s in u.atoms(sp.Symbol) if s.name == st.name and not st.indices]
        for ref in refs:
            rest = u + ref
            at = dict(zip(st.indices, ref.indices)) if st.indices else {}
            body, k = mx.args[0].xreplace(at), mx.args[1]
            candidates = {k} | free_indices(rest) | {
                x for a in rest.atoms(sp.Indexed) for x in a.indices}
            if any(body.xreplace({k: j}) == rest for j in candidates):
                return True
    return False
