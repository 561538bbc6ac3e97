"""The `backprop` command, run as a user runs it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from derive.builtins import BUILTINS


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "codegen.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_list():
    r = run("list")
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == list(BUILTINS)


def test_derive_builtin_prints_formulas():
    r = run("derive", "mlp2")
    assert r.returncode == 0, r.stderr
    assert "dz1[n, h] = (1 - a1[n, h])*a1[n, h]*sum_c(W2[c, h]*dz2[n, c])" in r.stdout
    assert "given sum(t[n, c], c) = 1" in r.stdout


def test_derive_spec_file(tmp_path):
    spec = tmp_path / "scale.bp"
    spec.write_text("layer scale\ndims N\ninput x[N]\nparam s\noutput y[N]\ny[n] = s * x[n]\n")
    r = run("derive", str(spec))
    assert r.returncode == 0, r.stderr
    assert "dx[n] = s*dy[n]" in r.stdout
    assert "ds = sum_n(dy[n]*x[n])" in r.stdout


def test_emit_writes_an_importable_module(tmp_path):
    r = run("emit", "softmax", "--backend", "numpy", "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    module = tmp_path / "softmax.py"
    assert module.exists()
    check = subprocess.run(
        [sys.executable, "-c",
         "import numpy as np, softmax as m; y = m.forward(np.zeros((2, 4)))['y'];"
         "assert np.allclose(y, 0.25); print('ok')"],
        cwd=tmp_path, capture_output=True, text=True)
    assert check.stdout.strip() == "ok", check.stderr


@pytest.mark.parametrize("args, words", [
    (("derive", "no_such_layer"), "neither a built-in layer"),
    (("derive", "missing.bp"), "cannot read spec file"),
    (("emit", "dense", "--backend", "numpy"), "required: -o"),
    (("emit", "-o", "x"), "either NAME_OR_FILE or --all"),
    (("frobnicate",), "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(args, words):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert r.stdout == ""


def test_bad_spec_file_names_line_and_column(tmp_path):
    spec = tmp_path / "bad.bp"
    spec.write_text("layer bad\ndims N\ninput x[N]\noutput y[N]\ny[n] = sinh(x[n])\n")
    r = run("derive", str(spec))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{spec}:5:8: unknown function 'sinh'" in lines[0]


def test_tour():
    r = run("tour")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for text in ("yhat   = 0.598688", "L      = 0.513015", "dL/dz  = -0.401312",
                 "dL/dw  = -0.200656", "emitted mlp2.py", "tour passed"):
        assert text in out
    assert out.count(" ok (< 1e-6)") == 5
    # the seed's point: dz = yhat - y only when y = 1, said next to the general form
    assert "dz = y*yhat - y is the general form; it is the textbook yhat - y only when y = 1" \
        in out
    # where the emitted module is, and a next step
    kept = next(line.strip() for line in out.splitlines() if line.strip().endswith("mlp2.py")
                and "emitted" not in line)
    assert Path(kept).is_file() and "def backward(" in Path(kept).read_text()
    assert out.rstrip().splitlines()[-2].startswith("Next: ")


def test_emit_c_writes_header_and_source(tmp_path):
    r = run("emit", "relu", "--backend", "c", "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.c", "relu.h"]
    assert "int bp_relu_backward_f32(" in (tmp_path / "relu.h").read_text()


def test_help_is_quick_to_import():
    """`backprop --help` starts without SymPy; its list of backends is codegen.emit's."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import sys, codegen.cli; "
                        "print('sympy' in sys.modules)"], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr
    from codegen.cli import BACKENDS
    from codegen.emitter import BACKENDS as EMIT_BACKENDS
    assert BACKENDS == EMIT_BACKENDS


def test_a_closed_pipe_is_not_an_error():
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "codegen.cli", "derive", "mlp2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()        # the reader is gone before the command writes (it imports SymPy)
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "Broken pipe" not in err, err


def test_version():
    from codegen.version import VERSION

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"backprop {VERSION}"


def test_help_texts_name_arguments_and_environment():
    top = run("--help").stdout
    for var in ("BACKPROP_CACHE", "BACKPROP_CFLAGS", "BACKPROP_BLAS", "CC "):
        assert var in top
    derive = " ".join(run("derive", "--help").stdout.split())       # unwrapped
    assert "a built-in layer (see `backprop list`) or the path of a spec file" in derive
    assert "folder to write into" in run("emit", "--help").stdout
    assert "seed of the random arrays" in run("tour", "--help").stdout
    verify = run("verify", "--help").stdout
    assert "\\frac{\\partial L}{\\partial z} = \\hat{y} - y" in verify      # LaTeX
    assert "dz[n, i] = (y[n, i] - t[n, i]) / N" in verify                  # spec language


def test_emit_into_a_file_says_it_is_one(tmp_path):
    a_file = tmp_path / "passwd"
    a_file.write_text("")
    r = run("emit", "dense", "-o", str(a_file))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"cannot use {a_file} as the output folder: it, or a folder above it, is a file" \
        in r.stderr and "Errno" not in r.stderr


def test_emitted_files_are_readable_by_others_under_umask_022(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import os, sys, codegen.cli; os.umask(0o022); "
                        f"sys.exit(codegen.cli.main(['emit', 'relu', '--backend', 'c', "
                        f"'-o', {str(tmp_path)!r}]))"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("relu.c", "relu.h"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("setting, reason", [
    ("/proc/backprop-x", "no such file or directory"),
    ("FILE", "it, or a folder above it, is a file"),
    ("FILE/below", "it, or a folder above it, is a file"),
])
def test_an_unusable_cache_names_the_setting_and_what_to_do(tmp_path, setting, reason):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    value = setting.replace("FILE", str(a_file))
    code = "import codegen; codegen.load('dense')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "BACKPROP_CACHE": value})
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0
    assert f"cannot use {value} as the kernel cache (BACKPROP_CACHE={value}): {reason}; " \
           f"point BACKPROP_CACHE (or the cache= argument) at a folder you can write" in last


def test_the_cache_setting_expands_the_home_folder(tmp_path):
    from codegen.loader import cache_dir

    env = {**os.environ, "HOME": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    code = "import codegen.loader as l; print(l.cache_dir('~/bp-cache'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.stdout.strip() == str(tmp_path / "bp-cache"), r.stderr
    assert (tmp_path / "bp-cache").is_dir() and not (tmp_path / "~").exists()
    with pytest.raises(OSError, match=r"cache='/proc/x'\)"):
        cache_dir("/proc/x")
