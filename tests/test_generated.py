"""generated/ is exactly what `backprop emit --all -o generated` produces."""
import difflib
from pathlib import Path

from codegen.emitter import BACKENDS, emit_all

ROOT = Path(__file__).resolve().parent.parent


def test_generated_sources_are_fresh(tmp_path):
    emit_all(tmp_path, BACKENDS)
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(ROOT / "generated"): p.read_text()
                 for p in (ROOT / "generated").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    problems = []
    for name in sorted(set(fresh) | set(committed)):
        if name not in committed:
            problems.append(f"missing from generated/: {name}")
        elif name not in fresh:
            problems.append(f"stale file in generated/ (no layer makes it): {name}")
        elif fresh[name] != committed[name]:
            diff = difflib.unified_diff(committed[name].splitlines(), fresh[name].splitlines(),
                                        f"generated/{name}", f"fresh/{name}", lineterm="", n=1)
            problems.append("\n".join(list(diff)[:40]))
    assert not problems, ("generated/ is stale; run `backprop emit --all -o generated`\n"
                          + "\n".join(problems))


def test_generated_modules_import_and_run():
    """The committed files are standalone modules with the documented contract."""
    import importlib.util

    import numpy as np

    path = ROOT / "generated" / "numpy" / "dense.py"
    spec = importlib.util.spec_from_file_location("generated_dense", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x, W, b = np.ones((2, 3)), np.ones((5, 3)), np.zeros(5)
    z = mod.forward(x, W, b)["z"]
    assert z.shape == (2, 5) and np.all(z == 3)
    g = mod.backward(x, W, b, np.ones((2, 5)))
    assert set(g) == {"dx", "dW", "db"} and np.all(g["db"] == 2)
