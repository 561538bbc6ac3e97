"""The Python way in: a builder that writes spec statements and hands them to the same
parser as spec files, so both ways give the same validated Layer (and the same errors).

    layer = (LayerBuilder("dense", "affine map")
             .dims("N", "I", "J")
             .input("x[N, J]").param("W[I, J]", "b[I]").output("z[N, I]")
             .equation("z[n, i] = W[i, j] * x[n, j] + b[i]")
             .build())
"""
from __future__ import annotations

from .errors import SpecError
from .parser import parse_spec
from .spec import Layer


class LayerBuilder:
    def __init__(self, name: str, doc: str = ""):
        self._lines = [f"layer {name} {doc}".rstrip()]
        self._name = name

    def _add(self, keyword: str, items) -> "LayerBuilder":
        for item in items:
            if not isinstance(item, str) or "\n" in item or "#" in item:
                raise SpecError(f"{keyword}: expected one statement as a string without "
                                f"newlines or comments, got {item!r}", self._file)
        self._lines.append(f"{keyword} {', '.join(items)}".strip())
        return self

    @property
    def _file(self) -> str:
        return f"<LayerBuilder {self._name}>"

    def dims(self, *names: str):
        return self._add("dims", names)

    def input(self, *decls: str):
        return self._add("input", decls)

    def param(self, *decls: str):
        return self._add("param", decls)

    def target(self, *decls: str):
        return self._add("target", decls)

    def output(self, *decls: str):
        return self._add("output", decls)

    def intermediate(self, *decls: str):
        return self._add("intermediate", decls)

    def loss(self, name: str):
        return self._add("loss", [name])

    def given(self, condition: str):
        return self._add("given", [condition])

    def equation(self, *equations: str):
        for eq in equations:
            self._add("", [eq])
        return self

    def text(self) -> str:
        """The spec text this builder stands for (what a spec file would hold)."""
        return "\n".join(self._lines) + "\n"

    def build(self) -> Layer:
        return parse_spec(self.text(), self._file)
