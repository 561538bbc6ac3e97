"""Index-form SymPy -> NumPy source.  Every expression is printed as an array whose axes
are a given tuple of indices (size-1 axes where it does not depend on one); sums become
einsum calls over the factors that depend on them, so contractions run in BLAS."""
from __future__ import annotations

import string
from collections import Counter

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from derive.affine import between, divides, is_full
from derive.affine import terms as affine_terms
from derive.functions import relu, sigmoid, softplus
from derive.piecewise import Iverson, Where, absolute, maximum, minimum
from derive.indices import free_indices
from derive.pretty import decimal, is_long_number

from .plan import Maximum, Statement
from .reductions import ArgMax
from .scatter import scatter_parts

ADD, MUL, POW, ATOM = 1, 2, 3, 4

CALLS = {sp.exp: "np.exp", sp.log: "np.log", sp.tanh: "np.tanh", sigmoid: "_sigmoid",
         sp.sin: "np.sin", sp.cos: "np.cos", log1p: "np.log1p", expm1: "np.expm1",
         sp.erf: "_erf"}
HELPERS = {"_sigmoid", "_erf"}


class NumpyPrinter:
    def __init__(self, dims: tuple[str, ...], shapes: dict[str, tuple[str, ...]] = None):
        self.dims = set(dims)
        self.shapes = shapes or {}       # array name -> its dimension names, slot by slot
        self.helpers_used: set[str] = set()
        self.dims_used: set[str] = set()
        self.seen: Counter = Counter()   # printed calls and reductions, for CSE
        self.temps = 0
        self.pre: list[tuple[str, str]] = []   # (name, code) a statement computes first

    # statements -------------------------------------------------------------------------
    def statement(self, st: Statement) -> tuple[list[tuple[str, str]], str]:
        """(temporaries, code): code computes st's array; each temporary (name, code) holds
        a call or reduction the statement would otherwise evaluate more than once."""
        ctx = tuple(st.indices)
        if st.expr == 0:
            return [], f"np.zeros({self.shape(st)}, dtype)"
        self.seen = Counter()
        self.pre = []
        code = self.array(st.expr, ctx)
        if {i for i in free_indices(st.expr)} != set(ctx) or not _has_array(st.expr):
            # The formula does not depend on every axis (or on any array): materialize.
            code = f"np.full({self.shape(st)}, {code}, dtype)" if not free_indices(st.expr) \
                else f"np.broadcast_to({code}, {self.shape(st)}).copy()"
        temps, code = self._hoist(code)
        self.dims_used -= {name for name, _ in self.pre}    # window lengths are local
        return self.pre + temps, code

    def _hoist(self, code):
        """Common subexpression elimination on printed code: an array expression printed
        twice (exp(z - m) in a softmax's numerator and denominator, say) is computed once.
        Printing is deterministic, so equal text means equal value."""
        repeated = sorted((c for c, n in self.seen.items() if n > 1 and code.count(c) > 1),
                          key=len)
        temps, names = [], {}
        for c in repeated:
            body = c
            for inner, name in names.items():      # shorter ones, already hoisted
                body = body.replace(inner, name)
            self.temps += 1
            names[c] = f"_t{self.temps}"
            temps.append((names[c], body))
        for c in sorted(names, key=len, reverse=True):
            code = code.replace(c, names[c])
        return [(n, b) for n, b in temps if code.count(n) or any(n in b2 for _, b2 in temps)],\
            code

    def _note(self, code: str) -> str:
        if len(code) >= 12:
            self.seen[code] += 1
        return code

    def shape(self, st: Statement) -> str:
        for d in st.dims:
            self.dims_used.add(d)
        if not st.dims:
            return "()"
        return "(" + ", ".join(st.dims) + ("," if len(st.dims) == 1 else "") + ")"

    def array(self, expr, ctx) -> str:
        return self._p(expr, ctx)[0]

    # expressions: each returns (code, precedence) ---------------------------------------
    def _p(self, e, ctx):
        if isinstance(e, sp.Indexed):
            return self._indexed(e, ctx), ATOM
        if isinstance(e, sp.Idx):                 # an index as a value: bounds, brackets
            dim = str(e.upper + 1)
            self.dims_used.add(dim)
            return _expand(f"np.arange({dim})", [e], ctx), ATOM
        if isinstance(e, (sp.Max, sp.Min)):
            call = "np.maximum" if isinstance(e, sp.Max) else "np.minimum"
            code = self.array(e.args[0], ctx)
            for a in e.args[1:]:
                code = f"{call}({code}, {self.array(a, ctx)})"
            return code, ATOM
        if isinstance(e, sp.floor):
            return self.integer(e.args[0], ctx), MUL
        if isinstance(e, sp.ceiling):
            return f"-({self.integer(-e.args[0], ctx)})", ADD
        if isinstance(e, between):
            x, lo, hi = (self.array(a, ctx) for a in e.args)
            return _mask(f"({lo} <= {x}) & ({x} <= {hi})", e), ATOM
        if isinstance(e, divides):
            q, x = e.args
            return f"({_atom(self.integer(x, ctx))} % {q} == 0).astype(dtype)", ATOM
        if isinstance(e, sp.Symbol):
            if e.name in self.dims:
                self.dims_used.add(e.name)
            return e.name, ATOM
        if is_long_number(e):
            return decimal(e), (ATOM if e >= 0 else ADD)
        if isinstance(e, sp.Integer):
            return str(int(e)), (ATOM if e >= 0 else ADD)
        if isinstance(e, sp.Rational):
            return f"{e.p}/{e.q}", MUL
        if isinstance(e, sp.Float):
            return repr(float(e)), ATOM
        if isinstance(e, sp.NumberSymbol):           # pi, from erf's derivative
            return repr(float(e)), ATOM
        if e is sp.S.Half:
            return "0.5", ATOM
        if isinstance(e, sp.Add):
            return self._add(e, ctx), ADD
        if isinstance(e, sp.Mul):
            return self._mul(e, ctx)
        if isinstance(e, sp.Pow):
            return self._pow(e, ctx)
        if isinstance(e, sp.Sum):
            return self._note(self._sum(e, ctx)), ATOM
        if isinstance(e, Maximum):
            return self._note(self._max(e, ctx)), ATOM
        if isinstance(e, ArgMax):
            return self._note(self._argmax(e, ctx)), ATOM
        if isinstance(e, sp.KroneckerDelta):
            return self._delta(e, ctx), ATOM
        if isinstance(e, Where):
            c, a, b = (self.array(x, ctx) for x in e.args)
            return self._note(f"np.where({c}, {a}, {b}).astype(dtype, copy=False)"), ATOM
        if isinstance(e, Iverson):
            return f"({self.array(e.args[0], ctx)}).astype(dtype)", ATOM
        if isinstance(e, sp.core.relational.Relational):
            a, b = (self._wrap(x, ctx, ADD) for x in e.args)
            return f"({a} {e.rel_op} {b})", ATOM
        if isinstance(e, (sp.And, sp.Or)):
            join = " & " if isinstance(e, sp.And) else " | "
            return "(" + join.join(self.array(a, ctx) for a in e.args) + ")", ATOM
        if isinstance(e, sp.Not):
            return f"~{self.array(e.args[0], ctx)}", ATOM
        if isinstance(e, (maximum, minimum)):
            call = "np.maximum" if isinstance(e, maximum) else "np.minimum"
            a, b = (self.array(x, ctx) for x in e.args)
            return self._note(f"{call}({a}, {b})"), ATOM
        if isinstance(e, absolute):
            return self._note(f"np.abs({self.array(e.args[0], ctx)})"), ATOM
        if isinstance(e, sp.sign):
            return self._note(f"np.sign({self.array(e.args[0], ctx)})"), ATOM
        if isinstance(e, sp.Heaviside) and len(e.args) > 1 and e.args[1] != 0:
            # [z > 0] + h0 [z == 0]: torch.maximum's even split of a tie, h0 = 1/2
            z = self.array(e.args[0], ctx)
            return self._note(f"np.heaviside({z}, {self.array(e.args[1], ())})"), ATOM
        if isinstance(e, sp.Heaviside):
            # heaviside(z, 0) as sign(max(z, 0)): the same values, NaN included, but two
            # vectorized ufuncs instead of np.heaviside's slow loop (9x faster here)
            return self._note(f"np.sign(np.maximum({self.array(e.args[0], ctx)}, 0))"), ATOM
        if isinstance(e, relu):
            return self._note(f"np.maximum({self.array(e.args[0], ctx)}, 0)"), ATOM
        if isinstance(e, softplus):
            return self._note(f"np.logaddexp(0, {self.array(e.args[0], ctx)})"), ATOM
        for f, name in CALLS.items():
            if isinstance(e, f):
                if name in HELPERS:
                    self.helpers_used.add(name)
                return self._note(f"{name}({self.array(e.args[0], ctx)})"), ATOM
        raise NotImplementedError(f"no NumPy form for {e.func}")

    def _wrap(self, e, ctx, prec):
        code, p = self._p(e, ctx)
        return f"({code})" if p < prec else code

    def _add(self, e, ctx):
        terms = sorted(e.args, key=lambda t: t.could_extract_minus_sign())
        out = self._wrap(terms[0], ctx, ADD)
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out += " - " + self._wrap(-t, ctx, MUL)
            else:
                out += " + " + self._wrap(t, ctx, ADD)
        return out

    def _mul(self, e, ctx):
        if e.could_extract_minus_sign():
            inner, p = self._mul(-e, ctx) if isinstance(-e, sp.Mul) else self._p(-e, ctx)
            return "-" + (f"({inner})" if p < MUL else inner), MUL
        num, den = [], []
        for f in e.args:
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                den.append(f.base if f.exp == -1 else sp.Pow(f.base, -f.exp))
            elif isinstance(f, sp.Rational) and not isinstance(f, sp.Integer) \
                    and not is_long_number(f):
                if f.p != 1:
                    num.append(sp.Integer(f.p))
                den.append(sp.Integer(f.q))
            else:
                num.append(f)
        top = "*".join(self._wrap(f, ctx, MUL) for f in num) if num else "1"
        if not den:
            return top, MUL
        bottom = "*".join(self._wrap(f, ctx, POW) for f in den)
        if len(den) > 1:
            bottom = f"({bottom})"
        return f"{top}/{bottom}", MUL

    def _pow(self, e, ctx):
        if e.exp == sp.S.Half:
            return f"np.sqrt({self.array(e.base, ctx)})", ATOM
        if e.exp == -1:
            return f"1/{self._wrap(e.base, ctx, POW)}", MUL
        return f"{self._wrap(e.base, ctx, ATOM)}**{self._wrap(e.exp, ctx, ATOM)}", POW

    def integer_code(self, e) -> str:
        """A dimension's definition in Python integer arithmetic (floor as //)."""
        saved = self.dims_used
        try:
            return self.array(e, ())
        finally:
            self.dims_used = saved

    def integer(self, e, ctx) -> str:
        """An integer-valued index expression, rounded down: (l + 1 - 2*k)//2."""
        num, den = sp.fraction(sp.together(e))
        code = self.array(num, ctx)
        return code if den == 1 else f"{_atom(code)}//{den}"

    def at_step(self, expr, step):
        """expr with each read of one step of a sequence, h[t - 1, n, k] (t the loop's
        step, a number), as a read of that step's array: zeros before the first step,
        where the initial state's term stands in the formula instead."""
        sub = {}
        for e in expr.atoms(sp.Indexed):
            slot = e.indices[0]
            if slot.atoms(sp.Idx) or step not in slot.free_symbols:
                continue
            name = e.base.label.name
            self.helpers_used.add("_step")
            code = f"_step({name}, {self.integer(slot, ())})"
            self.shapes[code] = tuple(self.shapes.get(name, ("",) * len(e.indices)))[1:]
            sub[e] = sp.IndexedBase(code)[tuple(e.indices[1:])] if len(e.indices) > 1 \
                else sp.Symbol(code)
        return expr.xreplace(sub)

    def _indexed(self, e, ctx):
        name = e.base.label.name
        idx = list(e.indices)
        if any(i.atoms(sp.Indexed) for i in idx):
            return self._gather(e, ctx)
        if not self._plain(e):
            view, axes = self._window(e)
            have = [i for i in ctx if i in axes]
            letters = _letters(list(dict.fromkeys(have + axes)))
            spec = "".join(letters[i] for i in axes) + "->" + "".join(letters[i] for i in have)
            return _expand(f"np.einsum('{spec}', {view})", have, ctx)
        order = [i for i in ctx if i in idx]
        code = name
        if order != idx:
            perm = tuple(idx.index(i) for i in order)
            code = f"{name}.T" if len(idx) == 2 else f"np.transpose({name}, {perm})"
        return _expand(code, order, ctx)

    def _plain(self, e) -> bool:
        """Every slot of e an index over that slot's own axis; an index of another
        dimension (i over M = L - 1 reading an L axis) is a window like x[n, i + 1]."""
        dims = self.shapes.get(e.base.label.name)
        return all(isinstance(i, sp.Idx) and (dims is None or str(i.upper + 1) == d)
                   for i, d in zip(e.indices, dims or e.indices))

    def _gather(self, e, ctx):
        """z[n, t[n]]: advanced indexing with one index array per slot, each laid out
        over the axes the result depends on (np.arange for a plain index)."""
        have = [i for i in ctx if i in free_indices(e)]
        slots, shifted = [], False
        for i in e.indices:
            if isinstance(i, sp.Idx):
                dim = str(i.upper + 1)
                self.dims_used.add(dim)
                slots.append(_expand(f"np.arange({dim})", [i], have))
            elif i.atoms(sp.Indexed):
                slots.append(self.array(i, tuple(have)))     # a label: checked in range
            else:                         # x[ids[n, p], 2*i + p - 1]: may leave its axis
                slots.append(self.integer(i, tuple(have)))
                shifted = True
        if shifted:                       # 0 there (outside x = 0), not a wrapped index
            self.helpers_used.add("_take")
            return _expand(f"_take({e.base.label.name}, ({', '.join(slots)},))", have, ctx)
        return _expand(f"{e.base.label.name}[{', '.join(slots)}]", have, ctx)

    def _window(self, e):
        """(code, axes) of a read at affine subscripts, x[n, c, 2*i + k - 1]: a strided
        view of x (zero-padded where a subscript leaves its axis), one view axis per index
        term, in slot order; an index that repeats makes a diagonal for einsum.  Index
        expressions with fractions (a strided read's adjoint) gather through index arrays
        instead."""
        slots, axes = [], []
        for i in e.indices:
            parts = affine_terms(i)
            if parts is None or not all(c.is_Integer for c in parts[0].values()) \
                    or any(not r.is_Integer for r in parts[1].atoms(sp.Rational)):
                return self._take(e)
            coeffs, const = parts
            steps = []
            for k, c in sorted(coeffs.items(), key=lambda kc: str(kc[0])):
                dim = str(k.upper + 1)
                self.dims_used.add(dim)
                steps.append(f"({int(c)}, {dim})")
                axes.append(k)
            self.dims_used |= {s.name for s in const.free_symbols}
            inner = ", ".join(steps) + ("," if len(steps) == 1 else "")
            slots.append(f"({self.array(const, ())}, ({inner}))")
        self.helpers_used.add("_window")
        return f"_window({e.base.label.name}, ({', '.join(slots)},))", axes

    def _take(self, e):
        """x[(l + 1 - 2*k)//2, ...] through index arrays over the read's indices: 0 where
        an index falls outside its axis (a bracket or bound beside it zeroes those)."""
        axes = sorted(free_indices(e), key=str)
        slots = [self.integer(i, tuple(axes)) for i in e.indices]
        self.helpers_used.add("_take")
        return f"_take({e.base.label.name}, ({', '.join(slots)},))", axes

    def _delta(self, e, ctx):
        a, b = (self.array(x, ctx) if not isinstance(x, sp.Idx) else
                _expand(f"np.arange({x.upper + 1})", [x], ctx) for x in e.args)
        for x in e.args:
            if isinstance(x, sp.Idx):
                self.dims_used.add(str(x.upper + 1))
        return _mask(f"{a} == {b}", e)

    def _sum(self, e, ctx):
        ks = [lim[0] for lim in e.limits]
        outer = [i for i in ctx if i in free_indices(e)]
        offsets = self._window_offsets(e, outer)
        if offsets is not None:
            return self._sum(offsets, ctx)
        scatter = scatter_parts(outer, ks, e.function)
        if scatter is not None:
            return _expand(self._scatter_add(scatter, ks, outer), outer, ctx)
        terms = sp.Add.make_args(e.function)
        if len(terms) > 1 and all(set(ks) <= free_indices(t) and _is_product(t, ks)
                                  for t in terms):
            # sum_j (U[j, i] dz_f[j] + W[j, i] dz_h[j]): one einsum (a matrix product) per
            # term, not the terms broadcast over every index at once and then summed
            return f"({self._add(sp.Add(*[sp.Sum(t, *e.limits) for t in terms]), ctx)})"
        inner = outer + ks
        letters = _letters(inner)
        coeff, operands = [], []
        factors = list(sp.Mul.make_args(e.function))
        for k, lo, hi in e.limits:           # a bounded sum: the bounds as a 0/1 mask
            if not is_full((k, lo, hi)):
                factors.append(between(k, lo, hi))
        for f in factors:
            own = free_indices(f)
            if not own:
                coeff.append(f)
            elif isinstance(f, sp.Indexed) and self._plain(f):
                operands.append((f.base.label.name, "".join(letters[i] for i in f.indices)))
            elif isinstance(f, sp.Indexed) and not any(i.atoms(sp.Indexed) for i in f.indices):
                view, axes = self._window(f)         # einsum reads the view directly
                operands.append((view, "".join(letters[i] for i in axes)))
            else:
                axes = [i for i in inner if i in own]
                operands.append((self.array(f, tuple(axes)), "".join(letters[i] for i in axes)))
        out = "".join(letters[i] for i in outer)
        kept = "".join(c for c in operands[0][1] if c in out) if operands else None
        if len(operands) == 1 and sorted(operands[0][1]) == sorted(letters[i] for i in inner) \
                and kept == out:
            axes = tuple(operands[0][1].index(letters[k]) for k in ks)
            code = f"{_atom(operands[0][0])}.sum(axis={axes[0] if len(axes) == 1 else axes})"
        else:
            spec = ",".join(s for _, s in operands) + "->" + out
            args = ", ".join(c for c, _ in operands)
            opt = ", optimize=True" if len(operands) > 1 else ""
            code = f"np.einsum('{spec}', {args}{opt})"
        if coeff:
            code = f"{self._wrap(sp.Mul(*coeff), ctx, MUL)}*{code}"
            code = f"({code})"
        return _expand(code, outer, ctx)

    def _window_offsets(self, e, outer):
        """A gather whose summand would be materialized over the output indices and the
        summed ones together (max-pooling's dx: [(h - 2 hout, w - 2 wout) is the first
        argmax of window (hout, wout)] over n, c, h, w, hout, wout) summed instead over
        each bounded index's offset in its window, hout = lo(h) + t with t < L, L the
        longest window (ceil(K / S)), the bounds kept as a bracket: arrays L times the
        output's size instead of Hout times.  Reductions in the summand are computed
        first over their own indices.  None where this does not apply."""
        # (an index whose bounds read another summed one keeps its sum: offsetting both
        # at once would leave the first offset reading an index no longer summed)
        summed = {k for k, _, _ in e.limits}
        bounded = [lim for lim in e.limits if not is_full(lim)
                   and (free_indices(lim[1]) | free_indices(lim[2])) & set(outer)
                   and not (free_indices(lim[1]) | free_indices(lim[2])) & summed]
        ks = {k for k, _, _ in bounded}
        wide = [f for f in sp.Mul.make_args(e.function) if not isinstance(f, sp.Indexed)
                and free_indices(f) & ks and free_indices(f) & set(outer)]
        if not wide:
            return None
        spans = {k: _window_span(lo, hi) for k, lo, hi in bounded}
        if None in spans.values():
            return None

        def computed_first(r):
            free = tuple(i for i in list(outer) + [k for k, *_ in e.limits]
                         if i in free_indices(r))
            self.temps += 1
            name = f"_r{self.temps}"
            self.pre.append((name, self.array(r, free)))
            return sp.IndexedBase(name)[free]

        body = e.function.replace(
            lambda x: isinstance(x, (ArgMax, Maximum, sp.Sum)) and free_indices(x) & ks,
            computed_first)
        subs, limits, masks = {}, [], []
        for k, lo, hi in e.limits:
            if k not in ks:
                limits.append((k, lo, hi))      # its bounds may read an offset index:
                continue                        # substituted below
            first, count = spans[k]
            self.temps += 1
            length = sp.Symbol(f"_L{self.temps}", integer=True, positive=True)
            self.pre.append((length.name, self.integer_code(count)))
            t = sp.Idx(f"_t{self.temps}", length)
            subs[k] = first + t
            masks.append(between(first + t, lo, hi))
            limits.append((t, sp.Integer(0), length - 1))
        limits = [(k, lo.xreplace(subs), hi.xreplace(subs)) for k, lo, hi in limits]
        return sp.Sum(body.xreplace(subs) * sp.Mul(*masks), *limits)

    def _scatter_add(self, scatter, ks, outer):
        """sum_n [v == g(n)] f(n, ...) for every v: f's rows added at rows g(n) of zeros
        (np.add.at), O(N) work and memory where the einsum with a one-hot [v == g(n)]
        matrix was O(V N) (an embedding's gradient: V = 50,000 rows)."""
        v, g, rest = scatter
        others = [i for i in outer if i != v]
        # Summed indices that g does not read are contracted first (einsum), so the
        # values added are as small as the table: conv-by-table's sum over o.
        # (g's own indices in the order the table stores them: idx[p, k] read as it lies,
        # whatever order the sum lists p and k in)
        ks_g = [k for k in ks if k in free_indices(g)]
        if isinstance(g, sp.Indexed):
            slot = lambda k: next(j for j, s in enumerate(g.indices) if k in free_indices(s))
            ks_g.sort(key=slot)
        free = [k for k in ks if k not in ks_g]
        if free:
            rest = sp.Sum(rest, *[(k, k.lower, k.upper) for k in free])
        index = self.array(g, tuple(ks_g))
        values = self.array(rest, tuple(ks_g + others))
        size = str(v.upper + 1)
        self.dims_used.add(size)
        self.helpers_used.add("_scatter_add")
        code = f"_scatter_add({size}, {index}, {values}, dtype)"
        if outer.index(v):                       # the v axis goes where ctx has it
            code = f"np.moveaxis({code}, 0, {outer.index(v)})"
        return code

    def _max(self, e, ctx):
        body, ks = e.args[0], tuple(e.bound_indices)
        outer = [i for i in ctx if i in free_indices(body) - set(ks)]
        axes = "-1" if len(ks) == 1 else str(tuple(range(-len(ks), 0)))
        code = f"{_atom(self.array(body, tuple(outer) + ks))}.max(axis={axes})"
        return _expand(code, outer, ctx)


    def _argmax(self, e, ctx):
        body, ks = e.args[0], list(e.bound_indices)
        outer = [i for i in ctx if i in free_indices(body) - set(ks)]
        sizes = [str(k.upper + 1) for k in ks]
        self.dims_used |= set(sizes)
        self.helpers_used.add("_first_argmax")
        code = f"_first_argmax({self.array(body, tuple(outer + ks))}, ({', '.join(sizes)},))"
        return _expand(code, outer, ctx)


