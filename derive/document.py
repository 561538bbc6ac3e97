"""Derivation documents: what `backprop latex` writes.  This module gathers every formula
(index form, matrix form, the chain rule term by term, local derivatives, contractions,
conditions, a worked example) as LaTeX strings; templates/derivation.*.j2 lay them out."""
from __future__ import annotations

import re

import numpy as np
import sympy as sp

from templates import render

from .calculus import complexity, fold, tidy
from .derivation import Derivation, adjoint_name, total_name
from .evaluate import evaluate
from .indices import (canonical_indices, freshen_bound, respelled, tidy_bound,
                      user_letters)
from .latex import (IndexLatexPrinter, MatrixConverter, NoMatrixForm, tex_adjoint,
                    tex_name)
from .spec import dim_symbol
from .tex_layout import aligned


ENGINES = ("pdflatex", "lualatex")


def write(derivation: Derivation, out) -> list:
    """Write the document to `out`: .tex, .md, .pdf (LaTeX engine) or .png (LaTeX engine
    and pdftoppm; one file per page: OUT.png, then OUT-2.png, ...).  Returns the paths."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".tex", ".md"):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(document(derivation, suffix[1:]), encoding="utf-8")
        return [out]
    if suffix not in (".pdf", ".png"):
        raise ValueError(f"{out}: the output must end in .tex, .md, .pdf or .png")
    engine = next((e for e in ENGINES if shutil.which(e)), None)
    if engine is None:
        raise RuntimeError(f"{out.name}: making a {suffix} needs a LaTeX engine (pdflatex or "
                           f"lualatex), and neither is on PATH; install one (Debian: apt-get "
                           f"install texlive-latex-base) or write .tex/.md instead")
    if suffix == ".png" and not shutil.which("pdftoppm"):
        raise RuntimeError(f"{out.name}: making a .png needs pdftoppm, which is not on PATH; "
                           f"install it (Debian: apt-get install poppler-utils) or write .pdf")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backprop-latex-") as tmp:
        tex = Path(tmp) / "derivation.tex"
        tex.write_text(document(derivation, "tex"), encoding="utf-8")
        r = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error",
                            tex.name], cwd=tmp, capture_output=True, text=True, timeout=300)
        pdf = Path(tmp) / "derivation.pdf"
        if r.returncode != 0 or not pdf.exists():
            errors = [line for line in r.stdout.splitlines() if line.startswith("!")]
            raise RuntimeError(f"{engine} failed on the generated document: "
                               f"{'; '.join(errors[:3]) or r.stdout[-500:]}")
        if suffix == ".pdf":
            shutil.copyfile(pdf, out)
            return [out]
        r = subprocess.run(["pdftoppm", "-png", "-r", "110", str(pdf),
                            str(Path(tmp) / "page")], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pdftoppm failed: {r.stderr.strip()}")
        pages = sorted(Path(tmp).glob("page-*.png"))
        written = []
        for k, page in enumerate(pages, start=1):
            target = out if k == 1 else out.with_name(f"{out.stem}-{k}{out.suffix}")
            shutil.copyfile(page, target)
            written.append(target)
        return written


def document(derivation: Derivation, fmt: str = "tex") -> str:
    """The derivation as a LaTeX (fmt="tex") or Markdown (fmt="md") document."""
    if fmt not in ("tex", "md"):
        raise ValueError(f"unknown document format '{fmt}' (tex or md)")
    return render(f"derivation.{fmt}.j2", **context(derivation, fmt))


def context(d: Derivation, fmt: str = "tex") -> dict:
    """Every formula of the document; each displayed equation arrives as align* rows
    (lhs &= rhs, long ones broken across lines) for LaTeX, on one line for Markdown."""
    layer = d.layer
    walked = d.walked or layer       # with the pre-activations the derivation named
    shapes = {t.name: t.dims for t in walked.tensors.values()}
    shapes.update({adjoint_name(n): dims for n, dims in list(shapes.items())})
    adjoints = {adjoint_name(t) for t in walked.tensors}
    p = IndexLatexPrinter(adjoints, brackets=True)
    conv = MatrixConverter(shapes, adjoints)
    taken = set(walked.tensors) | set(layer.dims)

    def tex(e):
        return p.doprint(e)

    def eq(lhs, rhs, rel="="):
        return aligned(lhs, rhs, rel) if fmt == "tex" else f"{lhs} {rel} {rhs}"

    def matrix(expr, indices):
        try:
            return conv.convert(expr, indices).latex()
        except NoMatrixForm:
            return None

    def ref(name, idx):
        t = layer.tensors[name]
        return t.ref(*idx)

    tensors = [dict(name=tex_name(t.name), role=t.role,
                    shape=r" \times ".join(tex(dim_symbol(x)) for x in t.dims) if t.dims
                    else "scalar")
               for t in layer.tensors.values()]
    constants = [f"{tex(sp.Symbol(k))} = {v}" for k, v in layer.constants.items()]
    sizes = []            # Hout = its definition as written, then its value at the constants
    for dim, value in layer.dim_defs.items():
        general = layer.dim_formulas.get(dim)
        rows = [tex(general)] if general is not None and general != value else []
        rows.append(tex(value))
        sizes.append(eq(tex(dim_symbol(dim)), rows[0]) + "".join(
            (" \\\\\n&= " if fmt == "tex" else " = ") + r for r in rows[1:]))
    forward = []
    for e in layer.equations:
        lhs = ref(e.target, e.indices)
        shown = e.written if e.written is not None else e.rhs   # h[t - 1] as written
        m = matrix(shown, e.indices) if e.indices else None
        forward.append(dict(index=eq(tex(lhs), tex(shown)),
                            matrix=eq(tex_name(e.target), m) if m else None))
    for t in layer.tensors.values():
        if t.initial:                    # what stands before step 0: h[-1, n, k] = h0[n, k]
            state = layer.tensors[t.initial]
            idx = canonical_indices([dim_symbol(x) for x in state.dims], taken)
            before = (idx[0] - dim_symbol(state.dims[0]),) + tuple(idx[1:]) \
                if len(state.dims) == len(t.dims) else (sp.Integer(-1),) + tuple(idx)
            forward.append(dict(index=eq(tex(t.base[before]), tex(state.ref(*idx))),
                                matrix=None))

    steps = {s.tensor: s for s in d.steps}
    by_tensor: dict[str, list] = {}
    for c in d.contributions:
        by_tensor.setdefault(c.tensor, []).append(c)
    # each gradient once complete, as the backward pass has it: dx of a gated unit after
    # the delta dz it reads (x's last contribution comes from z = W x + b)
    complete = {c.tensor: k for k, c in enumerate(d.contributions)}
    order = sorted(by_tensor, key=complete.get) + \
        [s.tensor for s in d.steps if s.tensor not in by_tensor]
    users = {}
    for c in d.contributions:
        if c.equation.target not in steps and c.equation.target != layer.loss:
            users.setdefault(c.equation.target, set()).add(c.tensor)

    # a recurrent output's total adjoint, where it is a step: dh_total (dh is its upstream)
    totals = {s.tensor: s.name for s in d.steps if s.label}
    # an output later steps read (an RNN's h): its upstream gradient starts the total
    recurrent_outputs = {t.name for t in layer.outputs if t.initial}
    totals.update({n: total_name(n) for n in recurrent_outputs if n not in totals})
    gradients = []
    for name in order:
        P = d.indices(name)
        terms = []
        for c in by_tensor.get(name, []):
            terms.append(_term(c, P, walked, taken, tex, eq, totals))
        step = steps.get(name)
        entry = dict(name=tex_name(name), title=_partial(tex_name(name), P, p),
                     adjoint=tex(sp.IndexedBase(adjoint_name(name))[P]) if P
                     else tex_adjoint(name), terms=terms, kept=step is not None,
                     gradient=bool(step and step.is_gradient),
                     used_in=sorted(tex_name(u) for u in users.get(name, ())),
                     result=None, matrix=None, given=None,
                     upstream=eq(tex(sp.IndexedBase(total_name(name))[P]),
                                 tex(sp.IndexedBase(adjoint_name(name))[P]))
                     if name in recurrent_outputs and P and name in by_tensor else None)
        if step is not None:
            lhs = tex(step.lhs)
            entry["result"] = eq(lhs, tex(step.expr))
            m = matrix(step.expr, step.indices)
            entry["matrix"] = eq(tex_adjoint(name), m) if m and step.indices else None
            if step.given is not None:
                gm = matrix(step.given, step.indices) if step.indices else None
                entry["given"] = dict(
                    conditions=[_condition_tex(cond, layer, tex) for cond in step.conditions],
                    index=eq(lhs, tex(step.given)),
                    matrix=eq(tex_adjoint(name), gm) if gm else None)
        gradients.append(entry)
    gradients = _by_layer(walked, gradients, dict(zip(order, gradients)))

    deltas = [s for s in d.steps if not s.is_gradient]
    recursion = []
    if len(deltas) >= 2:
        for s in deltas:
            m = matrix(s.simplest, s.indices)
            recursion.append(dict(index=eq(tex(s.lhs), tex(s.simplest)),
                                  matrix=eq(tex_adjoint(s.tensor), m) if m else None))
    conditions = [_condition_tex(c, layer, tex) for c in layer.conditions]
    return dict(
        name=layer.name, doc=layer.doc, tensors=tensors, forward=forward,
        constants=constants, sizes=sizes,
        loss=tex_name(layer.loss) if layer.loss else None,
        upstream=[tex_adjoint(t.name) for t in layer.upstream],
        gradients=gradients, recursion=recursion, conditions=conditions,
        named=[eq(tex(walked.tensors[e.target].ref(*e.indices)), tex(e.rhs))
               for e in walked.equations if e.target not in layer.tensors],
        example=_example(d, tex), tex_escape=tex_escape)


def _by_layer(layer, gradients, by_name) -> list:
    """A network's gradients grouped by layer, the last first; the first entry of each
    group carries the layer's heading (a section of the document)."""
    names = {id(g): n for n, g in by_name.items()}
    out = []
    for section, group in layer.by_section(gradients, lambda g: names[id(g)]):
        heading = dict(name=section, kind=layer.sections[section]) if section else None
        out += [dict(g, layer=heading if k == 0 else None) for k, g in enumerate(group)]
    return out


