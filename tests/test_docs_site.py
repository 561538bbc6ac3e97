"""The documentation site builds with `mkdocs build --strict` (broken links, missing
images, docstrings the API pages cannot read: all errors), every page is in the
navigation, and the README's links into docs/ lead somewhere (a section link to a heading
of its page)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    api = (site / "python-api" / "index.html").read_text(encoding="utf-8")
    # the reference is generated from docstrings, not just headings
    assert "Kernels for a Layer, a built-in name or a spec file path" in api
    assert (site / "img" / "neuron.png").is_file()


def test_every_page_is_in_the_navigation():
    yaml = pytest.importorskip("yaml", reason="the docs extra: pip install -e '.[docs]'")
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def pages(items):
        for item in items:
            for value in item.values():
                yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(nav))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert listed == on_disk


def test_readme_links_lead_to_files():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?:docs/)[^)#]+)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), link
    assert "docs/tutorial.ipynb" in links
    assert len(readme.splitlines()) < 200


def test_readme_section_links_lead_to_headings():
    """docs/PAGE.md#anchor in the README names a heading of that page, slugged as the
    site's table of contents slugs it (mkdocs checks links between pages, not the README's)."""
    from markdown.extensions.toc import slugify
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]+)#([^)]+)\)", readme)
    assert links
    for page, anchor in links:
        headings = re.findall(r"^#+\s+(.+?)\s*$", (ROOT / page).read_text(encoding="utf-8"),
                              re.MULTILINE)
        assert anchor in {slugify(h, "-") for h in headings}, (page, anchor)
