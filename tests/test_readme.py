"""The README's Python example runs as written, and its spec example is the built-in."""
import re
from pathlib import Path

from derive.builtins import builtin_text

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_python_example_runs():
    (code,) = blocks("python")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)   # our own documentation
    assert set(namespace["g"]) == {"dx", "dW1", "db1", "dW2", "db2"}
    assert str(namespace["d"].gradients["W"].expr) == "Sum(dz[n, i]*x[n, j], (n, 0, N - 1))"


def test_spec_example_is_the_builtin():
    spec = next(b for b in blocks("") if b.startswith("layer mlp2"))
    assert spec == builtin_text("mlp2")
