"""Independent oracles for the kernel tests: random arrays of the right shapes, central
finite differences, and hand-written PyTorch forwards of every built-in layer (written
from the textbook definitions, not from our specs, so they share no code with us); and
require_oracle, through which every test asks for an optional oracle program or module."""
from __future__ import annotations

import importlib
import os
import shutil

import numpy as np
import pytest

# 1 and odd primes, drawn without replacement, so no axis mix-up hides behind a square
SIZES = (1, 2, 3, 5, 7, 11)

# Dimensions a normalization runs over, with the smallest size whose gradients are not
# trivially zero: over one class a softmax is the constant 1, and over one element a layer
# norm's xhat is 0; over two elements xhat is +-1 up to eps, so its gradient is O(eps)
# rounding noise.  Sizes of these dimensions are drawn from SIZES at or above the bound.
SMALLEST = {"softmax": {"I": 2}, "log_softmax": {"I": 2}, "softmax_cross_entropy": {"I": 2},
            "softmax_cross_entropy_labels": {"I": 2}, "mlp2": {"C": 2},
            "layernorm": {"C": 3}, "rmsnorm": {"C": 2}, "batchnorm": {"N": 3},
            "attention": {"T": 2}}

# Where a built-in's derivative jumps: random inputs are kept 0.05 away, so finite
# differences never straddle a jump.
KINKS = {"hardtanh": (-1.0, 1.0), "leaky_relu": (0.0,), "elu": (0.0,)}

REQUIRE_ENV = "BACKPROP_REQUIRE_ORACLES"
# The oracles a test may ask for: a Python module, or programs (the first one found).
MODULES = {"torch": "PyTorch", "jax": "JAX"}
PROGRAMS = {"latex": ("pdflatex", "lualatex"), "pdftoppm": ("pdftoppm",)}

# A layer that is not built in, written as a user would, for the backends' user-layer tests.
GATED = """layer gated  a = x (.) sigmoid(W x + b): a gated linear unit, not a built-in
dims N, I
input  x[N, I]
param  W[I, I], b[I]
intermediate g[N, I]
output a[N, I]

g[n, i] = sigmoid(W[i, j] * x[n, j] + b[i])
a[n, i] = x[n, i] * g[n, i]
"""


