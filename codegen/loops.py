"""Kernel plan -> loop nests, for backends that write loops (C).

Every statement becomes one or more nests of one of two kinds:

    elementwise  T[F] = f(arrays)                 loops over F in T's axis order
    reduce       T[F] = sum_K body  (or max_K)    loops over F and K

A sum or maximum nested inside a larger expression is first hoisted into a temporary array
over its own free indices (softmax's sum_k exp(z[n, k] - m[n]) becomes s[n], computed once
per row rather than once per element).

Loop order puts the index that is last-axis (stride 1) in the most array references
innermost, so inner loops walk memory contiguously; a reduction keeps one of its output
indices outermost, so that loop can run in parallel without write races.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy as sp

from derive.affine import is_full
from derive.indices import dim_of, free_indices, outer_first

from .plan import KernelPlan, Maximum, Statement
from .reductions import ArgMax
from .scatter import scatter_parts


@dataclass(frozen=True)
class Nest:
    kind: str                         # "elementwise", "reduce" or "scatter"
    target: str
    out: tuple[sp.Idx, ...]           # the target's indices, in axis order
    loops: tuple[sp.Idx, ...]         # outermost first
    reduced: tuple[sp.Idx, ...]       # indices summed (or maximized) over
    body: sp.Expr                     # the value, or the summand
    op: str = "sum"                   # "sum", "max" or "argmax" for reductions
    comment: str = ""
    init: sp.Expr = sp.Integer(0)     # a reduction's starting value (b[i] in W x + b)
    # a scatter's (v, g): T[.., v, ..] = sum_K [v == g] body is body added at v = g
    at: tuple | None = None
    # reduced indices that run over part of their range: (k, lo, hi), inclusive bounds
    # that may read indices of enclosing loops (a shifted read's adjoint)
    bounds: tuple = ()
    # (index, expression): the target's index the loops stand for, w = 2*bp_w_q + 1 in a
    # copy made by split_by_residue (the body is already written in the loops' indices)
    subs: tuple = ()
    # a gather split by residue: these nests run inside this one's loops, one after the
    # other (see split_by_residue); or a recurrence's step (kind "scan", see scan_nest)
    copies: tuple = ()
    reverse: bool = False             # a scan from its last step to its first
    step: object = None               # a scan member's GEMM at its step (codegen/step_views)
    # an argmax's scan also writes the best value it found here (a max over the same
    # window, computed in the same pass: see max_into_argmax)
    best: str = ""

    @property
    def parallel(self) -> str:
        """How the outermost loop runs in parallel: 'output' (it indexes the target, so
        threads write disjoint parts), 'scalar' (a scalar reduction), 'array' (threads
        reduce private copies of the target), or '' (no loops)."""
        if not self.loops:
            return ""
        if self.loops[0] in self.out:
            return "output"
        return "array" if self.out else "scalar"

    @property
    def adds(self) -> bool:
        """The start is the target itself: a later product of several adds to what the
        earlier ones wrote (_split_init; c_backend._products_apart)."""
        return self.init == _ref(self.target, self.out)

    @property
    def accumulate_in_place(self) -> bool:
        """True when a reduced loop is outside an output loop: the target is initialized
        first and updated in place; otherwise a scalar accumulator suffices."""
        if self.kind != "reduce" or self.copies:
            return False
        pos = {i: k for k, i in enumerate(self.loops)}
        if self.subs:                            # a copy: its loops are the inner ones
            return False
        # an output index with no loop here is fixed by loops around this nest (a producer
        # run inside a gather's shared loops, codegen/plane_fusion): outside every loop
        return any(pos[r] < pos.get(o, -1) for r in self.reduced for o in self.out)


@dataclass(frozen=True)
class Temp:
    name: str
    indices: tuple[sp.Idx, ...]

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(str(dim_of(i)) for i in self.indices)


@dataclass
class LoopPlan:
    forward: list[Nest] = field(default_factory=list)
    backward: list[Nest] = field(default_factory=list)
    forward_temps: list[Temp] = field(default_factory=list)
    backward_temps: list[Temp] = field(default_factory=list)
    # forward then backward in one function, for a loss layer: intermediates are scratch
    fused: list[Nest] = field(default_factory=list)
    fused_temps: list[Temp] = field(default_factory=list)
    # per side: (symbol, expression) computed once at the top of the function
    invariants: dict = field(default_factory=dict)


def lower(plan: KernelPlan) -> LoopPlan:
    out = LoopPlan()
    counter = [0]
    known: dict = {}                         # reduction -> temporary, within one pass
    for st in plan.forward:
        if st.name.startswith("_"):          # plan temporaries (row maxima) live in work
            out.forward_temps.append(Temp(st.name, st.indices))
        out.forward += _lower_statement(st, out.forward_temps, counter, known)
    known = {}
    for st in plan.backward:
        if st.name not in plan.gradients:    # a delta used by several gradients
            out.backward_temps.append(Temp(st.name, st.indices))
        out.backward += _lower_statement(st, out.backward_temps, counter, known)
    if fusable(plan):
        known = {}
        scratch = {t.name for t in plan.layer.by_role("intermediate")}
        for st in plan.forward:
            if st.name.startswith("_") or st.name in scratch:
                out.fused_temps.append(Temp(st.name, st.indices))
            out.fused += _lower_statement(st, out.fused_temps, counter, known)
        for st in plan.backward:
            if st.name not in plan.gradients:
                out.fused_temps.append(Temp(st.name, st.indices))
            out.fused += _lower_statement(st, out.fused_temps, counter, known)
    return out


def fusable(plan: KernelPlan) -> bool:
    """Forward and backward fuse when the backward needs nothing from outside: a layer
    ending in its loss (no upstream gradients)."""
    return bool(plan.layer.loss) and not plan.upstream


def _lower_statement(st: Statement, temps: list[Temp], counter, known) -> list[Nest]:
    nests: list[Nest] = []
    init, reductions = _split_init(st.expr, st.indices)
    if not isinstance(_split_coefficient(reductions[0])[1], (sp.Sum, Maximum, ArgMax)):
        expr = _hoist(st.expr, temps, nests, counter, tuple(st.indices), known)
        return nests + [Nest("elementwise", st.name, tuple(st.indices), tuple(st.indices), (),
                             expr, comment=st.formula)]
    for k, reduction in enumerate(reductions):
        # a later reduction of several starts from the target: it adds to it
        start = init if k == 0 else _ref(st.name, tuple(st.indices))
        coeff, core = _split_coefficient(reduction)
        body, reduced, op, bounds = _reduction_parts(core)
        ctx = tuple(st.indices) + tuple(reduced)
        body = _hoist(body, temps, nests, counter, ctx, known, bounds)
        start = _hoist(start, temps, nests, counter, tuple(st.indices), known)
        key = _key(op, body, reduced, tuple(st.indices), bounds)
        if key in known:          # computed already (db = sum dy, which dx needed too)
            value = start + coeff * _ref(known[key], tuple(st.indices))
            nests.append(Nest("elementwise", st.name, tuple(st.indices), tuple(st.indices),
                              (), value, comment=st.formula))
            continue
        if coeff == 1 and start == 0 and len(reductions) == 1:
            known[key] = st.name
        nests.append(_reduce_nest(st.name, st.indices, reduced, coeff * body, op, st.formula,
                                  start, bounds))
    return nests


def _split_init(expr, out):
    """base + c1 * Sum(...) + c2 * Sum(...) ... -> (base, [c1 * Sum(...), ...]) when every
    sum covers every output index and base has no sum: the first reduction starts from
    base, each later one from the target (it adds to it), where a temporary per sum and a
    pass adding them would write and read every sum once more (an LSTM's gates, W_ih x[t]
    + W_hh h[t - 1] + b: both products accumulate into a).  Sums that read a shifted
    step (h[t - 1]) go last, so that a recurrence runs per step only its own product,
    after the others ran over all steps at once.  (0, [expr]) otherwise."""
    if not isinstance(expr, sp.Add):
        return sp.Integer(0), [expr]
    candidates = [t for t in expr.args if isinstance(_split_coefficient(t)[1], sp.Sum)
                  and free_indices(t) == set(out)]
    if not candidates:
        return sp.Integer(0), [expr]
    base = expr - sp.Add(*candidates)
    if base.has(sp.Sum) or base.has(Maximum):
        return sp.Integer(0), [expr]
    shifted = lambda t: any(not isinstance(i, sp.Idx) for a in t.atoms(sp.Indexed)
                            for i in a.indices)
    return base, sorted(candidates, key=shifted)


def _split_coefficient(expr):
    """c * Sum(...) -> (c, Sum) when c is free of indices; else (1, expr)."""
    if isinstance(expr, sp.Mul):
        reductions = [f for f in expr.args if isinstance(f, (sp.Sum, Maximum))]
        rest = [f for f in expr.args if not isinstance(f, (sp.Sum, Maximum))]
        if len(reductions) == 1 and not any(free_indices(f) or f.atoms(sp.Indexed)
                                            for f in rest):
            if not isinstance(reductions[0], Maximum):
                return sp.Mul(*rest), reductions[0]
    return sp.Integer(1), expr


def _reduction_parts(core):
    """(body, reduced indices, op, bounds of those that run over part of their range)."""
    if isinstance(core, Maximum):
        return core.args[0], tuple(core.bound_indices), "max", ()
    if isinstance(core, ArgMax):
        return core.args[0], core.bound_indices, "argmax", ()
    body, limits = core.function, list(core.limits)
    while isinstance(body, sp.Sum):               # sum_n sum_i -> one nest over n, i
        limits += list(body.limits)
        body = body.function
    bounds = tuple((k, lo, hi) for k, lo, hi in limits if not is_full((k, lo, hi)))
    return body, tuple(k for k, _, _ in limits), "sum", bounds


def _hoist(expr, temps, nests, counter, ctx, known, outer=()):
    """Replace every sum or maximum inside expr by a temporary computed before it.  A
    temporary's axes follow `ctx` (the enclosing loops), so it is read contiguously; an
    identical reduction already computed in this pass is reused.  `outer`: the bounds of
    enclosing sums; a temporary over one of their indices is computed only inside them
    (tanh(sum_m w[m] x[n, l + m - k]) in a sum over k from max(0, l - M + 1): elsewhere
    x would be read outside its array)."""
    if not expr.args or isinstance(expr, (sp.Indexed, sp.Idx, sp.Symbol)):
        return expr
    if isinstance(expr, (sp.Sum, Maximum, ArgMax)):
        body, reduced, op, bounds = _reduction_parts(expr)
        free = tuple(sorted(free_indices(expr), key=lambda i: (
            list(ctx).index(i) if i in ctx else len(ctx), str(i))))
        inherited = tuple((k, lo, hi) for k, lo, hi in outer if k in free and (
            free_indices(lo) | free_indices(hi)) <= set(free))
        body = _hoist(body, temps, nests, counter, free + tuple(reduced), known,
                      inherited + tuple(bounds))
        key = _key(op, body, reduced, free, tuple(bounds) + inherited)
        if key in known:
            return _ref(known[key], free)
        counter[0] += 1
        name = f"_s{counter[0]}"
        temps.append(Temp(name, free))
        what = {"max": "maximum", "argmax": "first maximal position"}.get(op, "sum")
        nest = _reduce_nest(name, free, reduced, body, op,
                            f"{what} over {', '.join(map(str, reduced))}",
                            bounds=tuple(bounds) + inherited)
        known[key] = name
        nests.append(nest)
        return _ref(name, free)
    return expr.func(*[_hoist(a, temps, nests, counter, ctx, known, outer)
                       for a in expr.args])


def _key(op, body, reduced, free, bounds):
    """What identifies a reduction within one pass: equal keys, equal values.  The free
    indices are renamed by position too, so sum_e dctx[t, e] v[u, e] and the same sum
    over w (attention's score gradient, once inside sum_w a[t, w] (.)) are one array:
    the temporary is read at each reader's own indices."""
    own = {i: sp.Idx(f"_f{j}", dim_of(i)) for j, i in enumerate(free)}
    return (op, _canonical(body, reduced).xreplace(own), tuple(own.values()),
            _canonical(sp.Tuple(*[sp.Tuple(*b) for b in bounds]), reduced).xreplace(own))


def _ref(name, free):
    return sp.IndexedBase(name)[free] if free else sp.Symbol(name)


def _canonical(body, reduced):
    """body with its reduced indices renamed: by dimension when no two share one (so the
    order of a sum's limits does not matter), else by position."""
    dims = [dim_of(k) for k in reduced]
    if len(set(dims)) == len(dims):
        return body.xreplace({k: sp.Idx(f"_r_{d}", d) for k, d in zip(reduced, dims)})
    return body.xreplace({k: sp.Idx(f"_r{j}", dim_of(k)) for j, k in enumerate(reduced)})


def _reduce_nest(target, out, reduced, body, op, comment, init=sp.Integer(0),
                 bounds=()) -> Nest:
    out = tuple(out)
    scatter = scatter_parts(out, tuple(reduced), body) if op == "sum" and not bounds \
        else None
    if scatter is not None:
        # Each summand lands on one v, g's value: loop over the summed indices, then over
        # the other output indices (stride 1 innermost), adding at v = g.  O(K F) where
        # looping over v as well was O(V K F): an embedding's gradient, V = 50,000.
        v, g, rest = scatter
        others = tuple(i for i in out if i != v)
        refs = [(target, others)] + [(a.base.label.name, tuple(a.indices))
                                     for a in rest.atoms(sp.Indexed)]
        inner = _order(others, (), refs) if others else ()
        return Nest("scatter", target, out, tuple(reduced) + inner, tuple(reduced), rest,
                    op, comment, init, at=(v, g))
    refs = [(target, out)] + [(a.base.label.name, tuple(a.indices))
                              for a in body.atoms(sp.Indexed)]
    if op == "argmax":
        # the window scanned in rank order, innermost: the first maximum is the one kept
        loops = _order(out, (), refs) + tuple(reduced)
        if _after_bounds(loops, bounds) != loops:
            # a window offset whose bounds read a later one: no loop order both scans in
            # rank order and defines each bound before its loop
            raise ValueError(
                "the C backend cannot yet scan a maximum over window offsets whose "
                "bounds read a later offset ("
                + "; ".join(f"{k} from {lo} to {hi}" for k, lo, hi in bounds)
                + "): its first maximal position needs the window in rank order; use "
                "backend=\"numpy\"")
    else:
        loops = _after_bounds(_order(out, tuple(reduced), refs), bounds)
    return Nest("reduce", target, out, loops, tuple(reduced), body, op, comment, init,
                bounds=tuple(bounds))


def split_by_residue(nest: Nest) -> Nest:
    """A gather whose bounds divide output indices by a stride q (pooling's and strided
    convolutions' dx: wout runs from ceiling((w - KW + 1)/2) to floor(w/2)).

    The output loops run outside, the sums inside with one accumulator (each element
    written once: no zero fill, no update in place).  The last output index w runs as q
    copies of a loop over w_q, w = q*w_q + r for each residue r: there the bounds are w_q
    plus a constant.  Where the clamps max(0, .)/min(Wout - 1, .) cannot bind for any
    residue, one interior loop writes w = q*w_q + 0 .. q - 1 in turn (a fixed number of
    terms each, which the compiler unrolls, and contiguous stores it vectorizes); each
    residue's borders on either side keep the clamps (as Halide splits loops at the bounds
    it infers).  The index outside w (h) is split the same way around those loops, so in
    the interior of both every sum has a length known when compiling; h's borders run w as
    one plain loop with the clamps (a few rows: no need for q x 3 copies of w's loops).
    Returns the nest unchanged where this does not apply."""
    refs = [(nest.target, nest.out)] + [(a.base.label.name, tuple(a.indices))
                                        for a in nest.body.atoms(sp.Indexed)]
    outs = _order(nest.out, (), refs)
    if nest.kind != "reduce" or nest.op != "sum" or not nest.bounds or not outs \
            or any(k in outs for k, _, _ in nest.bounds):
        return nest
    reduced = _after_bounds(_order((), nest.reduced, refs), nest.bounds)
    whole = Nest("reduce", nest.target, nest.out, reduced, nest.reduced, nest.body,
                 nest.op, "", nest.init, bounds=nest.bounds)
    parts, shared, done = [whole], list(outs), []
    while shared:
        # an outer index's borders (a few rows) run the inner indices as plain loops with
        # their clamps, not split again (split there too, a 3x3 stride-3 max pooling's
        # float64 C was 142 KB and its backward took GCC 3.8 s; now 77 KB and 2.4 s)
        borders = [_looped(whole, done)] if done else None
        split = _split_index(parts, shared[-1], set(shared[:-1]), borders)
        if split is None:
            break
        parts = split
        done.insert(0, shared.pop())
    if len(shared) == len(outs):
        return nest
    return replace(nest, loops=tuple(shared), copies=tuple(parts))


# An index runs as separate loops, one per value, when its range is at most this long.
FEW_VALUES = 8


def split_by_value(nest: Nest) -> list[Nest]:
    """An elementwise nest over an index g of a few fixed values whose body picks its terms
    by g's value ([g = 2] in an LSTM's da[t, n, g, j]: each gate's adjoint is one term of
    four) as one nest per value, g written as that number: each copy computes its own term
    only, where one loop over g evaluated every term (and each tanh) four times and kept
    one.  Returns [nest] where this does not apply."""
    if nest.kind != "elementwise" or nest.subs or nest.copies:
        return [nest]
    for g in nest.out:
        values = dim_of(g)
        picks = [d for d in nest.body.atoms(sp.KroneckerDelta)
                 if g in d.args and any(a.is_Integer for a in d.args)]
        if not (values.is_Integer and values <= FEW_VALUES and picks):
            continue
        return [replace(nest, loops=tuple(i for i in nest.loops if i != g),
                        body=nest.body.subs(g, v), subs=((g, sp.Integer(v)),),
                        comment=nest.comment if v == 0 else "")
                for v in range(int(values))]
    return [nest]


def max_into_argmax(nests: list[Nest]) -> list[Nest]:
    """A max over a window beside an argmax over the same window (a pooling that saves its
    argmax): the argmax's scan keeps the best value anyway (NaN as the max's, the last one
    scanned), so it writes both and the max's pass over x goes."""
    def key(n):
        return (n.out, _canonical(n.body, n.reduced), tuple(k.upper for k in n.reduced))

    searches = {key(n): k for k, n in enumerate(nests) if n.kind == "reduce"
                and n.op == "argmax" and not n.bounds and not n.subs and not n.best}
    out, gone = list(nests), set()
    for k, n in enumerate(nests):
        hit = searches.get(key(n)) if n.kind == "reduce" and n.op == "max" and not n.bounds \
            and not n.subs and n.init == 0 else None
        between = nests[min(k, hit) + 1:max(k, hit)] if hit is not None else []
        if hit is not None and not out[hit].best and not _names_read(n) & {
                m.target for m in between} and not any(n.target in _names_read(m)
                                                        for m in between):
            out[hit] = replace(out[hit], best=n.target,
                               comment=f"{out[hit].comment}; {n.comment}")
            gone.add(k)
    return [n for k, n in enumerate(out) if k not in gone]


def leaves(nests):
    """The nests that compute: those inside splits and scans, in order."""
    for n in nests:
        if n.copies:
            yield from leaves(n.copies)
        else:
            yield n


def scan_nest(scan) -> Nest:
    """A recurrence (codegen/scan.py) as one sequential loop over its time index t, its
    members' nests inside: each loops over its other indices (in parallel), its reduced
    indices innermost, at the t of the enclosing loop."""
    t = scan.index
    members = []
    for n in scan.items:
        loops = tuple(i for i in n.loops if i != t)
        if n.kind == "reduce":             # one accumulator per element: sums innermost
            loops = tuple(i for i in loops if i not in n.reduced) + tuple(
                i for i in loops if i in n.reduced)
        members.append(replace(n, loops=loops, subs=n.subs + ((t, t),)))
    return Nest("scan", scan.items[0].target, (), (t,), (), sp.Integer(0),
                comment="a recurrence: step by step" + (", from the last" if scan.reverse
                                                         else ""),
                copies=tuple(members), reverse=scan.reverse)


def _split_index(parts, v, outer, borders=None):
    """`parts` (run in turn inside a loop over v) as q residues of v, each in its border
    and interior parts; None when no bound divides v by one integer q > 1.  `outer`: the
    indices looped outside v, the only ones the interior's ends may read.  `borders`: what
    the border parts run instead of `parts` (the same values, computed more plainly)."""
    divisors = {sp.fraction(sp.together(a.args[0]))[1]
                for n in leaves(parts) for _, lo, hi in n.bounds
                for a in lo.atoms(sp.floor, sp.ceiling) | hi.atoms(sp.floor, sp.ceiling)
                if v in free_indices(a.args[0])}
    if len(divisors) != 1 or not next(iter(divisors)).is_Integer \
            or next(iter(divisors)) < 2:
        return None
    q = int(next(iter(divisors)))
    t = sp.Idx(f"bp_{v.label.name}_q", dim_of(v))
    residues, lows, highs, inner = [], [sp.Integer(0)], [], {}
    for r in range(q):
        sub = {v: q * t + r}
        residue = [_substituted(n, sub, (v, q * t + r)) for n in parts]
        last = sp.floor((dim_of(v) - 1 - r) / sp.Integer(q))
        highs.append(last)
        for n in leaves(residue):
            lo, hi, bounds = _interior(n.bounds, t, outer)
            lows += [lo] if lo is not None else []
            highs += [hi] if hi is not None else []
            inner[n] = bounds
        plain = residue if borders is None else \
            [_substituted(n, sub, (v, q * t + r)) for n in borders]
        residues.append((residue, last, plain))
    # One interior for every residue, each t writing v = q*t .. q*t + q - 1 in turn: the
    # target's elements in their order, so its rows stream out (and the compiler can
    # vectorize the q interleaved stores) rather than q passes of stride-q writes.
    inner_lo, inner_hi = sp.Max(*lows), sp.Min(*highs)
    before = [_wrapping(plain, t, sp.Integer(0), sp.Min(last, inner_lo - 1))
              for _, last, plain in residues]
    middle = _wrapping(_side_by_side([[_with_bounds(n, inner) for n in residue]
                                      for residue, _, _ in residues]), t, inner_lo, inner_hi)
    after = [_wrapping(plain, t, sp.Max(inner_lo, inner_hi + 1), last)
             for _, last, plain in residues]
    return before + [middle] + after


def _looped(n: Nest, indices) -> Nest:
    """n inside plain loops over `indices` (outermost first), each over its whole range."""
    for i in reversed(indices):
        n = _wrapping([n], i, sp.Integer(0), dim_of(i) - 1)
    return n


def _side_by_side(residues: list[list[Nest]]) -> list[Nest]:
    """The residues' parts in one list, each inner loop that every residue runs with the
    same bounds run once for all of them: in max pooling's interior, the loop over w_q
    writes row 2*h_q and row 2*h_q + 1 from one read of each rank and each dy, where a loop
    per row read them twice.  The parts run in another order then, which is safe: each
    writes its own elements of the target, and a gather reads only other arrays."""
    out = []
    for same in zip(*residues):
        first = same[0]
        if len(same) > 1 and first.copies and all(
                n.copies and n.loops == first.loops and n.bounds == first.bounds
                for n in same):
            out.append(replace(first, copies=tuple(c for n in same for c in n.copies)))
        else:
            out.extend(same)
    return out


def _substituted(n: Nest, sub, at) -> Nest:
    """n with v = q*t + r written in (its copies too), the target's index remembered."""
    return replace(n, body=n.body.xreplace(sub), init=n.init.xreplace(sub),
                   bounds=tuple((k, lo.xreplace(sub), hi.xreplace(sub))
                                for k, lo, hi in n.bounds),
                   subs=n.subs + (at,) if not n.copies else n.subs,
                   copies=tuple(_substituted(c, sub, at) for c in n.copies))


def _with_bounds(n: Nest, inner: dict) -> Nest:
    """n with each leaf's bounds as in the interior (the clamps dropped)."""
    if n.copies:
        return replace(n, copies=tuple(_with_bounds(c, inner) for c in n.copies))
    return replace(n, bounds=tuple(inner[n]))


def _wrapping(parts, t, lo, hi) -> Nest:
    """A loop over t from lo to hi (inclusive) running `parts` in turn."""
    first = parts[0]
    return Nest("reduce", first.target, first.out, (t,), first.reduced, first.body,
                first.op, "", first.init, bounds=((t, lo, hi),), copies=tuple(parts))


def _interior(bounds, t, outer=frozenset()):
    """(lowest t, highest t, bounds) of the part of t's range where no max(a, t + b) or
    min(a, t + b) of the bounds depends on its constant side a: there each is t + b.  Only
    a clamp whose a and b read no index but those of `outer` (looped outside t) counts:
    one that reads an index inside (a summed one, or the split of an inner output index:
    x[n, 3*i + 2*p - l]'s sum over p from max(0, l - 3*i)) would give t's loop ends that
    read an index not yet defined; it is kept in the interior instead."""
    lows, highs, out = [], [], []
    for k, lo, hi in bounds:
        new = []
        for e, kind in ((lo, sp.Max), (hi, sp.Min)):
            if isinstance(e, kind):
                moving = [a for a in e.args if t in free_indices(a)]
                fixed = [a for a in e.args if t not in free_indices(a)]
                reads = set().union(*(free_indices(a) for a in e.args)) - {t}
                if len(moving) == 1 and reads <= set(outer) and \
                        t not in free_indices(sp.expand(moving[0] - t)):
                    b = moving[0] - t
                    for a in fixed:      # t + b >= a (a max) or t + b <= a (a min)
                        (lows if kind is sp.Max else highs).append(a - b)
                    e = moving[0]
            new.append(e)
        out.append((k, *new))
    low = sp.Max(*lows) if lows else None
    high = sp.Min(*highs) if highs else None
    return low, high, out


def _after_bounds(order, bounds):
    """Loop order with every bounded index inside the loops its bounds read, the bounds
    taken outermost first: moving q inside r must also move p, whose bounds read q, when
    p was placed before (r's bounds read q, q's read p: a chain of window offsets)."""
    order = list(order)
    for k, lo, hi in outer_first(bounds):
        needs = free_indices(lo) | free_indices(hi)
        last = max((order.index(i) for i in needs if i in order), default=-1)
        if order.index(k) < last:
            order.remove(k)
            order.insert(last, k)
    return tuple(order)


def _order(out, reduced, refs):
    """Outermost first.  Each index scores the sum over references of its distance from
    the last axis (0 = stride 1); higher scores go outer, ties put output indices outer.
    When that puts a reduced index outermost, an output index is moved out instead if the
    innermost loop stays the same (so the outer loop can be parallel without private
    copies of the target)."""
    def score(i):
        total = 0
        for _, idx in refs:
            if i in idx:
                total += len(idx) - 1 - list(idx).index(i)
        return total

    everything = list(out) + [r for r in reduced if r not in out]
    order = sorted(everything, key=lambda i: (-score(i), i not in out,
                                              everything.index(i)))
    if out and order[0] not in out and len(order) > 2:
        best = max(out, key=lambda i: (score(i), -list(out).index(i)))
        if best != order[-1]:
            order = [best] + [i for i in order if i != best]
    return tuple(order)


@dataclass(frozen=True)
class Group:
    """Consecutive nests sharing their outermost loop, run as one parallel loop: each
    iteration (a row, typically) does every nest's inner loops, so a row read by several
    nests comes from cache, not memory.  Reductions over that loop (dW[c] += ... over n,
    or a scalar loss) become reduction clauses of the shared loop."""
    index: sp.Idx
    nests: tuple[Nest, ...]


def fuse(nests: list[Nest], alone=lambda nest: False, fixed=frozenset()) -> list:
    """Nests and Groups, in order.  A nest joins the group before it when its outermost
    loop is the group's and it reads what the group wrote only in the current iteration
    (row n of an array whose first axis is the group's loop).  `alone`: nests that must
    stay on their own (a library call).  `fixed`: indices an enclosing loop holds (a
    recurrence's t): the row is the first subscript after them (h[t, n, ..])."""
    out: list = []
    current: list[Nest] = []

    def close():
        if len(current) > 1:
            out.append(Group(current[0].loops[0], tuple(current)))
        else:
            out.extend(current)
        current.clear()

    for nest in nests:
        if current and not alone(nest):
            led = _led_by(nest, current[0].loops[0])
            joining = next((n for n in (nest, led) if n and _joins(n, current, fixed)), None)
            if joining is not None:
                current.append(joining)
                continue
        close()
        if not alone(nest) and _groupable(nest):
            current.append(nest)
        else:
            out.append(nest)
    close()
    return out


def _led_by(nest: Nest, idx: sp.Idx) -> Nest | None:
    """An elementwise nest with idx as its outermost loop, the others in their order, so
    it may join a group over idx: batch norm's dx[n, c, i, j], which reads the channel
    sums, runs channel by channel right after them and reads x and dy of the channel
    back from cache, not memory.  None unless at least two of the target's axes follow
    idx (a walk over contiguous planes, not a stride)."""
    if nest.kind != "elementwise" or idx not in nest.loops or nest.loops[0] == idx \
            or idx not in nest.out or len(nest.out) - list(nest.out).index(idx) < 3:
        return None
    return replace(nest, loops=(idx,) + tuple(i for i in nest.loops if i != idx))


def _groupable(nest: Nest) -> bool:
    if nest.kind == "scan":
        return False
    if not nest.loops or nest.kind == "scatter" or nest.bounds or nest.op == "argmax":
        return False                 # a scatter writes any row; an argmax scans in order
    if nest.parallel in ("array", "scalar"):
        return nest.op == "sum"
    return not (nest.accumulate_in_place and nest.out[0] != nest.loops[0])


def _row(indices, fixed):
    """The first subscript after those an enclosing loop holds."""
    rest = [i for k, i in enumerate(indices) if not all(j in fixed for j in indices[:k + 1])]
    return rest[0] if rest else None


def _apart(a: Nest, b: Nest) -> bool:
    """True when two nests write disjoint parts of one array: an index each holds at a
    different number (the copies of split_by_value)."""
    at = dict(a.subs)
    return any(i in at and at[i].is_Integer and v.is_Integer and at[i] != v
               for i, v in b.subs)


def _joins(nest: Nest, group: list[Nest], fixed=frozenset()) -> bool:
    idx = group[0].loops[0]
    if not _groupable(nest) or nest.loops[0] != idx:
        return False
    written = {g.target: g for g in group}
    if any(g.target == nest.target and not _apart(g, nest) for g in group):
        return False
    for e in (nest.body, nest.init):
        refs = e.atoms(sp.Indexed)
        arrays = {r.base.label for r in refs}
        for s in e.free_symbols - arrays:
            if type(s) is sp.Symbol and s.name in written:
                return False            # a scalar total is known only after the loop
        for ref in refs:
            writer = written.get(ref.base.label.name)
            if writer is None:
                continue
            if writer.parallel != "output" or _row(writer.out, fixed) != idx \
                    or _row(ref.indices, fixed) != idx:
                return False
    return True


def inline_cheap(nests: list[Nest], temps: list[Temp], keep=lambda nest: False):
    """Drop scratch arrays that cost more to store than to recompute: an elementwise
    temporary with arithmetic only (dxhat = w * dy in layer norm) or read by a single nest
    is substituted into its readers, so it never travels to memory and back.  `keep`:
    nests whose formula must stay as it is (a GEMM's operands).  Returns (nests, temps).

    Who reads what is indexed once and kept up to date as readers change, so the cost is
    linear in the number of nests (a 40-layer network has thousands)."""
    scratch = {t.name for t in temps}
    nests = list(nests)
    reads = [_names_read(n) for n in nests]
    readers_of: dict[str, set[int]] = {}
    written: dict[str, list[int]] = {}
    for k, n in enumerate(nests):
        written.setdefault(n.target, []).append(k)
        for name in reads[k]:
            readers_of.setdefault(name, set()).add(k)
    gone: set[int] = set()
    for name in [n.target for n in nests if n.kind == "elementwise" and n.target in scratch]:
        kx = next(k for k in written[name] if k not in gone)
        x = nests[kx]
        readers = sorted(k for k in readers_of.get(name, ()) if k != kx)
        cheap = not x.body.atoms(sp.Function) and sp.count_ops(x.body) <= 4
        if not readers or not (cheap or len(readers) == 1) \
                or any(keep(nests[k]) for k in readers):
            continue

        def value(ref, x=x):
            return x.body.xreplace(dict(zip(x.out, ref.indices)))

        for k in readers:
            n = nests[k]
            sub = {r: value(r) for e in (n.body, n.init) for r in e.atoms(sp.Indexed)
                   if r.base.label.name == name}
            nests[k] = replace(n, body=n.body.xreplace(sub), init=n.init.xreplace(sub))
            _reindex(k, reads, readers_of, _names_read(nests[k]))
        gone.add(kx)
        _reindex(kx, reads, readers_of, set())
        temps = [t for t in temps if t.name != name]
    return [n for k, n in enumerate(nests) if k not in gone], temps


def _names_read(nest: Nest) -> set[str]:
    return {r.base.label.name for e in (nest.body, nest.init) for r in e.atoms(sp.Indexed)}


def _reindex(k, reads, readers_of, now):
    """Nest k now reads the arrays `now`: the reverse index follows."""
    for name in reads[k] - now:
        readers_of[name].discard(k)
    for name in now - reads[k]:
        readers_of.setdefault(name, set()).add(k)
    reads[k] = now


def hoist_invariants(nests: list[Nest], prefix: str = "bp_k"):
    """Subexpressions that read no array element (1 - beta1**step, 1/N) computed once
    per call instead of once per element: a vectorized powf in the loop costs more than
    the loads.  Returns (nests, [(symbol, expression)]) in first-use order."""
    found: dict = {}
    written = {n.target for n in nests}       # scalars computed here are not known at the top

    def invariant(e) -> bool:
        return not e.atoms(sp.Indexed) and not e.atoms(sp.Idx) and not e.atoms(Maximum) \
            and not e.atoms(ArgMax) \
            and not e.has(sp.Sum) and not any(s.name in written for s in e.free_symbols)

    def walk(e):
        if not e.args or isinstance(e, (sp.Indexed, sp.Idx, sp.Symbol, sp.Number)):
            return e
        if invariant(e) and (e.atoms(sp.Function) or e.atoms(sp.Pow)):
            if e not in found:
                found[e] = sp.Symbol(f"{prefix}{len(found)}")
            return found[e]
        return e.func(*[walk(a) for a in e.args])

    out = [replace(n, body=walk(n.body), init=walk(n.init)) for n in nests]
    return out, [(s, e) for e, s in found.items()]
