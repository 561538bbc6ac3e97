"""generated/ is exactly what `backprop emit --all -o generated` produces."""
import re
import ast
import difflib
from pathlib import Path

from codegen.emitter import BACKENDS, emit_all, sources

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


# Argument checks loop over the arguments (a handful), derived sizes over the dimensions,
# and shifted reads (_window, _take) over an array's axes, never over data: the only
# functions of a generated module allowed a Python loop.
ARGUMENT_CHECKS = {"_prepare", "_indices", "_shape", "_derived", "_window", "_take"}
LOOPS = (ast.For, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
ELEMENTWISE_IN_PYTHON = {"vectorize", "frompyfunc", "apply_along_axis", "fromiter", "map",
                         "filter"}


def python_loops(source):
    """(function, line, what) of every Python loop in the module's computing functions."""
    found = []
    functions = [f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef)]
    assert {"forward", "backward"} <= {f.name for f in functions}
    for f in functions:
        if f.name in ARGUMENT_CHECKS:
            continue
        for node in ast.walk(f):
            if isinstance(node, LOOPS):
                found.append((f.name, node.lineno, type(node).__name__))
            elif isinstance(node, ast.Call):
                called = getattr(node.func, "attr", getattr(node.func, "id", None))
                if called in ELEMENTWISE_IN_PYTHON:
                    found.append((f.name, node.lineno, called))
    return found


def test_numpy_modules_use_no_python_loops():
    """README: contractions go through einsum/matmul, never Python loops.  Every built-in's
    module, a user layer's and a scatter-add's (embedding) are read as syntax trees.  The
    built-ins' are read from generated/numpy (test_generated_sources_are_fresh holds them
    equal to what the generator makes), not derived a second time."""
    from derive import parse_spec
    from derive.builtins import BUILTINS, builtin

    from .oracles import GATED
    from .test_labels import EMBED_SEQ

    committed = lambda layer: (ROOT / "generated" / "numpy" / f"{layer.name}.py").read_text()
    made = lambda layer: sources(layer)[f"{layer.name}.py"]
    layers = [(builtin(n), committed) for n in BUILTINS] + [
        (parse_spec(GATED), made), (parse_spec(EMBED_SEQ), made)]
    for layer, source_of in layers:
        source = source_of(layer)
        loops = python_loops(source)
        if any(t.initial for t in layer.tensors.values()):
            # a recurrence steps through time, one loop over t per pass (each step's
            # contractions still einsums); no other loop
            lines = source.splitlines()
            assert len(loops) == 2 and all(
                kind == "For" and re.match(r"\s*for \w+ in (reversed\()?range\(",
                                           lines[line - 1]) for _, line, kind in loops), \
                (layer.name, loops)
            continue
        assert loops == [], layer.name
    assert python_loops("def forward(x):\n    return [v for v in x]\n"
                        "def backward(x):\n    return x\n") == [("forward", 2, "ListComp")]


def test_compiled_templates_are_kept_between_processes():
    """The kernel template's compiled code is on disk once it has been used, so the next
    process's first kernel does not compile the template again (Jinja's bytecode cache)."""
    from templates import environment
    env = environment()
    env.get_template("c_source.c.j2")
    source, filename, _ = env.loader.get_source(env, "c_source.c.j2")
    bucket = env.bytecode_cache.get_bucket(env, "c_source.c.j2", filename, source)
    assert bucket.code is not None
