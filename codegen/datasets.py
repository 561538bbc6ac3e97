"""Data for `backprop train`: scikit-learn's bundled digits, or a user's CSV / NPZ arrays,
checked so that bad data is one line naming the problem, never a traceback from a kernel.

A data set is features x (rows are examples) and integer class labels y in 0..C-1, split
once into a training and a test part with a fixed seed (the same split on every run).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_SEED = 0
TEST_FRACTION = 0.2


class DataError(ValueError):
    """Bad training data: the message names the file and the problem."""


@dataclass(frozen=True)
class Split:
    name: str
    x_train: np.ndarray        # (examples, features), float64
    y_train: np.ndarray        # (examples,), int64 in 0..classes-1
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    @property
    def features(self) -> int:
        return self.x_train.shape[1]


def load_data(source: str, test_fraction: float = TEST_FRACTION) -> Split:
    """`digits` (1,797 8x8 images shipped with scikit-learn, pixels scaled to 0..1), or a
    .npz file with arrays x and y, or a .csv file whose last column is the label."""
    if source == "digits":
        x, y = _digits()
        return split("digits", x / 16.0, y, test_fraction)
    path = Path(source)
    if path.suffix.lower() not in (".npz", ".csv"):
        raise DataError(f"{source}: --data takes 'digits', a .npz file (arrays x and y) or "
                        f"a .csv file (features, then the label in the last column)")
    if not path.is_file():
        raise DataError(f"{source}: no such file")
    x, y = _read_npz(path) if path.suffix.lower() == ".npz" else _read_csv(path)
    return split(str(path), x, y, test_fraction)


def _digits():
    """The digits file scikit-learn ships (what sklearn.datasets.load_digits reads), read
    without importing scikit-learn: its import loads its own OpenMP runtime beside the one
    the C kernels use, and thread settings would then reach only one of the two."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise DataError("--data digits needs scikit-learn: pip install "
                        "'backprop-toolkit[train]'")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"--data digits: scikit-learn's digits file is not at {path}")
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise DataError(f"{path}: expected arrays 'x' (features) and 'y' (labels), "
                                f"found {', '.join(f.files) or 'none'}")
            return f["x"], f["y"]
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def _read_csv(path: Path):
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = [line for line in text.splitlines() if line.strip()]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    try:                                   # a header line is allowed
        float(rows[0].split(",")[0])
    except ValueError:
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: a header but no rows")
    width = len(rows[0].split(","))
    for k, row in enumerate(rows):
        if len(row.split(",")) != width:
            raise DataError(f"{path}: row {k + 1} has {len(row.split(','))} columns, the "
                            f"first has {width}")
    if width < 2:
        raise DataError(f"{path}: expected features and a label per row, found one column")
    try:
        table = np.array([[float(v) for v in row.split(",")] for row in rows])
    except ValueError as exc:
        raise DataError(f"{path}: not a number: {exc}") from None
    return table[:, :-1], table[:, -1]


def check(name: str, x, y) -> tuple[np.ndarray, np.ndarray, int]:
    """Features as float64 (examples, features), labels as int64 in 0..C-1, and C."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2:
        raise DataError(f"{name}: features x must be a 2-D array (examples, features), "
                        f"got shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{name}: labels y must be a 1-D array (one per example), got "
                        f"shape {y.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{name}: no data (x has shape {x.shape})")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: {x.shape[0]} examples in x but {y.shape[0]} labels in y")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{name}: features must be numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        raise DataError(f"{name}: features contain NaN or infinity (first at example "
                        f"{bad[0][0]}, feature {bad[0][1]})")
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    yf = y.astype(np.float64)
    wrong = np.flatnonzero(~np.isfinite(yf) | (yf != np.round(yf)) | (yf < 0))
    if wrong.size:
        raise DataError(f"{name}: labels must be class numbers 0, 1, 2, ...; example "
                        f"{wrong[0]} has {y[wrong[0]]}")
    y = yf.astype(np.int64)
    classes = int(y.max()) + 1
    if classes < 2:
        raise DataError(f"{name}: every label is {y[0]}: at least two classes are needed")
    return x, y, classes


def split(name: str, x, y, test_fraction: float = TEST_FRACTION) -> Split:
    """A fixed, stratified-by-shuffle train/test split (the same on every run)."""
    x, y, classes = check(name, x, y)
    if not 0 < test_fraction < 1:
        raise DataError(f"the test fraction must lie between 0 and 1, got {test_fraction}")
    n_test = int(round(len(y) * test_fraction))
    if n_test < 1 or n_test >= len(y):
        raise DataError(f"{name}: {len(y)} examples are too few to split into a training "
                        f"and a test part")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    return Split(name, x[train], y[train], x[test], y[test], classes)


def check_labels(data: Split, classes: int) -> None:
    """Labels must index the network's classes (a network or saved parameters fix C)."""
    top = max(int(data.y_train.max()), int(data.y_test.max()))
    if top >= classes:
        raise DataError(f"{data.name}: label {top} is out of range: the network has "
                        f"{classes} classes (0..{classes - 1})")