def _partial(name_tex, P, p):
    """A heading's formula, at text size: \\partial L / \\partial W_{ij}."""
    sub = "".join(p.doprint(i) for i in P)
    base = f"{{{name_tex}}}" if "_" in name_tex else name_tex
    return rf"\partial L / \partial {base}{'_{' + sub + '}' if P else ''}"


def _term(c, P, layer, taken, tex, display, totals=None):
    """The chain rule for one equation Y = F feeding tensor X, term by term; `display` lays out
    a displayed equation."""
    eq = c.equation
    y = layer.tensors[eq.target]
    x = layer.tensors[c.tensor]
    used = {i.label.name for i in P} | taken
    # the equation as the spec writes it, an index primed where it would clash with the
    # gradient's (y_{n'i'} = tanh(z_{n'i'}) for dL/dz_{ni}), not a letter of its own
    letters = user_letters([eq])
    rename = {}
    for i in eq.indices:
        if i.label.name in used:
            new = respelled(i, used | {j.label.name for j in eq.indices}, letters,
                            primed=True)
            used.add(new.label.name)
            rename[i] = new
    lhs_idx = [rename.get(i, i) for i in eq.indices]
    # bound (summed) indices must not collide with X's indices either; freshened before
    # the renaming, so j -> k does not land inside a sum over k (W_hh[j, k] as W_hh[k, k])
    rhs = tidy_bound(freshen_bound(eq.rhs).xreplace(rename),
                     used | {i.label.name for i in lhs_idx}, letters, primed=True)
    yref, xref = y.ref(*lhs_idx), x.ref(*P)
    # a max over an index differentiates into a sum over fresh indices: name them
    local = tidy_bound(sp.diff(rhs, xref), used | {i.label.name for i in lhs_idx}, letters,
                       primed=True)
    # in terms of its own output where it reappears: drstd/dx = -rstd^3 (x - mu) / C, not
    # the power of the variance it is
    local = min((local, _numbers_out(fold(local, rhs, lambda m: y.ref(*[m[i] for i in lhs_idx])))),
                key=complexity)
    totals = totals or {}
    seed = "" if eq.target == layer.loss else tex(
        sp.IndexedBase(totals.get(eq.target, adjoint_name(eq.target)))[tuple(lhs_idx)]
        if lhs_idx else sp.Symbol(adjoint_name(eq.target)))
    sums = ",".join(tex(i) for i in lhs_idx)
    dy = rf"\frac{{\partial {tex(yref)}}}{{\partial {tex(xref)}}}"
    chain = (rf"\sum_{{{sums}}} " if sums else "") + (f"{seed} " if seed else "") + dy
    adjoint = tex(sp.IndexedBase(totals.get(c.tensor, adjoint_name(c.tensor)))[P]) if P \
        else tex_adjoint(c.tensor)
    shown = c.before if c.cancelled_by else min((tidy(c.expr), c.expr), key=complexity)
    return dict(equation=display(tex(yref), tex(rhs)), chain=display(adjoint, chain, r"\mathrel{+}="),
                local=display(dy, tex(local)),
                contracted=display(adjoint, tex(shown), r"\mathrel{+}="),
                cancels=[_why_zero(e, layer, tex) for e in c.cancelled_by],
                zero=display(adjoint, "0", r"\mathrel{+}="),
                delta=local.has(sp.KroneckerDelta), source=tex_name(eq.target),
                shifted=any(not all(isinstance(a, sp.Idx) for a in d.args)
                            for d in local.atoms(sp.KroneckerDelta)),
                fold=eq.target != layer.loss and _mentions(c.expr, eq.target))


