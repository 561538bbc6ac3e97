"""The traffic floor: a trivial C kernel that only streams a kernel's buffers (read each
input array once, write each output once), compiled with the generated kernels' flags,
large outputs written with the same streaming stores (templates/c_streams.c.j2).
Its time is the memory-bandwidth limit a kernel with that read/write pattern can reach."""
from __future__ import annotations

import numpy as np

from codegen.build import build
from codegen.loader import cache_dir
from codegen.version import VERSION
from templates import render

SHAPES = [(r, w) for r in range(1, 5) for w in range(1, 4)]
SHAPE_ERROR = ("the floor streams 1-4 inputs and 1-3 outputs, float32, contiguous, all of one "
               "size, or arrays of two sizes that divide one another: one big input and one "
               "or two small outputs, or one or two small inputs and one big output")


class Floor:
    def __init__(self, cache=None):
        context = dict(shapes=SHAPES, version=VERSION)
        header = render("floor.h.j2", **context)
        cdef = "\n".join(line for line in header.splitlines()
                         if line.startswith(("void", "size_t", "int")))
        module = build("floor", {"floor.h": header, "floor.c": render("floor.c.j2", **context)},
                       cdef, cache_dir(cache))
        self._ffi, self._lib = module.ffi, module.lib

    def flush(self, arrays) -> bool:
        """Drop these arrays from every cache level, so the next call reads them from memory
        (and finds no dirty line of them to write back).  Only their lines go: the
        interpreter and the libraries stay warm, as they would in a training loop.  False
        on a CPU without a cache-flush instruction the kernel knows."""
        flushed = True
        for a in arrays:
            if a.nbytes:
                flushed &= bool(self._lib.bp_floor_flush(self._ffi.from_buffer(a), a.nbytes))
        return flushed

    def set_threads(self, threads: int) -> None:
        self._lib.bp_floor_set_threads(int(threads))

    def stream_in_place(self, arrays: list[np.ndarray], writes: int) -> None:
        """Read every array once and write the first `writes` of them back."""
        ptr = lambda a: self._ffi.cast("float *", self._ffi.from_buffer(a))
        fn = getattr(self._lib, f"bp_floor_inplace_{len(arrays)}_{writes}")
        fn(arrays[0].size, *[ptr(a) for a in arrays])

    def stream(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        """Read every input and write every output once (float32, all the same size; or
        a pooling's traffic: one big array and one or two small ones, on either side)."""
        ptr = lambda a: self._ffi.cast("float *", self._ffi.from_buffer(a))
        sizes = {a.size for a in inputs + outputs}
        if len(sizes) == 2:
            small, big = sorted(sizes)
            reduce = [a.size for a in inputs] == [big] and len(outputs) <= 2 and all(
                a.size == small for a in outputs)
            expand = [a.size for a in outputs] == [big] and len(inputs) <= 2 and all(
                a.size == small for a in inputs)
            if big % small or not (reduce or expand) or any(
                    a.dtype != np.float32 or not a.flags.c_contiguous for a in inputs + outputs):
                raise ValueError(SHAPE_ERROR)
            many = len(outputs) if reduce else len(inputs)
            name = ("bp_floor_reduce" if reduce else "bp_floor_expand") + (
                str(many) if many > 1 else "")
            getattr(self._lib, name)(small, big // small, *[ptr(a) for a in inputs + outputs])
            return
        n = inputs[0].size
        if not (1 <= len(inputs) <= 4 and 1 <= len(outputs) <= 3) or any(
                a.size != n or a.dtype != np.float32 or not a.flags.c_contiguous
                for a in inputs + outputs):
            raise ValueError(SHAPE_ERROR)
        fn = getattr(self._lib, f"bp_floor_{len(inputs)}_{len(outputs)}")
        fn(n, *[ptr(a) for a in inputs], *[ptr(a) for a in outputs])
