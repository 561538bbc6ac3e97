"""Time per epoch of training mlp2 on digits: the generated C kernels and NumPy module with
the toolkit's adam step layer, against PyTorch eager (nn.functional + torch.optim.Adam)
from the same initial weights and the same batches.

    python bench/train_speed.py [--epochs 5] [--hidden 64] [--batch 32]

Prints the median seconds per epoch (training steps only, no evaluation) of each, and the
final training loss of each, which agree (the runs are the same computation).
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


def torch_mlp2(init: dict, data, epochs: int, batch: int, lr: float, optimizer="adam",
               seed=0, dtype="float32"):
    """mlp2 trained in PyTorch eager from `init`, on the batches codegen.training uses:
    (loss of every step, seconds of every epoch)."""
    import torch

    from codegen.training import OPTIMIZERS, batch_order

    dt = getattr(torch, dtype)
    p = {k: torch.nn.Parameter(torch.tensor(v, dtype=dt)) for k, v in init.items()}
    if optimizer == "adam":
        h = OPTIMIZERS["adam"]
        opt = torch.optim.Adam(p.values(), lr=lr, betas=(h["beta1"], h["beta2"]),
                               eps=h["eps"])
    else:
        opt = torch.optim.SGD(p.values(), lr=lr)
    x, y = torch.tensor(data.x_train, dtype=dt), torch.tensor(data.y_train)
    losses, seconds = [], []
    for batches in batch_order(len(x), batch, epochs, seed):
        start = time.perf_counter()
        for idx in batches:
            idx = torch.from_numpy(idx)
            opt.zero_grad()
            a1 = torch.sigmoid(torch.nn.functional.linear(x[idx], p["W1"], p["b1"]))
            loss = torch.nn.functional.cross_entropy(
                torch.nn.functional.linear(a1, p["W2"], p["b2"]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
    return losses, seconds


def main():
    from codegen.datasets import load_data
    from codegen.training import init_params, roles, sizes_for, train
    from derive.builtins import builtin

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.003)
    args = ap.parse_args()
    data, layer = load_data("digits"), builtin("mlp2")
    r = roles(layer)
    init = init_params(layer, r, sizes_for(layer, r, data, {"H": args.hidden}, None), 0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; mlp2 on digits, "
          f"H={args.hidden}, batch {args.batch}, adam, float32, {args.epochs} epochs")
    print(f"{'implementation':<28}{'s / epoch':>10}{'final loss':>12}")
    rows = []
    for backend in ("c", "numpy"):
        train(layer, data, "adam", 1, args.batch, args.lr, backend=backend,
              sizes={"H": args.hidden})                        # compile and warm up
        _, h = train(layer, data, "adam", args.epochs, args.batch, args.lr, backend=backend,
                     sizes={"H": args.hidden}, init=init)
        rows.append((f"generated {backend} + adam layer",
                     statistics.median(e["seconds"] for e in h.epochs), h.step_loss[-1]))
    import torch

    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        torch_mlp2(init, data, 1, args.batch, args.lr)            # warm up
        losses, seconds = torch_mlp2(init, data, args.epochs, args.batch, args.lr)
        rows.append((f"torch eager ({threads} thread{'s' if threads > 1 else ''})",
                     statistics.median(seconds), losses[-1]))
    for name, sec, loss in rows:
        print(f"{name:<28}{sec:>10.4f}{loss:>12.6f}")


if __name__ == "__main__":
    main()
