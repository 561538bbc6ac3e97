"""Textbook claims with their sources and the verdict each should get here.

Nielsen's BP1-BP4 are written for one training example with column vectors; in this
toolkit a batch of N examples is the loss averaged over rows, so the per-example forms
hold at batch size 1 and the matrix forms hold with examples as columns.
"""
from __future__ import annotations

from dataclasses import dataclass

NIELSEN = "Nielsen, Neural Networks and Deep Learning, ch. 2"


@dataclass(frozen=True)
class Entry:
    name: str
    model: str
    claim: str
    source: str
    verdict: str
    conditions: tuple = ()
    note: str = ""


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
)
