"""The hand-C peer column of `backprop bench` (bench/peer_c.c): compiled once per source
and compiler with the flags such hand-written CPU code ships with, -O3 -Ofast
-march=native and no OpenMP (serial loops), then called through ctypes."""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np

from codegen.build import compiler, compiler_identity, cpu_identity
from codegen.loader import cache_dir

SOURCE = Path(__file__).with_name("peer_c.c")
FLAGS = ["-O3", "-Ofast", "-march=native", "-fPIC"]
# Compiled with FLAGS, linked without -Ofast: linking with it adds crtfastmath.o, whose
# constructor switches on flush-to-zero in the whole process that loads the library (every
# later subnormal result, NumPy's and the kernels', would read 0).  GCC 13's -mno-daz-ftz
# says the same; GCC 12 lacks it.
LINK = ["-shared"]


def library(cache=None) -> ctypes.CDLL:
    cc = compiler()
    text = SOURCE.read_text()
    parts = [text, " ".join(cc + FLAGS), " ".join(LINK), compiler_identity(cc), cpu_identity()]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    folder = cache_dir(cache) / "peer_c"
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / f"peer_c_{key}.so"
    if not lib.exists():
        tmp = folder / f"peer_c_{key}.{os.getpid()}.tmp.so"
        obj = tmp.with_suffix(".o")
        for cmd in (cc + FLAGS + ["-c", str(SOURCE), "-o", str(obj)],
                    cc + LINK + [str(obj), "-o", str(tmp), "-lm"]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"bench/peer_c.c does not build:\n{r.stderr}")
        obj.unlink()
        os.replace(tmp, lib)                       # write then rename: never half a library
    return ctypes.CDLL(str(lib))


def _p(a: np.ndarray):
    return ctypes.c_void_p(a.ctypes.data)


def layernorm_backward(lib, a: dict, out: dict):
    N, C = a["x"].shape
    return lambda: lib.peer_layernorm_backward(
        ctypes.c_ssize_t(N), ctypes.c_ssize_t(C), _p(a["x"]), _p(a["w"]), _p(a["dy"]),
        _p(a["mu"]), _p(a["rstd"]), _p(out["dx"]), _p(out["dw"]), _p(out["db"]))


def gelu_backward(lib, a: dict, out: dict):
    return lambda: lib.peer_gelu_backward(ctypes.c_ssize_t(a["z"].size), _p(a["z"]),
                                          _p(a["da"]), _p(out["dz"]))


def softmax_ce(lib, a: dict, out: dict):
    N, C = a["z"].shape
    labels = np.ascontiguousarray(a["t"], dtype=np.int64)
    lib.peer_softmax_ce.restype = ctypes.c_float
    return lambda: lib.peer_softmax_ce(ctypes.c_ssize_t(N), ctypes.c_ssize_t(C), _p(a["z"]),
                                       _p(labels), _p(out["dz"]))