class OnFirstUse(dict):
    """A dict whose value for a key is made by make(key) when it is first looked up: a
    module's kernels are built as its tests ask for them, once each."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        value = self[key] = self.make(key)
        return value


def require_oracle(name):
    """An optional oracle: "torch" or "jax" (the module), "latex" or "pdftoppm" (a
    program's path), "cc" (the C compiler, $CC or cc, as a command list).  Missing, the test is skipped,
    or fails when BACKPROP_REQUIRE_ORACLES=1 (CI sets it), so CI cannot pass without it."""
    if name in MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            _missing(f"{MODULES[name]} ({exc})")
    if name == "cc":
        import shlex
        cc = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
        if shutil.which(cc[0]) is None:
            _missing(f"a C compiler ('{cc[0]}' is not on PATH)")
        return cc
    for program in PROGRAMS[name]:
        path = shutil.which(program)
        if path is not None:
            return path
    _missing(" or ".join(PROGRAMS[name]))


def _missing(what):
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"oracle missing: {what}, and {REQUIRE_ENV}=1 forbids skipping it",
                    pytrace=False)
    pytest.skip(f"oracle missing: {what} (set {REQUIRE_ENV}=1 to make this a failure)")


def draw_sizes(layer, rng, ones=False):
    """A size per dimension: distinct (from SIZES) while there are enough, or with `ones`
    every size 1; both respecting SMALLEST for the layer's normalized dimensions.  A
    derived dimension (a convolution's output size) follows from the others, which are
    drawn again until it is at least 1; layers with 4-axis tensors draw from smaller sizes
    (the symbolic oracle writes out every element's formula)."""
    smallest = SMALLEST.get(layer.name, {})
    rank = max((len(t.dims) for t in layer.tensors.values()), default=0)
    pool = SIZES if rank < 4 else SIZES[:4]
    free = [d for d in layer.dims if d not in layer.dim_defs]
    for attempt in range(1000):
        sizes, used = {}, set()
        for d in free:
            low = smallest.get(d, 1)
            if ones and attempt == 0:
                sizes[d] = low
                continue
            fresh = [s for s in pool if s >= low and s not in used]
            sizes[d] = int(rng.choice(fresh or [s for s in pool if s >= low]))
            used.add(sizes[d])
        sizes = layer.dim_sizes(sizes)
        if all(sizes.get(d, 0) >= 1 for d in layer.dims):
            return sizes
    raise AssertionError(f"no valid sizes drawn for {layer.name}")


def random_arrays(kernels, sizes, rng, one_hot=False):
    """Inputs, parameters, targets and upstream gradients, float64.  `kernels`: anything
    that carries the layer (loaded kernels, or a derivation)."""
    layer = kernels.layer
    out = {}
    for t in layer.tensors.values():
        shape = tuple(sizes[d] for d in t.dims)
        if t.values is not None:                     # integer indices (class labels)
            out[t.name] = rng.integers(0, sizes[t.values], size=shape)
        elif t.role in ("input", "param"):
            a = rng.normal(size=shape)
            if layer.name == "relu":       # keep finite differences away from the kink
                a = a + np.sign(a) * 0.05
                a.flat[0] = abs(a.flat[0])     # at least one active unit: dz is not all 0
            if layer.name in KINKS:         # the same for kinks elsewhere (hardtanh's +-1)
                for kink in KINKS[layer.name]:
                    near = np.abs(a - kink) < 0.05
                    a[near] = kink + np.where(a[near] >= kink, 0.05, -0.05)
                a.flat[0] = 0.5                # inside every linear piece: dz is not all 0
            out[t.name] = a
        elif t.role == "target":
            if t.dims and one_hot:
                rows = np.prod(shape[:-1], dtype=int)
                a = np.eye(shape[-1])[rng.integers(0, shape[-1], rows)].reshape(shape)
            else:
                a = rng.uniform(0.05, 1.0, size=shape)   # soft targets (probabilities)
            out[t.name] = a
    if layer.name == "dropout":     # a mask of 0s and 1s, not all 0, and p in [0, 0.9)
        out.update(mask=rng.integers(0, 2, size=out["mask"].shape).astype(float),
                   p=rng.uniform(0, 0.9))
        out["mask"].flat[0] = 1.0
    if layer.name in OPTIMIZERS:
        out = optimizer_domain(layer.name, rng, out)
    if layer.name == "adam":        # an optimizer's state and hyperparameters have domains
        out.update(v=rng.uniform(0, 2, size=out["v"].shape), step=float(rng.integers(1, 9)),
                   lr=rng.uniform(1e-3, 1e-1), beta1=rng.uniform(0.5, 0.95),
                   beta2=rng.uniform(0.9, 0.999), eps=10.0 ** rng.uniform(-8, -2))
    if layer.name == "rnn_relu":
        # every unit active, far from relu's kink, at every step (finite differences
        # straddle no kink) and the state does not grow step after step
        out.update(b_ih=np.abs(out["b_ih"]) + 3, W_ih=0.3 * out["W_ih"],
                   W_hh=0.1 * out["W_hh"])
    for t in layer.upstream if layer.differentiable else ():
        out["d" + t.name] = rng.normal(size=tuple(sizes[d] for d in t.dims))
    return out


def objective(kernels, arrays):
    """The scalar whose gradient backward() returns: the loss, or <upstream, outputs>."""
    result = kernels.forward(**{n: arrays[n] for n in kernels.args})
    layer = kernels.layer
    if layer.loss:
        total = float(result[layer.loss])
    else:
        total = 0.0
    for t in layer.upstream:
        total += float(np.sum(arrays["d" + t.name] * result[t.name]))
    return total


def finite_differences(kernels, arrays, name, h=1e-6):
    x = arrays[name]
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + h
        up = objective(kernels, arrays)
        x[i] = keep - h
        down = objective(kernels, arrays)
        x[i] = keep
        grad[i] = (up - down) / (2 * h)
    return grad


def rel_err(got, want):
    """Normwise relative error ||got - want|| / ||want||, with no floor: a small result is
    held to the same relative bound as a large one.  A zero reference compares exactly
    (0 when got is zero too, else inf)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    diff, scale = np.linalg.norm(got - want), np.linalg.norm(want)
    if scale == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / scale)


def assert_nonzero(value, what):
    """A comparison with an all-zero reference proves nothing: refuse the data."""
    assert np.linalg.norm(np.asarray(value, np.float64)) > 0, \
        f"{what}: the reference is all zeros, so comparing with it proves nothing"


def assert_close(got, want, tol, what):
    """A gradient against its oracle: the oracle is not all zeros, then the normwise
    relative error is below tol."""
    assert_nonzero(want, what)
    err = rel_err(got, want)
    assert err < tol, (what, err, tol)


def tolerance(dtype, sizes):
    """Normwise relative tolerance for comparing two float computations of one formula.

    Rounding error of a length-K reduction grows like K * eps; elementwise exp/log/
    division add a few eps each.  50 * eps * (1 + K) covers both with margin:
    float64 ~ 1e-13 and float32 ~ 7e-5 at the largest size here (K = 11).
    """
    k = max(sizes.values(), default=1)
    return 50 * np.finfo(dtype).eps * (1 + k)


def torch_leaves(layer, arrays, names):
    """PyTorch tensors of the arrays: float64 leaves that track gradients, integer index
    tensors as int64 (they have no gradient)."""
    import torch

    return {n: torch.tensor(arrays[n]) if layer.tensors[n].values is not None else
            torch.tensor(arrays[n], dtype=torch.float64, requires_grad=True) for n in names}


def torch_forward(name):
    """Textbook forwards in PyTorch, keyed by built-in layer name."""
    import torch
    import torch.nn.functional as F

    return {
        "dense": lambda x, W, b: {"z": F.linear(x, W, b)},
        "sigmoid": lambda z: {"a": torch.sigmoid(z)},
        "tanh": lambda z: {"a": torch.tanh(z)},
        "relu": lambda z: {"a": torch.relu(z)},
        "leaky_relu": lambda z: {"a": F.leaky_relu(z, 0.01)},
        "elu": lambda z: {"a": F.elu(z)},
        "silu": lambda z: {"a": F.silu(z)},
        "gelu_erf": lambda z: {"a": F.gelu(z)},
        "hardtanh": lambda z: {"a": F.hardtanh(z)},
        "log_softmax": lambda z: {"y": F.log_softmax(z, dim=1)},
        "nll": lambda logp, t: {"L": F.nll_loss(logp, t)},
        "huber": lambda y, t: {"L": F.huber_loss(y, t, delta=1.0)},
        "gelu": lambda z: {"a": F.gelu(z, approximate="tanh")},
        "softmax": lambda z: {"y": torch.softmax(z, dim=1)},
        "layernorm": lambda x, w, b: {"y": F.layer_norm(x, x.shape[-1:], w, b, eps=1e-5)},
        "rmsnorm": lambda x, w: {"y": F.rms_norm(x, x.shape[-1:], w, eps=1e-5)},
        "batchnorm": lambda x, w, b: {"y": F.batch_norm(x, None, None, w, b, training=True,
                                                        eps=1e-5)},
        "embedding": lambda ids, E: {"y": F.embedding(ids, E)},
        # the textbook form; test_builtins checks F.dropout's own output has it
        "dropout": lambda x, mask, p: {"y": x * mask / (1 - p)},
        "mse": lambda y, t: {"L": 0.5 * ((y - t) ** 2).sum() / y.shape[0]},
        # probabilities as targets: -sum t log softmax(z), averaged over the batch
        "softmax_cross_entropy": lambda z, t: {"L": F.cross_entropy(z, t)},
        "softmax_cross_entropy_labels": lambda z, t: {"L": F.cross_entropy(z, t)},
        "sigmoid_bce": lambda z, t: {
            "L": F.binary_cross_entropy_with_logits(z, t, reduction="sum") / z.shape[0]},
        "mlp2": lambda x, W1, b1, W2, b2, t: {
            "L": F.cross_entropy(F.linear(torch.sigmoid(F.linear(x, W1, b1)), W2, b2), t)},
        "neuron": lambda x, w, y: {"L": -y * torch.log(torch.sigmoid(w * x))},
        "adam": torch_adam_step,
        "attention": torch_attention,
        "adamw": lambda **a: torch_optim_step("adamw", a),
        "sgd": lambda **a: torch_optim_step("sgd", a),
        "sgd_momentum": lambda **a: torch_optim_step("sgd_momentum", a),
        "rmsprop": lambda **a: torch_optim_step("rmsprop", a),
        "adagrad": lambda **a: torch_optim_step("adagrad", a),
        "conv1d": lambda x, w, b: {"y": F.conv1d(x, w, b)},
        "conv2d": lambda x, w, b: {"y": F.conv2d(x, w, b)},
        "conv2d_grouped": torch_grouped_conv2d,
        "avgpool2d": lambda x: {"y": F.avg_pool2d(x, 2, 2)},
        "maxpool2d": lambda x: {"y": F.max_pool2d(x, 2, 2)},
        "maxpool2d_indices": lambda x: {"y": F.max_pool2d(x, 2, 2)},
        "global_avgpool2d": lambda x: {"y": F.adaptive_avg_pool2d(x, 1)[:, :, 0, 0]},
        "rnn_tanh": lambda **a: torch_recurrent("rnn_tanh", **a),
        "rnn_relu": lambda **a: torch_recurrent("rnn_relu", **a),
        "gru": lambda **a: torch_recurrent("gru", **a),
        "lstm": lambda **a: torch_recurrent("lstm", **a),
    }[name]


def torch_recurrent(kind, x, h0, W_ih, W_hh, b_ih, b_hh, c0=None):
    """torch.nn.RNN / GRU / LSTM (one layer, batch second) called with the given tensors as
    its parameters (torch.func.functional_call, so gradients reach them): the built-ins'
    gate-blocked W_ih[G, H, I] is torch's weight_ih_l0 (G H x I), the same memory."""
    import torch

    T, N, I = x.shape
    H = h0.shape[-1]
    module = {"rnn_tanh": lambda: torch.nn.RNN(I, H, nonlinearity="tanh"),
              "rnn_relu": lambda: torch.nn.RNN(I, H, nonlinearity="relu"),
              "gru": lambda: torch.nn.GRU(I, H), "lstm": lambda: torch.nn.LSTM(I, H)}[kind]()
    params = {"weight_ih_l0": W_ih.reshape(-1, I), "weight_hh_l0": W_hh.reshape(-1, H),
              "bias_ih_l0": b_ih.reshape(-1), "bias_hh_l0": b_hh.reshape(-1)}
    state = (h0[None], c0[None]) if kind == "lstm" else h0[None]
    out, last = torch.func.functional_call(module.to(x.dtype), params, (x, state))
    if kind == "lstm":
        return {"h": out, "hn": last[0][0], "cn": last[1][0]}
    return {"h": out, "hn": last[0]}


def torch_grouped_conv2d(x, w, b, stride=1, padding=0, dilation=1):
    """conv2d_grouped's tensors are torch's with the channel axis split into
    (group, channel in group): the same memory."""
    import torch.nn.functional as F

    n, g, cg, h, width = x.shape
    og = w.shape[1]
    y = F.conv2d(x.reshape(n, g * cg, h, width), w.reshape(g * og, cg, *w.shape[3:]),
                 b.reshape(g * og), stride=stride, padding=padding, dilation=dilation,
                 groups=g)
    return {"y": y.reshape(n, g, og, *y.shape[2:])}


def torch_attention(x, Wq, Wk, Wv, Wo, causal=False):
    """Projections around torch's scaled_dot_product_attention, heads split as ours."""
    import torch

    q, k, v = (torch.einsum("hed,btd->bhte", W, x) for W in (Wq, Wk, Wv))
    ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return {"y": torch.einsum("dhe,bhte->btd", Wo, ctx)}


def torch_adam_step(p, g, m, v, step, lr, beta1, beta2, eps):
    """One step of torch.optim.Adam (the for-each implementation) from the given state:
    an oracle independent of our formula."""
    import torch

    lr, beta1, beta2, eps, step = (float(x.detach()) for x in (lr, beta1, beta2, eps, step))
    param = torch.nn.Parameter(p.detach().clone())
    param.grad = g.detach().clone()
    opt = torch.optim.Adam([param], lr=lr, betas=(beta1, beta2), eps=eps, foreach=False)
    opt.state[param] = {"step": torch.tensor(step - 1),
                        "exp_avg": m.detach().clone(), "exp_avg_sq": v.detach().clone()}
    opt.step()
    state = opt.state[param]
    return {"p_next": param.detach(), "m_next": state["exp_avg"],
            "v_next": state["exp_avg_sq"]}


# Each optimizer built-in as torch.optim runs it: the class, its hyperparameters from our
# scalar inputs, and our state arrays -> (torch's state key, our output).
OPTIMIZERS = {
    "sgd": ("SGD", lambda a: dict(lr=a["lr"], weight_decay=a["weight_decay"]), {}),
    "sgd_momentum": ("SGD", lambda a: dict(
        lr=a["lr"], momentum=a["momentum"], dampening=a["dampening"],
        nesterov=bool(a["nesterov"] > 0), weight_decay=a["weight_decay"]),
        {"buf": ("momentum_buffer", "buf_next")}),
    "adamw": ("AdamW", lambda a: dict(lr=a["lr"], betas=(a["beta1"], a["beta2"]),
                                      eps=a["eps"], weight_decay=a["weight_decay"]),
              {"m": ("exp_avg", "m_next"), "v": ("exp_avg_sq", "v_next")}),
    "rmsprop": ("RMSprop", lambda a: dict(lr=a["lr"], alpha=a["alpha"], eps=a["eps"],
                                          weight_decay=a["weight_decay"]),
                {"sq": ("square_avg", "sq_next")}),
    "adagrad": ("Adagrad", lambda a: dict(lr=a["lr"], lr_decay=a["lr_decay"], eps=a["eps"],
                                          weight_decay=a["weight_decay"]),
                {"acc": ("sum", "acc_next")}),
}


def optimizer_domain(name, rng, arrays):
    """Hyperparameters and state in the ranges torch.optim accepts."""
    a = dict(arrays)
    a.update(lr=rng.uniform(1e-3, 1e-1), weight_decay=rng.uniform(0, 0.1))
    if "step" in a:
        a["step"] = float(rng.integers(1, 9))
    extra = {"sgd_momentum": dict(momentum=rng.uniform(0.5, 0.95),
                                  dampening=rng.uniform(0, 0.5),
                                  nesterov=float(rng.integers(0, 2))),
             "adamw": dict(beta1=rng.uniform(0.5, 0.95), beta2=rng.uniform(0.9, 0.999),
                           eps=10.0 ** rng.uniform(-8, -2)),
             "rmsprop": dict(alpha=rng.uniform(0.9, 0.999), eps=10.0 ** rng.uniform(-8, -2)),
             "adagrad": dict(lr_decay=rng.uniform(0, 0.1), eps=10.0 ** rng.uniform(-10, -2))}
    a.update(extra.get(name, {}))
    if name == "sgd_momentum" and a["nesterov"] > 0:
        a["dampening"] = 0.0                       # torch refuses Nesterov with dampening
    for state in ("v", "sq", "acc"):               # second moments are not negative
        if state in a:
            a[state] = np.abs(a[state])
    return a


def torch_optim_step(name, a):
    """One step of torch.optim's optimizer `name` from the state in `a` (tensors)."""
    import torch

    cls, hyper, state = OPTIMIZERS[name]
    scalars = {k: float(v.detach()) for k, v in a.items() if v.dim() == 0}
    param = torch.nn.Parameter(a["p"].detach().clone())
    param.grad = a["g"].detach().clone()
    opt = getattr(torch.optim, cls)([param], foreach=False, **hyper(scalars))
    step = scalars.get("step", 2.0)
    st = {"step": torch.tensor(step - 1)} if cls != "SGD" else {}
    if cls != "SGD" or step > 1:
        st.update({key: a[ours].detach().clone() for ours, (key, _) in state.items()})
    opt.state[param] = st
    opt.step()
    out = {"p_next": param.detach()}
    out.update({result: opt.state[param][key] for _, (key, result) in state.items()})
    return out


def gradients(kernels, **arrays) -> dict:
    """kernels.backward(**arrays); none for a forward-only layer (whose backward refuses)."""
    return kernels.backward(**arrays) if kernels.gradients else {}
