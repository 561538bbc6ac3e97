"""Whether a layer's kernels call the GEMM hook anywhere: only then does its C carry the
plain-C loops beside those calls, and the BP_GEMM_LOOPS switch that leaves them out of a
build that always sets a GEMM (templates/c_source.c.j2, codegen.loader.gemm_defines)."""
from __future__ import annotations

# the keys of a kernel's top-level view (codegen/c_backend.py _view) whose calls the
# template's `nest` macro writes with loops beside them for no GEMM only, and the key of a
# recurrence's part it writes as one.  Not "im2col": a convolution's loops also run with a
# GEMM, when the work is too small for the packing, so every build keeps them.
NEST_GEMMS = ("gemm", "batched", "pair")
STEP_GEMM = "step"


def calls_gemm(views: list[dict]) -> bool:
    """Whether a kernel's views hold a GEMM call with loops beside it that only a missing
    GEMM runs: a product at the top level, or a step's GEMM among a recurrence's parts."""
    return any(any(v.get(k) for k in NEST_GEMMS) or
               any(p.get(STEP_GEMM) for p in v.get("parts", ()) if isinstance(p, dict))
               for v in views)
