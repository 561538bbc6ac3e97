"""C backend: a kernel plan -> a C99 header and source per layer (float and double)."""
from __future__ import annotations

import dataclasses
import re

import sympy as sp

from derive.affine import between, bounds_from, divides
from derive.affine import terms as affine_terms
from derive.indices import dim_of, free_indices
from derive.piecewise import linear_position
from derive.spec import dim_symbol
from derive.pretty import formula
from derive.same_shape import same_shapes

from .c_printer import KernelCPrinter, common_subexpressions, own_functions_in
from .factored_sums import factored_sums
from .dtypes import CTYPES, SUFFIX
from .exp_ranges import nonpositive_exps
from .batched_gemm import as_batched_gemm
from .fused_axes import as_fused_gemm, fewest_gemm_calls
from .gemm import as_gemm
from .gemm_pairs import side_by_side
from .im2col import _extent, as_im2col as _as_packed
from .winograd import as_winograd
from .loops import (Group, LoopPlan, Nest, Temp, fusable, fuse, hoist_invariants,
                    inline_cheap, leaves, lower, max_into_argmax, scan_nest,
                    split_by_residue, split_by_value)
from .scan import Scan, schedule, time_dims
from .step_views import step_gemm
from .gemm_loops import calls_gemm
from .panel_steps import PANEL_COLS, with_panels
from .plane_fusion import fuse_into_gathers
from .plan import KernelPlan, const_flag
from .view_shapes import view_by_shape
from .contiguous_rows import merged_rows
from .row_loops import (defer_last_pass, hoist_row_values, merge_inner_loops,
                        prefetch_next_row, store_summands)
from .streaming import CHEAP, any_streamed, mark_streams
from templates import render
from .version import VERSION

DTYPES = ("float32", "float64")


@same_shapes()     # a deep network's layers print the same formulas renamed
def c_sources(plan: KernelPlan, dtypes=DTYPES) -> dict[str, str]:
    """{'NAME.h': ..., 'NAME.c': ..., 'cdef': the declarations cffi reads}, with the
    kernels of each of `dtypes` (the toolkit's own build: the one asked for)."""
    layer = plan.layer
    shapes = {t.name: t.dims for t in layer.tensors.values()}
    shapes.update({"d" + t.name: t.dims for t in layer.tensors.values()})
    loops = lower_for_c(plan, shapes)
    for t in loops.forward_temps + loops.backward_temps + loops.fused_temps:
        shapes[t.name] = t.dims
    windows = _windows(layer)
    lowered = lambda n: as_gemm(n) or as_im2col(n, shapes, windows) or \
        _blocks(n, shapes) or any(c.step for c in n.copies)
    scalars = {n for n, d in shapes.items() if not d}
    integer = {t.name for t in layer.tensors.values() if t.values is not None}
    dims_params = ", ".join(f"ptrdiff_t {d}" for d in layer.dims) or "void"
    forward_doc = [eq.text for eq in layer.equations]
    backward_doc = []
    for s in plan.derivation.steps:
        backward_doc.append(f"{formula(s.lhs)} = {formula(s.expr)}")
    helpers = _helpers(loops)
    gemm_doc = "; ".join(
        f"{', '.join(n.target for n in nests if lowered(n))} in {what}"
        for what, nests in (("forward", loops.forward), ("backward", loops.backward))
        if any(lowered(n) for n in nests))

    def arrays(names):
        return ", ".join(f"{n}[{', '.join(shapes[n])}]" if shapes[n] else n for n in names) \
            or "(none)"

    fused_out = tuple(t.name for t in layer.outputs) + tuple(plan.gradients) \
        if fusable(plan) else ()
    inplace = pointwise(loops.forward)
    variants = []
    for dtype in dtypes:
        ctype = CTYPES[dtype]
        printer = KernelCPrinter(dtype, shapes, scalars, frozenset(
            t.name for t in layer.tensors.values() if t.outside is not None))
        printer.windows = windows
        printer.integer = integer
        seen = {}                 # the fused kernel's nests are mostly the others' again
        dims = [f"ptrdiff_t {d}" for d in layer.dims]

        def params(inputs, outputs):
            return ", ".join(dims + [f"const {'int64_t' if n in integer else ctype} "
                                     f"*restrict {n}" for n in inputs]
                             + [f"{ctype} *restrict {n}" for n in outputs]
                             + [f"{ctype} *restrict bp_work"])

        variants.append(dict(
            ctype=ctype, suffix=SUFFIX[dtype], f="f" if dtype == "float32" else "",
            forward_params=params(plan.args, plan.returns),
            backward_params=params(plan.args + plan.upstream + plan.reuses, plan.gradients),
            forward_unused=_unused(layer.dims, plan.args, plan.returns, loops.forward,
                                   loops.forward_temps, shapes, loops.invariants["forward"]),
            backward_unused=_unused(layer.dims, plan.args + plan.upstream + plan.reuses,
                                    plan.gradients, loops.backward, loops.backward_temps,
                                    shapes, loops.invariants["backward"]),
            forward_temps=_offsets(loops.forward_temps),
            backward_temps=_offsets(loops.backward_temps),
            forward=mark_streams(side_by_side(_views(loops.forward, printer, shapes,
                                                     lowered, seen)),
                                 loops.forward, plan.returns, printer, shapes),
            backward=mark_streams(side_by_side(_views(loops.backward, printer, shapes,
                                                      lowered, seen)),
                                  loops.backward, plan.gradients, printer, shapes),
            fused_params=params(plan.args, fused_out),
            inplace_params=params(plan.args, plan.returns).replace("restrict ", ""),
            inplace=_inplace_view(loops.forward, printer) if inplace else None,
            fused_unused=_unused(layer.dims, plan.args, fused_out, loops.fused,
                                 loops.fused_temps, shapes, loops.invariants["fused"]),
            **{f"{side}_consts": [(str(s), printer.code(e)) for s, e in
                                  loops.invariants[side]]
               for side in ("forward", "backward", "fused")},
            fused_temps=_offsets(loops.fused_temps),
            **{f"{side}_wide": _prefers_256(getattr(loops, side))
               for side in ("forward", "backward", "fused")},
            fused=mark_streams(side_by_side(_views(loops.fused, printer, shapes, lowered,
                                                   seen)), loops.fused, fused_out, printer,
                                 shapes),
        ))
    seed = f"seeded with d{layer.loss} = 1" if layer.loss else \
        "from the upstream gradient" + ("s " if len(plan.upstream) > 1 else " ") + \
        ", ".join(plan.upstream)
    context = dict(
        name=layer.name, doc=layer.doc or f"layer {layer.name}", version=VERSION,
        guard=f"BP_{layer.name.upper()}_H", dims=list(layer.dims), dims_params=dims_params,
        forward_doc=forward_doc, backward_doc=backward_doc, seed=seed, helpers=helpers,
        forward_in_doc=arrays(plan.args), forward_out_doc=arrays(plan.returns),
        backward_in_doc=arrays(plan.args + plan.upstream + plan.reuses),
        backward_out_doc=arrays(plan.gradients),
        gemm_doc=gemm_doc, gemm_blocks=any(
            _blocks(n, shapes) or any(c.step for c in n.copies)
            for n in loops.forward + loops.backward + loops.fused),
        forward_work=_size(loops.forward_temps),
        backward_work=_size(loops.backward_temps), fused=fusable(plan), inplace=inplace,
        fused_work=_size(loops.fused_temps), fused_out_doc=arrays(fused_out),
        variants=variants,
        size_checks=_size_checks(layer, printer), const_flag=const_flag(layer),
        im2col=any(as_im2col(n, shapes, windows)
                   for n in loops.forward + loops.backward + loops.fused),
        winograd=any(as_winograd(n, as_im2col(n, shapes, windows), shapes, windows)
                     for n in loops.forward + loops.backward + loops.fused),
        index_math=bool(layer.dim_defs) or any(
            n.bounds or n.body.has(sp.floor, sp.ceiling, between, divides)
            or any(not r.is_Integer for a in n.body.atoms(sp.Indexed)
                   for i in a.indices for r in i.atoms(sp.Rational))
            for n in leaves(loops.forward + loops.backward + loops.fused)),
        panel_gemm=any(c.step is not None and c.step.panels is not None
                       for n in loops.forward + loops.backward + loops.fused
                       for c in n.copies),
        panel_cols=PANEL_COLS,
        uses_gemm=any(calls_gemm(v[side]) for v in variants
                      for side in ("forward", "backward", "fused")),
        streams=any(any_streamed(v[side]) for v in variants
                    for side in ("forward", "backward", "fused")),
        prefetch=any(m.get("prefetch") for v in variants for side in ("forward", "backward",
                                                                      "fused")
                     for x in v[side] if x.get("group") for m in x["members"]),
    )
    return {f"{layer.name}.h": render("c_header.h.j2", **context),
            f"{layer.name}.c": render("c_source.c.j2", **context),
            "cdef": render("c_cdef.h.j2", **context)}


