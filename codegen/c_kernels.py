"""The compiled C kernels of one layer behind the same forward/backward contract as the
NumPy backend.  Every array is checked before C sees it: dtype as compiled, shape against
the layer's dimensions (consistent across arrays), C-contiguity, sizes of at least 1.
Outputs are allocated here, so they never alias an input."""
from __future__ import annotations

import threading

import numpy as np

from .arguments import check_backward, check_fusable, check_names, derive_sizes, dim_program
from .blas import hold_addresses, numpy_blas, one_thread, ruled_gemm
from .dtypes import CTYPES, SUFFIX


class CKernels:
    backend = "c"

    def __init__(self, layer, derivation, plan, module, dtype: str, shape=None):
        """`layer` is a Layer, or (after a warm load) a function that parses it when first
        asked for; `shape` then describes it: name, dims, tensors, outputs."""
        self._layer = layer
        self._derivation = derivation      # None after a warm load: derived when asked for
        shape = shape or layer_shape(layer)
        self.name = shape["name"]
        self._dim_names = tuple(shape["dims"])
        self._dim_defs = shape.get("dim_defs", {})
        self._output_names = tuple(shape["outputs"])
        tensors = {n: (role, tuple(dims), values)
                   for n, (role, dims, values) in shape["tensors"].items()}
        self.dtype = np.dtype(dtype)
        self._ctype = CTYPES[dtype]
        self._array_type = f"{self._ctype}[]"
        self.tensors = {n: (role, dims) for n, (role, dims, _) in tensors.items()}
        self.args = tuple(plan.args)
        self.returns = tuple(plan.returns)
        self.upstream = tuple(plan.upstream)
        self.gradients = tuple(plan.gradients)
        self.reuses = tuple(plan.reuses)
        self._shapes = {n: dims for n, (_, dims, _) in tensors.items()}
        self._indices = {n: values for n, (_, _, values) in tensors.items()
                         if values is not None}
        self._shapes.update({"d" + n: dims for n, (_, dims, _) in tensors.items()})
        self.blas = None
        # a function returning this layer's module with the plain-C loops beside its GEMM
        # calls, when `module` was built without them (codegen.loader.gemm_defines)
        self.with_loops = None
        self._bind(module)
        self.use_blas(True)
        self._kept: dict[tuple, np.ndarray] = {}     # (entry, result) -> buffer, for reuse=
        self._scratch_locks = {e: threading.Lock() for e in ("forward", "backward", "fused")}

    @property
    def layer(self):
        if callable(self._layer):
            self._layer = self._layer()
        return self._layer

    @property
    def derivation(self):
        if self._derivation is None:
            from derive import derive

            self._derivation = derive(self.layer)
        return self._derivation

    def _bind(self, module) -> None:
        """Take the kernels' entry points from a compiled module."""
        layer_name, sfx = self.name, SUFFIX[self.dtype.name]
        self._ffi, self._lib = module.ffi, module.lib
        self._forward = getattr(self._lib, f"bp_{layer_name}_forward_{sfx}")
        self._backward = getattr(self._lib, f"bp_{layer_name}_backward_{sfx}")
        self._forward_work = getattr(self._lib, f"bp_{layer_name}_forward_work")
        self._backward_work = getattr(self._lib, f"bp_{layer_name}_backward_work")
        self._fused = getattr(self._lib, f"bp_{layer_name}_forward_backward_{sfx}", None)
        self._inplace = getattr(self._lib, f"bp_{layer_name}_forward_inplace_{sfx}", None)
        self._fused_work = getattr(self._lib, f"bp_{layer_name}_forward_backward_work", None)
        # products as loops of small GEMMs on OpenMP threads: BLAS on one thread meanwhile
        self._gemm_blocks = hasattr(self._lib, f"bp_{layer_name}_gemm_blocks")
        # convolutions' per-image GEMMs and attention's GEMMs of blocks run on the
        # kernel's own threads: OpenBLAS on one thread meanwhile (see blas.one_thread)
        self._c_entries = {"forward": self._forward, "backward": self._backward}
        self._holds_blas = _gemm_per_thread(self._lib, layer_name) or self._gemm_blocks
        if self._holds_blas:
            self._forward, self._backward, self._fused, self._inplace = (
                self._one_blas_thread(f) if f is not None else None
                for f in (self._forward, self._backward, self._fused, self._inplace))

    def use_blas(self, enabled: bool = True) -> None:
        """Matrix products through NumPy's BLAS (the default, when NumPy has an ILP64
        OpenBLAS) or through the generated loops.  The setting belongs to the compiled
        module, so it applies to every kernels object of this layer in the process that
        uses that module.  codegen.load builds without the loops when it has a BLAS
        (codegen.loader.gemm_defines): the first use_blas(False) then switches this object
        to the layer's build with them (compiled now, unless the cache holds it)."""
        if not enabled and self.with_loops is not None:
            self._bind(self.with_loops())
            self.with_loops = None
        blas = numpy_blas() if enabled else None
        sgemm, dgemm = ruled_gemm(blas)      # small products on one BLAS thread
        f32 = self._ffi.cast("bp_gemm_f32_t", sgemm)
        f64 = self._ffi.cast("bp_gemm_f64_t", dgemm)
        getattr(self._lib, f"bp_{self.name}_set_gemm")(f32, f64)
        self.blas = blas

    def _one_blas_thread(self, kernel):
        def call(*args):
            with one_thread(self.blas):
                return kernel(*args)
        return call

    def set_threads(self, threads: int) -> None:
        """Threads the kernels may use: OpenMP's (no effect when built without it) and,
        when matrix products go to NumPy's OpenBLAS, its thread count too, which NumPy
        shares (as torch.set_num_threads also sets its BLAS's)."""
        getattr(self._lib, f"bp_{self.name}_set_threads")(int(threads))
        if self.blas is not None and self.blas.set_threads is not None:
            self.blas.set_threads(max(int(threads), 1))

    # ---- the contract -------------------------------------------------------------------
    def forward(self, out=None, reuse=False, **arrays):
        """Results in fresh arrays, or in the caller's: out={name: array}.  For a layer
        computed element by element (an optimizer step, an activation) a result may be the
        very input it replaces, out={"p_next": p}: an update in place.

        The scratch space is this object's, kept from call to call (see _call).
        reuse=True: results go into buffers this object keeps too, and
        hands out again on the next reuse=True call of the same entry with the same sizes,
        so a training loop does not pay a fresh allocation's page faults every step.  The
        aliasing rule: such a result is overwritten by that next call; copy what must
        outlive it.  A kept buffer passed back as an input is not written: that call gets
        a fresh one, which is kept from then on."""
        check_names(self.name, arrays, self.args, ())
        a, sizes = self._check(arrays, self.args)
        ptrs = self._pointers(a)
        given = out
        out = self._outputs(given, self.returns, sizes, a, ptrs,
                            in_place=self._inplace is not None,
                            reuse="forward" if reuse else None)
        # (fresh and kept results share no input's memory: only the caller's may)
        shared = bool(given) and self._inplace is not None and any(
            np.may_share_memory(o, x) for o in out.values() for x in a.values())
        kernel = self._inplace if shared else self._forward
        self._call(kernel, self._forward_work, sizes, "forward",
                   [ptrs[n] for n in self.args + self.returns])
        return out

    def backward(self, out=None, reuse=False, **arrays):
        """Every gradient, from the arguments, the upstream gradients and (recomputed when
        not given) the forward results it reuses; out= and reuse= as in forward."""
        check_backward(self.name, self.gradients)
        check_names(self.name, arrays, self.args + self.upstream, self.returns)
        if any(n not in arrays for n in self.reuses):
            fwd = self.forward(**{n: arrays[n] for n in self.args})
            arrays = {**{n: fwd[n] for n in self.reuses}, **arrays}
        inputs = self.args + self.upstream + self.reuses
        a, sizes = self._check(arrays, inputs)
        ptrs = self._pointers(a)
        out = self._outputs(out, self.gradients, sizes, a, ptrs,
                            reuse="backward" if reuse else None)
        self._call(self._backward, self._backward_work, sizes, "backward",
                   [ptrs[n] for n in inputs + self.gradients])
        return out

    def forward_backward(self, out=None, reuse=False, **arrays):
        """The loss (and any outputs) and every gradient in one pass: for a layer that ends
        in its loss, intermediates never leave the kernel (see forward_backward in the
        generated header).  Other layers: ValueError (they need upstream gradients).
        out= and reuse= as in forward."""
        if self._fused is None:
            check_fusable(self.name, None, self.upstream)
        check_names(self.name, arrays, self.args, ())
        a, sizes = self._check(arrays, self.args)
        ptrs = self._pointers(a)
        names = self._output_names + self.gradients
        out = self._outputs(out, names, sizes, a, ptrs, reuse="fused" if reuse else None)
        self._call(self._fused, self._fused_work, sizes, "fused",
                   [ptrs[n] for n in self.args + names])
        return out

    # ---- for callers that pass pointers themselves (codegen.torch_calls) -----------------
    def entry_point(self, entry: str):
        """(C function, its work-size function) of entry "forward", "backward" or
        "forward_backward" (a layer ending in its loss).  The function takes the sizes
        (`dim_values`), then a pointer per array: `args` (and for backward `upstream`, then
        `reuses`), then one per result (`returns`; `gradients`; the outputs, then the
        gradients), then the work buffer; it returns 0.  Nothing is checked on that route:
        check the arrays with `checked_sizes` first."""
        if entry == "forward":
            return self._forward, self._forward_work
        if entry == "backward":
            return self._backward, self._backward_work
        if entry == "forward_backward" and self._fused is not None:
            return self._fused, self._fused_work
        raise ValueError(f"{self.name}: no C entry point {entry!r} (forward, backward"
                         f"{', forward_backward' if self._fused is not None else ''})")

    def entry_addresses(self, entry: str) -> tuple:
        """For a caller outside Python (codegen.torch_native): the address of entry
        "forward" or "backward", and of the functions to call just before and after it
        (OpenBLAS held on one thread, as entry_point's call does: blas.one_thread), else 0s."""
        self.entry_point(entry)                          # an unknown entry: its error
        return (int(self._ffi.cast("uintptr_t", self._c_entries[entry])),
                *(hold_addresses(self.blas) if self._holds_blas else (0, 0)))

    def checked_sizes(self, arrays: dict, names) -> dict:
        """Every dimension's size, from the arrays `names`, checked as forward checks them
        (a ValueError naming the first problem)."""
        return self._check(arrays, names)[1]

    def c_types(self):
        """The compiled module's cffi FFI and the C type of its floats ("float" or
        "double"), to build entry_point's arguments with (integer labels: int64_t)."""
        return self._ffi, self._ctype

    def check_status(self, status, sizes) -> None:
        self._ran(status, sizes)

    def dim_values(self, sizes: dict) -> list[int]:
        return self._dims(sizes)

    def shape_of(self, name: str, sizes: dict) -> tuple:
        return self._shape(name, sizes)

    # ---- checks ---------------------------------------------------------------------------
    def _ran(self, status, sizes):
        """A kernel's status: -1 means a derived size disagreed with its definition, which
        the checks before the call rule out; reaching it is a bug, not bad input."""
        if status == -2:
            raise RuntimeError(f"{self.name}: the C kernels were built without their loops "
                               f"(-DBP_GEMM_LOOPS=0) and no GEMM is set; call use_blas()")
        if status != 0:
            raise RuntimeError(f"{self.name}: the C kernel refused the sizes {sizes} "
                               f"(status {status}); please report this")

    def _outputs(self, given, names, sizes, inputs, ptrs, in_place=False, reuse=None):
        """Result arrays: fresh ones, or the caller's (`out={name: array}`, some or all),
        each checked like an input and refused if it may overlap any other array (the C
        pointers are restrict), except, with `in_place`, exactly the input it replaces.
        With `reuse` (the entry's name), the ones not given come from the buffers kept
        for that entry (see forward).  `ptrs` holds each input's C pointer: each result's
        is added."""
        given = dict(given or {})
        unknown = [n for n in given if n not in names]
        if unknown:
            raise ValueError(f"{self.name}: out has no result named {unknown[0]} (results: "
                             f"{', '.join(names)})")
        out, spans, cast = {}, {}, self._ffi.cast
        # a kept buffer is none of the inputs nor any array the caller passed in out= (one
        # kept from an earlier call, handed back for another result)
        avoid = {**inputs, **{k: v for k, v in given.items() if isinstance(v, np.ndarray)}} \
            if reuse else inputs

        def span(name, array):
            """The bytes [start, end) the array spans: the arrays are C-contiguous, so two
            overlap exactly when their spans do (np.may_share_memory's bounds test at a
            fraction of its cost; only the caller's out= arrays need it)."""
            if name not in spans:
                start = int(cast("uintptr_t", ptrs[name]))
                spans[name] = (start, start + array.nbytes)
            return spans[name]

        for n in names:
            shape = self._shape(n, sizes)
            a = given.get(n)
            if a is None:
                out[n] = self._buffer((reuse, n), shape, avoid) if reuse else \
                    np.empty(shape, self.dtype)
                ptrs[n] = self._ptr(out[n])
                continue
            flags = a.flags if isinstance(a, np.ndarray) else None
            if flags is None or a.dtype != self.dtype or a.shape != shape \
                    or not (flags.c_contiguous and flags.writeable):
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                if isinstance(a, np.ndarray) and a.dtype == self.dtype and a.shape == shape:
                    got += " that is read-only" if not a.flags.writeable else \
                        f" with strides {a.strides} (not C-contiguous)"
                raise ValueError(f"out[{n!r}]: expected a writeable C-contiguous {self.dtype} "
                                 f"array of shape {shape}, got {got}")
            ptrs[n] = self._ptr(a)
            start, end = span(n, a)
            for other in [*inputs, *out]:
                b = inputs[other] if other in inputs else out[other]
                other_start, other_end = span(other, b)
                if other_end <= start or end <= other_start:      # no byte shared
                    continue
                if in_place and other in inputs and _same_buffer(a, b):
                    continue
                why = (" (only layers computed element by element update in place)"
                       if other in inputs and _same_buffer(a, b) else "")
                raise ValueError(f"out[{n!r}] overlaps {other}: results must not share "
                                 f"memory with any other array{why}")
            out[n] = a
        return out

    def _check(self, arrays, names):
        sizes: dict[str, tuple[int, str]] = {}
        checked = {}
        for name in names:
            value = arrays[name]
            dims = self._shapes[name]
            if not dims and np.ndim(value) == 0 and not isinstance(value, np.ndarray):
                # a Python number: no dtype of its own
                value = np.asarray(value, dtype=None if name in self._indices else self.dtype)
            if not isinstance(value, np.ndarray):
                raise ValueError(f"{name}: expected a numpy.ndarray of {self.dtype}, got "
                                 f"{type(value).__name__}")
            if name in self._indices:
                if not np.issubdtype(value.dtype, np.integer):
                    raise ValueError(f"{name}: expected integers (indices into "
                                     f"{self._indices[name]}), got dtype {value.dtype}")
                value = value.astype(np.int64, copy=False)
            elif value.dtype != self.dtype:
                raise ValueError(f"{name}: expected dtype {self.dtype} (these kernels were "
                                 f"compiled for it), got {value.dtype}")
            if value.ndim != len(dims):
                raise ValueError(f"{name}: expected shape {_shape(dims, sizes)} "
                                 f"({len(dims)} axes), got {value.shape}")
            for axis, (dim, size) in enumerate(zip(dims, value.shape)):
                if size == 0:
                    raise ValueError(f"{name}: dimension {dim} (axis {axis}) is 0; every "
                                     f"dimension must be at least 1")
                first = sizes.setdefault(dim, (size, name))
                if first[0] != size:
                    raise ValueError(f"{name}: expected shape {_shape(dims, sizes)}, got "
                                     f"{value.shape}: dimension {dim} is {first[0]} in "
                                     f"{first[1]}")
            if not value.flags.c_contiguous:
                raise ValueError(f"{name}: expected a C-contiguous array (use "
                                 f"numpy.ascontiguousarray), got strides {value.strides}")
            checked[name] = value
        derive_sizes(self.name, self._dim_defs, sizes)
        missing = [d for d in self._dim_names if d not in sizes]
        if missing:
            raise ValueError(f"{self.name}: no array gives the size of dimension "
                             f"{missing[0]}")
        for name, dim in self._indices.items():
            # C reads x[n, t[n]] unchecked: an index out of range would read (or write)
            # outside the array, so every value is checked here
            a = checked.get(name)
            if a is None:
                continue
            bad = np.flatnonzero((a < 0) | (a >= sizes[dim][0]))
            if bad.size:
                where = tuple(int(w) for w in np.unravel_index(bad[0], a.shape))
                raise ValueError(f"{name}: values must lie in 0..{dim}-1 = "
                                 f"0..{sizes[dim][0] - 1}; found {a.flat[bad[0]]} at {where}")
        return checked, {d: s for d, (s, _) in sizes.items()}

    def _shape(self, name, sizes):
        return tuple(sizes[d] for d in self._shapes[name])

    def _dims(self, sizes):
        return [sizes[d] for d in self._dim_names]

    def _call(self, kernel, work_size, sizes, entry, pointers):
        """Runs an entry on its arrays' pointers with the entry's scratch space, kept from
        call to call whatever the outputs: it never leaves the call, and a fresh one's page
        faults cost more than the work at large sizes (attention's backward, 200 MB of
        scratch: a third of the call).  A call made while another thread holds it gets a
        fresh one."""
        dims = self._dims(sizes)
        size = (max(int(work_size(*dims)), 1),)
        lock = self._scratch_locks[entry]
        held = lock.acquire(blocking=False)
        try:
            work = self._buffer((entry, None), size, {}) if held else np.empty(size, self.dtype)
            self._ran(kernel(*dims, *pointers, self._ptr(work)), sizes)
        finally:
            if held:
                lock.release()

    def _buffer(self, key, shape, inputs):
        """The buffer kept under key, if it has this shape and is none of the inputs; else
        a fresh one, kept from now on."""
        kept = self._kept.get(key)
        if kept is None or kept.shape != shape or any(
                np.may_share_memory(kept, x) for x in inputs.values()):
            kept = self._kept[key] = np.empty(shape, self.dtype)
        return kept

    def _ptr(self, array):
        """A C pointer to the array's data (a `float[]` cdata, which the entries take as
        `float *`: ffi.from_buffer with the type named costs a third of casting its result)."""
        return self._ffi.from_buffer("int64_t[]" if array.dtype.kind == "i" else
                                     self._array_type, array)

    def _pointers(self, arrays: dict) -> dict:
        return {n: self._ptr(a) for n, a in arrays.items()}

    def __repr__(self):
        return f"<C kernels ({self.dtype}) of layer {self.name}>"


def layer_shape(layer) -> dict:
    """What the wrapper needs of a Layer, as plain data (kept in the warm-load index)."""
    from derive.pretty import formula

    return dict(name=layer.name, dims=list(layer.dims),
                dim_defs={name: [[d for d in layer.dims
                                  if d in {s.name for s in expr.free_symbols}],
                                 dim_program(expr), formula(expr)]
                          for name, expr in layer.dim_defs.items()},
                outputs=[t.name for t in layer.outputs],
                tensors={t.name: [t.role, list(t.dims), t.values]
                         for t in layer.tensors.values()})


def _same_buffer(a, b) -> bool:
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def _shape(dims, sizes):
    return "(" + ", ".join(f"{d}={sizes[d][0]}" if d in sizes else d for d in dims) + ")"


def _gemm_per_thread(lib, name) -> bool:
    """Whether the kernels call the GEMM from each of their threads at once."""
    try:
        return bool(getattr(lib, f"bp_{name}_gemm_per_thread")())
    except AttributeError:
        return False
