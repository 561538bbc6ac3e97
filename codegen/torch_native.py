"""The C++ route of codegen.torch_module: a derived layer's call checked, planned and run in
C++ (codegen/torch_native.cpp), its backward a C++ autograd node, instead of Python steps
of half a microsecond each.

One generic extension serves every layer (a layer hands it its C entry points' addresses
and a compact plan), so it is compiled once per machine and torch version, on first use,
into the kernel cache (CACHE/torch/<key>, the key a hash of the source, torch's version
and Python's ABI).  No compiler, no ninja, or a failed build: a warning naming why, and
every module takes the Python route (codegen.torch_calls).  The route is chosen by
torch_module(route=...) or $BACKPROP_TORCH_ROUTE: "cpp" (the default) or "python"."""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

from .loader import cache_dir

ROUTES = ("cpp", "python")
ROUTE_ENV = "BACKPROP_TORCH_ROUTE"
SOURCE = Path(__file__).with_name("torch_native.cpp")

_built: dict = {}                # source text -> the extension module, or None (failed)


def chosen_route(route: str | None) -> str:
    """`route`, else $BACKPROP_TORCH_ROUTE, else "cpp"; anything else is an error."""
    setting = f"route={route!r}" if route is not None else f"{ROUTE_ENV}"
    route = route if route is not None else os.environ.get(ROUTE_ENV) or "cpp"
    if route not in ROUTES:
        raise ValueError(f"torch_module: {setting}: unknown route {route!r}; choose "
                         f"{' or '.join(map(repr, ROUTES))}")
    return route


def extension(source: str | None = None):
    """The compiled extension (built on first use, then loaded from the cache), or None
    with a warning when it cannot be built.  `source`: the C++ text (tests break it)."""
    source = SOURCE.read_text() if source is None else source
    if source not in _built:
        _built[source] = _build(source)
    return _built[source]


def _build(source: str):
    key = hashlib.sha256("\0".join((source, torch.__version__,
                                    sys.implementation.cache_tag)).encode()).hexdigest()[:16]
    name = f"backprop_torch_native_{key}"
    folder = cache_dir() / "torch" / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "torch_native.cpp"
        if not path.exists() or path.read_text() != source:
            path.write_text(source)
        if not list(folder.glob(f"{name}*.so")) and not list(folder.glob(f"{name}*.pyd")):
            print(f"backprop-toolkit: building the C++ route of torch_module in {folder} "
                  f"(once per torch version, about half a minute)", file=sys.stderr, flush=True)
        from torch.utils import cpp_extension

        return cpp_extension.load(name, [str(path)], extra_cflags=["-O2"],
                                  build_directory=str(folder), verbose=False)
    except Exception as e:           # no compiler, no ninja, no headers: the Python route
        why = _first_error(str(e)) or type(e).__name__
        warnings.warn(f"torch_module: the C++ route could not be built ({why}); modules "
                      f"take the Python route (tens of microseconds more per call)",
                      RuntimeWarning, stacklevel=3)
        return None


def _first_error(message: str) -> str:
    """The line of a build's message that says what went wrong: the compiler's first
    error, else the message's first line (cpp_extension's own, e.g. ninja missing)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[0] if lines else "")


def native_layer(module, extension):
    """The extension's NativeLayer of a DerivedModule on C kernels (its positions worked
    out by the module: codegen.torch_layer._index_calls)."""
    k, m = module.kernels, module
    forward, hold, release = k.entry_addresses("forward")
    backward = k.entry_addresses("backward")[0] if k.gradients else 0
    returned = (m._output_at[m._pick],) if m._returns_one else m._output_at
    return extension.NativeLayer(
        m.layer_name, forward, backward, hold, release, m.dtype == torch.float64,
        list(m._arg_at), [t is torch.int64 for t in m._arg_dtypes], list(m.param_names),
        len(m.inputs), list(m.no_gradient), list(m._output_at), list(m._reuse_at),
        list(returned), list(m._upstream_at),
        [-1 if at is None else at for at in m._gradient_at],
        -1 if m._pick is None else m._pick, -1 if m._scale_at is None else m._scale_at,
        m.calls.native_plan)
