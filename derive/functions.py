"""Elementary functions a spec may call, each with its derivative rule beside it.

sigmoid, relu and softplus are SymPy Functions of their own (not rewritten into exp/Max) so
that formulas stay in the vocabulary of the textbook: sigma(z) (1 - sigma(z)), not
exp(-z)/(1 + exp(-z))**2.  relu'(z) is Heaviside(z, 0): relu'(0) = 0, as in PyTorch.
"""
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p


class sigmoid(sp.Function):
    """The logistic function 1 / (1 + exp(-z))."""

    nargs = 1

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, arg):
        if arg.is_zero:
            return sp.Rational(1, 2)
        return None

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / (1 + sp.exp(-arg))

    def _latex(self, printer):
        return r"\sigma\left(%s\right)" % printer._print(self.args[0])


class relu(sp.Function):
    """max(z, 0); its derivative at 0 is taken as 0."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sp.Heaviside(self.args[0], 0)

    def _eval_rewrite_as_Max(self, arg, **kwargs):
        return sp.Max(arg, 0)

    def _latex(self, printer):
        return r"\operatorname{ReLU}\left(%s\right)" % printer._print(self.args[0])


class softplus(sp.Function):
    """log(1 + exp(z)); its derivative is sigmoid(z)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_log(self, arg, **kwargs):
        return sp.log(1 + sp.exp(arg))

    def _latex(self, printer):
        return r"\operatorname{softplus}\left(%s\right)" % printer._print(self.args[0])


class tanh(sp.tanh):
    """SymPy's tanh, with assumptions that look only at the argument's own: SymPy decides
    whether tanh(u) is real or finite through u.as_real_imag(), which for nested functions
    takes time exponential in the depth (tanh of tanh ... of x, 10 deep, took minutes)."""

    def fdiff(self, argindex=1):
        return 1 - self.func(self.args[0]) ** 2

    def _eval_is_real(self):
        return True if self.args[0].is_real else None

    def _eval_is_finite(self):
        return True if self.args[0].is_extended_real else None


# The whitelist: the only names a spec may call (besides sum), with their arity.
FUNCTIONS = {
    "exp": sp.exp,
    "log": sp.log,
    "sqrt": sp.sqrt,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "relu": relu,
    "softplus": softplus,
    "sin": sp.sin,
    "cos": sp.cos,
    "erf": sp.erf,
    "log1p": log1p,      # log(1 + x), accurate near 0
    "expm1": expm1,      # exp(x) - 1, accurate near 0
}
