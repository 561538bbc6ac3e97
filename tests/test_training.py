"""backprop train: a network trained with its own kernels and step layers."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codegen.datasets import DataError, load_data, split
from codegen.training import Trainer, batch_order, init_params, roles, sizes_for, train
from derive.builtins import builtin

from .oracles import require_oracle

# found, not imported: importing scikit-learn loads its own OpenMP runtime into the test
# process (tests/test_threads.py counts the runtimes); codegen.datasets reads its file
if importlib.util.find_spec("sklearn") is None:
    pytest.skip("the train extra: pip install -e '.[train]'", allow_module_level=True)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "codegen.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


def test_digits_are_sklearns_without_importing_it():
    """The data of sklearn.datasets.load_digits, read from the file scikit-learn ships,
    without importing scikit-learn (which loads a second OpenMP runtime)."""
    code = ("import sys, numpy as np; from codegen.datasets import _digits; x, y = _digits(); "
            "assert 'sklearn' not in sys.modules; from sklearn.datasets import load_digits; "
            "d = load_digits(); assert np.array_equal(x, d.data) and "
            "np.array_equal(y, d.target); print(x.shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.stdout.strip() == "(1797, 64)", r.stderr


def test_digits_split_is_fixed(digits):
    again = load_data("digits")
    assert (len(digits.y_train), len(digits.y_test), digits.classes) == (1438, 359, 10)
    assert np.array_equal(digits.y_test, again.y_test)
    assert digits.x_train.max() == 1.0          # pixels 0..16 scaled to 0..1


def test_two_layer_network_reaches_97_percent_on_digits(digits):
    _, history = train(builtin("mlp2"), digits, "adam", epochs=30, batch=32, lr=0.003,
                       sizes={"H": 64})
    assert history.epochs[-1]["test_accuracy"] >= 0.97
    assert history.epochs[0]["test_accuracy"] < 0.9          # it did learn


def test_numpy_backend_and_sgd_train_the_same(digits):
    """The NumPy kernels and the C kernels run the same computation: the same losses up
    to float32 rounding, with either step layer."""
    for optimizer, lr in (("sgd", 2.0), ("adam", 0.02)):
        runs = [train(builtin("mlp2"), digits, optimizer, 1, 64, lr, backend=b,
                      sizes={"H": 16})[1].step_loss for b in ("c", "numpy")]
        assert len(runs[0]) == 23
        np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)
        assert runs[0][-1] < 0.8 * runs[0][0]


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.003), ("sgd", 0.5)])
def test_same_loss_curve_as_pytorch(digits, optimizer, lr):
    """mlp2 in PyTorch (F.linear, sigmoid, cross_entropy, torch.optim) from the same
    initial weights on the same batches: the first 100 losses agree.  In float64 they agree
    to 1e-12 (the same formulas).  In float32 each run rounds at every operation (unit
    roundoff 6e-8) in its own order: a sum of 32 x 64 products, the softmax and Adam's
    division; over 100 steps the observed gap is 3e-7 relative, so rtol 1e-5 (some 160
    roundoffs) separates rounding from a wrong formula, which moves the loss by far more
    (a step with beta2 = 0.99 instead of 0.999 differs by 1e-3 within 100 steps)."""
    require_oracle("torch")
    from bench.train_speed import torch_mlp2

    for dtype, rtol in (("float32", 1e-5), ("float64", 1e-12)):
        layer = builtin("mlp2")
        trainer = Trainer(layer, optimizer, lr, "c", dtype)
        r = trainer.roles
        init = init_params(layer, r, sizes_for(layer, r, digits, {"H": 64}, None), 0)
        _, ours = train(layer, digits, optimizer, 3, 32, lr, dtype=dtype, init=init)
        theirs, _ = torch_mlp2(init, digits, 3, 32, lr, optimizer, dtype=dtype)
        assert len(ours.step_loss) >= 100
        np.testing.assert_allclose(ours.step_loss[:100], theirs[:100], rtol=rtol)


def test_batches_cover_every_example_once_per_epoch():
    epochs = list(batch_order(10, 4, 2, seed=1))
    assert [len(b) for b in epochs[0]] == [4, 4, 2]
    for batches in epochs:
        assert sorted(np.concatenate(batches)) == list(range(10))
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))


def test_init_is_torch_linear_and_labels_targets_train():
    """Weights and biases uniform in +-1/sqrt(fan_in); a network with integer labels as
    its target (softmax_cross_entropy_labels) trains as well."""
    net = builtin("mlp2")
    r = roles(net)
    p = init_params(net, r, dict(D=400, H=100, C=10), seed=3)
    assert p["W1"].shape == (100, 400) and 0.04 < np.abs(p["W1"]).max() <= 1 / 20
    assert 0.04 < np.abs(p["b1"]).max() <= 1 / 20 and np.abs(p["b2"]).max() <= 1 / 10
    from derive import parse_spec

    labels = parse_spec("network lab\nuse dense (x = x, z = z)\n"
                        "use softmax_cross_entropy_labels as ce (z = z)\n")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    data = split("blobs", x, (x[:, 0] > 0).astype(int))
    _, h = train(labels, data, "sgd", 20, 16, 0.5, backend="numpy")
    assert h.epochs[-1]["test_accuracy"] > 0.9


def test_cli_trains_plots_saves_and_loads(tmp_path):
    r = cli("train", "mlp2", "--data", "digits", "--size", "H=16", "--optimizer", "adam",
            "--epochs", "2", "--batch", "64", "--lr", "0.01", "--plot", "curve.png", "--save",
            "p.npz", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("mlp2 on digits (1438 training, 359 test examples, 10 classes)")
    assert lines[1].split() == ["epoch", "train", "loss", "test", "loss", "test", "acc",
                                "seconds"]
    accuracy = lines[3].split()[3]
    assert f"test accuracy {accuracy} after 2 epochs (46 steps)" in r.stdout
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    with np.load(tmp_path / "p.npz") as f:
        assert sorted(f.files) == ["W1", "W2", "b1", "b2"] and f["W1"].shape == (16, 64)
    again = cli("train", "mlp2", "--load", "p.npz", "--epochs", "0", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"test accuracy {accuracy} (no training" in again.stdout   # sizes from the file


def test_csv_and_npz_data(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "d.csv").write_text("a,b,label\n" + "\n".join(
        f"{a},{b},{c}" for (a, b), c in zip(x, y)) + "\n")
    for name in ("d.npz", "d.csv"):
        r = cli("train", "mlp2", "--data", name, "--size", "H=4", "--epochs", "30",
                "--lr", "0.05", "--backend", "numpy", "--quiet", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "(96 training, 24 test examples, 2 classes)" in r.stdout
        assert float(r.stdout.split("test accuracy ")[1].split("%")[0]) >= 90


BAD_DATA = [
    ("nan.npz", dict(x=[[0.0, np.nan], [1, 2], [3, 4]], y=[0, 1, 0]),
     "nan.npz: features contain NaN or infinity (first at example 0, feature 1)"),
    ("shape.npz", dict(x=np.zeros((4, 2, 2)), y=[0, 1, 0, 1]),
     "shape.npz: features x must be a 2-D array (examples, features), got shape (4, 2, 2)"),
    ("rows.npz", dict(x=np.zeros((4, 2)), y=[0, 1, 0]),
     "rows.npz: 4 examples in x but 3 labels in y"),
    ("neg.npz", dict(x=np.zeros((4, 2)), y=[0, 1, -1, 1]),
     "neg.npz: labels must be class numbers 0, 1, 2, ...; example 2 has -1"),
    ("frac.npz", dict(x=np.zeros((4, 2)), y=[0, 1.5, 1, 1]),
     "frac.npz: labels must be class numbers 0, 1, 2, ...; example 1 has 1.5"),
    ("keys.npz", dict(features=np.zeros((4, 2))),
     "keys.npz: expected arrays 'x' (features) and 'y' (labels), found features"),
    ("empty.csv", "", "empty.csv: the file is empty"),
    ("ragged.csv", "1,2,0\n3,1\n", "ragged.csv: row 2 has 2 columns, the first has 3"),
    ("word.csv", "1,2,0\n3,x,1\n", "word.csv: not a number: could not convert string to float: 'x'"),
    ("header.csv", "a,b,label\n", "header.csv: a header but no rows"),
    ("data.txt", "1,2,0\n", "data.txt: --data takes 'digits', a .npz file"),
]


@pytest.mark.parametrize("name, content, message", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_is_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, dict):
        np.savez(path, **content)
    else:
        path.write_text(content)
    with pytest.raises(DataError) as info:
        load_data(str(path))
    assert str(info.value) .startswith(str(tmp_path / message.split(": ", 1)[0]) + ": ")
    assert message.split(": ", 1)[1] in str(info.value) and "\n" not in str(info.value)


def test_cli_errors_are_one_line(tmp_path):
    np.savez(tmp_path / "big.npz", x=np.zeros((10, 64)), y=np.arange(10) % 2)
    np.savez(tmp_path / "p.npz", W1=np.zeros((8, 3)), b1=np.zeros(8), W2=np.zeros((2, 8)),
             b2=np.zeros(2))
    cases = [
        (["mlp2", "--data", "missing.csv"], "backprop: missing.csv: no such file"),
        (["mlp2"], "backprop: mlp2: give the size of H (e.g. --size H=64)"),
        (["mlp2", "--size", "Q=3"], "backprop: --size Q: mlp2 has no dimension Q"),
        (["dense", "--size", "I=3"], "backprop: cannot train dense: it has no loss"),
        (["mlp2", "--data", "big.npz", "--load", "p.npz"],
         "backprop: loaded W1 has D = 3, but the data's features give D = 64"),
        (["mlp2", "--size", "H=4", "--lr", "-1"], "backprop: --lr must be positive, got -1.0"),
        (["mlp2", "--size", "H=4", "--batch", "0"], "backprop: --epochs must be at least 0 "
                                                    "and --batch at least 1"),
    ]
    for args, message in cases:
        r = cli("train", *args, "--quiet", "--backend", "numpy", cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith(message), (args, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr


def test_labels_beyond_the_saved_classes_are_refused(tmp_path, digits):
    np.savez(tmp_path / "p.npz", W1=np.zeros((4, 2)), b1=np.zeros(4), W2=np.zeros((2, 4)),
             b2=np.zeros(2))
    np.savez(tmp_path / "three.npz", x=np.zeros((10, 2)), y=np.arange(10) % 3)
    r = cli("train", "mlp2", "--data", "three.npz", "--load", "p.npz", "--quiet", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == "backprop: loaded W2 has C = 2, but the data's classes give C = 3\n"
