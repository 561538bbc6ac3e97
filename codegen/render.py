"""The one Jinja2 environment: StrictUndefined (a missing variable is an error), and
trim_blocks/lstrip_blocks so templates can be indented for people."""
from __future__ import annotations

import functools

import jinja2

from templates import TEMPLATE_DIR


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
