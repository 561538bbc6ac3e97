"""The OpenMP pragmas the C backend prints, read across every built-in's generated C."""
import re
from pathlib import Path

GENERATED = Path(__file__).resolve().parent.parent / "generated" / "c"


def test_a_combined_simd_construct_s_if_names_parallel():
    """`parallel for simd if (cond)`: since OpenMP 5.0 an `if` without a modifier applies
    to `simd` too, and GCC 12 then runs the loop one element at a time wherever cond is
    false, below the threshold that starts threads (Adam over 37,449 parameters ran at 4.3
    ns a parameter, 0.48 with `if (parallel: cond)`).  Every such `if` names `parallel`."""
    pragmas = [p for f in sorted(GENERATED.glob("*.c"))
               for p in re.findall(r"(?:#pragma omp|BP_OMP\()[^\n]*", f.read_text())]
    combined = [p for p in pragmas if re.search(r"\bparallel\b.*\bsimd\b", p)]
    assert len(combined) > 20                    # the elementwise kernels' single loops
    unnamed = [p for p in combined if re.search(r"\bif \((?!parallel: )", p)]
    assert not unnamed, unnamed[:3]
    assert any("if (parallel: P >= BP_PARALLEL_MIN_PLAIN)" in p for p in combined)
