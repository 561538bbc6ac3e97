"""The hot path of codegen.torch_module: torch tensors straight into a layer's C kernels.

What a call needs besides the tensors' addresses (the sizes of every dimension, the shapes
of the results, the size of the work buffer) depends only on the tensors' shapes, so it is
worked out once per set of shapes, through the C wrapper's own checks (a bad shape gets
their error), and kept.  A call with known shapes then costs a dictionary look-up, one
fresh array for all of an entry's results (NumPy's, each result a view of it handed out
under torch.from_numpy: cheaper than torch.empty), one cffi pointer cast per tensor (from
Tensor.data_ptr(): no NumPy views) and no work buffer unless the entry needs one.  What
can change between calls with the same shapes (device, dtype, contiguity, the values of
integer labels) is checked by the module (codegen.torch_layer) and here, every call."""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import torch

# called through map(), as C functions: no Python frame per tensor
_data_ptr, _from_numpy, _reshape = torch.Tensor.data_ptr, torch.from_numpy, np.ndarray.reshape

MAX_SHAPES = 64          # shape plans kept per module; past that the oldest are dropped
ALIGN_BYTES = 64         # each result in a block starts on a cache line


@dataclass(frozen=True)
class Block:
    """An entry's results packed into one array: one allocation per call, not one per
    result (each costs a microsecond or two inside a training step)."""
    size: int              # elements of the whole block
    offsets: tuple         # where each result starts
    slices: tuple          # the elements of each result
    shapes: tuple          # each result's shape
    single: bool           # one result, not empty: the block is it, in its shape
    allocated: tuple       # the shape of the array to allocate

    @classmethod
    def of(cls, shapes, itemsize: int) -> "Block":
        step, at, offsets, slices = max(ALIGN_BYTES // itemsize, 1), 0, [], []
        for shape in shapes:
            n = math.prod(shape)
            offsets.append(at)
            slices.append(slice(at, at + n))
            at += -(-n // step) * step
        single = len(shapes) == 1 and math.prod(shapes[0]) > 0
        size = max(at, 1)
        return cls(size, tuple(offsets), tuple(slices), tuple(shapes), single,
                   tuple(shapes[0]) if single else (size,))


@dataclass(frozen=True)
class ShapePlan:
    """Everything a call with these input shapes needs besides the tensors."""
    sizes: dict            # dimension -> size
    dims: tuple            # the sizes, as the C entry points take them first
    returns: Block         # forward's results, in kernels.returns order
    gradients: Block       # backward's results, in kernels.gradients order
    forward_work: int      # elements of the work buffer of each entry (0: none)
    backward_work: int


class DirectCalls:
    """forward and backward of a layer's C kernels on checked CPU tensors: `args` are the
    kernels' arguments in kernels.args order, each contiguous, of the module's dtype (int64
    for integer labels); the module checks that first (codegen.torch_layer)."""

    def __init__(self, kernels, dtype: torch.dtype, labels: dict):
        """labels: argument name -> the dimension its integer values index."""
        self.kernels = kernels
        self.dtype = dtype
        self._np_dtype = np.dtype(str(dtype).removeprefix("torch."))
        ffi, ctype = kernels.c_types()
        self._cast, self._float_ptr, self._null = ffi.cast, ffi.typeof(f"{ctype} *"), ffi.NULL
        int_ptr = ffi.typeof("int64_t *")
        # results: NumPy arrays seen as C arrays; the work buffer: cffi's own memory, not
        # cleared (cheaper than a tensor), and NULL for the many entries that need none
        self._array, self._from_buffer = ffi.typeof(f"{ctype}[]"), ffi.from_buffer
        self._alloc = ffi.new_allocator(should_clear_after_alloc=False)
        self._arg_ptrs = tuple(int_ptr if n in labels else self._float_ptr
                               for n in kernels.args)
        self._labels = tuple((i, labels[n]) for i, n in enumerate(kernels.args)
                             if n in labels)
        self._forward, self._forward_work = kernels.entry_point("forward")
        self._backward, self._backward_work = kernels.entry_point("backward") \
            if kernels.gradients else (None, None)
        self.plans: dict[tuple, ShapePlan] = {}      # input shapes -> their plan
        self.labelled = bool(self._labels)           # plan() must see every call

    def plan(self, args, shapes: tuple) -> ShapePlan:
        """The plan of the arguments' shapes (`shapes`, theirs in order: made, and checked,
        on first sight); the labels' values are checked every call (C reads x[n, t[n]]
        unchecked)."""
        plan = self.plans.get(shapes)
        if plan is None:
            plan = self._new_plan(args)
            if len(self.plans) >= MAX_SHAPES:
                del self.plans[next(iter(self.plans))]
            self.plans[shapes] = plan
        for i, dim in self._labels:
            t = args[i]
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= plan.sizes[dim]):
                self._check(args)                  # raises, naming the value and where
        return plan

    def native_plan(self, args) -> tuple:
        """The plan of the arguments' shapes for the C++ route (codegen.torch_native):
        (sizes as the entry points take them, forward's result shapes, backward's, the two
        work sizes, per argument the bound of its label values or -1)."""
        plan = self.plan(args, tuple(t.shape for t in args))
        limits = dict((i, plan.sizes[dim]) for i, dim in self._labels)
        return (plan.dims, plan.returns.shapes, plan.gradients.shapes, plan.forward_work,
                plan.backward_work, [limits.get(i, -1) for i in range(len(args))])

    # The two calls below are chains of map() over C functions: in Python 3.11 each list
    # comprehension is a function call of its own, a microsecond or so inside a training
    # step; map() runs without a Python frame.

    def forward(self, plan: ShapePlan, args) -> tuple:
        """Forward's results, fresh tensors in kernels.returns order."""
        out = plan.returns
        block = np.empty(out.allocated, self._np_dtype)
        base = self._from_buffer(self._array, block)
        status = self._forward(*plan.dims,
                               *map(self._cast, self._arg_ptrs, map(_data_ptr, args)),
                               *((base,) if out.single else map(base.__add__, out.offsets)),
                               self._alloc(self._array, plan.forward_work)
                               if plan.forward_work else self._null)
        if status:
            self.kernels.check_status(status, plan.sizes)
        return _tensors(block, out)

    def backward(self, plan: ShapePlan, args, upstream, reused) -> tuple:
        """Every gradient, fresh tensors in kernels.gradients order, from the arguments,
        the upstream gradients (kernels.upstream order, contiguous, of the dtype) and the
        forward results backward reuses (kernels.reuses order)."""
        out = plan.gradients
        block = np.empty(out.allocated, self._np_dtype)
        base, cast, fp = self._from_buffer(self._array, block), self._cast, self._float_ptr
        status = self._backward(*plan.dims,
                                *map(cast, self._arg_ptrs, map(_data_ptr, args)),
                                *map(cast, repeat(fp), map(_data_ptr, (*upstream, *reused))),
                                *((base,) if out.single else map(base.__add__, out.offsets)),
                                self._alloc(self._array, plan.backward_work)
                                if plan.backward_work else self._null)
        if status:
            self.kernels.check_status(status, plan.sizes)
        return _tensors(block, out)

    def _new_plan(self, args) -> ShapePlan:
        k = self.kernels
        sizes = self._check(args)
        dims = tuple(k.dim_values(sizes))
        itemsize = self._np_dtype.itemsize
        return ShapePlan(
            sizes=sizes, dims=dims,
            returns=Block.of([k.shape_of(n, sizes) for n in k.returns], itemsize),
            gradients=Block.of([k.shape_of(n, sizes) for n in k.gradients], itemsize),
            forward_work=int(self._forward_work(*dims)),
            backward_work=int(self._backward_work(*dims)) if self._backward else 0)

    def _check(self, args) -> dict:
        """The C wrapper's checks of the arguments (as NumPy views: no copy)."""
        return self.kernels.checked_sizes(
            {n: a.detach().numpy() for n, a in zip(self.kernels.args, args)},
            self.kernels.args)


def _tensors(block, out: Block) -> tuple:
    """Tensors over the results in a block (no copies)."""
    if out.single:
        return (_from_numpy(block),)
    return tuple(map(_from_numpy, map(_reshape, map(block.__getitem__, out.slices),
                                      out.shapes)))
