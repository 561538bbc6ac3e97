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
    )
    env.filters["pyrepr"] = repr
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
