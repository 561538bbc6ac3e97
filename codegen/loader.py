"""codegen.load (this module: codegen.loader): a layer's generated kernels as a Python object.

The generated module is written under a cache directory named by a hash of its source (so
two layers with the same name but different specs never collide) and imported from there.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from types import SimpleNamespace

from derive.builtins import is_layer, resolve, spec_source

from .arguments import check_backward, check_fusable, check_names
from .folders import make_folder

CACHE_ENV = "BACKPROP_CACHE"


def cache_dir(override=None) -> Path:
    """The kernel cache folder, made if needed: `cache=`, else $BACKPROP_CACHE, else
    $XDG_CACHE_HOME/backprop-toolkit or ~/.cache/backprop-toolkit (~ is expanded)."""
    if override is not None:
        path, setting = Path(override).expanduser(), f"cache={str(override)!r}"
    elif os.environ.get(CACHE_ENV):
        path = Path(os.environ[CACHE_ENV]).expanduser()
        setting = f"{CACHE_ENV}={os.environ[CACHE_ENV]}"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path, setting = Path(base).expanduser() / "backprop-toolkit", "the default"
    return make_folder(path, f"the kernel cache ({setting})",
                       f"point {CACHE_ENV} (or the cache= argument) at a folder you can "
                       f"write, e.g. {CACHE_ENV}=~/.cache/backprop-toolkit")


class Kernels:
    """forward(**arrays) and backward(**arrays) of one layer, checked by name.  reuse=
    (kept output buffers, see CKernels.forward) is accepted for the C backend's sake:
    NumPy's results are always new arrays, which keeps the aliasing rule trivially."""

    def __init__(self, layer, derivation, module, path: Path, backend: str):
        self.layer = layer
        self.derivation = derivation
        self.module = module
        self.path = path
        self.backend = backend
        self.name = layer.name
        # name -> (role, dimension names), for building arrays of the right shape
        self.tensors = dict(module.TENSORS)
        self.args = tuple(module.ARGS)
        self.returns = tuple(module.RETURNS)
        self.upstream = tuple(module.UPSTREAM)
        self.gradients = tuple(module.GRADIENTS)

    def forward(self, out=None, reuse=False, **arrays):
        self._refuse_out(out)
        self._check(arrays, self.args, ())
        return self.module.forward(**{n: arrays[n] for n in self.args})

    def backward(self, out=None, reuse=False, **arrays):
        self._refuse_out(out)
        check_backward(self.name, self.gradients)
        reusable = tuple(n for n in self.returns if n in _kwonly(self.module.backward))
        self._check(arrays, self.args + self.upstream, self.returns)
        extra = {n: arrays[n] for n in reusable if n in arrays}
        return self.module.backward(**{n: arrays[n] for n in self.args + self.upstream},
                                    **extra)

    def forward_backward(self, out=None, reuse=False, **arrays):
        """The outputs (the loss) and every gradient; for a layer that ends in its loss.
        NumPy runs forward, then backward reusing its intermediates."""
        self._refuse_out(out)
        check_fusable(self.name, self.layer.loss, self.upstream)
        self._check(arrays, self.args, ())
        fwd = self.forward(**arrays)
        grads = self.backward(**arrays, **{n: fwd[n] for n in self.returns
                                           if n in _kwonly(self.module.backward)})
        outputs = [t.name for t in self.layer.outputs]
        return {**{n: fwd[n] for n in outputs}, **grads}

    def _check(self, arrays, required, optional):
        check_names(self.name, arrays, required, optional)

    def _refuse_out(self, out):
        if out is not None:
            raise ValueError(f"{self.name}: out= (results into your arrays) is supported by "
                             f"the C backend, codegen.load(..., backend=\"c\"); the NumPy "
                             f"backend returns new arrays")

    def __repr__(self):
        return f"<{self.backend} kernels of layer {self.name} from {self.path}>"


def _kwonly(fn):
    code = fn.__code__
    return code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]


