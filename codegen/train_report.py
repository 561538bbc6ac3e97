"""What `backprop train` leaves behind: the table of epochs, the loss and accuracy plot
(PNG, matplotlib), and the parameters as .npz (saved, and loaded to resume or evaluate)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .datasets import DataError


def table(history) -> str:
    """One row per epoch: losses, test accuracy, training seconds."""
    lines = [f"{'epoch':>5}  {'train loss':>10}  {'test loss':>9}  {'test acc':>8}  "
             f"{'seconds':>7}"]
    for e in history.epochs:
        lines.append(f"{e['epoch']:>5}  {e['train_loss']:>10.4f}  {e['test_loss']:>9.4f}  "
                     f"{100 * e['test_accuracy']:>7.2f}%  {e['seconds']:>7.3f}")
    return "\n".join(lines)


def plot(history, path, title: str = "") -> Path:
    """Loss (every step, and per epoch on train and test) beside test accuracy per epoch."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install "
                           "'backprop-toolkit[train]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the plot is written as PNG; name it ending in .png")
    epochs = [e["epoch"] for e in history.epochs]
    per_epoch = len(history.step_loss) / max(len(epochs), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps = np.arange(1, len(history.step_loss) + 1) / per_epoch
    left.plot(steps, history.step_loss, color="0.75", lw=0.8, label="train (each step)")
    left.plot(epochs, [e["train_loss"] for e in history.epochs], "o-", label="train (epoch)")
    left.plot(epochs, [e["test_loss"] for e in history.epochs], "s-", label="test")
    left.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    left.legend()
    right.plot(epochs, [100 * e["test_accuracy"] for e in history.epochs], "s-",
               color="C2")
    right.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_params(path, params: dict) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: parameters are saved as .npz; name it ending in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in params.items()})
    return path


def load_params(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such parameter file")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