def _numbers_out(expr):
    """Numeric factors taken out of sums, where they cancel: sum_c 2 (x - mu) / (2 C) is
    sum_c (x - mu) / C."""
    def out(s):
        number, rest = s.function.as_coeff_Mul()
        return number * sp.Sum(rest, *s.limits)
    return expr.replace(lambda e: isinstance(e, sp.Sum) and e.function.as_coeff_Mul()[0] != 1,
                        out)


def _why_zero(eq, layer, tex) -> str:
    """Why a contribution is 0 once the forward value `eq` computes is written in: a mean's
    deviations sum to zero (layer norm's sum_c (x_nc - mu_n) = 0), or its terms cancel."""
    target = layer.tensors[eq.target].ref(*eq.indices)
    coeff, core = eq.rhs.as_independent(*eq.rhs.atoms(sp.Indexed), as_Add=False)
    if isinstance(core, sp.Sum) and isinstance(core.function, sp.Indexed):
        count = sp.Mul(*[lim[0].upper + 1 for lim in core.limits])
        if sp.simplify(coeff * count - 1) == 0:
            over = ", ".join(f"${tex(lim[0])}$" for lim in core.limits)
            deviations = sp.Sum(core.function - target, *core.limits)
            return (f"${tex(target)}$ is the mean of ${tex(core.function)}$ over {over}, so "
                    f"${tex(core)} = {tex(count * target)}$: the deviations from a mean sum "
                    f"to zero, ${tex(deviations)} = 0$")
    return f"written with ${tex(target)} = {tex(eq.rhs)}$, its terms cancel"


