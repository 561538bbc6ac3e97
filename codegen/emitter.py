"""Writing generated sources to disk: write to a temporary file, then rename, so a reader
never sees half a file."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from derive import derive
from derive.builtins import resolve

from .folders import make_folder
from .numpy_backend import numpy_source
from .plan import plan

BACKENDS = ("numpy", "c", "jax")


def sources(layer_or_name, backend: str = "numpy") -> dict[str, str]:
    """file name -> text of the generated sources of one layer."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; available: {', '.join(BACKENDS)}")
    layer = resolve(layer_or_name)
    kplan = plan(derive(layer))
    if backend == "c":
        from .c_backend import c_sources

        files = c_sources(kplan)
        files.pop("cdef")
        return files
    if backend == "jax":
        from .jax_backend import jax_source

        return {f"{layer.name}.py": jax_source(kplan)}
    return {f"{layer.name}.py": numpy_source(kplan)}


def emit(layer_or_name, out_dir, backend: str = "numpy") -> list[Path]:
    out_dir = make_folder(Path(out_dir).expanduser(), "the output folder",
                          "-o names a folder to write the sources into")
    written = []
    for fname, text in sources(layer_or_name, backend).items():
        path = out_dir / fname
        write_atomic(path, text)
        written.append(path)
    return written


def emit_all(out_dir, backends=BACKENDS) -> list[Path]:
    """Every built-in layer into out_dir/<backend>/, removing files no layer produces,
    so the folder is exactly what the generator makes (this is how generated/ is built)."""
    from derive.builtins import BUILTINS

    written = []
    for backend in backends:
        folder = Path(out_dir) / backend
        expected = set()
        for name in BUILTINS:
            for path in emit(name, folder, backend):
                expected.add(path.name)
                written.append(path)
        for stale in folder.iterdir():
            if stale.is_file() and stale.name not in expected:
                stale.unlink()
    return written


def write_atomic(path: Path, text: str) -> None:
    # Created with mode 0666 less the umask, as open() would (mkstemp's 0600 would make
    # emitted sources private to their writer).
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
