"""How long a layer's first C load takes: a fresh Python process with an empty kernel cache
runs `codegen.load(NAME, backend="c", dtype=...)` (imports, derivation, plan, C sources,
compile, cffi's wrapper, load) and exits.  Each repeat gets its own empty cache folder.

    python bench/first_compile.py [--layer lstm] [--dtype float32] [--repeat 7]

Prints each run's wall time of the whole process (what a user waits for at the prompt),
its CPU time (user + sys of the process and the compilers it ran), and the time inside
`load` alone, then the medians; the aim for lstm (issue 13) is under 3 s of wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.run import _cpu_model as cpu_model  # noqa: E402

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import codegen
codegen.load(sys.argv[1], backend="c", dtype=sys.argv[2])
print(json.dumps({"load": time.perf_counter() - t0}))
"""


def one_run(layer: str, dtype: str, scratch: Path) -> dict:
    """One fresh process on an empty cache folder made under `scratch`."""
    cache = Path(tempfile.mkdtemp(prefix="first-compile-", dir=scratch))
    env = {**os.environ, "BACKPROP_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, layer, dtype], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"first_compile: loading {layer!r} failed: {last}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, **json.loads(r.stdout.strip().splitlines()[-1])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", default="lstm", help="a built-in name or a spec file")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--repeat", type=int, default=7, help="fresh processes (default 7)")
    ap.add_argument("--scratch", default=tempfile.gettempdir(),
                    help="where the empty caches are made (default: the system's temporary "
                         "folder; it must allow loading shared objects)")
    ap.add_argument("--json", action="store_true", help="one JSON record per run")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1, got {args.repeat}")
    scratch = Path(args.scratch).expanduser()
    scratch.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="first-compile-", dir=scratch) as tmp:
        for i in range(args.repeat):
            run = one_run(args.layer, args.dtype, Path(tmp))
            runs.append(run)
            if args.json:
                print(json.dumps({"layer": args.layer, "dtype": args.dtype, **run}))
            else:
                print(f"run {i + 1}: wall {run['wall']:.2f} s, cpu {run['cpu']:.2f} s, "
                      f"inside load {run['load']:.2f} s", flush=True)
    if not args.json:
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "load")}
        walls = [r["wall"] for r in runs]
        print(f"{args.layer} {args.dtype}, {len(runs)} fresh processes, {cpu_model()}, "
              f"load average {os.getloadavg()[0]:.1f}: wall median {med['wall']:.2f} s "
              f"({min(walls):.2f}..{max(walls):.2f}), cpu {med['cpu']:.2f} s, inside load "
              f"{med['load']:.2f} s")


if __name__ == "__main__":
    main()