def _mentions(expr, name) -> bool:
    return any(a.base.label.name == name for a in expr.atoms(sp.Indexed)) or \
        any(s.name == name for s in expr.free_symbols if isinstance(s, sp.Symbol))


def _condition_tex(cond, layer, tex):
    t = layer.tensors[cond.tensor]
    idx = canonical_indices([dim_symbol(x) for x in t.dims], set(layer.tensors))
    k = idx[cond.slot]
    return dict(text=cond.text,
                latex=f"\\sum_{{{tex(k)}}} {tex(t.ref(*idx))} = {tex(cond.value)}")


def _example(d: Derivation, tex) -> dict:
    """A worked example at small concrete values: the spec's `example` line where given,
    else sizes 3 (over 2 values a normalization gives xhat = +-1) and short decimals from a fixed seed (one-hot rows for a target that is
    declared one-hot)."""
    layer = d.layer
    rng = np.random.default_rng(7)
    sizes = layer.fit_sizes({dim: int(layer.example.get(dim, 3)) for dim in layer.dims
                             if dim not in layer.dim_defs})      # output sizes follow
    one_hot = {c.tensor for c in layer.conditions}
    values = {}
    for t in layer.tensors.values():
        shape = tuple(sizes[x] for x in t.dims)
        if t.role not in ("input", "param", "target"):
            continue
        if t.name in layer.example:
            values[t.name] = np.full(shape, layer.example[t.name])
        elif t.values is not None:                       # integer labels
            values[t.name] = rng.integers(0, sizes[t.values], shape)
        elif t.role == "target" and t.name in one_hot and t.dims:
            rows = int(np.prod(shape[:-1]))
            values[t.name] = np.eye(shape[-1])[rng.integers(0, shape[-1], rows)].reshape(shape)
        elif t.role == "target":
            values[t.name] = np.round(rng.uniform(0, 1, shape), 1)
        else:
            values[t.name] = np.round(rng.uniform(-1, 1, shape), 1)
    for t in layer.upstream:
        values[adjoint_name(t.name)] = np.round(rng.uniform(-1, 1, tuple(sizes[x] for x in
                                                                           t.dims)), 1)
    result = evaluate(d, values)
    given = [dict(name=_value_name(n, layer), value=_tex_value(v))
             for n, v in values.items()]
    computed = [dict(name=tex_name(eq.target), value=_tex_value(result[eq.target]))
                for eq in d.layer.equations]
    grads = [dict(name=tex_adjoint(s.tensor), value=_tex_value(result[s.name]),
                  label=rf"\partial L / \partial {tex_name(s.tensor)}")
             for s in d.steps]
    return dict(sizes=", ".join(f"{k} = {v}" for k, v in sizes.items()), given=given,
                computed=computed, gradients=grads)


