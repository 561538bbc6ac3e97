"""The kernels `backprop bench` measures: each a built-in layer (written in the spec
language and derived), its arrays, the hand-written NumPy a person would keep, PyTorch
eager's best CPU path, and the big buffers its traffic floor streams."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import peer_c

F32 = np.float32
LAYERS = Path(__file__).resolve().parent / "layers"      # specs only the bench uses


@dataclass
class Case:
    kernel: str                       # record name, e.g. "layernorm_backward"
    layer: str                        # built-in layer
    entry: str                        # "forward", "backward", "forward_backward" or
                                      # "train_step" (forward, then backward: bench/run.py)
    sizes: dict[str, int]
    make: Callable                    # (rng, sizes) -> arrays the entry takes
    hand: Callable | None             # arrays -> results, hand-written NumPy (or none)
    torch: Callable | None = None     # (torch, arrays) -> a no-argument callable
    reads: tuple[str, ...] = ()       # the big arrays the kernel reads ...
    writes: tuple[str, ...] = ()      # ... and writes: what its traffic floor streams
    flops: Callable | None = None     # sizes -> floating-point operations (GEMM cases)
    note: str = ""
    in_place: dict = field(default_factory=dict)   # result -> the input it may overwrite
    constants: dict = field(default_factory=dict)  # values of the spec's `const`s
    numpy: bool = True                # time the generated NumPy module too
    peer: Callable | None = None      # (library, arrays, outputs) -> a no-argument callable:
                                      # the hand-C peer (bench/peer_c.py), serial

    def size_text(self) -> str:
        return " x ".join(f"{d}={v}" for d, v in self.sizes.items())


def _normal(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape, dtype=F32) * F32(scale))


# ---- 1. dense layer backward -------------------------------------------------------------
def _dense_make(rng, s):
    N, I, J = s["N"], s["I"], s["J"]
    return dict(x=_normal(rng, N, J), W=_normal(rng, I, J, scale=0.05), b=_normal(rng, I),
                dz=_normal(rng, N, I))


def _dense_hand(a):
    return {"dx": a["dz"] @ a["W"], "dW": a["dz"].T @ a["x"], "db": a["dz"].sum(0)}


def _dense_torch(torch, a):
    x, W, dz = (torch.from_numpy(a[n]) for n in ("x", "W", "dz"))
    return lambda: (dz @ W, dz.t() @ x, dz.sum(0))


# ---- 2. layer norm backward ----------------------------------------------------------------
def _ln_make(rng, s):
    N, C = s["N"], s["C"]
    x = _normal(rng, N, C)
    w, b, dy = 1 + _normal(rng, C, scale=0.1), _normal(rng, C, scale=0.1), _normal(rng, N, C)
    mu = x.mean(1, dtype=np.float64)
    rstd = 1 / np.sqrt(((x - mu[:, None]) ** 2).mean(1) + 1e-5)
    xhat = ((x - mu[:, None]) * rstd[:, None]).astype(F32)
    return dict(x=x, w=w, b=b, dy=dy, mu=mu.astype(F32), rstd=rstd.astype(F32), xhat=xhat)


def _ln_hand(a):
    g = a["dy"] * a["w"]
    xhat, rstd = a["xhat"], a["rstd"][:, None]
    dx = rstd * (g - g.mean(1, keepdims=True) - xhat * (g * xhat).mean(1, keepdims=True))
    return {"dx": dx, "dw": (a["dy"] * xhat).sum(0), "db": a["dy"].sum(0)}


def _ln_torch(torch, a):
    x, w, b, dy = (torch.from_numpy(a[n]) for n in ("x", "w", "b", "dy"))
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[1]], w, b, 1e-5)
    return lambda: torch.ops.aten.native_layer_norm_backward(
        dy, x, [x.shape[1]], mean, rstd, w, b, [True, True, True])


# ---- 3. GELU backward ----------------------------------------------------------------------
K = F32(0.7978845608028654)


def _gelu_make(rng, s):
    z = _normal(rng, s["N"], s["I"])
    th = np.tanh(K * (z + F32(0.044715) * z ** 3))
    return dict(z=z, th=th, da=_normal(rng, s["N"], s["I"]))


def _gelu_hand(a):
    """From (z, da), as PyTorch is given: tanh recomputed."""
    z = a["z"]
    th = np.tanh(K * (z + F32(0.044715) * z ** 3))
    return _gelu_grad(a, z, th)


def _gelu_saved_hand(a):
    """With the tanh the forward saved."""
    return _gelu_grad(a, a["z"], a["th"])


def _gelu_grad(a, z, th):
    grad = 0.5 * (1 + th) + 0.5 * z * (1 - th ** 2) * K * (1 + 3 * F32(0.044715) * z ** 2)
    return {"dz": a["da"] * grad}


def _gelu_torch(torch, a):
    z, da = torch.from_numpy(a["z"]), torch.from_numpy(a["da"])
    return lambda: torch.ops.aten.gelu_backward(da, z, approximate="tanh")


# ---- 4. softmax + cross-entropy with integer labels, forward and backward ---------------------
def _ce_make(rng, s):
    return dict(z=_normal(rng, s["N"], s["I"], scale=3), t=rng.integers(0, s["I"], s["N"]))


def _ce_hand(a):
    z, t = a["z"], a["t"]
    rows = np.arange(len(z))
    m = z.max(1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(1, keepdims=True)
    loss = (np.log(s[:, 0]) + m[:, 0] - z[rows, t]).mean()
    dz = e / s
    dz[rows, t] -= 1
    dz /= len(z)
    return {"L": loss, "dz": dz}


def _ce_torch(torch, a):
    z, t = torch.from_numpy(a["z"]).requires_grad_(), torch.from_numpy(a["t"])

    def step():
        z.grad = None
        loss = torch.nn.functional.cross_entropy(z, t)
        loss.backward()
        return loss, z.grad
    return step


# ---- 5. Adam step ----------------------------------------------------------------------------
def _adam_make(rng, s):
    P = s["P"]
    return dict(p=_normal(rng, P), g=_normal(rng, P), m=_normal(rng, P, scale=0.1),
                v=np.abs(_normal(rng, P, scale=0.1)), step=F32(10), lr=F32(1e-3),
                beta1=F32(0.9), beta2=F32(0.999), eps=F32(1e-8))


def _adam_hand(a):
    b1, b2, t = a["beta1"], a["beta2"], a["step"]
    m = b1 * a["m"] + (1 - b1) * a["g"]
    v = b2 * a["v"] + (1 - b2) * a["g"] ** 2
    p = a["p"] - a["lr"] * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + a["eps"])
    return {"p_next": p, "m_next": m, "v_next": v}


def _adam_torch(torch, a):
    p, g, m, v = (torch.from_numpy(a[n].copy()) for n in ("p", "g", "m", "v"))
    step = torch.tensor(float(a["step"]) - 1)

    def run():           # the fused CPU kernel torch.optim.Adam(fused=True) calls, in place
        torch._fused_adam_([p], [g], [m], [v], [], [step], lr=float(a["lr"]),
                           beta1=float(a["beta1"]), beta2=float(a["beta2"]),
                           weight_decay=0.0, eps=float(a["eps"]), amsgrad=False,
                           maximize=False)
    return run


# ---- 6. sigmoid + binary cross-entropy, forward and backward -----------------------------------
def _bce_make(rng, s):
    return dict(z=_normal(rng, s["N"], s["I"], scale=2),
                t=(rng.random((s["N"], s["I"]), dtype=F32) < 0.5).astype(F32))


def _bce_hand(a):
    z, t = a["z"], a["t"]
    n = len(z)
    return {"L": (np.logaddexp(0, z) - t * z).sum() / n,
            "dz": (1 / (1 + np.exp(-z)) - t) / n}


def _bce_torch(torch, a):
    z, t = torch.from_numpy(a["z"]).requires_grad_(), torch.from_numpy(a["t"])

    def step():
        z.grad = None
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            z, t, reduction="sum") / z.shape[0]
        loss.backward()
        return loss, z.grad
    return step


# ---- 7. convolution 3x3, padding 1, forward and backward --------------------------------------
def _conv_make(rng, s):
    N, C, O, H, W = s["N"], s["C"], s["O"], s["H"], s["W"]
    return dict(x=_normal(rng, N, C, H, W), w=_normal(rng, O, C, 3, 3, scale=0.05),
                b=_normal(rng, O), dy=_normal(rng, N, O, H, W))


def _im2col(x, pad=1):
    """x[N, C, H, W] -> cols[N, C, 3, 3, H, W] (3x3 windows, zero padding, stride 1)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    return win.transpose(0, 1, 4, 5, 2, 3)