def lower_for_c(plan: KernelPlan, shapes: dict) -> LoopPlan:
    """Loop nests (an exp of a shifted exp-sum marked as such: codegen/exp_ranges.py),
    with cheap scratch arrays recomputed where read (GEMM operands stay),
    loop-invariant subexpressions computed once per call, and scratch for the packed
    operands of convolutions lowered onto the GEMM hook."""
    loops = lower(_fixed_dims(nonpositive_exps(plan)))
    for side in ("forward", "backward", "fused"):
        known = dict(shapes)
        known.update({t.name: t.dims for t in getattr(loops, side + "_temps")})
        windows = _windows(plan.layer)
        library = lambda n: as_gemm(n) or as_im2col(n, known, windows) or \
            _blocks(n, known)
        nests = max_into_argmax(
            [p for n in getattr(loops, side) for p in _products_apart(n, known)])
        nests, temps = inline_cheap(nests, getattr(loops, side + "_temps"), keep=library)
        nests, loops.invariants[side] = hoist_invariants(nests)
        nests = [n if library(n) else split_by_residue(n) for n in nests]
        for n in nests:
            g = as_im2col(n, known, windows)
            w = as_winograd(n, g, known, windows)
            temps += _im2col_scratch(n, g, shapes, w) if g else []
            temps += _winograd_scratch(n, w, g, shapes)
        shapes_now = dict(known)
        shapes_now.update({t.name: t.dims for t in temps})
        scheduled = schedule(nests, lambda n: n.target,
                             lambda n: n.body.atoms(sp.Indexed) | n.init.atoms(sp.Indexed),
                             shapes_now, time_dims(plan.layer))
        # by value after scheduling, which orders whole arrays: da[.., 0, ..] and the
        # other gates' copies stay in the same step of a recurrence
        by_value = lambda ns: [p for n in ns for p in ([n] if library(n) else split_by_value(n))]
        nests = []
        for x in scheduled:
            if isinstance(x, Scan):
                x = dataclasses.replace(x, items=tuple(by_value(x.items)))
                x, panels = with_panels(_with_steps(x, shapes_now))
                temps += panels
                x = scan_nest(x)
                nests.append(x)
            else:
                nests += by_value([x])
        nests = fuse_into_gathers(nests, {t.name for t in temps})
        setattr(loops, side, nests)
        setattr(loops, side + "_temps", temps)
    return loops


def as_im2col(n: Nest, shapes: dict, windows=frozenset()):
    """The packed-operand GEMMs of a shifted read (codegen/im2col), unless the read is one
    GEMM as it stands once its axes merge (a recurrent weight's gradient over all steps:
    packing it per row would copy every operand for nothing)."""
    merged = as_fused_gemm(n, shapes)
    if merged is not None and not merged.loops:
        return None
    return _as_packed(n, shapes, windows)


def _blocks(n: Nest, shapes: dict):
    """n as a loop of GEMMs on blocks, its adjacent axes merged where that makes fewer."""
    return fewest_gemm_calls(n, shapes)


def _with_steps(scan: Scan, shapes: dict) -> Scan:
    """The scan with each member's GEMM form at its step, where it has one."""
    return dataclasses.replace(scan, items=tuple(
        dataclasses.replace(n, step=step_gemm(n, scan.index, shapes)) for n in scan.items))


def _slots(loop: sp.Idx, unless: str | None = None) -> sp.Idx:
    """An index over the scratch slots of a GEMM loop run in parallel: one per thread that
    can run (bp_slots in the generated C), at most one per loop value; none at a call
    where the C condition `unless` holds (Winograd's route, which uses other scratch)."""
    count = f"bp_slots({dim_of(loop)})" if unless is None else \
        f"bp_slots_unless({dim_of(loop)}, {unless})"
    return sp.Idx("bp_slot", sp.Symbol(count, integer=True, positive=True))


def _im2col_scratch(n: Nest, g, shapes: dict, w=None) -> list[Temp]:
    """Scratch of a convolution's GEMMs: operands packed once; those packed per loop value
    once per slot (each thread packs its own), and, where the loop is summed, a partial
    result per slot.  `shapes` learns the one-slot shape a thread's pack is printed with.
    Where Winograd's route `w` may be taken, the slots count 0 at the calls that take it
    (its images skip the packs and the partial results)."""
    temps = []
    unless = None if w is None else winograd_when(w, g, str)
    for operand in (g.a, g.b):
        if operand.pack is None:
            continue
        if operand.per_loop:
            temps.append(Temp(operand.name + "_slots",
                              (_slots(g.loop, unless),) + operand.pack.out))
            shapes[operand.name] = Temp(operand.name, operand.pack.out).dims
        else:
            temps.append(Temp(operand.name, operand.pack.out))
    if g.loop is not None and g.loop not in n.out:
        temps.append(Temp(f"_{n.target}_part", (_slots(g.loop, unless),) + tuple(n.out)))
    return temps


def winograd_when(w, g, code) -> str:
    """The C condition under which a call takes the Winograd route `w` of im2col route
    `g` (sizes printed by `code`): the same text in the work size and in the kernel."""
    (v1, v2), (u1, u2) = w.windows, w.rows
    m, k = code(_extent(g.m)), code(_extent(w.channels))
    window = f"{code(dim_of(v1))}, {code(dim_of(v2))}"
    if w.tile is not None:               # the weights' form: also enough tiles an image
        return f"bp_wino_sums_on({m}, {k}, {code(dim_of(u1))}, {code(dim_of(u2))}, {window})"
    return f"bp_wino_on({m}, {k}, {window})"