def _value_name(n, layer):
    return tex_adjoint(n[1:]) if n not in layer.tensors else tex_name(n)


def _fmt(v: float) -> str:
    """Four significant digits, trailing zeros kept (0.5130, not 0.513)."""
    s = f"{v:#.4g}"
    if "e" in s:
        mant, exp = s.split("e")
        return rf"{mant} \times 10^{{{int(exp)}}}"
    return s.rstrip(".") if s.endswith(".") else s


def _tex_value(v) -> str:
    a = np.asarray(v, dtype=float)
    if a.ndim == 0:
        return _fmt(float(a))
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim > 2:
        return r"\text{(a tensor of shape %s)}" % (a.shape,)
    # one format for a whole matrix: four decimals (1.1e-06 beside 0.3666 reads as noise,
    # and is: 0.0000), unless an entry is too large or too small for that to show it
    fixed = np.all(np.abs(a) < 1e4) and np.any(np.abs(a) >= 1e-3) or not a.any()
    fmt = (lambda x: f"{x:.4f}".replace("-0.0000", "0.0000")) if fixed else _fmt
    rows = [" & ".join(fmt(float(x)) for x in row) for row in a]
    return r"\begin{pmatrix} " + r" \\ ".join(rows) + r" \end{pmatrix}"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&",
                "#": r"\#", "^": r"\^{}", "_": r"\_", "%": r"\%", "~": r"\~{}"}


def tex_escape(text: str) -> str:
    return re.sub(r"[\\{}$&#^_%~]", lambda m: _TEX_SPECIAL[m.group()], text)