def load(layer_or_name, backend: str = "numpy", dtype: str | None = None, cache=None,
         constants: dict | None = None):
    """Kernels for a Layer, a built-in name or a spec file path.

    backend="numpy": a generated NumPy module (any float dtype; float32 in, float32 out).
    backend="c": compiled C kernels for one dtype, "float32" or "float64" (default),
    cached under `cache`, $BACKPROP_CACHE or ~/.cache/backprop-toolkit.
    backend="jax": a generated jax.numpy module (float32, or float64 with JAX's x64 mode);
    its apply() carries the derived backward as a jax.custom_vjp.
    constants: values for the spec's `const` statements, e.g. {"S": 2, "P": 1} for a
    convolution's stride and padding.
    """
    if backend not in ("numpy", "c", "jax"):
        raise ValueError(f"unknown backend '{backend}'; available: numpy, c, jax")
    if constants:
        layer_or_name = resolve(layer_or_name, constants)
    if backend == "c":
        return _load_c(layer_or_name, dtype or "float64", cache)
    from derive import derive

    from .emitter import write_atomic
    from .plan import plan

    layer = resolve(layer_or_name)
    if dtype is not None:
        raise ValueError(f"dtype is chosen per call by the {backend} backend (it follows "
                         f"the arrays); pass dtype only with backend='c'")
    derivation = derive(layer)
    source = _python_source(backend, plan(derivation))
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    directory = cache_dir(cache) / backend / key
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{layer.name}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        write_atomic(path, source)
    spec = importlib.util.spec_from_file_location(f"backprop_generated_{layer.name}_{key}",
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Kernels(layer, derivation, module, path, backend)


def _python_source(backend, kplan):
    """The text of a generated Python module: NumPy, or jax.numpy (JAX imported only
    then, with a one-line error when it is missing)."""
    if backend == "numpy":
        from .numpy_backend import numpy_source

        return numpy_source(kplan)
    if importlib.util.find_spec("jax") is None:
        raise ImportError("the jax backend needs JAX: pip install 'backprop-toolkit[jax]' "
                          "(or pip install jax)")
    from .jax_backend import jax_source

    return jax_source(kplan)


def _load_c(layer_or_name, dtype, cache):
    """C kernels; a warm cache is found from the spec text alone: no parsing, no SymPy, no
    printing (the Layer is parsed only if asked for, from the same text)."""
    from . import build as b
    from .c_kernels import CKernels, layer_shape

    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    root = cache_dir(cache)
    defines = gemm_defines()
    source = spec_source(layer_or_name)
    if source is not None:
        text, label = source
        skey = b.spec_key(text, label if is_layer(layer_or_name) else "", dtype, defines)
        hit = b.load_indexed(root, skey)
        if hit is not None and "shape" in hit[1]:
            module, meta = hit
            lazy = (lambda: layer_or_name) if is_layer(layer_or_name) else \
                (lambda: _parse(text, label))
            kernels = CKernels(lazy, None, SimpleNamespace(**meta["plan"]), module, dtype,
                               shape=meta["shape"])
            if meta.get("loops_left_out"):
                kernels.with_loops = lambda: _with_loops(kernels.derivation, dtype, root)
            return kernels
    # Cold: parse, derive, plan, print, compile (SymPy from here on).  The GEMM hook's
    # module builds meanwhile, from before SymPy's import (0.4 s) on.
    gemm_hook = _built_meanwhile()
    try:
        from derive import derive

        from .c_backend import c_sources
        from .plan import plan

        layer = resolve(layer_or_name)
        derivation = derive(layer)
        kplan = plan(derivation)
        files = c_sources(kplan, dtypes=(dtype,))     # compile only the kernels asked for
        cdef = files.pop("cdef")
        # only where the source has loops to leave out (a layer with products)
        left_out = defines if any(LOOPS_SWITCH in t for t in files.values()) else ()
        module = b.build(layer.name, files, cdef, root, left_out)
    finally:
        gemm_hook.join()
    key = b.build_key(files, cdef, left_out)
    if source is not None:
        b.remember(root, skey, dict(key=key, module=b.module_name_for(layer.name, key),
                                    plan={f: list(getattr(kplan, f)) for f in PLAN_FIELDS},
                                    shape=layer_shape(layer), loops_left_out=bool(left_out)))
    kernels = CKernels(layer, derivation, kplan, module, dtype)
    if left_out:
        kernels.with_loops = lambda: b.build(layer.name, files, cdef, root)
    return kernels


LOOPS_SWITCH = "BP_GEMM_LOOPS"


def gemm_defines() -> tuple[str, ...]:
    """-DBP_GEMM_LOOPS=0 when the kernels will always be handed a GEMM (NumPy's OpenBLAS):
    the plain-C loops beside each GEMM call are then left out of the build (0.4 s of the
    1.9 s of compiler CPU of an LSTM's float build), and built only if use_blas(False)
    asks for them."""
    from .blas import numpy_blas

    return () if numpy_blas() is None else (f"-D{LOOPS_SWITCH}=0",)


def _with_loops(derivation, dtype, root):
    """The layer's module with its plain-C loops, for a kernels object loaded without."""
    from . import build as b
    from .c_backend import c_sources
    from .plan import plan

    files = c_sources(plan(derivation), dtypes=(dtype,))
    cdef = files.pop("cdef")
    return b.build(derivation.layer.name, files, cdef, root)


def _built_meanwhile() -> threading.Thread:
    """The GEMM hook's own module (codegen/blas, built once per cache) compiled on a
    thread while this one derives: SymPy keeps one core busy and the compiler runs on the
    other (0.25 s of an LSTM's first load).  Joined before the load returns or raises."""
    from . import blas

    thread = threading.Thread(target=blas.warm, name="backprop-gemm-hook", daemon=True)
    thread.start()
    return thread


PLAN_FIELDS = ("args", "returns", "upstream", "gradients", "reuses")


def _parse(text, label):
    from derive.parser import parse_spec

    return parse_spec(text, label)
