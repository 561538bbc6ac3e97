"""Training a network with its own generated kernels: the network's fused forward_backward
gives the loss and every parameter's gradient, and the optimizer is a step layer of the
toolkit (`adam` or `sgd`), its kernel run over all parameters at once.

The network is any layer that ends in a loss and has one input x[N, D] (the features) and
one target: one-hot rows t[N, C] or labels t[N] in C.  Parameters live in one flat buffer
(each parameter a view of it), so one optimizer call updates them all; with the C backend
the gradients are written straight into their slots of a flat gradient buffer and the step
updates parameters and moments in place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .datasets import DataError, Split, check_labels

OPTIMIZERS = {"sgd": dict(weight_decay=0.0), "adam": dict(beta1=0.9, beta2=0.999, eps=1e-8)}


@dataclass(frozen=True)
class Roles:
    """Which tensors of a network training reads and writes."""
    x: str                 # the input: features
    t: str                 # the target: one-hot rows, or labels
    labels: bool           # t[N] in C (integers) rather than one-hot t[N, C]
    loss: str
    prediction: str        # the last value of shape (N, C): scores whose argmax is the class
    batch: str             # dimension N
    features: str          # dimension D
    classes: str           # dimension C
    params: tuple[str, ...]


def roles(layer) -> Roles:
    """The training roles of a layer's tensors, or a one-line ValueError saying what the
    layer lacks."""
    where = f"cannot train {layer.name}"
    if layer.loss is None:
        raise ValueError(f"{where}: it has no loss (declare one with 'loss L')")
    inputs = [t for t in layer.inputs if not t.nograd]
    if len(inputs) != 1 or len(inputs[0].dims) != 2:
        raise ValueError(f"{where}: training needs exactly one input x[N, D] (the features); "
                         f"it has {', '.join(t.name for t in inputs) or 'none'}")
    x = inputs[0]
    if len(layer.targets) != 1:
        raise ValueError(f"{where}: training needs exactly one target (one-hot t[N, C] or "
                         f"labels t[N] in C); it has "
                         f"{', '.join(t.name for t in layer.targets) or 'none'}")
    t = layer.targets[0]
    labels = t.values is not None
    if labels and t.dims == (x.dims[0],):
        classes = t.values
    elif not labels and len(t.dims) == 2 and t.dims[0] == x.dims[0]:
        classes = t.dims[1]
    else:
        raise ValueError(f"{where}: its target {t.name}{list(t.dims)} is neither one-hot "
                         f"rows [{x.dims[0]}, C] nor labels [{x.dims[0]}] in C")
    scores = [eq.target for eq in layer.equations
              if layer.tensors[eq.target].dims == (x.dims[0], classes)]
    if not scores:
        raise ValueError(f"{where}: no value of shape [{x.dims[0]}, {classes}] to read the "
                         f"predicted class from")
    return Roles(x.name, t.name, labels, layer.loss, scores[-1], x.dims[0], x.dims[1],
                 classes, tuple(p.name for p in layer.params))


def sizes_for(layer, r: Roles, data: Split, given: dict, init: dict | None) -> dict:
    """Every dimension's size but the batch: features and classes from the data, the others
    from `given` (--size H=64) or from the shapes of loaded parameters."""
    sizes = {r.features: data.features, r.classes: data.classes}
    for name, value in (init or {}).items():
        for dim, n in zip(layer.tensors[name].dims, np.shape(value)):
            if sizes.setdefault(dim, n) != n:
                what = ("the data's features" if dim == r.features else "the data's classes"
                        if dim == r.classes else f"{dim} of another parameter")
                raise DataError(f"loaded {name} has {dim} = {n}, but {what} give "
                                f"{dim} = {sizes[dim]}")
    for dim, n in given.items():
        if dim not in layer.dims:
            raise ValueError(f"--size {dim}: {layer.name} has no dimension {dim}; its "
                             f"dimensions: {', '.join(layer.dims)}")
        if dim in (r.batch, r.features, r.classes):
            raise ValueError(f"--size {dim}: {dim} is set by the data (batch, features or "
                             f"classes)")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"--size {dim}: expected a positive integer, got {n}")
        if sizes.setdefault(dim, n) != n:
            raise ValueError(f"--size {dim}={n}, but the loaded parameters have {dim} = "
                             f"{sizes[dim]}")
    missing = [d for d in layer.dims if d not in sizes and d != r.batch
               and d not in layer.dim_defs]
    if missing:
        raise ValueError(f"{layer.name}: give the size of {', '.join(missing)} (e.g. --size "
                         f"{missing[0]}=64)")
    return sizes


def init_params(layer, r: Roles, sizes: dict, seed: int) -> dict:
    """As PyTorch initialises nn.Linear: a weight W[out, in...] uniform in +-1/sqrt(fan_in)
    with fan_in the product of its later dimensions; a vector beside a weight whose first
    dimension it shares (a bias) with that weight's bound; any other vector ones (a scale)."""
    rng = np.random.default_rng([seed, 0])
    shapes = {p: tuple(sizes[d] for d in layer.tensors[p].dims) for p in r.params}
    bound = {}
    for p in r.params:
        dims = layer.tensors[p].dims
        if len(dims) >= 2:
            bound[p] = 1 / np.sqrt(np.prod(shapes[p][1:]))
    out = {}
    for p in r.params:
        dims = layer.tensors[p].dims
        if p not in bound and len(dims) == 1:
            section = layer.section_of(p)
            partner = next((w for w in bound if layer.tensors[w].dims[0] == dims[0]
                            and layer.section_of(w) == section), None)
            if partner is not None:
                bound[p] = bound[partner]
        out[p] = (rng.uniform(-bound[p], bound[p], shapes[p]) if p in bound
                  else np.ones(shapes[p]))
    return out


