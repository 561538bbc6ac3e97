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
import threading
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


_one_thread = threading.Lock()
_one_thread_users = [0, None]          # calls inside one_thread(), the count to restore


@contextlib.contextmanager
def one_thread(blas: Blas | None):
    """OpenBLAS on one thread for the duration: for kernels that call the GEMM from each
    of their own OpenMP threads at once (convolutions), where a threaded OpenBLAS would
    start its own workers beside them (13x slower, measured).  Nested and concurrent uses
    restore the count once, when the last one leaves."""
    if blas is None or blas.set_threads is None or blas.get_threads is None:
        yield
        return
    with _one_thread:
        if _one_thread_users[0] == 0:
            _one_thread_users[1] = blas.get_threads()
            blas.set_threads(1)
        _one_thread_users[0] += 1
    try:
        yield
    finally:
        with _one_thread:
            _one_thread_users[0] -= 1
            if _one_thread_users[0] == 0:
                blas.set_threads(_one_thread_users[1])
