"""codegen.torch_module (this module: codegen.torch_layer): a derived layer as a
torch.nn.Module whose forward and backward run the generated kernels (C by default)
through a torch.autograd.Function.

Tensors reach the kernels as NumPy views of their own memory (Tensor.numpy(): no copy),
and results come back as tensors over the kernels' arrays (torch.from_numpy: no copy).
Before that every tensor is checked here, so the error names torch's terms: on the CPU,
in the module's dtype, contiguous."""
from __future__ import annotations

import numbers

import numpy as np
import torch

from derive.builtins import resolve

from .torch_init import init_rules, initialise

DTYPES = ("float32", "float64")


def torch_module(layer_or_name, backend: str = "c", dtype: str = "float32",
                 constants: dict | None = None, cache=None, **sizes):
    """An nn.Module of a layer (a built-in name, a spec path or a Layer).

    sizes: every dimension of the parameters by its spec name (dense: I=5, J=3).  The
    parameters are nn.Parameters under the spec's names, initialised as torch initialises
    the matching layer (codegen.torch_init).  forward takes the layer's inputs, then its
    targets, positionally in declaration order, and returns its output (a tuple when
    there are several; the loss when it ends in one).  backend "c" (compiled once, then
    cached) or "numpy"; constants sets the spec's `const` values (stride, padding)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if backend not in ("c", "numpy"):
        raise ValueError(f"unknown backend {backend!r} for torch_module; available: c, numpy")
    layer = resolve(layer_or_name, constants)
    sizes = _parameter_sizes(layer, sizes)
    from .loader import load

    kernels = load(layer, backend=backend, cache=cache,
                   **({"dtype": dtype} if backend == "c" else {}))
    return DerivedModule(layer, kernels, getattr(torch, dtype), sizes)


def _parameter_sizes(layer, sizes: dict) -> dict:
    """The given sizes, checked: exactly the dimensions the parameters have."""
    needed = [d for t in layer.params for d in t.dims]
    needed = list(dict.fromkeys(needed))
    for d, value in sizes.items():
        if d not in needed:
            why = ("it is not a dimension of any parameter (its size comes from the "
                   "inputs)" if d in layer.dims else "the layer has no such dimension")
            raise ValueError(f"{layer.name}: size {d}={value!r}: {why}; give "
                             f"{', '.join(needed) or 'no sizes'}")
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{layer.name}: size {d} must be a positive integer, got "
                             f"{value!r}")
    sizes = layer.dim_sizes(sizes)
    missing = [d for d in needed if d not in sizes]
    if missing:
        params = ", ".join(f"{t.name}[{', '.join(t.dims)}]" for t in layer.params)
        raise ValueError(f"{layer.name}: missing size{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} (the parameters {params} need "
                         f"{', '.join(needed)})")
    return sizes


class DerivedModule(torch.nn.Module):
    """A derived layer: forward(*inputs, *targets) -> output(s) or loss."""

    def __init__(self, layer, kernels, dtype, sizes):
        super().__init__()
        self.layer_name = layer.name
        self.kernels = kernels
        self.dtype = dtype
        self.inputs = tuple(t.name for t in layer.inputs + layer.targets)
        self.outputs = tuple(t.name for t in layer.outputs)
        self.gradients = tuple(kernels.gradients)
        # positions of the arguments without a gradient (targets, labels, nograd)
        self.no_gradient = tuple(i for i, n in enumerate(kernels.args)
                                 if "d" + n not in self.gradients)
        self.reuses = tuple(n for n in kernels.returns if n in _reused(kernels))
        self.scalar_inputs = {t.name for t in layer.inputs + layer.targets if not t.dims}
        self.integer_inputs = {t.name for t in layer.tensors.values()
                               if t.values is not None}
        self.loss = layer.loss
        self.param_names = tuple(t.name for t in layer.params)
        for t in layer.params:
            if hasattr(self, t.name):
                raise ValueError(f"{layer.name}: parameter name {t.name!r} is taken by "
                                 f"torch.nn.Module; rename it in the spec")
            shape = tuple(sizes[d] for d in t.dims)
            self.register_parameter(t.name, torch.nn.Parameter(
                torch.empty(shape, dtype=dtype)))
        self.init_rules = init_rules(layer)
        initialise(dict(self.named_parameters()), self.init_rules, sizes)

    def forward(self, *tensors):
        if len(tensors) != len(self.inputs):
            raise TypeError(f"{self.layer_name}: forward takes {len(self.inputs)} "
                            f"tensor{'s' if len(self.inputs) != 1 else ''} "
                            f"({', '.join(self.inputs)}), got {len(tensors)}")
        given = dict(zip(self.inputs, tensors))
        given.update({n: getattr(self, n) for n in self.param_names})
        args = [self._checked(n, given[n]) for n in self.kernels.args]
        if not self.gradients:
            with torch.no_grad():
                out = _run_forward(self, args)
            return _result(self, out)
        for i in self.no_gradient:
            if args[i].requires_grad:
                raise ValueError(f"{self.layer_name}: {self.kernels.args[i]} requires grad, "
                                 f"but the derivation gives no gradient for it (a target or "
                                 f"nograd tensor): pass it detached")
        return _result(self, _KernelFunction.apply(self, *args))

    def _checked(self, name, t):
        """The tensor, or a ValueError naming what the kernels cannot take."""
        where = f"{self.layer_name}: {name}"
        if not isinstance(t, torch.Tensor):
            if name in self.scalar_inputs and isinstance(t, numbers.Real):
                return torch.tensor(t, dtype=self.dtype)
            raise ValueError(f"{where}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{where} is on {t.device}; the derived kernels run on the "
                             f"CPU: move it there with .cpu() (and the module with "
                             f".to('cpu'))")
        if name in self.integer_inputs:
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise ValueError(f"{where}: expected integer class indices, got "
                                 f"{t.dtype}")
        elif t.dtype != self.dtype:
            raise ValueError(f"{where}: expected {self.dtype} (the module's dtype), got "
                             f"{t.dtype}: convert with .to({self.dtype})")
        if not t.is_contiguous():
            raise ValueError(f"{where} is not contiguous (shape {tuple(t.shape)}, "
                             f"strides {t.stride()}); the kernels read it in place: "
                             f"call .contiguous() first")
        return t

    def extra_repr(self):
        sizes = ", ".join(f"{n}={tuple(p.shape)}" for n, p in self.named_parameters())
        return f"{self.layer_name}, {self.kernels.backend}, {self.dtype}" + \
            (f", {sizes}" if sizes else "")


class _KernelFunction(torch.autograd.Function):
    """forward: the layer's forward kernel; backward: its derived backward kernel,
    fed the saved inputs and the intermediates it reuses."""

    @staticmethod
    def forward(ctx, module, *args):
        out = _run_forward(module, args)
        ctx.module = module
        ctx.save_for_backward(*args, *[out[n] for n in module.reuses])
        return tuple(out[n] for n in module.outputs)

    @staticmethod
    def backward(ctx, *grads):
        module = ctx.module
        if torch.is_grad_enabled():
            raise RuntimeError(f"{module.layer_name}: double backward (create_graph="
                               f"True, a gradient of a gradient) is not supported: the "
                               f"derived kernels give first derivatives only")
        saved = ctx.saved_tensors
        args = module.kernels.args
        arrays = {n: _view(t) for n, t in zip(args, saved)}
        arrays.update({n: _view(t) for n, t in zip(module.reuses, saved[len(args):])})
        upstream = {"d" + n: _view(g.to(module.dtype).contiguous())
                    for n, g in zip(module.outputs, grads) if n != module.loss}
        got = module.kernels.backward(**arrays, **upstream)
        scale = grads[module.outputs.index(module.loss)] if module.loss else None
        result = []
        for n in args:
            g = got.get("d" + n)
            if g is None or not ctx.needs_input_grad[1 + len(result)]:
                result.append(None)
                continue
            g = _tensor(g)
            result.append(g if scale is None else g.mul_(scale))
        return (None, *result)


def _run_forward(module, args):
    out = module.kernels.forward(**{n: _view(t) for n, t in zip(module.kernels.args, args)})
    return {n: _tensor(a) for n, a in out.items()}


def _result(module, outputs):
    """The loss, or the output, or a tuple of the outputs."""
    if isinstance(outputs, dict):
        outputs = tuple(outputs[n] for n in module.outputs)
    if module.loss:
        return outputs[module.outputs.index(module.loss)]
    return outputs[0] if len(outputs) == 1 else outputs


def _view(t):
    """The tensor's memory as a NumPy array (no copy)."""
    return t.detach().numpy()


def _tensor(a):
    """A tensor over a kernel's result array (no copy; a read-only result, which only the
    NumPy backend may give, is copied: torch cannot share it)."""
    a = np.asarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _reused(kernels):
    """Intermediates the backward kernel takes from forward's result."""
    if hasattr(kernels, "reuses"):                       # C
        return kernels.reuses
    from .loader import _kwonly                          # NumPy: backward's keywords

    return _kwonly(kernels.module.backward)
