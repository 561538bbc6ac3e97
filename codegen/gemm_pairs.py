"""Two independent matrix products in a row run side by side, one per thread.

A dense layer's backward is two products of the same size, dx = dz W and dW = dz^T x,
neither reading what the other writes.  On one OpenBLAS thread each, run at once on the
kernel's two OpenMP threads, they beat the two run one after the other on two OpenBLAS
threads: one thread keeps its core's caches to itself and waits for no partner (idle
2-core Xeon, 64 x 512 x 512: 0.45 ms for both against 0.51; docs/benchmarks.md, issue 18).
The GEMM hook runs a product called from inside a parallel region on one OpenBLAS thread
(templates/gemm_threads.c.j2), and a team of one runs the two sections in turn.
"""
from __future__ import annotations

# Below this many multiply-adds per product a second thread's wake-up costs more than it
# saves (the GEMM hook's SERIAL_BELOW, codegen/blas.py); and products more than twice
# apart in size would leave one thread idle for longer than a shared product takes.
SIDE_BY_SIDE_MIN = 2 ** 20


def _plain_product(view: dict) -> dict | None:
    """The GEMM of a view that is one plain product with no fill, else None."""
    if "group" in view or view.get("im2col") or view.get("batched") or view.get("step"):
        return None
    g = view.get("gemm")
    return g if g and not g["fill"] else None


def _independent(first: dict, second: dict) -> bool:
    a, b = _plain_product(first), _plain_product(second)
    return a is not None and b is not None and a["c"] != b["c"] and \
        a["c"] not in (b["a"], b["b"]) and b["c"] not in (a["a"], a["b"])


def side_by_side(views: list[dict]) -> list[dict]:
    """The views with each run of two consecutive independent plain products merged into
    one `pair` view (the template's side_by_side macro); the rest as they were."""
    out, i = [], 0
    while i < len(views):
        if i + 1 < len(views) and _independent(views[i], views[i + 1]):
            first, second = views[i], views[i + 1]
            a, b = (f"(double){g['m']}*{g['n']}*{g['k']}" for g in (first["gemm"],
                                                                     second["gemm"]))
            when = f"{a} >= {SIDE_BY_SIDE_MIN} && {b} >= {SIDE_BY_SIDE_MIN} && " \
                f"{a} <= 2*{b} && {b} <= 2*{a}"
            out.append(dict(pair=(first, second), suffix=first["suffix"], when=when))
            i += 2
        else:
            out.append(views[i])
            i += 1
    return out
