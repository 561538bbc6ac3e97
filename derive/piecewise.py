"""Piecewise functions a spec may call: max, min, abs, where, and max/min over an index,
each with its derivative convention beside it.  The conventions are PyTorch's:

    max(a, b), min(a, b)   a tie splits the gradient evenly (torch.maximum, torch.minimum):
                           d max(a, b)/da = [a > b] + [a = b]/2
    abs(a)                 abs'(0) = 0 (torch.abs: the sign of a)
    where(c, a, b)         the gradient flows into the branch taken; c has none
    max(x[.., k], k)       the whole gradient goes to the FIRST maximal element in the
                           order of the reduced indices (torch.max_pool2d's argmax)
    min(x[.., k], k)       the same for the first minimal element (it is -max(-x, k))

A reduction's body keeps its reduced indices bound (`bound_indices`, which
derive.indices.free_indices honours), so contracting the deltas of its derivative
never substitutes into them.
"""
from __future__ import annotations

import sympy as sp

HALF = sp.Rational(1, 2)


def _tie_step(e):
    """[e > 0] + [e = 0]/2: the even split of a tie, as torch.maximum's backward."""
    return sp.Heaviside(e, HALF)


class maximum(sp.Function):
    """max(a, b), element by element."""
    nargs = 2

    def fdiff(self, argindex=1):
        a, b = self.args
        return _tie_step(a - b) if argindex == 1 else _tie_step(b - a)

    def _latex(self, printer):
        return r"\max\left(%s, %s\right)" % tuple(printer._print(a) for a in self.args)


class minimum(sp.Function):
    """min(a, b), element by element."""
    nargs = 2

    def fdiff(self, argindex=1):
        a, b = self.args
        return _tie_step(b - a) if argindex == 1 else _tie_step(a - b)

    def _latex(self, printer):
        return r"\min\left(%s, %s\right)" % tuple(printer._print(a) for a in self.args)


class absolute(sp.Function):
    """|a|; its derivative is sign(a), 0 at a = 0."""
    nargs = 1

    def fdiff(self, argindex=1):
        return sp.sign(self.args[0])

    @classmethod
    def eval(cls, arg):
        if arg.is_Number:
            return abs(arg)
        return None

    def _latex(self, printer):
        return r"\left|%s\right|" % printer._print(self.args[0])


def linear_position(positions, ranges) -> sp.Expr:
    """Row-major rank of a position among the reduced indices: p*KW + q for (p, q)."""
    out = sp.Integer(0)
    for at, k in zip(positions, ranges):
        out = out * (k.upper + 1) + at
    return out


class OverIndices(sp.Function):
    """f(body, k1, ..., km): a reduction of body over the indices k1..km."""

    @property
    def body(self):
        return self.args[0]

    @property
    def bound_indices(self):
        return self.args[1:]


class MaxOver(OverIndices):
    """max over the indices k1..km of body: MaxOver(body, k1, ..., km)."""

    def _eval_derivative(self, s):
        from .indices import fresh

        ks = self.bound_indices
        at = [fresh(k) for k in ks]
        d = sp.diff(self.body.xreplace(dict(zip(ks, at))), s)
        if d == 0:
            return sp.Integer(0)
        # fresh bound indices for the indicator too: contraction substitutes into `at`
        inner = [fresh(k) for k in ks]
        pick = FirstMax(self.body.xreplace(dict(zip(ks, inner))), *inner, *at)
        return sp.Sum(pick * d, *[(a, 0, a.upper) for a in at])

    def _latex(self, printer):
        ks = ",".join(printer._print(k) for k in self.bound_indices)
        return r"\max_{%s} %s" % (ks, printer.parenthesize(self.body, 1000))


class FirstMax(sp.Function):
    """[at is the first position where body is maximal over k]: FirstMax(body, k1..km,
    at1..atm), 1 or 0; the derivative of a max over an index routes through it."""

    @property
    def body(self):
        return self.args[0]

    @property
    def bound_indices(self):
        m = (len(self.args) - 1) // 2
        return self.args[1:1 + m]

    @property
    def position(self):
        m = (len(self.args) - 1) // 2
        return self.args[1 + m:]

    def _eval_derivative(self, s):
        return sp.Integer(0)

    def _latex(self, printer):
        ks = ",".join(printer._print(k) for k in self.bound_indices)
        at = ",".join(printer._print(a) for a in self.position)
        return r"\left[(%s) = \operatorname{argmax}_{%s} %s\right]" % (
            at, ks, printer.parenthesize(self.body, 1000))


class ArgMaxOver(OverIndices):
    """argmax over the indices k1..km of body: ArgMaxOver(body, k1, ..., km), the row-major
    rank (k1*K2 + k2, ...) of the first position where body is maximal, as the index
    torch.max_pool2d_with_indices saves.  A forward value a backward may read instead of
    searching again; piecewise constant, so it passes no gradient."""

    def _eval_derivative(self, s):
        return sp.Integer(0)

    def _latex(self, printer):
        ks = ",".join(printer._print(k) for k in self.bound_indices)
        return r"\operatorname{argmax}_{%s} %s" % (ks, printer.parenthesize(self.body, 1000))


def min_over(body, *ks):
    """min over k of body, written -max(-body): its gradient picks the first minimum."""
    return -MaxOver(-body, *ks)


class Iverson(sp.Function):
    """[cond]: 1 where the condition holds, else 0."""
    nargs = 1

    @classmethod
    def eval(cls, cond):
        if cond is sp.true:
            return sp.Integer(1)
        if cond is sp.false:
            return sp.Integer(0)
        return None

    def _eval_derivative(self, s):
        return sp.Integer(0)

    def _latex(self, printer):
        return r"\left[%s\right]" % printer._print(self.args[0])


class Where(sp.Function):
    """where(cond, a, b): a where cond holds, else b.  Not SymPy's Piecewise, which
    folds every factor multiplied onto it into its branches (and so hides the deltas the
    calculus contracts); the derivative is [cond] da + [not cond] db, as torch.where's."""
    nargs = 3

    @classmethod
    def eval(cls, cond, a, b):
        if cond is sp.true or a == b:
            return a
        if cond is sp.false:
            return b
        return None

    def _eval_derivative(self, s):
        cond, a, b = self.args
        return Iverson(cond) * sp.diff(a, s) + Iverson(sp.Not(cond)) * sp.diff(b, s)

    def _latex(self, printer):
        cond, a, b = (printer._print(x) for x in self.args)
        return r"\begin{cases} %s & \text{if } %s \\ %s & \text{otherwise} \end{cases}" % (
            a, cond, b)


def where(cond, a, b):
    """a where cond holds, else b."""
    return Where(cond, a, b)


# Names a spec may call that are not plain one-argument functions (parsed by derive.parser
# with their own argument rules).
SPECIAL = ("where", "max", "min", "abs", "argmax")
