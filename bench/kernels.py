"""Kernel benchmark: every built-in layer at a realistic size, float32, forward and
backward timed separately for

    C1, C2    the generated C kernels on 1 and 2 threads (OpenMP)
    numpy     the generated NumPy module
    hand      hand-written NumPy (the textbook formulas, BLAS matmuls)
    torch     PyTorch eager on the CPU (2 threads), when installed

all measured in this one run.  Each cell is the median of --repeat timed calls after one
warm-up call; ratios are peer time / C2 time (above 1: C2 is faster).

    python bench/kernels.py [--repeat 7] [--only dense,mlp2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import codegen  # noqa: E402
from machine import cpu_model  # noqa: E402
from derive.builtins import BUILTINS  # noqa: E402

N, W = 4096, 768
SIZES = {
    "dense": dict(N=N, I=W, J=W),
    "mlp2": dict(N=N, D=W, H=W, C=10),
    "neuron": {},
}


def sizes_for(layer):
    return SIZES.get(layer.name, {d: (N if d == "N" else W) for d in layer.dims})


def arrays_for(layer, sizes, rng):
    out = {}
    for t in layer.tensors.values():
        shape = tuple(sizes[d] for d in t.dims)
        if t.role in ("input", "param"):
            out[t.name] = rng.standard_normal(shape, dtype=np.float32) * (
                0.05 if t.role == "param" else 1)
        elif t.role == "target":
            if t.dims:
                out[t.name] = np.eye(shape[-1], dtype=np.float32)[
                    rng.integers(0, shape[-1], shape[0])]
            else:
                out[t.name] = np.float32(1)
    for t in layer.upstream:
        out["d" + t.name] = rng.standard_normal(tuple(sizes[d] for d in t.dims),
                                                dtype=np.float32)
    return out


def sig(v):
    return 1 / (1 + np.exp(-v))


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


K = np.float32(0.7978845608028654)


def gelu(z):
    return 0.5 * z * (1 + np.tanh(K * (z + 0.044715 * z ** 3)))


def gelu_grad(z):
    th = np.tanh(K * (z + 0.044715 * z ** 3))
    return 0.5 * (1 + th) + 0.5 * z * (1 - th ** 2) * K * (1 + 3 * 0.044715 * z ** 2)


def layernorm(x):
    mu = x.mean(1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + 1e-5)


def layernorm_backward(x, w, dy):
    xhat = layernorm(x)
    rstd = 1 / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    g = dy * w
    dx = rstd * (g - g.mean(1, keepdims=True) - xhat * (g * xhat).mean(1, keepdims=True))
    return {"dx": dx, "dw": (dy * xhat).sum(0), "db": dy.sum(0)}


# Hand-written NumPy: what a person would write from the textbook, per layer.
HAND = {
    "dense": (lambda x, W, b: {"z": x @ W.T + b},
              lambda x, W, b, dz: {"dx": dz @ W, "dW": dz.T @ x, "db": dz.sum(0)}),
    "sigmoid": (lambda z: {"a": sig(z)},
                lambda z, da: {"dz": da * sig(z) * (1 - sig(z))}),
    "tanh": (lambda z: {"a": np.tanh(z)},
             lambda z, da: {"dz": da * (1 - np.tanh(z) ** 2)}),
    "relu": (lambda z: {"a": np.maximum(z, 0)},
             lambda z, da: {"dz": da * (z > 0)}),
    "gelu": (lambda z: {"a": gelu(z)},
             lambda z, da: {"dz": da * gelu_grad(z)}),
    "layernorm": (lambda x, w, b: {"y": layernorm(x) * w + b},
                  lambda x, w, b, dy: layernorm_backward(x, w, dy)),
    "softmax": (lambda z: {"y": softmax(z)},
                lambda z, dy: (lambda y: {"dz": y * (dy - (dy * y).sum(1, keepdims=True))})(
                    softmax(z))),
    "mse": (lambda y, t: {"L": ((y - t) ** 2).sum() / (2 * len(y))},
            lambda y, t: {"dy": (y - t) / len(y)}),
    "softmax_cross_entropy": (
        lambda z, t: {"L": -(t * np.log(softmax(z))).sum() / len(z)},
        lambda z, t: {"dz": (softmax(z) * t.sum(1, keepdims=True) - t) / len(z)}),
    "sigmoid_bce": (
        lambda z, t: {"L": (np.logaddexp(0, z) - t * z).sum() / len(z)},
        lambda z, t: {"dz": (sig(z) - t) / len(z)}),
    "mlp2": (
        lambda x, W1, b1, W2, b2, t: {
            "L": -(t * np.log(softmax(sig(x @ W1.T + b1) @ W2.T + b2))).sum() / len(x)},
        None),
    "neuron": (lambda x, w, y: {"L": -y * np.log(sig(w * x))},
               lambda x, w, y: (lambda dz: {"dx": dz * w, "dw": dz * x})(
                   y * (sig(w * x) - 1))),
}


def mlp2_backward(x, W1, b1, W2, b2, t):
    a1 = sig(x @ W1.T + b1)
    y = softmax(a1 @ W2.T + b2)
    dz2 = (y * t.sum(1, keepdims=True) - t) / len(x)
    dz1 = (dz2 @ W2) * a1 * (1 - a1)
    return {"dx": dz1 @ W1, "dW1": dz1.T @ x, "db1": dz1.sum(0), "dW2": dz2.T @ a1,
            "db2": dz2.sum(0)}


HAND["mlp2"] = (HAND["mlp2"][0], mlp2_backward)


def torch_pair(name):
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.oracles import torch_forward

    torch.set_num_threads(2)
    fn = torch_forward(name)

    def forward(**a):
        with torch.no_grad():
            return fn(**{k: torch.from_numpy(np.asarray(v)) for k, v in a.items()})

    def backward_factory(args, upstream, layer):
        leaves = {k: torch.from_numpy(np.asarray(v)).requires_grad_(
            layer.tensors[k].role in ("input", "param")) for k, v in args.items()}
        out = fn(**leaves)
        total = sum((out[t.name] * torch.from_numpy(upstream["d" + t.name])).sum()
                    for t in layer.upstream)
        if layer.loss:
            total = total + out[layer.loss]
        wanted = [leaves[t.name] for t in layer.differentiable]

        def backward():
            return torch.autograd.grad(total, wanted, retain_graph=True)
        return backward

    return forward, backward_factory


def median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    names = [n for n in BUILTINS if not args.only or n in args.only.split(",")]
    rng = np.random.default_rng(0)
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; "
          f"numpy {np.__version__}; torch {torch_version}; float32; median of {args.repeat}")
    cols = ["C1", "C2", "numpy", "hand", "torch"]
    print(f"\n{'layer':<22}{'pass':<9}" + "".join(f"{c + ' ms':>10}" for c in cols)
          + "   " + "  ".join(f"{c}/C2" for c in cols if c != "C2"))
    for name in names:
        c = codegen.load(name, backend="c", dtype="float32")
        k = codegen.load(name)
        sizes = sizes_for(c.layer)
        a = arrays_for(c.layer, sizes, rng)
        fargs = {n: a[n] for n in c.args}
        bargs = {**a, **{n: v for n, v in c.forward(**fargs).items() if n in c.reuses}}
        hand_f, hand_b = HAND[name]
        tp = torch_pair(name)
        rows = {"forward": {}, "backward": {}}
        for threads, col in ((1, "C1"), (2, "C2")):
            c.set_threads(threads)
            rows["forward"][col] = median_time(lambda: c.forward(**fargs), args.repeat)
            rows["backward"][col] = median_time(lambda: c.backward(**bargs), args.repeat)
        rows["forward"]["numpy"] = median_time(lambda: k.forward(**fargs), args.repeat)
        rows["backward"]["numpy"] = median_time(lambda: k.backward(**bargs), args.repeat)
        rows["forward"]["hand"] = median_time(lambda: hand_f(**fargs), args.repeat)
        hb = {n: a[n] for n in list(c.args) + list(c.upstream)}
        rows["backward"]["hand"] = median_time(lambda: hand_b(**hb), args.repeat)
        if tp:
            tf, tb = tp
            rows["forward"]["torch"] = median_time(lambda: tf(**fargs), args.repeat)
            rows["backward"]["torch"] = median_time(tb(fargs, a, c.layer), args.repeat)
        for pass_, row in rows.items():
            cells = "".join(f"{row[col] * 1e3:>10.3f}" if col in row else f"{'-':>10}"
                            for col in cols)
            ratios = "  ".join(f"{row[col] / row['C2']:>7.2f}" if col in row else f"{'-':>7}"
                               for col in cols if col != "C2")
            label = name if pass_ == "forward" else ""
            print(f"{label:<22}{pass_:<9}{cells}   {ratios}")
    print("\nsizes: batch N = 4096, width 768 (dense 768 -> 768; mlp2 768 -> 768 -> 10); "
          "the worked example 'neuron' is scalar")


if __name__ == "__main__":
    main()