def _winograd_scratch(n: Nest, w, g, shapes: dict) -> list[Temp]:
    """Scratch of a 3x3 convolution's Winograd route, none where the window is not 3 x 3 at
    the call (the C's bp_wino_ sizes are then 0): the transformed weights (16 x M x C; in
    the weights' form each slot's 16 sums of M x C instead), and per slot the transformed
    values of one image (16 x (C + M) x tiles) and one channel's padded planes."""
    if w is None:
        return []
    m, k = _extent(g.m), _extent(w.channels)
    (v1, v2), (u1, u2) = w.windows, w.rows
    size = lambda f, *args: sp.Idx("bp_wi", sp.Symbol(
        f"{f}({', '.join(str(a) for a in args)})", integer=True, positive=True))
    window = (dim_of(v1), dim_of(v2))
    sums = int(w.tile is not None)       # the weights' form: each slot's 16 sums of M x C
    slot = Temp(f"_{n.target}_wv_slots", (_slots(g.loop), size(
        "bp_wino_slot", m, k, dim_of(u1), dim_of(u2), *window, sums)))
    if sums:
        return [slot, Temp(f"_{n.target}_wparts", (_slots(g.loop), size(
            "bp_wino_parts", m, k, dim_of(u1), dim_of(u2), *window)))]
    return [Temp(f"_{n.target}_wu", (size("bp_wino_weights", m, k, *window),)), slot]


def _products_apart(n: Nest, shapes) -> list[Nest]:
    """A contraction of a sum of products each of which is a GEMM or a batched one
    (attention's dx = sum_{h,e} Wq dq + Wk dk + Wv dv, unrolled RNN steps' dW = sum_n dz1 h0
    + dz2 h1 + dz3 h2) as one nest per product, the later ones adding to the target (their
    start is the target itself): three GEMMs, not one hand loop nest.  [n] otherwise."""
    if n.kind != "reduce" or n.op != "sum" or n.bounds or not isinstance(n.body, sp.Add) \
            or not n.out:
        return [n]
    target = sp.IndexedBase(n.target)[n.out]
    parts = [dataclasses.replace(n, body=term, init=n.init if k == 0 else target)
             for k, term in enumerate(n.body.args)]
    return parts if all(as_gemm(p) or as_batched_gemm(p, shapes) for p in parts) else [n]


def _unused(dims, inputs, outputs, nests, temps, shapes, consts=()) -> list[str]:
    """Parameters a function never reads, to be cast to void (no compiler warnings)."""
    used = {s.name for _, e in consts for s in e.free_symbols}
    nests = list(nests)
    nests += [n for n in leaves(nests) if n not in nests]
    for n in nests:
        for e in (n.body, n.init) + ((n.at[1],) if n.at else ()):   # a scatter's g too
            used |= {a.base.label.name for a in e.atoms(sp.Indexed)}
            used |= {s.name for s in e.free_symbols if isinstance(s, sp.Symbol)}
        used.add(n.target)
        used |= {str(dim_of(i)) for i in n.loops}
        used |= {s.name for b in n.bounds for e in b[1:] for s in e.free_symbols
                 if type(s) is sp.Symbol}
        used |= set(shapes.get(n.target, ()))
    for t in temps:
        used |= set(t.dims)
    if temps:
        used.add("bp_work")
    params = list(dims) + list(inputs) + list(outputs) + ["bp_work"]
    return [p for p in params if p not in used]


def _size(temps) -> str:
    terms = ["*".join(f"(size_t){d}" for d in t.dims) or "1" for t in temps]
    return " + ".join(terms) or "0"


def _prefers_256(nests) -> bool:
    """Whether these nests' function asks for 256-bit vectors where the compiler's tuning
    picks 128 (templates/c_source.c.j2, BP_PREFER_256): all do, unless one reads or writes
    an array at a stride (a pooling's window, 2 i + p), whose lanes are shuffled apart
    and which ran 2-3x slower so, and computes none of the toolkit's vector math (exp,
    tanh, log1p...; not ReLU's compare), which is bound by instructions and gains most."""
    return bool(own_functions_in([e for n in leaves(nests) for e in (n.body, n.init)])
                - CHEAP) or not _strided(nests)


def _strided(nests) -> bool:
    """Whether an index of an array read, or of the target a split copy writes (w =
    2 bp_w_q + 1), steps by more than one: an affine index (derive/affine.py, terms)
    with a coefficient other than 1 or -1 (2 i + p, or a symbolic S i).  A gather's
    index (t[n]) is not affine, and not a stride."""
    for n in leaves(nests):
        indices = [i for e in (n.body, n.init) for a in e.atoms(sp.Indexed) for i in a.indices]
        for e in indices + [e for _, e in n.subs]:
            affine = affine_terms(e)
            if affine and any(c not in (1, -1) for c in affine[0].values()):
                return True
    return False


def _offsets(temps):
    out, terms = [], []
    for t in temps:
        out.append(dict(name=t.name, offset=" + ".join(terms) or "0"))
        terms.append("*".join(t.dims) or "1")
    return out


def _helpers(loops: LoopPlan) -> set[str]:
    exprs = [e for n in leaves(loops.forward + loops.backward + loops.fused)
             for e in (n.body, n.init)]
    exprs += [e for side in loops.invariants.values() for _, e in side]
    names = own_functions_in(exprs)
    for e in exprs:               # helpers of the piecewise functions (derive.piecewise)
        for f in e.atoms(sp.Function):
            if isinstance(f, sp.Heaviside) and f.args[1:] == (sp.Rational(1, 2),):
                names.add("halfstep")
            elif type(f).__name__ in ("maximum", "minimum"):
                names.add(type(f).__name__)
            elif type(f).__name__ == "Where":
                names.add("select")
    return names


def _views(nests, printer, shapes, lowered, seen: dict | None = None,
           fixed=frozenset()) -> list[dict]:
    """The views of nests, fused where they share a loop (`fixed`: indices an enclosing
    loop holds, a recurrence's t); `seen` holds the views of the nests printed before
    (by this printer), as a copy of each is enough."""
    seen = {} if seen is None else seen
    out = []
    for x in fuse(nests, alone=lowered, fixed=fixed):
        if isinstance(x, Group):
            out.append(_group_view(x, printer, shapes, in_step=bool(fixed)))
            continue
        if x not in seen:
            seen[x] = view_by_shape(x, printer, shapes, lambda n: hoist_row_values(
                _view(n, printer, shapes), printer))
        out.append(dict(seen[x]))
    return out


# a parallel loop that can share an enclosing region's threads instead (no reduction
# clause: its variables would be private to the region)
_OWN_TEAM = re.compile(r"#pragma omp parallel for( simd)?( collapse\(\d+\))?( if \(.*\))?")


