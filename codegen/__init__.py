"""Code generation: derivation -> kernel plan -> NumPy / C source -> loaded module.

Names are imported on first use (PEP 562), so the command line starts without SymPy."""
from importlib import import_module

# (the modules are named apart from the functions, so importing one never hides the other)
_WHERE = {"emit": "emitter", "sources": "emitter", "Kernels": "loader", "load": "loader",
          "torch_module": "torch_layer"}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
