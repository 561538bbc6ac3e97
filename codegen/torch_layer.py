"""codegen.torch_module (this module: codegen.torch_layer): a derived layer as a
torch.nn.Module whose forward and backward run the generated kernels (C by default)
through a torch.autograd.Function.

Tensors reach the C kernels as pointers to their own memory (no copy), through C++
(codegen.torch_native, the default) or Python (codegen.torch_calls; shapes checked once
per set of shapes either way), the NumPy kernels as NumPy views
(Tensor.numpy()); results come back as tensors over fresh arrays (torch.from_numpy).
Before that every tensor is checked here, so the error names torch's terms: on the CPU,
in the module's dtype, contiguous."""
from __future__ import annotations

import numbers

import numpy as np
import torch

from derive.builtins import resolve

from .torch_calls import DirectCalls
from .torch_init import init_rules, initialise
from .torch_native import chosen_route, extension, native_layer

DTYPES = ("float32", "float64")


def torch_module(layer_or_name, backend: str = "c", dtype: str = "float32",
                 constants: dict | None = None, cache=None, route: str | None = None,
                 **sizes):
    """An nn.Module of a layer (a built-in name, a spec path or a Layer).

    sizes: every dimension of the parameters by its spec name (dense: I=5, J=3).  The
    parameters are nn.Parameters under the spec's names, initialised as torch initialises
    the matching layer (codegen.torch_init).  forward takes the layer's inputs, then its
    targets, positionally in declaration order, and returns its output (a tuple when
    there are several; the loss when it ends in one).  backend "c" (compiled once, then
    cached) or "numpy"; constants sets the spec's `const` values (stride, padding).
    route (C kernels): "cpp", a call in C++ (codegen.torch_native; the default), or
    "python" (codegen.torch_calls); default $BACKPROP_TORCH_ROUTE, else "cpp"."""
    route = chosen_route(route)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if backend not in ("c", "numpy"):
        raise ValueError(f"unknown backend {backend!r} for torch_module; available: c, numpy")
    layer = resolve(layer_or_name, constants)
    sizes = _parameter_sizes(layer, sizes)
    from .loader import load

    kernels = load(layer, backend=backend, cache=cache,
                   **({"dtype": dtype} if backend == "c" else {}))
    module = DerivedModule(layer, kernels, getattr(torch, dtype), sizes)
    if backend == "c" and route == "cpp":
        built = extension()
        if built is not None:
            module.native = native_layer(module, built)
            module.native.bind(module)
            module.forward = module.native   # over the class's: no Python frame per call
    return module


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
        self.scalar_inputs = {t.name for t in layer.inputs + layer.targets if not t.dims}
        labels = {t.name: t.values for t in layer.tensors.values() if t.values is not None}
        self.integer_inputs = set(labels)
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
        self._index_calls(kernels, labels)

    def _index_calls(self, kernels, labels):
        """Positions worked out once, so a call builds no dictionaries: where each kernel
        argument comes from (the call's tensors, then the parameters), which forward
        results are the outputs and the reused intermediates, where each upstream
        gradient and each argument's gradient sit."""
        given = self.inputs + self.param_names
        self._arg_at = tuple(given.index(n) for n in kernels.args)
        self._arg_dtypes = tuple(torch.int64 if n in labels else self.dtype
                                 for n in kernels.args)
        reuses = _reused(kernels)
        self._output_at = tuple(kernels.returns.index(n) for n in self.outputs)
        self._reuse_at = tuple(kernels.returns.index(n) for n in reuses)
        self._gradient_at = tuple(self.gradients.index("d" + n) if "d" + n in self.gradients
                                  else None for n in kernels.args)
        self._gradients_in_order = self._gradient_at == tuple(range(len(kernels.args)))
        self._pick = self.outputs.index(self.loss) if self.loss else \
            (0 if len(self.outputs) == 1 else None)
        # the autograd.Function returns just the picked output when backward needs no
        # other output's gradient (torch would fill those with zeros every call)
        picked = None if self._pick is None else self.outputs[self._pick]
        self._returns_one = all(u[1:] == picked for u in kernels.upstream) and \
            picked is not None
        returned = (picked,) if self._returns_one else self.outputs
        self._upstream_at = tuple(returned.index(u[1:]) for u in kernels.upstream)
        self._scale_at = returned.index(self.loss) if self.loss else None
        self.calls = DirectCalls(kernels, self.dtype, labels) if kernels.backend == "c" \
            else _NumpyCalls(kernels, reuses)

    native = None            # the C++ route (codegen.torch_native), when torch_module chose it

    def forward(self, *tensors):
        # The Python route.  On the C++ route the module's own `forward` is the extension's
        # NativeLayer (set by torch_module), which calls this for the unusual calls only (a
        # wrong dtype, a strided tensor, ...): here they are handled or named.
        # The hot path, kept flat (each Python frame or generator costs a microsecond
        # here): the cheap per-call checks, the shape key, then the kernels.
        if len(tensors) != len(self.inputs):
            raise TypeError(f"{self.layer_name}: forward takes {len(self.inputs)} "
                            f"tensor{'s' if len(self.inputs) != 1 else ''} "
                            f"({', '.join(self.inputs)}), got {len(tensors)}")
        # map() where a comprehension would be a function call of its own (Python 3.11)
        given = (*tensors, *map(self._parameters.__getitem__, self.param_names))
        args = list(map(given.__getitem__, self._arg_at))
        dtypes, shapes, i = self._arg_dtypes, [], 0
        for t in args:
            # the common case in four cheap tests; anything else is looked at closely
            if not (type(t) in _PLAIN and t.dtype is dtypes[i] and t.is_cpu
                    and t.is_contiguous()):
                args[i] = t = self._checked(self.kernels.args[i], t)
            shapes.append(t.shape)
            i += 1
        calls, shapes = self.calls, tuple(shapes)
        plan = calls.plans.get(shapes)
        if plan is None or calls.labelled:
            plan = calls.plan(args, shapes)
        if self.gradients and torch.is_grad_enabled():
            for t in args:
                if t.requires_grad:
                    if self.no_gradient:
                        self._refuse_gradients_it_cannot_give(args)
                    out = _KernelFunction.apply(self, plan, *args)
                    return out if self._returns_one or self._pick is None \
                        else out[self._pick]
        out = calls.forward(plan, args)                # no graph to record
        if self._pick is None:
            return tuple(map(out.__getitem__, self._output_at))
        return out[self._output_at[self._pick]]

    def _refuse_gradients_it_cannot_give(self, args):
        for i in self.no_gradient:
            if args[i].requires_grad:
                raise ValueError(f"{self.layer_name}: {self.kernels.args[i]} requires "
                                 f"grad, but the derivation gives no gradient for it (a "
                                 f"target or nograd tensor): pass it detached")

    def _checked(self, name, t):
        """The tensor (labels as int64), or a ValueError naming what the kernels cannot
        take."""
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
            t = t.to(torch.int64)                # the kernels' index type (labels: small)
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