def _scan_in_one_team(parts: list[dict]) -> list[dict] | None:
    """A recurrence's step parts run by one thread team for all steps, or None.

    Each step otherwise starts two or three teams (a fill, the GEMM, the gate math): 192
    for an LSTM's 64 backward steps, each waking the sleeping threads (OMP_WAIT_POLICY=
    PASSIVE) at tens of microseconds on a virtual machine.  In one region around the loop
    over t, every loop becomes `omp for` (its barrier at the end keeps the steps' order) and
    each thread multiplies its own panels (codegen/panel_steps) before a barrier.  Only
    where every part splits so: each step GEMM on panels, every other part a parallel loop
    without a reduction clause (returned as copies: the views are shared with other
    kernels)."""
    def rewrite(value):
        if isinstance(value, dict):
            out = {}
            for key, v in value.items():
                if key.endswith("pragma") and isinstance(v, str) \
                        and v.startswith("#pragma omp parallel"):
                    m = _OWN_TEAM.fullmatch(v)
                    if m is None:
                        raise LookupError(v)
                    v = "#pragma omp for" + (m[1] or "") + (m[2] or "")
                else:
                    v = rewrite(v)
                out[key] = v
            return out
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    if not any(p.get("step") for p in parts):
        return None
    try:
        team = rewrite(parts)
    except LookupError:
        return None
    for p in team:
        if p.get("step"):
            if p["step"]["panels"] is None:
                return None
            p["step"]["in_team"] = True
        elif not p.get("pragma", "").startswith("#pragma omp for") or p.get("pre") \
                or p.get("post"):
            return None
    return team


def pointwise(nests: list[Nest]) -> bool:
    """Every statement elementwise over the same loops, every array read at exactly those
    indices: element i of each result depends only on element i of each input, so a result
    may overwrite an input of its shape (an optimizer step, in place)."""
    if not nests or any(n.kind != "elementwise" or not n.loops for n in nests):
        return False
    loops = nests[0].loops
    return all(n.loops == loops and n.out == loops and all(
        tuple(a.indices) == loops for e in (n.body, n.init) for a in e.atoms(sp.Indexed))
        for n in nests)


def _inplace_view(nests: list[Nest], printer: KernelCPrinter) -> dict:
    """One loop that loads every input element, computes every result into a local, then
    stores: with no restrict and `omp simd` (no dependence between iterations), a result
    may share its buffer with the input it replaces."""
    loops = nests[0].loops
    written = {n.target for n in nests}          # computed in this iteration: locals
    reads = sorted({a for n in nests for a in n.body.atoms(sp.Indexed)
                    if a.base.label.name not in written}, key=str)
    local = {a: sp.Symbol(f"bp_in_{a.base.label.name}") for a in reads}
    scalars = sorted({s for n in nests for s in n.body.free_symbols
                      if type(s) is sp.Symbol and s.name in printer.scalars}, key=str)
    before = {s: sp.Symbol(f"bp_s_{s.name}") for s in scalars}   # read once, not per element
    local.update(before)
    computed, results = {}, []
    for n in nests:       # arrays are contiguous and of one shape: one flat index bp_i
        ref = sp.IndexedBase(n.target)[loops]
        value = n.body.xreplace({**local, **computed})
        computed[ref] = sp.Symbol(f"bp_out_{n.target}")
        results.append((str(computed[ref]), printer.code(value), f"{n.target}[bp_i]"))
    return dict(extent="*".join(str(dim_of(i)) for i in loops),
                scalars=[(str(s), printer._print(a)) for a, s in before.items()],
                loads=[(str(s), f"{a.base.label.name}[bp_i]") for a, s in local.items()
                       if a not in before],
                results=results)


def parallel_min(nests) -> str:
    """The C name of the size from which loops over these nests run on several threads:
    BP_PARALLEL_MIN_PLAIN where every body only loads, adds and multiplies (a fill, a
    bias gradient's column sum: memory-bound, a few microseconds below it, less than
    starting a thread team costs), BP_PARALLEL_MIN where one calls a function (exp, log...)."""
    heavy = any(e.atoms(sp.Function) for n in nests for e in (n.body, n.init))
    return "BP_PARALLEL_MIN" if heavy else "BP_PARALLEL_MIN_PLAIN"


def _group_view(g: Group, printer: KernelCPrinter, shapes, in_step=False) -> dict:
    """One parallel loop over g.index around every member's inner loops.  in_step: inside
    a recurrence's step, where the rows read at [n, j] are initial states read at one step
    (h0), not the arrays streamed, so no row is prefetched."""
    var, extent = g.index.label.name, str(dim_of(g.index))
    members, pre, post, clauses = [], [], [], []
    ctype = CTYPES[printer.dtype]
    nests, stores = store_summands(g)

    def member(n: Nest, k: int) -> dict:
        """The view of a row-loop member: its loops inside the shared one."""
        v = _view(n, printer, shapes, acc=f"bp_acc{k}")
        v.update(loops=v["loops"][1:], pragma="", init_pragma="")
        if v["mode"] == "assign":
            v["simd"] = "#pragma omp simd" if v["loops"] else ""
        return v

    for k, n in enumerate(nests):
        v = member(n, k)
        if k in stores:
            v["store"] = printer._print(stores[k])
        if v["mode"] == "scalar_acc":
            v["split"] -= 1
        elif v["mode"] == "scalar_total":
            acc = f"bp_total{k}"
            pre.append(dict(line=f"{ctype} {acc} = {v['start']};"))
            post.append(dict(line=f"{v['target']} = "
                              f"{printer.code(n.init + sp.Symbol(acc))};"))
            clauses.append(f"reduction(+:{acc})")
            v.update(mode="update", target=acc, total=True,
                     simd=f"#pragma omp simd reduction(+:{acc})" if v["loops"] else "")
        elif n.parallel == "array":
            init = Nest("elementwise", n.target, n.out, n.out, (), n.init, comment="")
            pre.append(dict(nest=hoist_row_values(_view(init, printer, shapes), printer)))
            clauses.append(f"reduction(+:{n.target}[0:{'*'.join(shapes[n.target])}])")
            v.update(mode="update")
        elif v["mode"] != "assign":             # in place, this row of the target
            v.update(out_loops=v["out_loops"][1:],
                     init_simd="#pragma omp simd" if len(v["out_loops"]) > 1 else "")
        members.append(hoist_row_values(v, printer))
    widest = max(g.nests, key=lambda n: len(n.loops))
    extents = "*".join(str(dim_of(i)) for i in widest.loops)
    # members with no loops of their own: the shared loop is the one to vectorize (its
    # `if` names `parallel`, not to turn the vectorizing off below the threshold too)
    flat = all(len(n.loops) == 1 for n in g.nests)
    pragma = " ".join([f"#pragma omp parallel for{' simd' if flat else ''}"] + clauses +
                      [f"if ({'parallel: ' if flat else ''}{extents} >= "
                       f"{parallel_min(g.nests)})"])
    members = merge_inner_loops(members)
    if not in_step:
        prefetch_next_row(members, var, extent, shapes, 8 if printer.dtype == "float64" else 4)
    view = dict(group=True, var=var, extent=extent, members=members,
                pre=pre, post=post,
                pragma=pragma,
                comment="; ".join(n.comment.replace("*/", "* /") for n in g.nests if n.comment))
    if not in_step:
        view["deferred"] = defer_last_pass(
            g, nests, stores, members,
            lambda n: hoist_row_values(member(n, len(nests)), printer), printer, clauses,
            parallel_min(g.nests))
    return view


def _bounded_loop(i, lo, hi, printer) -> tuple:
    count = sp.expand(hi - lo + 1)
    if count.is_Integer and count > 0 and free_indices(lo):
        return (i.label.name, printer.index_code(lo), str(count), "count")
    return (i.label.name, printer.index_code(lo), printer.index_code(hi + 1))


