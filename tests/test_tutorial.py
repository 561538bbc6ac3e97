"""The tutorial notebook (docs/tutorial.ipynb) runs from top to bottom in a fresh kernel:
a new layer, its derivation, both backends emitted and run, and a claim verified (its
cells assert what they show)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def test_tutorial_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="the docs extra: pip install -e '.[docs]'")
    nbclient = pytest.importorskip("nbclient", reason="the docs extra: pip install -e '.[docs]'")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel starts in the repository root, so it imports this tree's toolkit
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    # the notebook's working folder (tempfile.mkdtemp, kept for the reader) goes in this
    # test's tmp_path: a run of the suite left one in /tmp each time
    client.execute(env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)})
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs)
    assert "backward, from the upstream gradient dy:" in text
    assert "HOLDS (symbolic)" in text and "FALSE" in text
    assert text.count("relative error") == 5
    latex = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
             if "text/latex" in out.get("data", {})]
    assert latex, "the Derivation cell shows LaTeX"
