"""The symbolic side: spec -> layer -> derivation."""
from .builder import LayerBuilder
from .derivation import Derivation, Step, derive
from .errors import DerivationError, SpecError
from .parser import load_spec, parse_spec
from .spec import Layer, Tensor

__all__ = ["LayerBuilder", "Derivation", "DerivationError", "Layer", "SpecError", "Step", "Tensor",
           "derive", "load_spec", "parse_spec"]