def _view(n: Nest, printer: KernelCPrinter, shapes, acc: str = "bp_acc",
          one_stretch: bool = True) -> dict:
    """What the template needs of one loop nest, every formula printed (one_stretch:
    two inner loops over one contiguous plane may run as one)."""
    bounded = {k: (lo, hi) for k, lo, hi in n.bounds}
    # a loop is (name, extent), or (name, first, end) over part of its range, or (name,
    # first, count, "count") over a fixed number of terms from a moving first (the interior
    # of a strided gather: the compiler unrolls it and vectorizes the loop outside)
    loops = [_bounded_loop(i, *bounded[i], printer) if i in bounded else
             (i.label.name, str(dim_of(i))) for i in n.loops]
    extents = "*".join(str(dim_of(i)) for i in n.loops)
    at = dict(n.subs)
    target_ref = sp.IndexedBase(n.target)[tuple(at.get(i, i) for i in n.out)] if n.out \
        else sp.Symbol(n.target)
    target = printer._print(target_ref)
    if printer.guarded(n.body):
        replacements, body = [], n.body        # no read may move out of its guard
    else:
        replacements, (body,) = common_subexpressions(n.body, acc)
        body = factored_sums(body)        # the sums a derivation expanded, regrouped
    cse = [(str(s), printer.code(e)) for s, e in replacements]
    value = printer.code(body)
    # `if (parallel: ...)`: on a combined `parallel for simd` an `if` without the modifier
    # applies to `simd` too (OpenMP 5.0), and GCC 12 ran every loop below the threshold
    # one element at a time (Adam over 37,449 parameters: 4.3 ns a parameter, 0.48 so)
    when = f" if (parallel: {extents} >= {parallel_min([n])})" if loops else ""
    view = dict(ctype=CTYPES[printer.dtype], comment=n.comment.replace("*/", "* /"), acc=acc,
                nest=n, hoisted=[], store="", point=None,
                suffix=printer.suffix, gemm=_gemm_view(n, printer, target),
                im2col=_im2col_view(n, printer, shapes, printer.windows),
                batched=_batched_view(n, printer, shapes),
                step=_step_view(n, printer, shapes),
                loops=loops, cse=cse, value=value,
                target=target, op=n.op, pragma="", init_pragma="", split=0,
                out_loops=[], start="0", finish="", simd="", init_simd="", best="")
    flat = merged_rows(n, shapes, printer.padded) if one_stretch else n
    if flat is not n and not any(view[k] for k in ("gemm", "im2col", "batched", "step")):
        return _view(flat, printer, shapes, acc)      # rows of one stretch: one loop
    # The innermost loop is vectorized: `omp simd` lets a sum be reassociated across
    # lanes, which -O3 alone may not do.
    simd = "#pragma omp simd" if len(loops) else ""
    if n.kind == "scan":
        # a recurrence: one step after the other, each step's nests parallel inside
        (t,) = n.loops
        loops = [(t.label.name, "0", str(dim_of(t)), "down" if n.reverse else "up")]
        # the step's passes over the same rows as one parallel pass (its GEMMs apart)
        view.update(mode="copies", loops=loops, pragma="", parts=_views(
            list(n.copies), printer, shapes, lambda m: m.step is not None, fixed={t}))
        view["packs"] = list({p["step"]["panels"]["name"]: p["step"]["panels"]
                              for p in view["parts"]
                              if p.get("step") and p["step"]["panels"]}.values())
        team = _scan_in_one_team(view["parts"])
        if team is not None:
            steps = [p["step"]["work"] for p in view["parts"] if p.get("step")]
            view.update(parts=team, team=f"{view['loops'][0][2]}*{steps[0]}")
        return view
    if n.copies:
        # a gather split by residue: the copies run in turn inside the shared loops
        # leaves side by side in one loop (each residue of an interior) each declare an
        # accumulator there: one name each
        side_by_side = sum(not c.copies for c in n.copies) > 1
        parts = [_view(c, printer, shapes, f"{acc}_r{k}" if side_by_side and not c.copies
                       else acc) for k, c in enumerate(n.copies)]
        for p in parts:
            p.update(pragma="", simd="")
        # the work is the whole target (the shared loops are only its outer axes)
        work = "*".join(str(dim_of(i)) for i in n.out)
        view.update(mode="copies", parts=parts,
                    pragma=f"#pragma omp parallel for if ({work} >= BP_PARALLEL_MIN)")
        return view
    if n.kind == "scatter":
        # Serial over the summed indices: two of them may hit the same row.  The target is
        # filled with its start first; a g outside 0..V-1 adds nothing (plain C callers).
        v, g = n.at
        at = sp.Symbol("bp_at")
        reduced = len(n.reduced)
        view.update(_fill_first(n), mode="scatter", fill=view["target"],
                    target=printer.element(sp.IndexedBase(n.target)[tuple(
                        at if i == v else i for i in n.out)]),
                    at=str(at), index=printer.code(g), extent=str(dim_of(v)),
                    outer=loops[:reduced], loops=loops[reduced:],
                    start=printer.code(n.init), simd=simd if len(loops) > reduced else "")
        return view
    if n.kind == "elementwise":
        # one loop: a combined `parallel for simd`; more: simd on the innermost only
        view.update(mode="assign", simd=simd if len(loops) > 1 else "",
                    pragma=f"#pragma omp parallel for{when}" if len(loops) > 1 else
                    (f"#pragma omp parallel for simd{when}" if loops else ""))
        return view
    if n.op == "argmax":
        # one scan of the window in rank order (the order decides ties): the best value
        # and its rank, as torch.max_pool2d's `val > max || isnan(val)`; in each lane of
        # the loop over outputs where the window is small and fixed
        view.update(mode="scalar_acc", split=len(n.loops) - len(n.reduced), start="-INFINITY",
                    finish=f"{acc}_at", rank=printer.index_code(linear_position(
                        n.reduced, n.reduced)), pragma=f"#pragma omp parallel for{when}",
                    best=printer._print(sp.IndexedBase(n.best)[target_ref.indices])
                    if n.best else "", window=_small_window(n, loops, simd))
        return view
    red = "max" if n.op == "max" else "+"
    start = "-INFINITY" if n.op == "max" else "0"
    finish = f"{acc}_nan ? NAN : {acc}" if n.op == "max" else \
        printer.code(n.init + sp.Symbol(acc))
    if not n.out:
        fused = " simd" if len(loops) == 1 else ""
        clause = f"reduction(+:{acc})" if n.op == "sum" else \
            f"reduction(max:{acc}) reduction(|:{acc}_nan)"
        view.update(mode="scalar_total", start=start, finish=finish,
                    simd=f"#pragma omp simd {clause}" if len(loops) > 1 else "",
                    pragma=f"#pragma omp parallel for{fused} {clause}{when}")
    elif n.accumulate_in_place:
        size = "*".join(shapes[n.target])
        if n.parallel == "array":
            pragma = f"#pragma omp parallel for reduction({red}:{n.target}[0:{size}]){when}"
        else:
            pragma = f"#pragma omp parallel for{when}"
        inner_reduced = n.loops[-1] in n.reduced
        view.update(_fill_first(n), mode="inplace", fill=view["target"], pragma=pragma,
                    simd="" if n.op == "max" or inner_reduced or len(loops) < 2 else simd,
                    start=start if n.op == "max" else printer.code(n.init))
    else:
        view.update(mode="scalar_acc", split=len(n.loops) - len(n.reduced), start=start,
                    finish=finish,
                    # a maximum vectorizes too: NaNs are flagged beside it, not compared
                    simd=f"#pragma omp simd reduction(+:{acc})" if n.op == "sum" else
                    f"#pragma omp simd reduction(max:{acc}) reduction(|:{acc}_nan)",
                    pragma=f"#pragma omp parallel for{when}",
                    window=_small_window(n, loops, simd))
        if _two_chains(n, loops):
            view.update(chains=f"#pragma omp simd reduction(max:{acc}, {acc}_hi) "
                               f"reduction(|:{acc}_nan)")
    return view