# Tensors the fast check may trust (a subclass may report its own device, dtype, ...)
_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter))


class _KernelFunction(torch.autograd.Function):
    """forward: the layer's forward kernel; backward: its derived backward kernel,
    fed the saved arguments and the intermediates it reuses."""

    @staticmethod
    def forward(ctx, module, plan, *args):
        out = module.calls.forward(plan, args)
        ctx.module, ctx.plan = module, plan
        ctx.save_for_backward(*args, *map(out.__getitem__, module._reuse_at))
        if module._returns_one:
            return out[module._output_at[module._pick]]
        return tuple(map(out.__getitem__, module._output_at))

    @staticmethod
    def backward(ctx, *grads):
        module = ctx.module
        if torch.is_grad_enabled():
            raise RuntimeError(f"{module.layer_name}: double backward (create_graph="
                               f"True, a gradient of a gradient) is not supported: the "
                               f"derived kernels give first derivatives only")
        saved, n = ctx.saved_tensors, len(module._arg_at)
        dtype, upstream = module.dtype, []
        for i in module._upstream_at:
            g = grads[i]
            # torch hands the outputs' dtype; a sum's gradient arrives expanded (strided)
            upstream.append(g if g.dtype is dtype and g.is_contiguous()
                            else g.to(dtype).contiguous())
        got = module.calls.backward(ctx.plan, saved[:n], upstream, saved[n:])
        result = got if module._gradients_in_order else \
            [None if at is None else got[at] for at in module._gradient_at]
        if module.loss:
            scale, needs = grads[module._scale_at], ctx.needs_input_grad
            for k, g in enumerate(result):
                if g is not None and needs[2 + k]:
                    g.mul_(scale)
        return (None, None, *result)


class _NumpyCalls:
    """DirectCalls' contract on the NumPy backend: NumPy views of the tensors in, tensors
    over the result arrays out (no copies either way)."""

    plans, labelled = {}, True          # no plans: plan() every call

    def __init__(self, kernels, reuses):
        self.kernels = kernels
        self.reuses = reuses

    def plan(self, args, shapes):
        return None                     # the NumPy wrapper checks every call itself

    def forward(self, plan, args) -> tuple:
        k = self.kernels
        out = k.forward(**{n: _view(a) for n, a in zip(k.args, args)})
        return tuple(_tensor(out[n]) for n in k.returns)

    def backward(self, plan, args, upstream, reused) -> tuple:
        k = self.kernels
        arrays = {n: _view(a) for n, a in zip(k.args, args)}
        arrays.update({n: _view(u) for n, u in zip(k.upstream, upstream)})
        arrays.update({n: _view(r) for n, r in zip(self.reuses, reused)})
        got = k.backward(**arrays)
        return tuple(_tensor(got[n]) for n in k.gradients)


def _view(t):
    """The tensor's memory as a NumPy array (no copy)."""
    return t.detach().numpy()


def _tensor(a):
    """A tensor over a kernel's result array (no copy; a read-only result, which only the
    NumPy backend may give, is copied: torch cannot share it)."""
    a = np.asarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _reused(kernels) -> tuple:
    """Intermediates the backward kernel takes from forward's result, in the order it
    takes them."""
    if hasattr(kernels, "reuses"):                       # C
        return tuple(kernels.reuses)
    from .loader import _kwonly                          # NumPy: backward's keywords

    return tuple(n for n in kernels.returns if n in _kwonly(kernels.module.backward))
