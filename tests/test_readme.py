"""Every code block of README.md and docs/ runs as written, in page order, and prints what
the page shows.

How a fenced block is treated, by its language:

- `python`: executed; the blocks of one page share one namespace and one working folder;
- `pycon`: a doctest in that namespace (`>>>` lines run, the lines after them are the
  output; `...` matches anything);
- `console`: each `$ command` runs in bash in the page's folder (`backprop` is this tree's
  CLI); the lines after it are its output (stdout then stderr; a line `...` matches any
  lines, `...` inside a line any text); with no output shown it must exit 0;
- `title="NAME"` on any block writes its text to NAME in the page's folder first;
- an untitled block whose first statement is `layer NAME` is a spec: it must parse (a
  titled one is a file, and the commands that read it show what they print);
- `sh` (installing packages, `backprop bench`), `c` (excerpts of generated headers),
  `text` (tables and printouts) and `yaml` are shown, not run.
"""
import doctest
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from derive import parse_spec
from derive.builtins import builtin_text

from .oracles import require_oracle

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$",
                   re.M | re.S)
RUN = {"python", "pycon", "console"}
# A page's examples from PyTorch or JAX need them: skipped without, as their tests are.
FRAMEWORK_IMPORT = re.compile(r"^(?:import|from) (torch|jax)\b", re.M)
SHOWN = {"sh", "c", "text", "yaml", ""}


