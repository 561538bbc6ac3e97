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
    _check_backend(backend)
    return _backend_sources(plan(derive(resolve(layer_or_name))), backend)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; available: {', '.join(BACKENDS)}")


def _backend_sources(kplan, backend: str) -> dict[str, str]:
    """file name -> text, for one backend, from a layer's kernel plan."""
    name = kplan.derivation.layer.name
    if backend == "c":
        from .c_backend import c_sources

        files = c_sources(kplan)
        files.pop("cdef")
        return files
    if backend == "jax":
        from .jax_backend import jax_source

        return {f"{name}.py": jax_source(kplan)}
    return {f"{name}.py": numpy_source(kplan)}


def emit(layer_or_name, out_dir, backend: str = "numpy") -> list[Path]:
    return _write(sources(layer_or_name, backend), _out_folder(out_dir))


def _out_folder(out_dir) -> Path:
    return make_folder(Path(out_dir).expanduser(), "the output folder",
                       "-o names a folder to write the sources into")


def _write(files: dict[str, str], folder: Path) -> list[Path]:
    written = []
    for fname, text in files.items():
        write_atomic(folder / fname, text)
        written.append(folder / fname)
    return written


def emit_all(out_dir, backends=BACKENDS) -> list[Path]:
    """Every built-in layer into out_dir/<backend>/, removing files no layer produces,
    so the folder is exactly what the generator makes (this is how generated/ is built).
    Each layer is derived and planned once for all the backends (three derivations of
    every built-in were most of the freshness test's 71 s)."""
    from derive.builtins import BUILTINS

    for backend in backends:
        _check_backend(backend)
    folders = {b: _out_folder(Path(out_dir) / b) for b in backends}
    expected = {b: set() for b in backends}
    written = []
    for name in BUILTINS:
        kplan = plan(derive(resolve(name)))
        for backend in backends:
            paths = _write(_backend_sources(kplan, backend), folders[backend])
            expected[backend].update(p.name for p in paths)
            written += paths
    for backend in backends:
        for stale in folders[backend].iterdir():
            if stale.is_file() and stale.name not in expected[backend]:
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
