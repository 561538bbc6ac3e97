"""Where a second OpenBLAS thread starts to pay: NumPy's float32 matrix products (the
OpenBLAS the generated kernels call) on one and on two threads, interleaved, medians.

    python -m bench.gemm_threads [--repeat 30]

Prints one row per product m x n x k (the small dense backward's 64 x 512 x 512 among
them) with the work m n k, both medians and their ratio; codegen/blas.py's SERIAL_BELOW
is chosen from it.  The ratio depends on the load: say what it was (the header prints the
load average before and after).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# as `backprop bench` runs (set before OpenBLAS loads): idle workers sleep at once
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from codegen.blas import numpy_blas  # noqa: E402

SHAPES = [(16, 128, 128), (32, 128, 128), (32, 256, 128), (32, 256, 256), (64, 256, 256),
          (64, 512, 512), (128, 512, 512), (64, 1024, 1024),
          (64, 2048, 1024), (256, 1024, 1024), (512, 1024, 1024), (4096, 768, 768)]


def measure(blas, repeat: int) -> list[tuple]:
    rng = np.random.default_rng(0)
    rows = []
    for m, n, k in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        times = {1: [], 2: []}
        for t in (1, 2):                         # warm-up
            blas.set_threads(t)
            np.matmul(a, b, out=c)
        for _ in range(repeat):
            for t in (1, 2):
                blas.set_threads(t)
                t0 = time.perf_counter()
                np.matmul(a, b, out=c)
                times[t].append(time.perf_counter() - t0)
        one, two = (statistics.median(times[t]) for t in (1, 2))
        rows.append((m, n, k, m * n * k, one, two))
    blas.set_threads(2)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    blas = numpy_blas()
    if blas is None or blas.set_threads is None:
        raise SystemExit("NumPy's OpenBLAS (ILP64, with openblas_set_num_threads) not found")
    print(f"{blas.describe()}; load average before {os.getloadavg()[0]:.1f}")
    rows = measure(blas, args.repeat)
    print(f"{'m x n x k':>18} {'log2 mnk':>8} {'1 thread ms':>12} {'2 threads ms':>13} "
          f"{'1 / 2':>6}")
    for m, n, k, work, one, two in rows:
        print(f"{f'{m} x {n} x {k}':>18} {np.log2(work):8.1f} {one * 1e3:12.3f} "
              f"{two * 1e3:13.3f} {one / two:6.2f}")
    print(f"load average after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