def _conv_hand_forward(a):
    cols = _im2col(a["x"])
    return {"y": np.einsum("ocpq,ncpqhw->nohw", a["w"], cols, optimize=True)
            + a["b"][None, :, None, None]}


def _conv_hand_backward(a):
    cols = _im2col(a["x"])
    dw = np.einsum("nohw,ncpqhw->ocpq", a["dy"], cols, optimize=True)
    dcols = _im2col(a["dy"])                     # dx: dy correlated with the flipped kernel
    dx = np.einsum("ocpq,nopqhw->nchw", a["w"][:, :, ::-1, ::-1], dcols, optimize=True)
    return {"dx": dx, "dw": dw, "db": a["dy"].sum((0, 2, 3))}


def _conv_torch_forward(torch, a):
    x, w, b = (torch.from_numpy(a[n]) for n in ("x", "w", "b"))
    return lambda: torch.nn.functional.conv2d(x, w, b, padding=1)


def _conv_torch_backward(torch, a):
    x, w, dy = (torch.from_numpy(a[n]) for n in ("x", "w", "dy"))
    return lambda: torch.ops.aten.convolution_backward(
        dy, x, w, [w.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, True])


# ---- 8. average pooling 2x2, stride 2 ----------------------------------------------------------
def _pool_make(rng, s):
    N, C, H, W = s["N"], s["C"], s["H"], s["W"]
    return dict(x=_normal(rng, N, C, H, W), dy=_normal(rng, N, C, H // 2, W // 2))


def _pool_hand_forward(a):
    x = a["x"]
    n, c, h, w = x.shape
    return {"y": x.reshape(n, c, h // 2, 2, w // 2, 2).mean((3, 5))}


def _pool_hand_backward(a):
    dy = a["dy"] * np.float32(0.25)
    return {"dx": np.repeat(np.repeat(dy, 2, axis=2), 2, axis=3)}


def _pool_torch_forward(torch, a):
    x = torch.from_numpy(a["x"])
    return lambda: torch.nn.functional.avg_pool2d(x, 2, 2)


def _pool_torch_backward(torch, a):
    x, dy = torch.from_numpy(a["x"]), torch.from_numpy(a["dy"])
    return lambda: torch.ops.aten.avg_pool2d_backward(dy, x, [2, 2], [2, 2], [0, 0], False,
                                                      True, None)


# ---- 9. max pooling 2x2, stride 2 (issue 12) -----------------------------------------------
def _windows(x):
    """(n, c, h/2, w/2, 4): each 2x2 window's elements in row-major order."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, h // 2, w // 2, 4)


def _maxpool_hand_forward(a):
    return {"y": _windows(a["x"]).max(-1)}


def _maxpool_hand_backward(a):
    """The whole dy to each window's first maximum (argmax picks the first)."""
    x, dy = a["x"], a["dy"]
    n, c, h, w = x.shape
    first = _windows(x).argmax(-1)
    spread = (np.arange(4) == first[..., None]) * dy[..., None]
    return {"dx": spread.reshape(n, c, h // 2, w // 2, 2, 2).transpose(
        0, 1, 2, 4, 3, 5).reshape(n, c, h, w).astype(F32)}


def _maxpool_torch_forward(torch, a):
    x = torch.from_numpy(a["x"])
    return lambda: torch.nn.functional.max_pool2d(x, 2, 2)


def _maxpool_torch_backward(torch, a):
    """torch's backward from the argmax indices its forward saved (not timed)."""
    x, dy = torch.from_numpy(a["x"]), torch.from_numpy(a["dy"])
    _, idx = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
    return lambda: torch.ops.aten.max_pool2d_with_indices_backward(
        dy, x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)


def _maxpool_indices_hand_backward(a):
    """From the ranks (p*2 + q) of each window's first maximum the forward saved (at)."""
    n, c, h, w = a["x"].shape
    spread = (np.arange(4, dtype=F32) == a["at"][..., None]) * a["dy"][..., None]
    return {"dx": spread.reshape(n, c, h // 2, w // 2, 2, 2).transpose(
        0, 1, 2, 4, 3, 5).reshape(n, c, h, w).astype(F32)}


def _maxpool_torch_forward_indices(torch, a):
    """torch's forward that saves its argmax (flat h*W + w indices, int64; not our ranks,
    so only y is handed back to compare)."""
    x = torch.from_numpy(a["x"])
    return lambda: torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])[0]


# ---- 10. batch norm backward, training mode (issue 12) -----------------------------------------
def _bn_make(rng, s):
    N, C, H, W = s["N"], s["C"], s["H"], s["W"]
    return dict(x=_normal(rng, N, C, H, W), w=1 + _normal(rng, C, scale=0.1),
                b=_normal(rng, C, scale=0.1), dy=_normal(rng, N, C, H, W))


def _bn_hand(a):
    x, w, dy = a["x"], a["w"], a["dy"]
    axes = (0, 2, 3)
    m = x.size // x.shape[1]
    mu = x.mean(axes, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(axes, keepdims=True) + F32(1e-5))
    xhat = (x - mu) * rstd
    g = dy * w[None, :, None, None]
    dx = rstd / m * (m * g - g.sum(axes, keepdims=True)
                     - xhat * (g * xhat).sum(axes, keepdims=True))
    return {"dx": dx, "dw": (dy * xhat).sum(axes), "db": dy.sum(axes)}


def _bn_torch(torch, a):
    x, w, b, dy = (torch.from_numpy(a[n]) for n in ("x", "w", "b", "dy"))
    _, mean, invstd = torch.ops.aten.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)
    return lambda: torch.ops.aten.native_batch_norm_backward(
        dy, x, w, None, None, mean, invstd, True, 1e-5, [True, True, True])


# ---- 11. causal multi-head attention, forward and backward (issue 12) --------------------------
def _att_make(rng, s):
    B, T, H, E = s["B"], s["T"], s["H"], s["E"]
    D = s["D"]
    scale = 1 / np.sqrt(D)
    return dict(x=_normal(rng, B, T, D), Wq=_normal(rng, H, E, D, scale=scale),
                Wk=_normal(rng, H, E, D, scale=scale), Wv=_normal(rng, H, E, D, scale=scale),
                Wo=_normal(rng, D, H, E, scale=scale), dy=_normal(rng, B, T, D))


def _att_parts(a):
    x = a["x"]
    q, k, v = (np.einsum("hed,btd->bhte", a[W], x, optimize=True)
               for W in ("Wq", "Wk", "Wv"))
    T, E = x.shape[1], q.shape[-1]
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(F32(E))
    s = np.where(np.tri(T, dtype=bool), s, F32(-np.inf))
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return q, k, v, p, p @ v


def _att_hand_forward(a):
    *_, ctx = _att_parts(a)
    return {"y": np.einsum("dhe,bhte->btd", a["Wo"], ctx, optimize=True)}


def _att_hand_backward(a):
    x, dy = a["x"], a["dy"]
    q, k, v, p, ctx = _att_parts(a)
    E = q.shape[-1]
    dctx = np.einsum("dhe,btd->bhte", a["Wo"], dy, optimize=True)
    dp = dctx @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True)) / np.sqrt(F32(E))
    grads = {"dq": ds @ k, "dk": ds.transpose(0, 1, 3, 2) @ q,
             "dv": p.transpose(0, 1, 3, 2) @ dctx}
    out = {"dWo": np.einsum("btd,bhte->dhe", dy, ctx, optimize=True)}
    out["dx"] = sum(np.einsum("hed,bhte->btd", a[f"W{n}"], grads[f"d{n}"], optimize=True)
                    for n in "qkv")
    for n in "qkv":
        out[f"dW{n}"] = np.einsum("bhte,btd->hed", grads[f"d{n}"], x, optimize=True)
    return out