def blocks(page: Path):
    """(language, title, text) of each fenced block of a page, in order."""
    for m in FENCE.finditer(page.read_text(encoding="utf-8")):
        info = m.group("info").strip()
        lang = info.split()[0] if info and not info.startswith(("{", "title")) else ""
        title = re.search(r'title="([^"]+)"', info)
        indent = len(m.group("indent"))
        body = "\n".join(line[indent:] for line in m.group("body").splitlines()) + "\n"
        yield lang, title.group(1) if title else None, body


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_block_runs_and_prints_what_is_shown(page, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("generated", "derive"):          # so pages may name repository paths
        (work / name).symlink_to(ROOT / name)
    shim = tmp_path / "bin" / "backprop"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m codegen.cli \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    namespace = {"__name__": f"docs_{page.stem}"}
    where = os.getcwd()
    os.chdir(work)
    try:
        for n, (lang, title, text) in enumerate(blocks(page), start=1):
            label = f"{page_id(page)} block {n} ({lang or 'plain'})"
            assert lang in RUN | SHOWN, f"{label}: unknown language"
            if title:
                (work / title).write_text(text, encoding="utf-8")
            first = next((line for line in text.splitlines()
                          if line.strip() and not line.lstrip().startswith("#")), "")
            if lang in ("", "text") and first.startswith("layer ") and not title:
                parse_spec(text, label)
            elif lang == "python":
                for module in FRAMEWORK_IMPORT.findall(text):   # an optional oracle
                    require_oracle(module)
                exec(compile(text, label, "exec"), namespace)   # our own documentation
            elif lang == "pycon":
                run_doctest(text, namespace, label)
            elif lang == "console":
                run_console(text, env, work, label)
    finally:
        os.chdir(where)


def run_doctest(text, namespace, label):
    test = doctest.DocTestParser().get_doctest(text, namespace, label, label, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    runner.run(test, out=out.append, clear_globs=False)
    assert runner.summarize(verbose=False).failed == 0, "".join(out)


def run_console(text, env, cwd, label):
    commands = []                   # (command, [expected output lines])
    for line in text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"{label}: a console block starts with '$ command'"
            commands[-1][1].append(line)
    for command, shown in commands:
        r = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=600)
        printed = r.stdout + r.stderr
        if not any(line.strip() for line in shown):
            assert r.returncode == 0, f"{label}: `{command}` failed:\n{printed}"
            continue
        assert matches(shown, printed), \
            f"{label}: `{command}` printed\n{printed}\nbut the page shows\n" + "\n".join(shown)


def matches(shown, printed) -> bool:
    """The printed text against the lines shown: `...` alone matches any lines, `...`
    within a line any text; trailing blank lines and spaces do not count."""
    pattern = ""
    for line in shown:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += ".*".join(map(re.escape, line.rstrip().split("..."))) + r"[ ]*\n"
    actual = "\n".join(line.rstrip() for line in printed.rstrip().splitlines()) + "\n"
    return re.fullmatch(pattern, actual) is not None


def test_every_page_has_blocks_that_run():
    """A page that only shows never proves anything: each page with code runs some."""
    for page in PAGES:
        langs = [lang for lang, _, _ in blocks(page)]
        if langs:
            assert RUN & set(langs) or page.parent.name == "internals", page_id(page)


def test_spec_example_derives_as_the_builtin_network():
    """The spec language page shows mlp2 written out as one layer; the built-in composes
    it from dense, sigmoid and softmax_cross_entropy: the same equations and gradients."""
    from derive import derive
    from derive.builtins import builtin

    spec = next(text for page in PAGES for lang, _, text in blocks(page)
                if text.startswith("layer mlp2"))
    flat, composed = derive(parse_spec(spec)), derive(builtin("mlp2"))
    assert builtin_text("mlp2").startswith("network mlp2")
    assert [(e.target, e.indices, e.rhs) for e in flat.layer.equations] == \
        [(e.target, e.indices, e.rhs) for e in composed.layer.equations]
    assert flat.layer.describe() == composed.layer.describe()
    assert [(s.tensor, s.indices, s.expr, s.given) for s in flat.steps] == \
        [(s.tensor, s.indices, s.expr, s.given) for s in composed.steps]


def test_the_ci_test_command_installs_the_docs_extra():
    """.ci/run runs the first line of the block after the marker; the docs tests need the
    docs extra installed by it, the training tests the train extra."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme.split("<!-- ci: test command -->", 1)[1]
    command = re.search(r"```\n(.*?)\n", after).group(1)
    assert "docs" in command and "train" in command and "pytest" in command


def test_the_ci_test_command_runs_two_workers_it_installs():
    """The suite runs on two pytest-xdist workers (-n 2; a 2-core CI machine) that keep
    tests marked xdist_group together (--dist loadgroup), and the test extra the command
    installs brings pytest-xdist."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"```\n(.*?)\n", readme.split("<!-- ci: test command -->", 1)[1])
    assert re.search(r"pytest .*-n 2 --dist loadgroup\b", command.group(1))
    assert "test" in command.group(1)
    test_extra = re.search(r"^test = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(),
                           re.M | re.S).group(1)
    assert '"pytest-xdist>=' in test_extra, test_extra


def test_shown_output_must_match():
    """The comparison can fail: a changed line, a missing line or extra output."""
    printed = "layer x\n\nforward:\n  y = 2*x\n"
    assert matches(["layer x", "", "forward:", "  y = 2*x"], printed)
    assert matches(["layer x", "...", "  y = 2*..."], printed)
    assert not matches(["layer x", "", "forward:", "  y = 3*x"], printed)
    assert not matches(["layer x", "forward:", "  y = 2*x"], printed)
    assert not matches(["layer x"], printed)


def test_framework_examples_ask_for_their_oracle():
    """A block importing torch or jax asks require_oracle first (skipped without it, a
    failure in CI); other blocks do not."""
    assert FRAMEWORK_IMPORT.findall("import torch\nx = 1\nfrom jax import numpy\n") == \
        ["torch", "jax"]
    assert FRAMEWORK_IMPORT.findall("import codegen  # torch\nimport torchvision2\n") == []
    page = ROOT / "docs" / "frameworks.md"
    assert {m for lang, _, text in blocks(page) if lang == "python"
            for m in FRAMEWORK_IMPORT.findall(text)} == {"torch", "jax"}
