"""Jinja2 templates of the generated code (package data, so installs carry them)."""
from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent
