"""What codegen.torch_module costs inside PyTorch: the per-call cost of a derived layer
(autograd.Function, tensor checks, pointers) against calling its C kernel through the NumPy
wrapper and against torch's own nn.Linear of the same size, on a shape so small the kernel
itself takes next to nothing; the module's own cost over the floor (its C entry points,
plus what torch charges any Python-defined layer: an empty autograd.Function of the same
inputs), no_grad, recording and forward + backward, on both routes of a call (C++,
codegen.torch_native, and Python, codegen.torch_calls); and layernorm + gelu, derived,
inside a torch model against torch's native nn.LayerNorm and nn.GELU.

    python -m bench.torch_interop [--repeat 200] [--json]

Medians of interleaved rounds (bench.run._median_interleaved), float32, in one process;
the overhead in this thread's CPU time, the model in wall time.  Two OpenMP runtimes share
the cores here (torch's and the kernels' libgomp): run it also with OMP_WAIT_POLICY=passive,
which stops each one's idle threads spinning against the other's (on 2 cores that made
every step 2-8x faster, torch's own layers too).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import codegen

from .run import _median_interleaved, machine

SMALL = dict(N=4, I=8, J=8)           # dense: the kernel's own work is a few hundred flops
MODEL = dict(N=512, C=768)            # a transformer-width block


def overhead(repeat: int) -> dict:
    """CPU seconds per call (this thread's, so the machine's other load does not count):
    the C kernel direct through its NumPy wrapper (forward; forward + backward), the same
    through the module (no_grad forward; forward + backward by autograd), and torch's own
    nn.Linear of the same size beside them (its weights the module's)."""
    import torch

    module = codegen.torch_module("dense", route="cpp", I=SMALL["I"], J=SMALL["J"])
    python_route = codegen.torch_module("dense", route="python", I=SMALL["I"], J=SMALL["J"])
    python_route.load_state_dict(module.state_dict())
    linear = torch.nn.Linear(SMALL["J"], SMALL["I"])
    with torch.no_grad():
        linear.weight.copy_(module.W)
        linear.bias.copy_(module.b)
    c = module.kernels
    x = torch.randn(SMALL["N"], SMALL["J"], requires_grad=True)
    dz = torch.ones(SMALL["N"], SMALL["I"])
    arrays = dict(x=x.detach().numpy(), W=module.W.detach().numpy(),
                  b=module.b.detach().numpy())

    def train(layer):
        return lambda: layer(x).backward(dz)

    def no_grad(call):
        def run():
            with torch.no_grad():
                call()
        return run

    def forward(layer):
        return no_grad(lambda: layer(x))

    def c_train():
        c.forward(**arrays)
        c.backward(**arrays, dz=dz.numpy())

    entry_forward, entry_train = _entry_points(module, x.detach(), dz)
    empty = _empty_function(module, x)
    identity = torch.nn.Identity()        # torch's charge for any module's call
    nothing = lambda: None                                       # noqa: E731
    c.set_threads(1)             # one thread: its CPU time is the whole cost of a call
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # so for torch: a tiny Linear runs on one thread anyway
    try:
        times, rounds = _median_interleaved({
            "c_forward": (nothing, lambda: c.forward(**arrays)),
            "module_forward": (nothing, forward(module)),
            "linear_forward": (nothing, forward(linear)),
            "c_forward_backward": (nothing, c_train),
            "module_forward_backward": (nothing, train(module)),
            "linear_forward_backward": (nothing, train(linear)),
            "entry_forward": (nothing, _times(ENTRY_CALLS, entry_forward)),
            "entry_forward_backward": (nothing, _times(ENTRY_CALLS, entry_train)),
            "entry_forward_no_grad": (nothing, no_grad(entry_forward)),
            "identity_forward_no_grad": (nothing, forward(identity)),
            "no_grad_block": (nothing, no_grad(nothing)),
            "module_forward_recording": (nothing, lambda: module(x)),
            "python_module_forward": (nothing, forward(python_route)),
            "python_module_forward_backward": (nothing, train(python_route)),
            "python_module_forward_recording": (nothing, lambda: python_route(x)),
            "empty_function_forward": (nothing, empty),
            "empty_function_forward_backward": (nothing, lambda: empty().backward(dz)),
        }, repeat, clock=time.thread_time)
    finally:
        c.set_threads(os.cpu_count() or 1)
        torch.set_num_threads(threads)
    for k in ("entry_forward", "entry_forward_backward"):
        times[k] /= ENTRY_CALLS
    return dict(times, rounds=rounds, cpp_route=module.native is not None,
                **over_the_floor(times), **over_the_floor(times, "python_"),
                forward_over_entry=times["module_forward"] - times["entry_forward"],
                train_over_entry=times["module_forward_backward"]
                - times["entry_forward_backward"],
                forward_overhead=times["module_forward"] - times["c_forward"],
                train_overhead=times["module_forward_backward"] - times["c_forward_backward"],
                forward_vs_linear=times["module_forward"] / times["linear_forward"],
                train_vs_linear=times["module_forward_backward"]
                / times["linear_forward_backward"])


def over_the_floor(times: dict, route: str = "") -> dict:
    """The module's own cost in each mode (`route`: "" the C++ route, "python_" the
    Python one): what it takes beyond what torch charges any Python-defined layer
    (nothing under no_grad; an empty autograd.Function of the same inputs while
    recording) and beyond its C entry points."""
    module = route + "module_"
    return {
        route + "over_floor_no_grad": times[module + "forward"]
        - times["entry_forward_no_grad"],
        # of which nn.Module's call, as nn.Identity's (its no_grad block counted once)
        route + "over_floor_no_grad_past_module_call": times[module + "forward"]
        - times["identity_forward_no_grad"] - times["entry_forward_no_grad"]
        + times["no_grad_block"],
        route + "over_floor_recording": times[module + "forward_recording"]
        - times["empty_function_forward"] - times["entry_forward"],
        route + "over_floor_forward_backward": times[module + "forward_backward"]
        - times["empty_function_forward_backward"] - times["entry_forward_backward"]}


# the entry points take about a microsecond, near the clock's own cost: timed in runs
ENTRY_CALLS = 20


def _times(n: int, call):
    def run():
        for _ in range(n):
            call()
    return run


def _entry_points(module, x, dz):
    """Forward, and forward then backward, of the module's C entry points called with
    pointers made once (no checks, no allocation): the kernel's own cost, the floor of
    any route into it."""
    import torch

    k = module.kernels
    ffi, ctype = k.c_types()
    args = [x, module.W.detach(), module.b.detach()]
    sizes = k.checked_sizes(dict(zip(k.args, (a.numpy() for a in args))), k.args)
    dims = k.dim_values(sizes)
    ptr = lambda t: ffi.cast(f"{ctype} *", t.data_ptr())        # noqa: E731
    out = [torch.empty(k.shape_of(n, sizes)) for n in k.returns]
    grads = [torch.empty(k.shape_of(n, sizes)) for n in k.gradients]
    forward, forward_work = k.entry_point("forward")
    backward, backward_work = k.entry_point("backward")
    work = torch.empty(max(forward_work(*dims), backward_work(*dims), 1))
    fwd_args = (*dims, *map(ptr, args), *map(ptr, out), ptr(work))
    bwd_args = (*dims, *map(ptr, args), ptr(dz), *map(ptr, grads), ptr(work))

    def run():
        forward(*fwd_args)
        return out, work                # (the pointers keep no tensor alive: these do)

    def train():
        run()
        backward(*bwd_args)
        return grads
    return run, train


def _empty_function(module, x):
    """The floor torch sets for a Python-defined layer: an autograd.Function that takes
    what the module's takes (x, W, b), allocates an output of its shape and does nothing
    else; its backward hands back gradients made once.  What the module costs over it,
    less its C entry points, is this toolkit's own Python."""
    import torch

    out_shape = module.kernels.shape_of(module.outputs[0], dict(
        N=x.shape[0], I=module.W.shape[0], J=module.W.shape[1]))
    grads = tuple(torch.zeros_like(t) for t in (x, module.W, module.b))

    class Empty(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W, b):
            return x.new_empty(out_shape)

        @staticmethod
        def backward(ctx, g):
            return grads

    return lambda: Empty.apply(x, module.W, module.b)


def peers(width: int) -> dict:
    """Linear -> LayerNorm -> GELU -> Linear with the middle two torch's or derived (the
    same Linear layers), and each of those layers alone."""
    import torch

    torch.manual_seed(0)
    native_ln, native_gelu = torch.nn.LayerNorm(width), torch.nn.GELU(approximate="tanh")
    ours_ln = codegen.torch_module("layernorm", C=width)
    ours_gelu = codegen.torch_module("gelu")
    linear1, linear2 = torch.nn.Linear(width, width), torch.nn.Linear(width, width)
    return {
        "native_model": torch.nn.Sequential(linear1, native_ln, native_gelu, linear2),
        "derived_model": torch.nn.Sequential(linear1, ours_ln, ours_gelu, linear2),
        "native_layernorm": native_ln, "derived_layernorm": ours_ln,
        "native_gelu": native_gelu, "derived_gelu": ours_gelu,
    }


def in_a_model(repeat: int) -> dict:
    """Seconds per training step (forward, backward) of each of peers()."""
    import torch

    n, width = MODEL["N"], MODEL["C"]
    models = peers(width)
    x = torch.randn(n, width, requires_grad=True)
    dy = torch.randn(n, width)

    def step(model):
        return lambda: model(x).backward(dy)

    nothing = lambda: None                                       # noqa: E731
    times, rounds = _median_interleaved({k: (nothing, step(m)) for k, m in models.items()},
                                        repeat)
    return dict(times, rounds=rounds)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import torch

    record = dict(machine=machine(), torch_threads=torch.get_num_threads(),
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                  overhead=dict(sizes=SMALL, **overhead(args.repeat)),
                  model=dict(sizes=MODEL, **in_a_model(max(args.repeat // 10, 5))))
    if args.json:
        print(json.dumps(record, indent=1, default=str))
        return
    o, m = record["overhead"], record["model"]
    us = lambda s: f"{s * 1e6:8.1f} us"                        # noqa: E731
    ms = lambda s: f"{s * 1e3:8.2f} ms"                        # noqa: E731
    print(f"per call, dense {SMALL} float32, torch threads {record['torch_threads']}:")
    print(f"  {'':22s}{'C kernel':>11s}{'module':>11s}{'nn.Linear':>11s}"
          f"{'module/Linear':>15s}")
    for k, ratio in (("forward", "forward_vs_linear"), ("forward_backward", "train_vs_linear")):
        print(f"  {k:22s}{us(o['c_' + k])} {us(o['module_' + k])} {us(o['linear_' + k])}"
              f"{o[ratio]:13.2f}")
    print(f"  module over the C kernel: forward {us(o['forward_overhead'])}, forward + "
          f"backward {us(o['train_overhead'])}")
    print(f"  the C entry points alone: forward {us(o['entry_forward'])}, forward + backward "
          f"{us(o['entry_forward_backward'])}; the module over them: forward "
          f"{us(o['forward_over_entry'])}, forward + backward {us(o['train_over_entry'])}")
    print(f"  an empty autograd.Function of the same inputs: recording forward "
          f"{us(o['empty_function_forward'])}, forward + backward "
          f"{us(o['empty_function_forward_backward'])}")
    for route, name in (("", "C++" if o["cpp_route"] else "C++ (not built: Python)"),
                        ("python_", "Python")):
        print(f"  the module on the {name} route: no_grad forward "
              f"{us(o[route + 'module_forward'])}, recording forward "
              f"{us(o[route + 'module_forward_recording'])}, forward + backward "
              f"{us(o[route + 'module_forward_backward'])}; over the floor (torch's charge "
              f"for a Python layer, plus the C entry points): "
              f"{us(o[route + 'over_floor_no_grad'])}, "
              f"{us(o[route + 'over_floor_recording'])}, "
              f"{us(o[route + 'over_floor_forward_backward'])}; no_grad past nn.Module's "
              f"call {us(o[route + 'over_floor_no_grad_past_module_call'])}")
    print(f"training step (forward + backward), {MODEL} float32, OMP_WAIT_POLICY="
          f"{record['omp_wait_policy']}:")
    for what in ("model", "layernorm", "gelu"):
        native, derived = m[f"native_{what}"], m[f"derived_{what}"]
        print(f"  {what:10s} torch {ms(native)}   derived {ms(derived)}   "
              f"derived/torch {derived / native:5.2f}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
