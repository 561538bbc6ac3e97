"""Jinja2 templates of everything generated (kernels and documents), and the one
environment that renders them: StrictUndefined (a missing variable is an error) and
trim_blocks/lstrip_blocks so templates can be indented for people.  Package data, so
installs carry the templates."""
from __future__ import annotations

import functools
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).parent


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_guard_openmp,
        bytecode_cache=_bytecode_cache(),
    )
    env.filters["pyrepr"] = repr
    return env


def _bytecode_cache():
    """Compiled templates kept between processes, in Jinja's own per-user temporary folder
    (each entry checked against its template's source, written atomically): compiling the
    kernel templates took 0.8 s of a process's first kernel (an LSTM's 3.2 s)."""
    try:
        return jinja2.FileSystemBytecodeCache()
    except (RuntimeError, OSError):       # no safe temporary folder: compile each time
        return None


OMP_PRAGMA = "#pragma omp "


def _guard_openmp(value):
    """Every printed `#pragma omp X` becomes `BP_OMP(X)`, a macro (c_source.c.j2) that is
    the pragma under OpenMP and nothing without it, so strict builds without -fopenmp
    (-Wall -Werror) meet no unknown pragma.  Kernel plans keep writing plain pragmas."""
    if isinstance(value, str) and value.startswith(OMP_PRAGMA):
        return f"BP_OMP({value[len(OMP_PRAGMA):]})"
    return value


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
