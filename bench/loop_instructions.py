"""Instructions per element of a generated kernel's vector loops, counted in its assembly.

    python -m bench.loop_instructions LAYER [ENTRY]      (ENTRY: forward, backward,
                                                          forward_backward; default all)

Compiles the layer's float C source as the toolkit does (its flags, -S) and, in each
entry's function (its OpenMP outlined body included), finds every loop (a jump back to a
label) whose body uses vector registers; prints the instructions in its body, the lanes
they cover (zmm: 16 floats, ymm: 8, xmm: 4) and their ratio.  A static count: no hardware
counters are needed (a virtual machine often has none, and valgrind knows no AVX-512).
Remainder loops (fewer lanes) are listed too; the hot ones are the full-width loops."""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from codegen import build, load
from derive.errors import SpecError

LANES = {"zmm": 16, "ymm": 8, "xmm": 4}
ENTRIES = ("forward", "backward", "forward_backward")


def assembly(layer: str) -> str:
    from codegen.c_backend import c_sources
    from codegen.plan import plan

    kernels = load(layer, backend="c", dtype="float32")
    sources = c_sources(plan(kernels.derivation))
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in sources.items():
            (Path(tmp) / name).write_text(text)
        c_file = next(n for n in sources if n.endswith(".c"))
        out = Path(tmp) / "kernel.s"
        # the whole source (no -DBP_PART): every entry's functions, not one part's
        cmd = [build.compiler()[0], *build.BASE_FLAGS, *build.opt_flags(), "-fopenmp",
               "-S", str(Path(tmp) / c_file), "-o", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"the kernel does not compile:\n{r.stderr}")
        return out.read_text()


def vector_loops(asm: str, function: str) -> list[tuple[int, str]]:
    """(instructions in the body, widest vector register) of each innermost vector loop
    (no other loop inside it) in the function and its OpenMP outlined parts."""
    lines = asm.splitlines()
    starts = [i for i, l in enumerate(lines) if re.match(rf"^{re.escape(function)}(\._omp_fn\.\d+)?:$", l)]
    spans = []
    for start in starts:
        end = next(i for i in range(start, len(lines)) if lines[i].startswith("\t.size"))
        labels = {lines[i][:-1]: i for i in range(start, end) if re.match(r"^\.L\d+:$", lines[i])}
        for i in range(start, end):
            m = re.match(r"\s+j\w+\s+(\.L\d+)$", lines[i])
            if m and labels.get(m.group(1), end) < i:
                spans.append((labels[m.group(1)], i))
    loops = []
    for first, last in spans:
        if any(first <= a and b <= last and (a, b) != (first, last) for a, b in spans):
            continue                                       # an outer loop
        body = [l for l in lines[first + 1:last + 1] if l.startswith("\t") and
                not l.startswith("\t.")]
        width = next((w for w in LANES if any(w in l for l in body)), None)
        if width:
            loops.append((len(body), width))
    return loops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("layer")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help=", ".join(ENTRIES))
    a = p.parse_args(argv)
    wrong = [e for e in a.entries if e not in ENTRIES]
    if wrong:      # (argparse's choices= refuses an empty list with nargs="*")
        p.error(f"no entry {', '.join(wrong)}; choose from {', '.join(ENTRIES)}")
    try:
        asm = assembly(a.layer)
    except SpecError as exc:
        raise SystemExit(str(exc)) from None
    name = load(a.layer, backend="c", dtype="float32").name
    for entry in a.entries or ENTRIES:
        for count, width in vector_loops(asm, f"bp_{name}_{entry}_f32"):
            print(f"{entry:17} {count:4} instructions / {LANES[width]:2} lanes ({width}) = "
                  f"{count / LANES[width]:.2f} per element")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