def _window_span(lo, hi):
    """(first, count) of a bounded index's window: lo and hi without their clamps to the
    index's range (max(0, .), min(Hout - 1, .)), and the most values between them, free
    of the output indices: floor(U - V) + 1 for ceiling(V)..floor(U).  None otherwise."""
    def moving(e, clamp):
        if isinstance(e, clamp):
            parts = [a for a in e.args if free_indices(a)]
            return parts[0] if len(parts) == 1 else None
        return e

    first, last = moving(lo, sp.Max), moving(hi, sp.Min)
    if first is None or last is None:
        return None
    if isinstance(first, sp.ceiling) and isinstance(last, sp.floor):
        count = sp.floor(sp.simplify(last.args[0] - first.args[0])) + 1
    else:
        count = sp.simplify(last - first) + 1
    return None if free_indices(count) else (first, count)


def _mask(condition: str, e) -> str:
    """A 0/1 array of the condition; a number where it reads no index (a scan's step,
    [t == 0], is a Python int, whose comparisons are bools without astype)."""
    if not free_indices(e):
        return f"np.asarray({condition}, dtype)"
    return f"({condition}).astype(dtype)"


def _atom(code: str) -> str:
    """code, parenthesized unless it is already one operand (a name, call or subscript)."""
    depth = 0
    for pos, ch in enumerate(code):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and (ch in "+*/ %<>=" or (ch == "-" and pos == 0)):
            return f"({code})"
        elif depth == 0 and ch == "-":
            return f"({code})"
    return code


def _expand(code, have, ctx):
    """Insert size-1 axes so an array over `have` lines up with `ctx`."""
    if list(have) == list(ctx):
        return code
    slices = ", ".join(":" if i in have else "None" for i in ctx)
    return f"{_atom(code)}[{slices}]"


def _letters(indices):
    """einsum letters: an index's own name when it is one free letter, else the next free."""
    out, used = {}, set()
    for i in indices:
        name = i.label.name
        if len(name) == 1 and name in string.ascii_letters and name not in used:
            out[i] = name
            used.add(name)
    spare = (c for c in string.ascii_letters if c not in used)
    for i in indices:
        if i not in out:
            out[i] = next(spare)
    return out


def _has_array(expr) -> bool:
    return bool(expr.atoms(sp.Indexed)) or any(
        isinstance(s, sp.Symbol) for s in expr.free_symbols)


def _is_product(term, summed) -> bool:
    """term multiplies two or more factors that read a summed index (a matrix product)."""
    return sum(1 for f in sp.Mul.make_args(term) if free_indices(f) & set(summed)) >= 2