# the most terms a window may have to be unrolled inside the loop over outputs
SMALL_WINDOW = 16


def _small_window(n: Nest, loops, simd: str) -> str:
    """The pragma for the loop over outputs where a reduction's window is small and
    fixed (a pooling's 2 x 2; every reduced loop of a constant extent, SMALL_WINDOW terms
    at most), else "".  The window's loops then run inside that loop, which the compiler
    unrolls them in and vectorizes, each lane an output: the simd pragma on the window's
    own 2-long loop left a scalar loop of shuffles (max pooling forward, 2 x 2: 1.0-1.5 ns
    an input element in cache on an AVX2 EPYC, 0.16 so; 33% of the traffic floor)."""
    split = len(n.loops) - len(n.reduced)
    window = loops[split:]
    if split < 1 or n.loops[split:] != n.reduced or len(loops[split - 1]) != 2 or \
            any(len(l) != 2 or not l[1].isdigit() for l in window):
        return ""
    terms = 1
    for _, extent in window:
        terms *= int(extent)
    return simd if terms <= SMALL_WINDOW else ""


def _two_chains(n: Nest, loops) -> bool:
    """A maximum over one loop the length of a dimension (a softmax's row, not a pooling
    window's fixed 2) runs as two chains over the loop's halves: one vector accumulator
    is a chain of `vmaxps`, 4 cycles a vector, and the loads and compares beside it wait
    on it (softmax + CE's max pass; 8% of the kernel in cache).  A sum needs no second
    chain: the loops that sum compute enough per element to hide its adds."""
    inner = loops[-1] if loops else None
    return n.op == "max" and len(n.reduced) == 1 and n.loops[-1] in n.reduced and \
        len(inner) == 2 and not inner[1].isdigit()


def _fill_first(n: Nest) -> dict:
    """The loops that set a target to its start before updates add to it (in place and
    scatter nests), parallel over the whole target."""
    out_loops = [(i.label.name, str(dim_of(i))) for i in n.out]
    out_extent = "*".join(e for _, e in out_loops)
    return dict(out_loops=out_loops,
                init_simd="#pragma omp simd" if len(out_loops) > 1 else "",
                init_pragma=f"#pragma omp parallel for{' simd' if len(out_loops) == 1 else ''}"
                            f" if (parallel: {out_extent} >= BP_PARALLEL_MIN_PLAIN)")


def _gemm_view(n: Nest, printer: KernelCPrinter, target: str) -> dict | None:
    g = as_gemm(n)
    if g is None:
        return None
    fill_loops = [(i.label.name, str(dim_of(i))) for i in n.out]
    # a later product of a sum split apart (_products_apart) starts from the target itself:
    # beta = 1 adds to it, with no fill
    fill = printer.code(n.init) if n.init != 0 and not n.adds else ""
    extents = "*".join(e for _, e in fill_loops)
    return dict(trans_a=112 if g.trans_a else 111, trans_b=112 if g.trans_b else 111,
                m=g.m, n=g.n, k=g.k, lda=g.lda, ldb=g.ldb, ldc=g.ldc, a=g.a, b=g.b,
                c=n.target, alpha=printer.code(g.alpha), beta=1 if fill or n.adds else 0,
                fill=fill, fill_loops=fill_loops,
                fill_pragma=f"#pragma omp parallel for if ({extents} >= BP_PARALLEL_MIN_PLAIN)")


def _batched_view(n: Nest, printer: KernelCPrinter, shapes) -> dict | None:
    """A contraction as a loop of GEMMs over strided blocks (codegen/batched_gemm): T
    filled with its start, then one accumulating GEMM per loop value; or, from a start of
    0, one GEMM that overwrites T (an LSTM's input projection of all steps: a 16 MB fill
    fewer)."""
    g = _blocks(n, shapes)
    if g is None:
        return None
    if n.init == 0 and not g.loops:      # one GEMM writes all of T: no fill (beta = 0)
        return dict(_gemm_calls(g, printer), fill=None, beta=0)
    fill = Nest("elementwise", n.target, n.out, n.out, (), n.init, comment="")
    return dict(_gemm_calls(g, printer), fill=None if n.adds else _view(fill, printer, shapes))


def _gemm_calls(g, printer: KernelCPrinter) -> dict:
    """The template's view of a BatchedGemm's calls.  Blocks of T apart run on threads of
    their own, one GEMM each (a GEMM of a block is too small to split: OpenBLAS's thread
    handoffs cost more).  Without such blocks (one GEMM, or products summed into one
    block) each thread of the team computes its own columns of every product (its rows,
    when T has more rows than columns), OpenBLAS held at one thread meanwhile."""
    code = printer.index_code
    ptr = lambda b: f"{b.name} + {b.offset}" if b.offset else b.name
    a, b, c = ptr(g.a), ptr(g.b), ptr(g.c)
    m, n, k = code(g.m), code(g.n), code(g.k)
    work = "*".join(f"({e})" for e in [m, n, k] + [code(e) for _, e in g.loops])
    return dict(loops=[(i.label.name, code(extent)) for i, extent in g.loops],
                pragma=f"#pragma omp parallel for collapse({g.parallel}) if ("
                       f"{'*'.join(code(e) for _, e in g.loops[:g.parallel])} > 1)"
                if g.parallel else "",
                team=not g.parallel, work=work,
                by_cols="1" if m == n else f"{n} >= {m}",     # (H >= H: a C warning)
                trans_a=112 if g.a.transposed else 111, trans_b=112 if g.b.transposed else 111,
                m=m, n=n, k=k, a=a, lda=g.a.ld, b=b, ldb=g.b.ld, c=c, ldc=g.c.ld,
                b_cols=f"{b} + bp_a*({g.b.ld})" if g.b.transposed else f"{b} + bp_a",
                a_rows=f"{a} + bp_a" if g.a.transposed else f"{a} + bp_a*({g.a.ld})",
                c_cols=f"{c} + bp_a", c_rows=f"{c} + bp_a*({g.c.ld})",
                alpha=printer.code(g.alpha), beta=1)


