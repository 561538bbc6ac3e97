"""How long the symbolic side takes: parse + derive + kernel plan of each built-in layer,
and of the whole set, each measured cold (in a fresh Python process, so SymPy's caches
start empty).  Import time of sympy and the toolkit is reported apart.

    python bench/derive_speed.py [--repeat 5]

Prints the median over the repeats, and the min and max; the aim is under 1 s a layer and
under 5 s for the set.  Then the deep compositions of bench/deep_specs.py (50 nested
functions, a chain of 50 intermediates, a 40-layer MLP derived and emitted as C), each
aimed under 5 s; `--deep-only` runs just those.  A 40-layer MLP composed from one line per
kind of layer (a network spec) is measured through to both backends' sources: compose +
derive + plan + NumPy and C source, aim under 5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import _cpu_model as cpu_model  # noqa: E402

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import sympy
from derive import derive
from derive.builtins import BUILTINS, builtin
from codegen.plan import plan
t1 = time.perf_counter()
names = BUILTINS if sys.argv[1] == "*" else [sys.argv[1]]
for name in names:
    plan(derive(builtin(name)))
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "derive": t2 - t1}))
"""


# The deep network: 40 dense layers of their own widths D0..D40, sigmoids between.
MLP40 = """network mlp40  Forty dense layers, sigmoids between, softmax + cross-entropy
for l in 1..40: use dense as fc{l} (x = a{l-1}, W = W{l}, b = b{l}, z = z{l}, J = D{l-1}, I = D{l})
for l in 1..39: use sigmoid as act{l} (z = z{l}, a = a{l})
use softmax_cross_entropy as ce (z = z40)
"""

NETWORK_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import sympy
from derive import derive, parse_spec
from codegen.plan import plan
from codegen.numpy_backend import numpy_source
from codegen.c_backend import c_sources
t1, c1 = time.perf_counter(), time.process_time()
layer = parse_spec(sys.argv[1], "<mlp40>")
t2 = time.perf_counter()
kplan = plan(derive(layer))
t3 = time.perf_counter()
numpy_source(kplan)
c_sources(kplan)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "derive": t4 - t1, "compose": t2 - t1,
                  "derive+plan": t3 - t2, "sources": t4 - t3,
                  "cpu": time.process_time() - c1}))
"""


DEEP_CHILD = r"""
import json, sys, time
from bench.deep_specs import CASES
from derive import derive, parse_spec
label, _, depth, what, _ = CASES[int(sys.argv[1])]
maker = CASES[int(sys.argv[1])][1]
t0 = time.perf_counter()
d = derive(parse_spec(maker(depth)))
t1 = time.perf_counter()
if what == "C":
    from codegen.c_backend import c_sources
    from codegen.plan import plan
    c_sources(plan(d))
t2 = time.perf_counter()
print(json.dumps({"derive": t1 - t0, "C": t2 - t1}))
"""


def measure_deep(repeat: int):
    """Each deep case (bench/deep_specs.py) in fresh processes: (label, what, median,
    min, max, target)."""
    from bench.deep_specs import CASES

    rows = []
    for k, (label, _, depth, what, target) in enumerate(CASES):
        times = []
        for _ in range(repeat):
            out = subprocess.run([sys.executable, "-c", DEEP_CHILD, str(k)],
                                 capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parent.parent)
            times.append(json.loads(out.stdout)[what])
        rows.append((label, what, statistics.median(times), min(times), max(times), target))
    return rows


def print_deep(repeat: int):
    print(f"\ndeep compositions (bench/deep_specs.py), median of {repeat} fresh processes")
    print(f"{'case':<24}{'timed':>8}{'median s':>10}{'min..max s':>18}   aim")
    for label, what, med, lo, hi, target in measure_deep(repeat):
        print(f"{label:<24}{what:>8}{med:>10.3f}{lo:>9.3f}..{hi:<7.3f}   "
              f"{'ok' if med < target else 'SLOW'} (< {target:g} s)")


def measure(name: str, repeat: int, child: str = CHILD, parts: list | None = None):
    imports, derives = [], []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", child, name], capture_output=True,
                             text=True, check=True)
        r = json.loads(out.stdout)
        imports.append(r["import"])
        derives.append(r["derive"])
        if parts is not None:
            parts.append(r)
    return imports, derives


def print_network(repeat: int):
    parts = []
    load = os.getloadavg()[0]
    _, times = measure(MLP40, repeat, NETWORK_CHILD, parts)
    med = statistics.median(times)
    print(f"{'mlp40 (network)':<24}{med:>10.3f}{min(times):>9.3f}..{max(times):<7.3f}   "
          f"{'ok' if med < 5.0 else 'SLOW'} (< 5 s; compose + derive + plan + NumPy and C "
          f"source)")
    print("  of which, medians: " + ", ".join(
        f"{k} {statistics.median(p[k] for p in parts):.3f} s"
        for k in ("compose", "derive+plan", "sources", "cpu")) +
        " (cpu: this process's CPU time, apart from waiting for a shared core)")
    print(f"  load average (1 min) {load:.2f} before, {os.getloadavg()[0]:.2f} after, on "
          f"{os.cpu_count()} cores")


def main():
    from derive.builtins import BUILTINS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--deep-only", action="store_true",
                    help="only the deep compositions (nested functions, chains, a deep MLP)")
    ap.add_argument("--network-only", action="store_true",
                    help="only the 40-layer MLP composed as a network")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}"
          f"; Python {platform.python_version()}; sympy {__import__('sympy').__version__}")
    if args.deep_only:
        print_deep(args.repeat)
        return
    if args.network_only:
        print_network(args.repeat)
        return
    print(f"cold parse + derive + plan, median of {args.repeat} fresh processes (min..max)\n")
    print(f"{'layer':<24}{'median s':>10}{'min..max s':>18}   aim")
    worst = 0.0
    all_imports = []
    for name in BUILTINS:
        imports, times = measure(name, args.repeat)
        all_imports += imports
        med = statistics.median(times)
        worst = max(worst, med)
        print(f"{name:<24}{med:>10.3f}{min(times):>9.3f}..{max(times):<7.3f}   "
              f"{'ok' if med < 1.0 else 'SLOW'} (< 1 s)")
    imports, times = measure("*", args.repeat)
    med = statistics.median(times)
    print(f"{'all ' + str(len(BUILTINS)) + ' together':<24}{med:>10.3f}{min(times):>9.3f}.."
          f"{max(times):<7.3f}   {'ok' if med < 5.0 else 'SLOW'} (< 5 s)")
    print_network(args.repeat)
    print(f"\nimport of sympy + toolkit (not included above): median "
          f"{statistics.median(all_imports):.3f} s")
    print_deep(args.repeat)


if __name__ == "__main__":
    main()