def _att_torch(torch, a, entry):
    """Projections around scaled_dot_product_attention (causal), doing what ours does at
    `entry` (as `_rnn_torch`): the forward, the backward alone (autograd through a graph
    recorded once), or a training step (forward, then backward)."""
    x, Wq, Wk, Wv, Wo, dy = (torch.from_numpy(a[n]) for n in ("x", "Wq", "Wk", "Wv", "Wo",
                                                               "dy"))
    leaves = [t.requires_grad_() for t in (x, Wq, Wk, Wv, Wo)]

    def forward():
        q, k, v = (torch.einsum("hed,btd->bhte", W, x) for W in (Wq, Wk, Wv))
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return [torch.einsum("dhe,bhte->btd", Wo, ctx)]

    return _torch_entry(entry, forward,
                        lambda outs, keep: torch.autograd.grad(outs, leaves, [dy],
                                                               retain_graph=keep))


def _torch_entry(entry, forward, backward):
    """Torch's call at `entry`: `forward()` (its graph recorded when leaves need grad), or
    `backward(outs, keep)` through one graph recorded here and kept between calls, or a
    forward then its backward (a training step)."""
    if entry == "forward":
        return lambda: tuple(forward())
    if entry == "backward":
        recorded = forward()
        return lambda: backward(recorded, True)
    return lambda: backward(forward(), False)