def _step_view(n: Nest, printer: KernelCPrinter, shapes) -> dict | None:
    """A scan member's GEMM at its step (codegen/step_views): the views' pointers, T's
    slice filled with its start, the products when every guard holds."""
    s = n.step
    if s is None:
        return None
    code = printer.index_code
    cond = lambda c: f"({code(c[1])} <= {code(c[0])} && {code(c[0])} <= {code(c[2])})"
    ctype = CTYPES[printer.dtype]
    views, checks = [], []
    for v in s.views:
        choices = [(cond(c) if c else None, f"{a} + {code(off)}" if off != 0 else a)
                   for c, a, off in v.cases]
        pointer = "NULL"
        for test, at in reversed(choices):
            pointer = at if test is None else f"{test} ? {at} : {pointer}"
        writes = v.name == s.nest.target
        views.append(dict(name=v.name, ctype=ctype if writes else f"const {ctype}",
                          pointer=pointer))
        if all(test is not None for test, _ in choices):     # no case may apply
            checks.append(f"{v.name} != NULL")
    fill = dataclasses.replace(n, kind="elementwise", body=n.init, reduced=(),
                               loops=tuple(i for i in n.loops if i not in n.reduced),
                               init=sp.Integer(0), step=None)
    known = {**shapes, **{v.name: v.dims for v in s.views}}
    # one GEMM from a start of 0 writes every element (beta = 0): the fill runs only
    # where the product is skipped (one parallel region a step fewer); a later product
    # of several (loops._split_init) adds to what the target holds: no fill at all
    overwrite = n.init == 0 and not s.gemm.loops
    calls = _gemm_calls(s.gemm, printer)
    return dict(calls, views=views, fill=None if n.adds else _view(fill, printer, known),
                panels=_panels_view(s, calls, printer),
                cond=" && ".join(checks + [cond(c) for c in s.guards]) or "1",
                beta=0 if overwrite else 1, overwrite=overwrite)


def _panels_view(s, calls: dict, printer: KernelCPrinter) -> dict | None:
    """A step GEMM on op(B) packed before the scan (codegen/panel_steps), from its calls'
    view: op(A)'s element (i, r) at a[i*sam + r*sak], the pack's reads of op(B), (r, j) at
    b[r*sbk + j*sbn]."""
    p = s.panels
    if p is None:
        return None
    a, b = s.gemm.a, p.block
    return dict(name=p.name, width=PANEL_COLS if printer.dtype == "float32" else PANEL_COLS // 2,
                a=calls["a"], sam="1" if a.transposed else a.ld, sak=a.ld if a.transposed else "1",
                b=calls["b"], sbk="1" if b.transposed else b.ld, sbn=b.ld if b.transposed else "1",
                k=calls["k"], n=calls["n"])


def _size_checks(layer, printer) -> list[tuple[str, str, str]]:
    """(dimension, C expression, formula) of each size the spec defines from others: a
    kernel given another value returns -1 before it reads or writes anything (a plain C
    caller that sized its arrays by that value would otherwise be read past)."""
    return [(name, printer.index_code(expr), formula(expr))
            for name, expr in layer.dim_defs.items()]


def _fixed_dims(plan: KernelPlan) -> KernelPlan:
    """Dimensions a spec fixes to a number (a pooling window, `dims KH = K`) written as
    that number in the C loops and formulas, so the compiler sees a 2-long loop as one.
    The functions still take them (the wrapper passes the same value)."""
    fixed = {dim_symbol(d): v for d, v in plan.layer.dim_defs.items() if v.is_Integer}
    if not fixed:
        return plan
    def sub(st):
        return dataclasses.replace(st, indices=tuple(i.xreplace(fixed) for i in st.indices),
                                   expr=st.expr.xreplace(fixed))
    return dataclasses.replace(plan, forward=tuple(map(sub, plan.forward)),
                               backward=tuple(map(sub, plan.backward)))


def _windows(layer) -> frozenset:
    """The parameters' dimensions: a convolution's kernel sizes."""
    return frozenset(d for t in layer.params for d in t.dims)


def _im2col_view(n: Nest, printer: KernelCPrinter, shapes, windows) -> dict | None:
    """A contraction with a shifted operand as GEMMs over packed operands (codegen/im2col).

    With a loop (the batch): its values split among the threads, each packing into its
    own scratch slot and calling a one-thread GEMM on its own block of T (or, when the
    loop is summed, on its own partial T, added up at the end).  Without one: a single
    product, each thread on its own columns (or rows) of it.  T is filled with its start
    first, except when that is 0 and every block is written once (the GEMMs overwrite,
    beta = 0).  A serial pack beside a threaded BLAS (before) left the two thread pools
    waiting on each other, and a team meeting at two barriers per image suffered on a
    loaded machine: one barrier in all is what keeps 2 threads at 2 threads."""
    g = as_im2col(n, shapes, windows)
    if g is None:
        return None
    summed = g.loop is not None and g.loop not in n.out
    overwrite = n.init == 0 and not summed
    fill = None if overwrite else _view(
        Nest("elementwise", n.target, n.out, n.out, (), n.init, comment=""), printer, shapes)
    packs = [(p, _pack_view(p.pack, printer, shapes)) for p in (g.a, g.b)
             if p.pack is not None]
    each = []
    for p, v in packs:
        size = "*".join(str(dim_of(i)) for i in p.pack.loops)
        if p.per_loop:                   # serial: in this thread's own slot
            v.update(pragma="", slots=p.name + "_slots", size=size, name=p.name)
            each.append(v)
        else:
            v["pragma"] = f"#pragma omp parallel for if ({size} >= BP_PARALLEL_MIN)"
    ext = lambda idx: printer.index_code(sp.Mul(*[dim_of(i) for i in idx]))
    loop = (g.loop.label.name, str(dim_of(g.loop))) if g.loop is not None else None
    ptr = lambda name, offset: name if offset == 0 else f"{name} + {printer.index_code(offset)}"
    m, cols, k = ext(g.m), ext(g.n), ext(g.k)
    a, b = ptr(g.a.name, g.a.offset), ptr(g.b.name, g.b.offset)
    direct = None
    if g.b_in_place and g.b.per_loop:        # B's pack skipped where it would copy B
        sizes, op = g.b_in_place
        direct = dict(when=" && ".join(f"{printer.index_code(d)} == {printer.index_code(v)}"
                                       for d, v in sizes),
                      b=ptr(op.name, op.offset), packed=b, ld=g.b.ld if op.ld == g.b.ld
                      else f"bp_in_place ? {op.ld} : {g.b.ld}")
        for p, v in packs:
            if p is g.b:
                v["unless"] = direct["when"]
        b, ldb = "bp_b", "bp_ldb"
    else:
        ldb = g.b.ld
    c = "bp_part" if summed else ptr(n.target, g.c_offset)
    beta = 0 if overwrite else 1
    block = _column_blocks(g, packs, printer, (m, cols, k), a, b, c, beta)
    wino = _winograd_view(n, as_winograd(n, g, shapes, windows), g, printer, shapes, c,
                          beta)
    # without a loop, a thread's part bp_a..bp_b of T's columns starts at column bp_a of
    # op(B) and of T; of its rows, at row bp_a of op(A) and of T
    return dict(fill=fill, loop=loop, beta=beta, ctype=CTYPES[printer.dtype],
                once=[v for p, v in packs if not p.per_loop], each=each,
                part=f"_{n.target}_part" if summed else None, part_size=ext(n.out),
                target=n.target,
                trans_a=112 if g.a.transposed else 111, trans_b=112 if g.b.transposed else 111,
                m=m, n=cols, k=k, lda=g.a.ld, ldb=ldb, ldc=cols, a=a, b=b, c=c, direct=direct,
                b_cols=f"{b} + bp_a*({g.b.ld})" if g.b.transposed else f"{b} + bp_a",
                a_rows=f"{a} + bp_a" if g.a.transposed else f"{a} + bp_a*({g.a.ld})",
                c_cols=f"{c} + bp_a", c_rows=f"{c} + bp_a*({cols})", block=block, wino=wino,
                work=printer.index_code(sp.Mul(*[dim_of(i) for i in g.m + g.n + g.k])),
                alpha=printer.code(g.alpha))


