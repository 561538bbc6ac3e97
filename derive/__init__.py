"""The symbolic side: spec -> layer -> derivation.

Names are imported on first use (PEP 562), so `backprop --help` and the errors module do
not pay for importing SymPy."""
from importlib import import_module

_WHERE = {"LayerBuilder": "builder", "Derivation": "derivation", "Step": "derivation",
          "derive": "derivation", "DerivationError": "errors", "SpecError": "errors",
          "load_spec": "parser", "parse_spec": "parser", "Layer": "spec", "Tensor": "spec",
          "Network": "network"}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
