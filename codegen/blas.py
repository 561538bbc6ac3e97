"""The BLAS NumPy already loaded, as GEMM function addresses for the generated C.

NumPy's wheels bundle OpenBLAS built with 64-bit integers and prefixed symbols
(scipy_cblas_sgemm64_), which is exactly the ILP64 CBLAS signature the generated C takes
(see bp_gemm_f32_t in any generated header).  Using the library already mapped into the
process means no second BLAS, no second thread pool and nothing to install.

BACKPROP_BLAS=none turns this off (the C kernels then run their own loops).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
from dataclasses import dataclass

ENV = "BACKPROP_BLAS"

# (symbol prefix, symbol suffix) of ILP64 CBLAS builds NumPy ships or links.
_NAMINGS = (("scipy_", "64_"), ("", "64_"), ("", "_64"))


@dataclass(frozen=True)
class Blas:
    path: str
    sgemm: int                  # function addresses
    dgemm: int
    set_threads: object         # ctypes function or None
    get_threads: object
    corename: str

    def describe(self) -> str:
        return f"{os.path.basename(self.path)} ({self.corename})" if self.corename \
            else os.path.basename(self.path)


@functools.lru_cache(maxsize=1)
def numpy_blas() -> Blas | None:
    """NumPy's ILP64 CBLAS, or None when it is not one we can call (or BACKPROP_BLAS=none)."""
    if os.environ.get(ENV, "").lower() in ("none", "off", "0"):
        return None
    import numpy as np

    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*.so*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in _NAMINGS:
            try:
                s = getattr(lib, f"{prefix}cblas_sgemm{suffix}")
                d = getattr(lib, f"{prefix}cblas_dgemm{suffix}")
            except AttributeError:
                continue
            setter = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            core = getattr(lib, f"{prefix}openblas_get_corename{suffix}", None)
            corename = ""
            if core is not None:
                core.restype = ctypes.c_char_p
                corename = (core() or b"").decode()
            if setter is not None:
                setter.argtypes = [ctypes.c_int]     # int in OpenBLAS even when ILP64
            addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value
            return Blas(path, addr(s), addr(d), setter, getter, corename)
    return None


# The thread rule (templates/gemm_threads.c.j2), from `python -m bench.gemm_threads` on the
# 2-core Xeon.  Idle (load 0.8), a second thread wins 1.7-1.9x from 2^22 multiply-adds up
# (64 x 512 x 512: 0.45 ms on one, 0.25 on two) and OpenBLAS runs products of 2^19 and
# less on one thread itself.  With another process on a core (load 2.7) two threads lose
# 20-40 ms from 2^20 to 2^28 and still lose at 2^29 (23 against 35 ms), win at 2^31 (1.17x).
# So: one thread below SERIAL_BELOW; all from THREADED_FROM; between them, all only while
# the other processes leave a core for each.
SERIAL_BELOW = 2.0 ** 20
THREADED_FROM = 2.0 ** 30


@functools.lru_cache(maxsize=1)
def _ruled():
    """The compiled GEMM hook with the thread rule, bound to NumPy's OpenBLAS (or None)."""
    blas = numpy_blas()
    if blas is None or blas.set_threads is None or blas.get_threads is None:
        return None
    from templates import render

    from .build import build
    from .loader import cache_dir
    from .version import VERSION

    header = render("gemm_threads.h.j2", version=VERSION)
    cdef = "\n".join(line for line in header.splitlines()
                     if line.startswith(("void", "double", "int")))
    module = build("gemm_threads", {"gemm_threads.h": header,
                                    "gemm_threads.c": render("gemm_threads.c.j2",
                                                             version=VERSION)},
                   cdef, cache_dir(None) / "blas")    # apart from the layers' kernels
    address = lambda f: ctypes.cast(f, ctypes.c_void_p).value
    ffi, lib = module.ffi, module.lib
    lib.bp_gemm_threads_init(*(ffi.cast("void *", a) for a in (
        blas.sgemm, blas.dgemm, address(blas.set_threads), address(blas.get_threads))),
        SERIAL_BELOW, THREADED_FROM)
    return module


def warm() -> None:
    """Build (or find) the GEMM hook's module now, for a caller that will need it soon and
    has a core to spare meanwhile; a failure is left for that caller to meet and report."""
    try:
        _ruled()
    except Exception:             # noqa: BLE001 -- the caller's own _ruled() raises it
        pass


def ruled_gemm(blas: Blas | None) -> tuple[int, int]:
    """Addresses of (sgemm, dgemm) to hand the generated kernels: NumPy's OpenBLAS run on
    one thread for products below SERIAL_BELOW, and below THREADED_FROM while other
    processes hold the cores, else on its thread count; the plain
    functions where the thread count cannot be set; (0, 0) without a BLAS."""
    if blas is None:
        return 0, 0
    module = _ruled()
    if module is None:
        return blas.sgemm, blas.dgemm
    ffi, lib = module.ffi, module.lib
    address = lambda name: int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
    return address("bp_sgemm_ruled"), address("bp_dgemm_ruled")


def hold_addresses(blas: Blas | None) -> tuple:
    """The addresses of the C functions one_thread calls on entry and on exit, for a
    caller outside Python (codegen.torch_native), or (0, 0) where there is nothing to hold."""
    module = _ruled() if blas is not None else None
    if module is None:
        return 0, 0
    ffi, lib = module.ffi, module.lib
    return tuple(int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
                 for name in ("bp_gemm_threads_hold", "bp_gemm_threads_release"))


@contextlib.contextmanager
def one_thread(blas: Blas | None):
    """OpenBLAS on one thread for the duration: for kernels that call the GEMM from each
    of their own OpenMP threads at once (convolutions), where a threaded OpenBLAS would
    start its own workers beside them (13x slower, measured).  Nested and concurrent uses
    (and the products the rule runs on one thread meanwhile) share one count: the thread
    count is restored once, when the last one leaves."""
    module = _ruled() if blas is not None else None
    if module is None:
        yield
        return
    module.lib.bp_gemm_threads_hold()
    try:
        yield
    finally:
        module.lib.bp_gemm_threads_release()