def batch_order(examples: int, batch: int, epochs: int, seed: int):
    """The examples of each step, epoch after epoch: a fresh shuffle per epoch, the last
    batch of an epoch smaller when `batch` does not divide the examples."""
    rng = np.random.default_rng([seed, 1])
    for _ in range(epochs):
        order = rng.permutation(examples)
        yield [order[s:s + batch] for s in range(0, examples, batch)]


@dataclass
class History:
    step_loss: list = field(default_factory=list)       # training loss of every step
    epochs: list = field(default_factory=list)          # one dict per epoch


class Trainer:
    """A network's kernels, its optimizer's kernel and the parameters in one flat buffer."""

    def __init__(self, layer, optimizer: str = "adam", lr: float = 1e-3,
                 backend: str = "c", dtype: str = "float32"):
        from .loader import load

        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{optimizer}'; available: "
                             f"{', '.join(OPTIMIZERS)}")
        if not lr > 0:
            raise ValueError(f"--lr must be positive, got {lr}")
        self.layer, self.roles = layer, roles(layer)
        self.backend, self.dtype = backend, np.dtype(dtype)
        c = dict(backend="c", dtype=dtype) if backend == "c" else {}
        self.net = load(layer, **c)
        self.opt = load(optimizer, **c)
        self.optimizer = optimizer
        self.hyper = dict(lr=lr, **OPTIMIZERS[optimizer])
        self.steps = 0

    def start(self, params: dict) -> None:
        """Take these parameters (copied into the flat buffer), optimizer state zero."""
        r = self.roles
        sizes = [np.size(params[p]) for p in r.params]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.flat = np.empty(offsets[-1], self.dtype)
        self.grad = np.zeros_like(self.flat)
        self.params, self.grads = {}, {}
        for p, a, b in zip(r.params, offsets[:-1], offsets[1:]):
            shape = np.shape(params[p])
            self.params[p] = self.flat[a:b].reshape(shape)
            self.params[p][...] = params[p]
            self.grads["d" + p] = self.grad[a:b].reshape(shape)
        self.state = {k: np.zeros_like(self.flat) for k in ("m", "v")} \
            if self.optimizer == "adam" else {}
        self.steps = 0

    def targets(self, y: np.ndarray, classes: int) -> np.ndarray:
        if self.roles.labels:
            return y.astype(np.int64)
        return np.eye(classes, dtype=self.dtype)[y]

    def step(self, x: np.ndarray, t: np.ndarray) -> float:
        """One forward-backward pass over a batch and one optimizer step; the loss."""
        r = self.roles
        arrays = {r.x: x, r.t: t, **self.params}
        if self.backend == "c":
            out = self.net.forward_backward(out=self.grads, **arrays)
        else:
            out = self.net.forward_backward(**arrays)
            for name, g in self.grads.items():
                g[...] = out[name]
        self.steps += 1
        self._update()
        return float(out[r.loss])

    def _update(self):
        scalars = {k: self.dtype.type(v) for k, v in self.hyper.items()}
        if self.optimizer == "adam":
            scalars["step"] = self.dtype.type(self.steps)
        arrays = dict(p=self.flat, g=self.grad, **self.state, **scalars)
        if self.backend == "c":          # in place: the step layer is elementwise
            self.opt.forward(out=dict(p_next=self.flat, **{f"{k}_next": a for k, a in
                                                            self.state.items()}), **arrays)
            return
        out = self.opt.forward(**arrays)
        self.flat[...] = out["p_next"]
        for k, a in self.state.items():
            a[...] = out[f"{k}_next"]

    def evaluate(self, x: np.ndarray, y: np.ndarray, classes: int) -> tuple[float, float]:
        """(mean loss, accuracy) over a whole set."""
        r = self.roles
        out = self.net.forward(**{r.x: np.ascontiguousarray(x, self.dtype),
                                  r.t: self.targets(y, classes), **self.params})
        predicted = np.argmax(out[r.prediction], axis=1)
        return float(out[r.loss]), float(np.mean(predicted == y))