def _winograd_view(n: Nest, w, g, printer: KernelCPrinter, shapes, c: str,
                   beta: int) -> dict | None:
    """What the template needs of a 3x3 convolution's Winograd route (codegen/winograd):
    the loops over A's M indices and the channels, their flat positions, the padded input
    plane's pack (rows checked once, zeros at the borders, as an im2col pack) and the
    window's element as C, where T's block starts, and T's start where the output
    transform can write it itself (a bias of M's indices: y = b[o] + ..., no fill
    first)."""
    if w is None:
        return None
    def pack(name, expr, plane):
        nonlocal shapes
        shapes = {**shapes, name: tuple(str(dim_of(i)) for i in plane)}
        printer.shapes.setdefault(name, shapes[name])
        view = _pack_view(Nest("elementwise", name, plane, plane, (), expr,
                               comment=f"the {name[4:]} of one channel"), printer, shapes)
        view["pragma"] = ""                  # (inside the images' parallel loop)
        return view
    plane = pack("bp_wplane", w.patch, w.plane)
    tile = pack("bp_wtile", w.tile, w.tile_plane) if w.tile is not None else None
    start = n.init if beta and w.tile is None and \
        free_indices(n.init) <= set(g.m) | {g.loop} else None
    code = printer.index_code
    flat = lambda idx: code(sum((i * sp.Mul(*[dim_of(j) for j in idx[k + 1:]])
                                 for k, i in enumerate(idx)), sp.Integer(0)))
    loops = lambda idx: [(i.label.name, code(dim_of(i))) for i in idx]
    (v1, v2), (u1, u2) = w.windows, w.rows
    m, k = code(_extent(g.m)), code(_extent(w.channels))
    sizes = f"{m}, {k}, {code(dim_of(u1))}, {code(dim_of(u2))}"
    window = f"{code(dim_of(v1))}, {code(dim_of(v2))}"
    sums = int(w.tile is not None)
    return dict(when=winograd_when(w, g, code), m=m, k=k,
                rows=code(dim_of(u1)), cols=code(dim_of(u2)),
                m_loops=loops(g.m), k_loops=loops(w.channels),
                m_flat=flat(g.m), k_flat=flat(w.channels),
                plane=plane, tile=tile, parts=f"_{n.target}_wparts",
                weights=f"bp_wino_parts({sizes}, {window})",
                weight=None if w.weight is None else printer.code(w.weight),
                start=None if start is None else printer.code(start),
                u=f"_{n.target}_wu", slots=f"_{n.target}_wv_slots",
                slot=f"bp_wino_slot({sizes}, {window}, {sums})",
                c=c, add=beta)


def _column_blocks(g, packs, printer, mnk, a, b, c, beta) -> dict | None:
    """Each image's product a block of B's packed columns at a time, the block packed right
    before its GEMM, so it is still in cache when the GEMM reads it: an image's whole pack
    (576 x 3136 floats for a 3x3, 64-channel 56 x 56 layer: 7 MB a thread) went out to
    memory and came back (docs/benchmarks.md, issue 18, eighth session).  The block is a
    range of the first of the pack's column indices, whole rows of the image: of N when B
    is packed K x N (a convolution's y and dx: the GEMM writes those columns of T), of K
    when B is packed N x K (its dw: each block's GEMM adds its share of the sum).  The
    pack's layout is unchanged (a block is a range of its columns, its rows as long as
    before), so the 1x1 convolution's B, used in place, blocks alike.  How many rows a
    block takes, and which images go whole, the C decides per call (`bp_im2col_rows`)."""
    along_n = not g.b.transposed
    idx = g.n if along_n else g.k
    if g.loop is None or not g.b.per_loop or len(idx) < 2 or \
            not (along_n or (beta == 1 and not g.a.transposed)):
        return None     # K blocks: each adds to T (its start there already), A is M x K
    first = idx[0].label.name
    rest = printer.index_code(sp.Mul(*[dim_of(i) for i in idx[1:]]))
    other = printer.index_code(sp.Mul(*[dim_of(i) for i in (g.k if along_n else g.n)]))
    pack = next(v for p, v in packs if p is g.b)
    outer = [list(l) for l in pack["outer"]]
    at = [k for k, l in enumerate(outer) if l[0] == first]
    if len(at) != 1 or len(outer[at[0]]) != 2:     # a loop over its whole range only
        return None
    extent = outer[at[0]][1]
    outer[at[0]] = [first, "bp_c0", "bp_c1"]
    pack["blocked"] = True                         # packed in the block loop instead
    width, shift = f"(bp_c1 - bp_c0)*({rest})", f"bp_c0*({rest})"
    m, n, k = mnk
    if along_n:                  # T's columns, and B's (its rows are K)
        call = dict(m=m, n=width, k=k, a=a, b=f"{b} + {shift}", c=f"{c} + {shift}",
                    beta=str(beta))
    else:                        # the sum's terms: A's columns and B's
        call = dict(m=m, n=n, k=width, a=f"{a} + {shift}", b=f"{b} + {shift}", c=c,
                    beta="1")
    return dict(extent=extent, rest=f"({rest})", per_row=f"({other})*({rest})",
                pack={**pack, "outer": [tuple(l) for l in outer]}, **call)


def _pack_view(n: Nest, printer: KernelCPrinter, shapes) -> dict:
    """An operand packed for a GEMM, row by row: the brackets that keep a shifted read in
    its array, tested once per row where they do not read the row's index, and turned
    into the bounds of the row's loop where they do (an interior without checks and zeros
    at the borders).  A bracket on the row's index that gives no bounds (a fraction of it:
    dy[n, i, (k - 2)/3], the adjoint of a stride-3 read) is tested per element."""
    v = _view(n, printer, shapes, one_stretch=False)      # reads n's own loops below
    inner = n.loops[-1]
    factors = sp.Mul.make_args(n.body)
    ref = next(f for f in factors if isinstance(f, sp.Indexed))
    row, each, lo, hi = [], [], sp.Integer(0), dim_of(inner) - 1
    for f in factors:
        if not isinstance(f, between):
            continue
        found = bounds_from(f, inner) if inner in free_indices(f) else None
        if found is None:
            (each if inner in free_indices(f) else row).append(printer.condition(f))
        else:
            lo, hi = sp.Max(lo, found[0]), sp.Min(hi, found[1])
    value = printer.element(ref)
    if each:
        value = f"(({' && '.join(each)}) ? {value} : 0)"
    var, extent = inner.label.name, str(dim_of(inner))
    v.update(mode="pack", outer=v["loops"][:-1], var=var, extent=extent,
             row=" && ".join(row) or "1", value=value,
             lo=f"bp_imin({printer.index_code(lo)}, {extent})",
             hi=f"bp_imin({printer.index_code(hi)} + 1, {extent})")
    return v
