"""How codegen.torch_module initialises a layer's parameters: as torch initialises the
matching torch layer, read off the spec's equations rather than kept in a table, so a
user's spec gets the same rules as a built-in.

- A weight (a parameter with an index summed in its equation, W[i, j] x[n, j]) is drawn
  from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in the product of its summed dimensions:
  nn.Linear's and nn.ConvNd's kaiming_uniform_(a=sqrt(5)) (dense: J; conv2d: C*KH*KW;
  conv2d_grouped: CG*KH*KW, as torch's groups).
- A bias (no summed index, in an equation with a weight) is drawn with that weight's bound,
  as nn.Linear's and nn.ConvNd's bias.
- Any other parameter is a scale or a shift, as nn.LayerNorm's: ones where it multiplies
  (y = xhat w + b: w), zeros where it is a term of its own (b).

Parameters are drawn in declaration order with torch's generator, so under one seed
torch_module("dense", I=5, J=3) holds nn.Linear(3, 5)'s very numbers."""
from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class Rule:
    kind: str                  # "uniform", "ones" or "zeros"
    fan_in: tuple = ()         # dimension names whose sizes multiply to fan_in (uniform)
    weight: bool = False       # the bound computed as kaiming_uniform_ does (its rounding)

    def describe(self) -> str:
        if self.kind != "uniform":
            return self.kind
        return f"U(+-1/sqrt({'*'.join(self.fan_in) or '1'}))"


def init_rules(layer) -> dict[str, Rule]:
    """Parameter name -> Rule, by the three rules above."""
    weights, rules = {}, {}
    for t in layer.params:
        for eq in _equations_reading(layer, t.name):
            summed = _summed_dims(eq, t)
            if summed:
                weights[t.name] = eq
                rules[t.name] = Rule("uniform", summed, weight=True)
                break
    for t in layer.params:
        if t.name in rules:
            continue
        for eq in _equations_reading(layer, t.name):
            weight = next((w for w, weq in weights.items() if weq is eq), None)
            if weight is not None:
                rules[t.name] = Rule("uniform", rules[weight].fan_in)
                break
        else:
            rules[t.name] = Rule("zeros" if _is_a_term(layer, t.name) else "ones")
    return rules


def initialise(parameters: dict, rules: dict[str, Rule], sizes: dict) -> None:
    """Fill each torch parameter in place (declaration order: one seed, torch's numbers)."""
    import torch

    with torch.no_grad():
        for name, p in parameters.items():
            rule = rules[name]
            if rule.kind == "ones":
                p.fill_(1)
            elif rule.kind == "zeros":
                p.zero_()
            else:
                fan_in = math.prod(sizes[d] for d in rule.fan_in)
                # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound sqrt(3) * std
                bound = math.sqrt(3.0) * (math.sqrt(2.0 / 6) / math.sqrt(fan_in)) \
                    if rule.weight else 1 / math.sqrt(fan_in)
                torch.nn.init.uniform_(p, -bound, bound)


def _equations_reading(layer, name):
    return [eq for eq in layer.equations if name in eq.reads]


def _summed_dims(eq, tensor) -> tuple:
    """The tensor's dimensions whose index the equation sums over (not on its left)."""
    lhs = set(eq.indices)
    out = []
    for ref in eq.rhs.atoms(sp.Indexed):
        if ref.base.label.name != tensor.name:
            continue
        for dim, i in zip(tensor.dims, ref.indices):
            if isinstance(i, sp.Idx) and i not in lhs and dim not in out:
                out.append(dim)
    return tuple(out)


def _is_a_term(layer, name) -> bool:
    """The parameter stands alone as a term of a sum in some equation (a shift)."""
    for eq in _equations_reading(layer, name):
        for term in sp.Add.make_args(sp.expand(eq.rhs)):
            refs = {r.base.label.name for r in term.atoms(sp.Indexed)} | \
                {s.name for s in term.free_symbols if isinstance(s, sp.Symbol)}
            if refs == {name}:
                return True
    return False
