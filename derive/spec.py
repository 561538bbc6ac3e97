"""The layer model every other module reads: dimensions, tensors, equations, conditions.

A Layer is built only by derive.parser (from spec text) or by derive.builder (from Python),
both of which validate it; nothing downstream mutates it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp

ROLES = ("input", "param", "target", "output", "intermediate")


def dim_symbol(name: str) -> sp.Symbol:
    """The SymPy symbol of a dimension: a positive integer."""
    return sp.Symbol(name, integer=True, positive=True)


def index(name: str, dim: str) -> sp.Idx:
    """An index running over 0 .. dim-1."""
    return sp.Idx(name, dim_symbol(dim))


@dataclass(frozen=True)
class Tensor:
    name: str
    role: str                 # one of ROLES
    dims: tuple[str, ...]     # dimension names, one per index slot
    line: int                 # where it was declared
    values: str | None = None  # integer tensors (`t[N] in I`): the dimension they index
    nograd: bool = False      # an input or parameter the backward pass does not differentiate
    outside: sp.Expr | None = None  # what a read outside the array gives (zero padding)
    initial: str | None = None  # a recurrence: the input holding the step before 0

    @property
    def base(self) -> sp.IndexedBase:
        return sp.IndexedBase(self.name)

    def ref(self, *indices):
        """T[indices] as a SymPy expression (the plain symbol for a scalar)."""
        if not self.dims:
            return sp.Symbol(self.name)
        return self.base[indices]


@dataclass(frozen=True)
class Equation:
    target: str
    indices: tuple[sp.Idx, ...]   # the left-hand side's indices, in slot order
    rhs: sp.Expr                  # sums explicit (sp.Sum over sp.Idx)
    line: int
    text: str                     # the source line, for documents and errors
    section: str = ""             # the layer of a network it comes from ('' in a layer)
    # tensors read only at earlier steps of a recurrence (h[t - 1]): done by then, so
    # they do not order the equations (derive/recurrence.py)
    earlier: frozenset = frozenset()
    written: sp.Expr | None = None   # rhs as written, where reads of earlier steps were
                                     # rewritten into guarded reads (for documents)

    @cached_property     # asked for every pair of equations in a deep network
    def reads(self) -> frozenset[str]:
        """Names of the tensors the right-hand side reads."""
        names = {b.label.name for b in self.rhs.atoms(sp.IndexedBase)}
        names |= {s.name for s in self.rhs.atoms(sp.Symbol)}
        return frozenset(names)


@dataclass(frozen=True)
class Condition:
    """sum over one slot of a tensor equals a value, e.g. one-hot rows: sum_i t[n, i] = 1."""
    tensor: str
    slot: int
    value: sp.Expr
    line: int
    text: str


@dataclass(frozen=True)
class Layer:
    name: str
    doc: str
    dims: tuple[str, ...]
    tensors: dict[str, Tensor]
    equations: tuple[Equation, ...]      # in evaluation order
    conditions: tuple[Condition, ...] = ()
    loss: str | None = None              # the scalar output the backward pass seeds with 1
    source: str = ""                     # the spec text this layer was read from
    file: str = "<spec>"
    example: dict = field(default_factory=dict)   # worked-example values and sizes
    constants: dict = field(default_factory=dict)  # name -> integer (stride, padding, ...)
    # derived dimensions: name -> expression in the other dimensions' symbols, e.g.
    # Lout -> floor((L - K)/2) + 1; sizes of these follow from the others
    dim_defs: dict = field(default_factory=dict)
    # a network's layers (`section` statements): name -> description, in order
    sections: dict = field(default_factory=dict)
    # the derived dimensions as the spec writes them, constants as symbols (documents
    # show Hout = floor((H + 2P - D(KH - 1) - 1)/S) + 1 beside its value at S = 2)
    dim_formulas: dict = field(default_factory=dict)

    def by_role(self, *roles: str) -> list[Tensor]:
        return [t for t in self.tensors.values() if t.role in roles]

    @property
    def inputs(self) -> list[Tensor]:
        return self.by_role("input")

    @property
    def params(self) -> list[Tensor]:
        return self.by_role("param")

    @property
    def targets(self) -> list[Tensor]:
        return self.by_role("target")

    @property
    def outputs(self) -> list[Tensor]:
        return self.by_role("output")

    @property
    def differentiable(self) -> list[Tensor]:
        """Tensors that get a gradient: inputs then parameters, in declaration order
        (integer index tensors and those declared `nograd` have none)."""
        return [t for t in self.by_role("input") + self.by_role("param")
                if t.values is None and not t.nograd]

    @property
    def upstream(self) -> list[Tensor]:
        """Outputs whose upstream gradient the backward pass takes (all but the loss)."""
        return [t for t in self.outputs if t.name != self.loss]

    def equation_for(self, name: str) -> Equation:
        for eq in self.equations:
            if eq.target == name:
                return eq
        raise KeyError(name)

    def dim_sizes(self, known: dict) -> dict:
        """`known` sizes plus every derived dimension computable from them."""
        sizes = dict(known)
        for name, expr in self.dim_defs.items():
            if name not in sizes:
                subs = {dim_symbol(d): sp.Integer(n) for d, n in sizes.items()}
                value = sp.sympify(expr.xreplace(subs))   # (Hout = H: a bare symbol)
                if value.is_Integer:
                    sizes[name] = int(value)
        return sizes

    def fit_sizes(self, free: dict, limit: int = 256) -> dict:
        """Sizes of the free dimensions `free`, grown one step at a time (the one that
        brings the derived sizes closest to 1, first) until every derived dimension is at
        least 1, with the derived ones added: a dilated kernel needs a larger input."""
        def shortfall(sizes):           # how far the derived sizes are below 1, in all
            full = self.dim_sizes(sizes)
            return sum(max(0, 1 - full.get(d, 0)) for d in self.dim_defs)
        sizes = dict(free)
        for _ in range(limit):
            if shortfall(sizes) == 0:
                break
            best = min(sizes, key=lambda d: shortfall({**sizes, d: sizes[d] + 1}))
            sizes[best] += 1
        return self.dim_sizes(sizes)

    def section_of(self, tensor: str) -> str:
        """The network layer a tensor's gradient belongs to: the one computing the tensor,
        else the first one reading it ('' in a plain layer)."""
        for eq in self.equations:
            if eq.target == tensor:
                return eq.section
        return next((eq.section for eq in self.equations if tensor in eq.reads), "")

    def by_section(self, items, name=lambda item: item) -> list[tuple[str, list]]:
        """items (named by `name`) grouped by network layer, the last layer first, as
        backpropagation visits them; one group ('', items) for a plain layer."""
        if not self.sections:
            return [("", list(items))]
        groups: dict[str, list] = {s: [] for s in reversed(self.sections)}
        for item in items:
            groups.setdefault(self.section_of(name(item)), []).append(item)
        return [(s, g) for s, g in groups.items() if g]

    def describe(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """name -> (role, dimension names): enough for a caller to build arrays."""
        return {t.name: (t.role, t.dims) for t in self.tensors.values()}


