"""Code generation: derivation -> kernel plan -> NumPy source -> loaded module."""
from .emit import emit, sources
from .load import Kernels, load

__all__ = ["Kernels", "emit", "load", "sources"]