# ---- recurrences: torch.nn.LSTM / GRU, one layer, batch second ---------------------------
def _rnn_make(rng, s, gates):
    T, N, I, H = s["T"], s["N"], s["I"], s["H"]
    k = 1 / np.sqrt(H)         # torch's initialisation range
    u = lambda *shape: rng.uniform(-k, k, shape).astype(F32)
    a = dict(x=_normal(rng, T, N, I), h0=_normal(rng, N, H), W_ih=u(gates, H, I),
             W_hh=u(gates, H, H), b_ih=u(gates, H), b_hh=u(gates, H),
             dh=_normal(rng, T, N, H), dhn=_normal(rng, N, H))
    if gates == 4:
        a.update(c0=_normal(rng, N, H), dcn=_normal(rng, N, H))
    return a


def _rnn_torch(torch, a, kind, entry):
    """torch.nn.LSTM / GRU doing what ours does at `entry`: the forward a training step runs
    (graph recorded, what its backward needs kept, as our forward saves the gates), the
    backward alone (autograd through a graph recorded once, kept between calls), or both."""
    T, N, I = a["x"].shape
    H = a["h0"].shape[-1]
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H)
    with torch.no_grad():
        for name, mine in (("weight_ih_l0", "W_ih"), ("weight_hh_l0", "W_hh"),
                           ("bias_ih_l0", "b_ih"), ("bias_hh_l0", "b_hh")):
            getattr(module, name).copy_(torch.from_numpy(a[mine]).reshape(
                getattr(module, name).shape))
    x = torch.from_numpy(a["x"]).requires_grad_()
    h0 = torch.from_numpy(a["h0"])[None].requires_grad_()
    state = (h0, torch.from_numpy(a["c0"])[None].requires_grad_()) \
        if kind == "lstm" else h0
    params = list(module.parameters())
    leaves = [x, h0] + ([state[1]] if kind == "lstm" else []) + params
    shapes = [a[n].shape for n in ("W_ih", "W_hh", "b_ih", "b_hh")]
    ups = [torch.from_numpy(a[n]) for n in ("dh", "dhn", "dcn") if n in a]

    def forward():
        out, last = module(x, state)
        return [out] + [s[0] for s in (last if kind == "lstm" else (last,))]

    def backward(outs, keep=False):
        grads = torch.autograd.grad(outs, leaves, ups, retain_graph=keep)
        k = len(leaves) - len(params)      # the parameters in the gate-blocked layout
        return grads[:k] + tuple(g.reshape(s) for g, s in zip(grads[k:], shapes))

    return _torch_entry(entry, forward, backward)


