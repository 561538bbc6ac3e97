"""Built-in layers: spec files in derive/layers/, written in the spec language itself."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from .errors import SpecError
from .names import did_you_mean

# The parser and Layer (and with them SymPy) load on first use: a warm cache load of C
# kernels needs only a spec's text (spec_source), and SymPy's import is 0.2 s.

# The order `backprop list` shows them in: layers, losses, networks, the optimizer steps,
# the worked example.
BUILTINS = ("dense", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "silu", "gelu",
            "gelu_erf", "hardtanh", "softmax", "log_softmax", "layernorm", "rmsnorm",
            "batchnorm", "embedding", "dropout",
            "conv1d", "conv2d", "conv2d_grouped", "avgpool2d", "maxpool2d",
            "maxpool2d_indices",
            "global_avgpool2d", "rnn_tanh", "rnn_relu", "gru", "lstm", "attention", "mse", "huber", "nll",
            "softmax_cross_entropy", "softmax_cross_entropy_labels", "sigmoid_bce", "mlp2",
            "adam", "adamw", "sgd", "sgd_momentum", "rmsprop", "adagrad", "neuron")


def builtin_text(name: str) -> str:
    return resources.files("derive.layers").joinpath(f"{name}.bp").read_text("utf-8")


def builtin(name: str, constants: dict | None = None):
    """The parsed Layer of a built-in (`constants`: values for its `const` statements)."""
    from .parser import parse_spec

    if name not in BUILTINS:
        raise SpecError(f"no built-in layer '{name}'{did_you_mean(name, BUILTINS)}; built-ins: "
                        f"{', '.join(BUILTINS)}", None)
    return parse_spec(builtin_text(name), f"<builtin {name}>", constants)


def is_layer(x) -> bool:
    """isinstance(x, Layer), without importing the spec module (a Layer exists only once
    something has imported it)."""
    spec = sys.modules.get("derive.spec")
    return spec is not None and isinstance(x, spec.Layer)


def spec_source(layer_or_name) -> tuple[str, str] | None:
    """(spec text, file label) of a Layer, built-in name or spec path, without parsing it
    (a warm cache load needs only the text); None when resolve() must say what is wrong."""
    if is_layer(layer_or_name):
        return layer_or_name.source, layer_or_name.file
    if isinstance(layer_or_name, str) and layer_or_name in BUILTINS:
        found = builtin_text(layer_or_name), f"<builtin {layer_or_name}>"
    elif isinstance(layer_or_name, (str, Path)):
        try:
            found = Path(layer_or_name).read_text(encoding="utf-8"), str(layer_or_name)
        except (OSError, UnicodeDecodeError, ValueError):
            return None
    else:
        return None
    # A network's text names its layers but does not hold them: a comment with a digest
    # of their texts keys the cache too, so an edit to one of them finds no old kernels.
    from .network import is_network, layers_digest

    if not is_network(found[0]):
        return found
    digest = layers_digest(*found)
    return None if digest is None else (f"{found[0]}\n# layers {digest}\n", found[1])


def resolve(layer_or_name, constants: dict | None = None):
    """A Layer, a built-in name, or a path to a spec file -> Layer; `constants` sets the
    values of the spec's `const` statements (stride, padding, ...)."""
    from .parser import load_spec, parse_spec

    if is_layer(layer_or_name):
        if constants:
            return parse_spec(layer_or_name.source, layer_or_name.file, constants)
        return layer_or_name
    if isinstance(layer_or_name, Path) or (isinstance(layer_or_name, str) and (
            layer_or_name.endswith(".bp") or "/" in layer_or_name or "\\" in layer_or_name)):
        return load_spec(layer_or_name, constants)
    if isinstance(layer_or_name, str):
        if layer_or_name in BUILTINS:
            return builtin(layer_or_name, constants)
        if Path(layer_or_name).is_file():
            return load_spec(layer_or_name, constants)
        raise SpecError(f"'{layer_or_name}' is neither a built-in layer"
                        f"{did_you_mean(layer_or_name, BUILTINS)} nor a spec file; built-ins: "
                        f"{', '.join(BUILTINS)} (`backprop list` describes them)", None)
    raise TypeError(f"expected a Layer, a built-in name or a spec path, got "
                    f"{type(layer_or_name).__name__}")
