"""The suite itself: collecting it builds nothing (the private-cache fixture is not active
yet at collection, so a load there would write into the user's cache)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_collection_writes_no_kernel_cache(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "BACKPROP_CACHE": str(cache), "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider", "tests"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert " tests collected" in r.stdout or "tests collected" in r.stdout, r.stdout[-500:]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written


def test_hypothesis_is_derandomized_in_ci():
    """CI=true (set by .ci/run) selects the derandomized profile; locally it is random."""
    code = ("import tests.conftest; from hypothesis import settings; "
            "print(settings.default.derandomize)")
    local = {n: v for n, v in os.environ.items() if n not in ("CI", "TF_BUILD")}
    for env, want in (({**local, "CI": "true"}, "True"), (local, "False")):
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, env=env, timeout=300)
        assert r.stdout.strip() == want, (env.get("CI"), r.stderr)
    assert 'export CI="${CI:-true}"' in (ROOT / ".ci" / "run").read_text()
    assert "export BACKPROP_REQUIRE_ORACLES=1" in (ROOT / ".ci" / "run").read_text()


def test_what_the_tests_prove_names_real_tests():
    """docs/tests.md maps README promises to tests: every file and test it names exists."""
    import ast
    import re

    text = (ROOT / "docs" / "tests.md").read_text()
    defined = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined[path.name] = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    every = set().union(*defined.values())
    named_files = set(re.findall(r"`(test_\w+\.py)", text))
    assert named_files and named_files <= set(defined), named_files - set(defined)
    for file, test in re.findall(r"`(test_\w+\.py)::(test_\w+)`", text):
        assert test in defined[file], f"{file}::{test}"
    bare = set(re.findall(r"`(test_\w+)`", text))
    assert bare <= every, bare - every


WHERE_AM_I = """
import os


def test_where(tmp_path):
    (tmp_path.parent.parent / os.environ["PYTEST_XDIST_WORKER"]).write_text(
        os.environ["BACKPROP_CACHE"])
"""


def test_xdist_workers_share_one_kernel_cache(tmp_path):
    """README's command runs two pytest-xdist workers: both use the same private kernel
    cache (a kernel one built, the other loads), and it is not the user's.  (--dist each:
    each worker runs the one test.)"""
    (tmp_path / "test_where.py").write_text(WHERE_AM_I)
    base = tmp_path / "base"
    env = {n: v for n, v in os.environ.items()       # not this run's cache, nor its worker
           if n != "BACKPROP_CACHE" and not n.startswith("PYTEST_")}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "each",
                        "-p", "tests.conftest", "-p", "no:cacheprovider",
                        f"--basetemp={base}", str(tmp_path / "test_where.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    seen = {f.name: f.read_text() for f in base.iterdir() if f.name.startswith("gw")}
    assert sorted(seen) == ["gw0", "gw1"], seen
    assert len(set(seen.values())) == 1, seen
    assert Path(seen["gw0"]).is_relative_to(base), seen