def train(layer, data: Split, optimizer="adam", epochs=10, batch=32, lr=1e-3, seed=0,
          backend="c", dtype="float32", sizes=None, init=None, progress=False):
    """Train `layer` on `data`; returns (Trainer with the final parameters, History).
    `init`: parameters to start from (else initialised as PyTorch would, from `seed`)."""
    if epochs < 0 or batch < 1:
        raise ValueError(f"--epochs must be at least 0 and --batch at least 1 (got "
                         f"{epochs} and {batch})")
    r = roles(layer)                  # every check before the kernels are built
    init = _checked_init(layer, r, init)
    dims = sizes_for(layer, r, data, dict(sizes or {}), init)
    check_labels(data, dims[r.classes])
    trainer = Trainer(layer, optimizer, lr, backend, dtype)
    trainer.start(init if init is not None else init_params(layer, r, dims, seed))
    x = np.ascontiguousarray(data.x_train, trainer.dtype)
    t = trainer.targets(data.y_train, dims[r.classes])
    history = History()
    bar = _progress(epochs * -(-len(x) // batch), progress)
    for epoch, batches in enumerate(batch_order(len(x), batch, epochs, seed), start=1):
        start, total = time.perf_counter(), 0.0
        for idx in batches:
            loss = trainer.step(x[idx], t[idx])
            if not np.isfinite(loss):
                raise ValueError(f"the loss became {loss} at step {trainer.steps}; "
                                         f"try a smaller --lr")
            history.step_loss.append(loss)
            total += loss * len(idx)
            bar.update(1)
            if trainer.steps % 10 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", refresh=False)
        seconds = time.perf_counter() - start
        test_loss, test_acc = trainer.evaluate(data.x_test, data.y_test, dims[r.classes])
        history.epochs.append(dict(epoch=epoch, train_loss=total / len(x),
                                   test_loss=test_loss, test_accuracy=test_acc,
                                   seconds=seconds))
    bar.close()
    return trainer, history


def _checked_init(layer, r: Roles, init):
    if init is None:
        return None
    missing = [p for p in r.params if p not in init]
    extra = [k for k in init if k not in r.params]
    if missing or extra:
        raise DataError(f"the loaded parameters do not fit {layer.name}: "
                        + "; ".join(filter(None, [
                            missing and f"missing {', '.join(missing)}",
                            extra and f"unknown {', '.join(extra)}"])))
    for p in r.params:
        a = np.asarray(init[p])
        if a.ndim != len(layer.tensors[p].dims) or not np.all(np.isfinite(a)):
            raise DataError(f"loaded {p}: expected {len(layer.tensors[p].dims)} axes of "
                            f"finite numbers, got shape {a.shape}"
                            f"{'' if np.all(np.isfinite(a)) else ' with NaN or infinity'}")
    return init


def _progress(total: int, show: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        raise RuntimeError("the progress bar needs tqdm: pip install "
                           "'backprop-toolkit[train]'") from None
    return tqdm(total=total, unit="step", disable=not show or total == 0, leave=False)