def cases(scale: int = 1) -> list[Case]:
    """The issue's benchmark set; `scale` divides the large sizes (a quick run)."""
    def big(n):
        return max(n // scale, 1)

    dense_flops = lambda s: 2 * 2 * s["N"] * s["I"] * s["J"] + s["N"] * s["I"]
    conv_flops = lambda s: 2 * s["N"] * s["O"] * s["C"] * 9 * s["H"] * s["W"]
    return [
        Case("dense_backward", "dense", "backward", dict(N=big(4096), I=768, J=768),
             _dense_make, _dense_hand, _dense_torch, flops=dense_flops,
             note="x[N, J] W[I, J] -> dx, dW, db; compute-bound: GEMMs through BLAS"),
        Case("dense_backward_small", "dense", "backward", dict(N=64, I=512, J=512),
             _dense_make, _dense_hand, _dense_torch, flops=dense_flops,
             note="the small shape: call overhead matters"),
        Case("layernorm_backward", "layernorm", "backward", dict(N=big(4096), C=768),
             _ln_make, _ln_hand, _ln_torch, reads=("x", "dy"), writes=("dx",),
             peer=peer_c.layernorm_backward,
             note="with the saved mean and reciprocal std; xhat is recomputed, not read"),
        Case("gelu_backward", str(LAYERS / "gelu_recompute.bp"), "backward",
             dict(N=big(4096), I=3072), _gelu_make, _gelu_hand, _gelu_torch,
             reads=("z", "da"), writes=("dz",), peer=peer_c.gelu_backward,
             note="tanh form, from (z, da) as torch's gelu_backward: tanh recomputed"),
        Case("gelu_backward_saved", "gelu", "backward", dict(N=big(4096), I=3072),
             _gelu_make, _gelu_saved_hand, _gelu_torch, reads=("z", "da", "th"),
             writes=("dz",), peer=peer_c.gelu_backward,
             note="reads the tanh the forward saved: 4 bytes per element "
                                  "more stored and read (50 MB here); torch still recomputes"),
        Case("softmax_ce_labels_fwd_bwd", "softmax_cross_entropy_labels", "forward_backward",
             dict(N=big(4096), I=8192), _ce_make, _ce_hand, _ce_torch, reads=("z",),
             writes=("dz",), peer=peer_c.softmax_ce, note="integer labels, batch mean; loss and dlogits in one pass"),
        Case("adam_step", "adam", "forward", dict(P=big(10_000_000)),
             _adam_make, _adam_hand, _adam_torch, reads=("p", "g", "m", "v"),
             writes=("p_next", "m_next", "v_next"),
             in_place=dict(p_next="p", m_next="m", v_next="v"),
             note="torch: the fused CPU Adam, in place; ours in place too (out=)"),
        Case("sigmoid_bce_fwd_bwd", "sigmoid_bce", "forward_backward",
             dict(N=big(10_000), I=1000), _bce_make, _bce_hand, _bce_torch,
             reads=("z", "t"), writes=("dz",), note="loss and dz in one pass"),
        Case("conv2d_forward", "conv2d", "forward",
             dict(N=big(32), C=64, O=64, H=56, W=56), _conv_make, _conv_hand_forward,
             _conv_torch_forward, constants=dict(P=1), flops=conv_flops,
             note="3x3, stride 1, padding 1: im2col per image, one GEMM each (BLAS)"),
        Case("conv2d_backward", "conv2d", "backward",
             dict(N=big(32), C=64, O=64, H=56, W=56), _conv_make, _conv_hand_backward,
             _conv_torch_backward, constants=dict(P=1), flops=lambda s: 2 * conv_flops(s),
             note="dx, dw, db: dx and dw are GEMMs over packed windows of dy and x"),
        Case("avgpool2d_forward", "avgpool2d", "forward", dict(N=big(32), C=64, H=112, W=112),
             _pool_make, _pool_hand_forward, _pool_torch_forward, reads=("x",),
             writes=("y",), note="2x2 window, stride 2"),
        Case("avgpool2d_backward", "avgpool2d", "backward", dict(N=big(32), C=64, H=112,
                                                                 W=112),
             _pool_make, _pool_hand_backward, _pool_torch_backward, reads=("dy",),
             writes=("dx",), note="each dx element gathers the one dy its window reaches"),
        Case("maxpool2d_forward", "maxpool2d", "forward", dict(N=big(32), C=64, H=112, W=112),
             _pool_make, _maxpool_hand_forward, _maxpool_torch_forward, reads=("x",),
             writes=("y",), note="2x2 window, stride 2"),
        Case("maxpool2d_backward", "maxpool2d", "backward", dict(N=big(32), C=64, H=112,
                                                                 W=112),
             _pool_make, _maxpool_hand_backward, _maxpool_torch_backward, reads=("x",),
             writes=("dx",), numpy=False,
             note="the gradient to each window's first maximum; torch reads the argmax "
                  "its forward saved, ours finds it in one pass over x; the floor streams "
                  "x and dx (the quarter-size dy left out); generated NumPy not timed "
                  "(index arrays over every dx element: seconds a call)"),
        Case("maxpool2d_indices_forward", "maxpool2d_indices", "forward",
             dict(N=big(32), C=64, H=112, W=112), _pool_make, _maxpool_hand_forward,
             _maxpool_torch_forward_indices, reads=("x",), writes=("y", "at"),
             note="also saves each window's first maximal position (4 bytes per output: "
                  "12.8 MB here; torch's max_pool2d_with_indices saves 8-byte indices)"),
        Case("maxpool2d_indices_backward", "maxpool2d_indices", "backward",
             dict(N=big(32), C=64, H=112, W=112), _pool_make,
             _maxpool_indices_hand_backward, _maxpool_torch_backward, reads=("dy", "at"),
             writes=("dx",), numpy=False,
             note="from the saved positions and dy, as torch from its saved indices: x "
                  "is not read; the floor streams dy, at and dx"),
        Case("batchnorm_backward", "batchnorm", "backward", dict(N=big(32), C=64, H=56, W=56),
             _bn_make, _bn_hand, _bn_torch, reads=("x", "dy"), writes=("dx",),
             note="training mode; ours reads the saved mean, variance and rstd"),
        *[Case(f"attention_causal_{entry}", "attention", entry,
               dict(B=big(8), T=max(512 // scale, 8), D=768, H=12, E=64), _att_make,
               _att_hand_forward if entry == "forward" else _att_hand_backward,
               lambda torch, a, e=entry: _att_torch(torch, a, e),
               constants=dict(CAUSAL=1), numpy=entry == "forward",
               note="with the q, k, v and output projections; torch: einsum projections "
                    "around scaled_dot_product_attention" + {
                        "forward": ", recording its graph (as ours saves q, k, v, a, ctx)",
                        "backward": ", autograd through a graph recorded once; ours reads "
                                    "the forward's saved arrays",
                        "train_step": ", forward then autograd backward; ours: forward, "
                                      "then backward"}[entry]
                    + ("" if entry == "forward" else "; generated NumPy not timed (4.8 GB "
                                                     "at B = 1: 37 GB here)"))
          for entry in ("forward", "backward", "train_step")],
        *[Case(f"{kind}_{entry}", kind, entry,
               dict(T=max(64 // scale, 2), N=32, I=256, H=512),
               lambda rng, s, g=gates: _rnn_make(rng, s, g), None,
               lambda torch, a, k=kind, e=entry: _rnn_torch(torch, a, k, e),
               flops=lambda s, g=gates, e=entry: 2 * g * s["T"] * s["N"] * s["H"]
               * (s["I"] + s["H"]) * {"forward": 1, "backward": 2, "train_step": 3}[e],
               numpy=entry != "train_step",
               note="T=64 steps; torch.nn." + kind.upper() + {
                   "forward": " forward recording its graph (what its backward needs "
                              "kept, as ours saves the gates)",
                   "backward": ": autograd through a graph recorded once; ours reads the "
                               "forward's saved gates",
                   "train_step": ": forward, then autograd backward; ours: forward, then "
                                 "backward"}[entry])
          for kind, gates in (("lstm", 4), ("gru", 3))
          for entry in ("forward", "backward", "train_step")],
    ]
