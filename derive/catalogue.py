"""Textbook claims with their sources and the verdict each should get here.

Nielsen's BP1-BP4 are written for one training example with column vectors; in this
toolkit a batch of N examples is the loss averaged over rows, so the per-example forms
hold at batch size 1 and the matrix forms hold with examples as columns.  Claims about
layers the toolkit does not build in (batch norm, attention) are checked against the spec
files in derive/catalogue_layers/.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

NIELSEN = "Nielsen, Neural Networks and Deep Learning, ch. 2"
CS231N = "CS231n notes, Backpropagation, Intuitions"
GOODFELLOW = "Goodfellow, Bengio and Courville, Deep Learning, sec. 6.5"
IOFFE = "Ioffe and Szegedy 2015, Batch Normalization, sec. 3 (backward pass)"
ATTENTION = "scaled dot-product attention (Vaswani et al. 2017), its backward pass"
CONV = "a 2-D convolution's backward pass (Goodfellow et al., sec. 9.5; CS231n, Convolutional Networks)"


@dataclass(frozen=True)
class Entry:
    name: str
    model: str
    claim: str
    source: str
    verdict: str
    conditions: tuple = ()
    note: str = ""
    mapping: dict | None = None           # --map SYMBOL=TENSOR, where names differ


def catalogue_layer(model: str):
    """The Layer an entry is about: a built-in, or a spec of derive/catalogue_layers/."""
    from .builtins import BUILTINS, builtin
    from .parser import parse_spec

    # the catalogue's own spec first: its claims were written against it (its batchnorm
    # and attention are the textbooks' 2-D forms, not the built-ins of those names)
    text = resources.files("derive.catalogue_layers").joinpath(f"{model}.bp")
    if text.is_file():
        return parse_spec(text.read_text("utf-8"), f"<catalogue {model}>")
    if model in BUILTINS:
        return builtin(model)
    raise KeyError(model)


CATALOGUE = (
    Entry("BP1", "sigmoid", r"\delta = \nabla_a C \odot \sigma'(z)", f"{NIELSEN}, (BP1)",
          "HOLDS", note="output-layer error: gradient of the cost times sigma'(z)"),
    Entry("BP2", "mlp2", r"\delta^{(1)} = ((W^{(2)})^T \delta^{(2)}) \odot \sigma'(z^{(1)})",
          f"{NIELSEN}, (BP2)", "HOLDS", note="the delta recursion, examples as columns"),
    Entry("BP3", "mlp2", r"\frac{\partial C}{\partial b^{(2)}_j} = \delta^{(2)}_j",
          f"{NIELSEN}, (BP3)", "CONDITIONAL", ("batch size 1",),
          note="per example; over a batch the bias gradient sums the deltas"),
    Entry("BP3-batch", "mlp2", r"\frac{\partial L}{\partial b^{(2)}} = \sum_n \delta^{(2)}_n",
          f"{NIELSEN}, (BP3) summed over the batch", "HOLDS"),
    Entry("BP4", "mlp2", r"\frac{\partial C}{\partial W^{(2)}_{jk}} = a^{(1)}_k \delta^{(2)}_j",
          f"{NIELSEN}, (BP4)", "CONDITIONAL", ("batch size 1",)),
    Entry("BP4-matrix", "mlp2", r"\frac{\partial L}{\partial W^{(2)}} = \delta^{(2)} (a^{(1)})^T",
          f"{NIELSEN}, (BP4) in matrix form", "HOLDS",
          note="an outer product per example, summed over the batch (examples as columns)"),
    Entry("softmax-CE", "softmax_cross_entropy", r"\frac{\partial L}{\partial z} = \frac{y - t}{N}",
          "softmax + cross-entropy output delta, as commonly stated", "CONDITIONAL",
          ("sum(t[n, i], i) = 1",), note="needs target rows that sum to 1 (one-hot)"),
    Entry("sigmoid-BCE", "sigmoid_bce", r"\frac{\partial L}{\partial z} = \frac{y - t}{N}",
          "sigmoid + binary cross-entropy output delta", "HOLDS"),
    Entry("MSE-linear", "mse", r"\frac{\partial L}{\partial y} = \frac{1}{N} (y - t)",
          "mean squared error (with the 1/2) and a linear output", "HOLDS"),
    Entry("dense-W", "dense", r"\frac{\partial L}{\partial W} = \delta^T x",
          "dense layer weight gradient (rows are examples)", "HOLDS"),
    Entry("dense-x", "dense", r"\frac{\partial L}{\partial x} = \delta W",
          "dense layer input gradient (rows are examples)", "HOLDS"),
    Entry("dense-W-batch-mean", "mlp2",
          r"\frac{\partial L}{\partial W^{(2)}} = \frac{1}{N} (y - t)^T a^{(1)}",
          "output-layer weight gradient with batch averaging", "CONDITIONAL",
          ("sum(t[n, c], c) = 1",)),
    Entry("dense-b-batch-mean", "mlp2",
          r"\frac{\partial L}{\partial b^{(2)}} = \frac{1}{N} \sum_n (y_n - t_n)",
          "output-layer bias gradient with batch averaging", "CONDITIONAL",
          ("sum(t[n, c], c) = 1",)),
    Entry("tanh", "tanh", r"\frac{\partial L}{\partial z} = \frac{\partial L}{\partial a} \odot (1 - a^2)",
          "tanh'(z) = 1 - tanh(z)^2", "HOLDS"),
    Entry("ReLU", "relu", r"\frac{\partial L}{\partial z} = \frac{\partial L}{\partial a} \odot \operatorname{ReLU}'(z)",
          "ReLU'(z) = 1 for z > 0, else 0", "HOLDS"),
    # false, or only conditionally true, as commonly written
    Entry("neuron-delta", "neuron", r"\frac{\partial L}{\partial z} = \hat{y} - y",
          "the worked example's delta, written without its target factor", "CONDITIONAL",
          ("y = 1",), note="dL/dz = y (yhat - 1): equal to yhat - y only when y = 1"),
    Entry("softmax-CE-no-mean", "softmax_cross_entropy", r"\frac{\partial L}{\partial z} = y - t",
          "softmax + cross-entropy delta without the batch mean", "CONDITIONAL",
          ("batch size 1", "sum(t[n, i], i) = 1")),
    Entry("MSE-no-mean", "mse", r"\frac{\partial L}{\partial y} = y - t",
          "MSE gradient without the 1/N of the batch mean", "CONDITIONAL", ("batch size 1",)),
    Entry("dense-W-no-transpose", "dense", r"\frac{\partial L}{\partial W} = \delta x",
          "dense weight gradient with the transpose forgotten", "ILL-FORMED"),
    Entry("sigmoid-wrong-sign", "sigmoid", r"\delta = \nabla_a C \odot a \odot (1 + a)",
          "sigma'(z) written as sigma(1 + sigma)", "FALSE"),
    Entry("tanh-wrong", "tanh", r"\frac{\partial L}{\partial z} = \frac{\partial L}{\partial a} \odot (1 - a)",
          "tanh' confused with the sigmoid's form", "FALSE"),
    Entry("softmax-diagonal", "softmax", r"\frac{\partial L}{\partial z} = \bar{y} \odot y",
          "softmax backward with the Jacobian's off-diagonal part dropped", "FALSE"),
    # Nielsen's statements for every layer l, and the misreadings
    Entry("BP1-L", "sigmoid", r"\delta^L = \nabla_a C \odot \sigma'(z^L)", f"{NIELSEN}, (BP1)",
          "HOLDS", note="L, the last layer, is the sigmoid layer's only one"),
    Entry("BP2-l", "mlp2", r"\delta^l = ((w^{l+1})^T \delta^{l+1}) \odot \sigma'(z^l)",
          f"{NIELSEN}, (BP2)", "HOLDS", note="checked for l = 1; l = 2 has no w^3"),
    Entry("BP3-l", "mlp2", r"\frac{\partial C}{\partial b^l_j} = \delta^l_j",
          f"{NIELSEN}, (BP3)", "CONDITIONAL", ("batch size 1",),
          note="for every layer l = 1, 2"),
    Entry("BP4-l", "mlp2", r"\frac{\partial C}{\partial w^l_{jk}} = a^{l-1}_k \delta^l_j",
          f"{NIELSEN}, (BP4)", "CONDITIONAL", ("batch size 1",),
          note="a^0 is the input x"),
    Entry("BP2-swapped", "mlp2", r"\delta^{(1)} = \sigma'(z^{(1)}) \odot (W^{(2)})^T \delta^{(2)}",
          f"{NIELSEN}, (BP2) with the factors swapped", "HOLDS",
          note="the matrix product binds tighter than the elementwise one"),
    Entry("sigmoid-juxtaposed", "sigmoid",
          r"\frac{\partial L}{\partial z} = \bar{a} \odot \sigma(z)(1 - \sigma(z))",
          f"{NIELSEN}, ch. 1: sigma'(z) = sigma(z)(1 - sigma(z))", "HOLDS",
          note="juxtaposition read as the elementwise product, the one whose shapes match"),
    Entry("softmax-jacobian-product", "softmax",
          r"\frac{\partial L}{\partial z_j} = \sum_i \frac{\partial L}{\partial y_i} y_i "
          r"(\delta_{ij} - y_j)", "softmax backward through its Jacobian", "HOLDS",
          note="delta_ij is the Kronecker delta"),
    Entry("softmax-jacobian", "softmax",
          r"\frac{\partial y_i}{\partial z_j} = y_i (\delta_{ij} - y_j)",
          "softmax Jacobian, as commonly stated", "HOLDS"),
    Entry("softmax-jacobian-wrong", "softmax",
          r"\frac{\partial y_i}{\partial z_j} = y_i (1 - y_j)",
          "softmax Jacobian with the sigmoid's form", "FALSE"),
    Entry("sigmoid-jacobian", "sigmoid", r"\frac{\partial a_i}{\partial z_i} = a_i (1 - a_i)",
          "the sigmoid's local derivative (the Jacobian's diagonal)", "HOLDS"),
    # CS231n
    Entry("CS231n-sigmoid-gate", "sigmoid",
          r"\frac{\partial L}{\partial z} = (1 - a) \odot a \odot \frac{\partial L}{\partial a}",
          f"{CS231N}: the sigmoid gate, (1 - sigma(x)) sigma(x) times the upstream gradient",
          "HOLDS"),
    Entry("CS231n-dW", "dense", r"\frac{\partial L}{\partial W^T} = x^T \delta",
          f"{CS231N}: dW = X^T dscores, where CS231n's W is our W^T", "HOLDS"),
    Entry("CS231n-db", "dense", r"\frac{\partial L}{\partial b} = \delta^T \mathbf{1}",
          f"{CS231N}: db = the upstream gradient summed over the batch", "HOLDS"),
    Entry("CS231n-dx", "dense", r"\frac{\partial L}{\partial x} = \delta \cdot W",
          f"{CS231N}: dX = dscores W (our W)", "HOLDS"),
    Entry("CS231n-relu", "relu",
          r"\frac{\partial L}{\partial z} = \bar{a} \odot \mathbb{1}[z > 0]",
          f"{CS231N}: the max gate routes the gradient where the input was positive", "HOLDS"),
    Entry("relu-at-zero", "relu", r"\frac{\partial L}{\partial z} = \bar{a} \odot [z \geq 0]",
          "ReLU' taken as 1 at z = 0", "CONDITIONAL", ("z != 0",),
          note="PyTorch's convention (and the toolkit's) is ReLU'(0) = 0"),
    Entry("relu-ratio", "relu",
          r"\frac{\partial L}{\partial z} = \bar{a} \odot \operatorname{ReLU}(z) / z",
          "ReLU' written as ReLU(z) / z", "CONDITIONAL", ("z != 0",),
          note="0/0 at the kink"),
    Entry("relu-max-ratio", "relu", r"\frac{\partial L}{\partial z} = \bar{a} \odot "
          r"\frac{\max(0, z)}{z}", "ReLU' written as max(0, z) / z", "CONDITIONAL",
          ("z != 0",)),
    Entry("relu-sign", "relu", r"\frac{\partial L}{\partial z} = \bar{a} \odot "
          r"\frac{1 + \operatorname{sign}(z)}{2}", "ReLU' written with the sign function",
          "CONDITIONAL", ("z != 0",), note="sign(0) = 0 gives 1/2 at the kink"),
    Entry("CS231n-tanh", "tanh",
          r"\frac{\partial L}{\partial z} = \bar{a} \odot (1 - \tanh^2(z))",
          f"{CS231N}: tanh'(z) = 1 - tanh^2(z)", "HOLDS"),
    Entry("gelu-exact", "gelu",
          r"\frac{\partial L}{\partial z} = \bar{a} \odot (\Phi(z) + z \phi(z))",
          "GELU's exact derivative (Hendrycks and Gimpel 2016) against the tanh form", "FALSE",
          note="the built-in gelu is the tanh approximation: close, not equal"),
    # Goodfellow, Algorithm 6.4
    Entry("Goodfellow-b", "mlp2", r"\nabla_{b^{(2)}} J = \sum_n \delta^{(2)}_n",
          f"{GOODFELLOW}, Algorithm 6.4: the bias gradient is g", "HOLDS"),
    Entry("Goodfellow-W", "mlp2", r"\nabla_{W^{(2)}} J = \delta^{(2)} (a^{(1)})^T",
          f"{GOODFELLOW}, Algorithm 6.4: g h^(k-1)T", "HOLDS"),
    Entry("Goodfellow-h", "mlp2", r"\nabla_{a^{(1)}} J = (W^{(2)})^T \delta^{(2)}",
          f"{GOODFELLOW}, Algorithm 6.4: g <- W^(k)T g", "HOLDS"),
    Entry("Goodfellow-a", "mlp2",
          r"\nabla_{z^{(1)}} J = \nabla_{a^{(1)}} J \odot \sigma'(z^{(1)})",
          f"{GOODFELLOW}, Algorithm 6.4: g <- g (.) f'(a^(k))", "HOLDS"),
    # batch norm, as in the paper (one feature; the batch is M, the variance v)
    Entry("BN-dxhat", "batchnorm", r"\frac{\partial L}{\partial \hat{x}_i} = "
          r"\frac{\partial L}{\partial y_i} \gamma", IOFFE, "HOLDS"),
    Entry("BN-dvar", "batchnorm", r"\frac{\partial L}{\partial v} = \sum_i "
          r"\frac{\partial L}{\partial \hat{x}_i} (x_i - \mu) \frac{-1}{2} (v + \epsilon)^{-3/2}",
          IOFFE, "HOLDS"),
    Entry("BN-dmu", "batchnorm", r"\frac{\partial L}{\partial \mu} = \left(\sum_i "
          r"\frac{\partial L}{\partial \hat{x}_i} \frac{-1}{\sqrt{v + \epsilon}}\right) + "
          r"\frac{\partial L}{\partial v} \frac{\sum_i -2 (x_i - \mu)}{M}", IOFFE, "HOLDS",
          note="the second term is zero: sum_i (x_i - mu) = 0, proven inside the claim"),
    Entry("BN-dx", "batchnorm", r"\frac{\partial L}{\partial x_i} = "
          r"\frac{\partial L}{\partial \hat{x}_i} \frac{1}{\sqrt{v + \epsilon}} + "
          r"\frac{\partial L}{\partial v} \frac{2 (x_i - \mu)}{M} + "
          r"\frac{\partial L}{\partial \mu} \frac{1}{M}", IOFFE, "HOLDS"),
    Entry("BN-dx-compact", "batchnorm", r"\frac{\partial L}{\partial x_i} = "
          r"\frac{\gamma}{M \sqrt{v + \epsilon}} (M \bar{y}_i - \sum_j \bar{y}_j - "
          r"\hat{x}_i \sum_j \bar{y}_j \hat{x}_j)",
          "batch norm's input gradient in one line, as usually simplified", "HOLDS"),
    Entry("BN-dgamma", "batchnorm", r"\frac{\partial L}{\partial \gamma} = \sum_i "
          r"\frac{\partial L}{\partial y_i} \hat{x}_i", IOFFE, "HOLDS"),
    Entry("BN-dbeta", "batchnorm", r"\frac{\partial L}{\partial \beta} = \sum_i "
          r"\frac{\partial L}{\partial y_i}", IOFFE, "HOLDS"),
    Entry("BN-dx-no-stats", "batchnorm", r"\frac{\partial L}{\partial x_i} = "
          r"\frac{\partial L}{\partial \hat{x}_i} \frac{1}{\sqrt{v + \epsilon}}",
          "batch norm's input gradient as if mu and v did not depend on x", "FALSE"),
    # attention, one head
    Entry("attention-dV", "attention", r"\frac{\partial L}{\partial V} = P^T "
          r"\frac{\partial L}{\partial O}", ATTENTION, "HOLDS"),
    Entry("attention-dP", "attention", r"\frac{\partial L}{\partial P} = "
          r"\frac{\partial L}{\partial O} V^T", ATTENTION, "HOLDS"),
    Entry("attention-dS", "attention", r"\frac{\partial L}{\partial S_{ij}} = P_{ij} "
          r"(\bar{P}_{ij} - \sum_k P_{ik} \bar{P}_{ik})", ATTENTION, "HOLDS",
          note="the softmax backward, row by row"),
    Entry("attention-dQ", "attention", r"\frac{\partial L}{\partial Q} = \frac{1}{\sqrt{d_k}} "
          r"\frac{\partial L}{\partial S} K", ATTENTION, "HOLDS", mapping={"d_k": "D"},
          note="the key size d_k is the spec's dimension D"),
    Entry("attention-dK", "attention", r"\frac{\partial L}{\partial K} = \frac{1}{\sqrt{D}} "
          r"\left(\frac{\partial L}{\partial S}\right)^T Q", ATTENTION, "HOLDS"),
    Entry("attention-dQ-unscaled", "attention", r"\frac{\partial L}{\partial Q} = "
          r"\frac{\partial L}{\partial S} K", "attention's dQ without the 1/sqrt(d_k) scale",
          "FALSE"),
    Entry("attention-dS-diagonal", "attention", r"\frac{\partial L}{\partial S} = P \odot "
          r"\bar{P}", "attention's dS with the softmax Jacobian's off-diagonal part dropped",
          "FALSE"),
    # a single-channel 2-D convolution (cross-correlation, stride 1, valid)
    Entry("conv-dK", "conv2d_single", r"\frac{\partial L}{\partial K_{r,s}} = \sum_{i,j} "
          r"\delta_{i,j} X_{i+r, j+s}", CONV, "HOLDS",
          note="the kernel gradient is the input correlated with delta"),
    Entry("conv-dX-flipped", "conv2d_single", r"\frac{\partial L}{\partial X_{i,j}} = "
          r"\sum_{r,s} \delta_{i-r, j-s} K_{r,s}", CONV, "HOLDS",
          note="the full convolution: delta zero-padded, the kernel flipped"),
    Entry("conv-dX-unflipped", "conv2d_single", r"\frac{\partial L}{\partial X_{i,j}} = "
          r"\sum_{r,s} \delta_{i+r, j+s} K_{r,s}",
          "the input gradient with the kernel not flipped (a common slip)", "FALSE"),
    Entry("conv-db", "conv2d_single", r"\frac{\partial L}{\partial b} = \sum_{i,j} "
          r"\delta_{i,j}", CONV, "HOLDS"),
)
