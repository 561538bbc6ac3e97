"""The `backprop` command: list, derive, emit, tour."""
from __future__ import annotations

import argparse
import sys

from derive.errors import SpecError

# The subcommands import what they need (SymPy comes with derive), so --help is quick;
# hence the backends are named here too (tests/test_cli.py checks they match codegen.emit).
BACKENDS = ("numpy", "c")


NAME_OR_FILE = "a built-in layer (see `backprop list`) or the path of a spec file"
ENVIRONMENT = """\
environment:
  BACKPROP_CACHE   folder of compiled and generated kernels
                   (default ~/.cache/backprop-toolkit)
  BACKPROP_CFLAGS  C optimization flags, replacing -O3 -march=native -fno-math-errno
  BACKPROP_BLAS    'none': matrix products in the generated C loops, not NumPy's OpenBLAS
  CC               the C compiler (default cc)"""
CLAIM_FORMS = r"""claims, in either form:
  LaTeX:          '\frac{\partial L}{\partial z} = \hat{y} - y'
                  '\frac{\partial L}{\partial W} = \delta^T x'   (matrices: either convention)
  spec language:  'dz[n, i] = (y[n, i] - t[n, i]) / N'   (gradients named d + tensor)
example:
  backprop verify --model neuron '\frac{\partial L}{\partial z} = \hat{y} - y'"""


def main(argv=None) -> int:
    from .version import VERSION

    parser = argparse.ArgumentParser(
        prog="backprop", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Derive backpropagation formulas from a layer's forward equations "
                    "and emit verified kernels.", epilog=ENVIRONMENT)
    parser.add_argument("--version", action="version", version=f"backprop {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="list the built-in layers")

    p = sub.add_parser("derive", help="print a layer's derived gradient formulas")
    p.add_argument("layer", metavar="NAME_OR_FILE", help=NAME_OR_FILE)

    p = sub.add_parser("emit", help="write a layer's generated kernels")
    p.add_argument("layer", metavar="NAME_OR_FILE", nargs="?", help=NAME_OR_FILE)
    p.add_argument("--all", action="store_true",
                   help="every built-in layer, into DIR/<backend>/ (how generated/ is made)")
    p.add_argument("--backend", choices=list(BACKENDS),
                   help="numpy (default) or c; with --all, every backend unless given")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="folder to write into (made if missing): DIR/<layer>.py for numpy, "
                        "DIR/<layer>.h and DIR/<layer>.c for c")

    p = sub.add_parser("latex", help="write a layer's derivation as a document")
    p.add_argument("layer", metavar="NAME_OR_FILE", help=NAME_OR_FILE)
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="file ending in .tex, .md, .pdf or .png (PNG: one file per page, "
                        "OUT.png, OUT-2.png, ...)")

    p = sub.add_parser("verify", help="check a claimed formula against the derivation",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=CLAIM_FORMS)
    p.add_argument("claim", nargs="?", metavar="CLAIM",
                   help="one equation, in LaTeX or in the spec language (forms below)")
    p.add_argument("--model", metavar="NAME_OR_FILE", help="the layer the claim is about")
    p.add_argument("--map", action="append", default=[], metavar="SYMBOL=TENSOR",
                   help=r"map a claim symbol to a tensor (repeatable), e.g. '\hat{y}=y'")
    p.add_argument("--json", action="store_true", help="print a machine-readable record")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds SymPy may spend before numbers decide (default 5)")
    p.add_argument("--catalogue", action="store_true",
                   help="verify the built-in catalogue of textbook claims")

    p = sub.add_parser("bench", help="time the generated C kernels against NumPy, "
                                      "PyTorch and the memory-traffic floor")
    p.add_argument("--repeat", type=int, default=9, help="timed calls per implementation "
                   "at least (default 9; medians are reported)")
    p.add_argument("--min-time", type=float, default=2.0, metavar="SECONDS",
                   help="go on calling until each benchmark has run this long, at most 10x "
                   "--repeat calls (default 2; --quick: 0)")
    p.add_argument("--only", default="", metavar="KERNELS",
                   help="comma-separated benchmark names (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="sizes divided by 64: checks the benchmark runs, measures little")
    p.add_argument("--json", action="store_true", help="print one record per kernel and "
                   "implementation as JSON instead of the table")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")

    p = sub.add_parser("tour", help="the worked example, mlp2's formulas and a kernel check")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random arrays of the finite-difference check "
                        "(default 0)")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # the reader went away (`backprop list | head`): stop quietly, as cat does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (SpecError, ValueError, OSError, RuntimeError) as exc:
        print(f"backprop: {exc}", file=sys.stderr)
        return 2


def cmd_list(args) -> int:
    from derive.builtins import BUILTINS, builtin

    width = max(map(len, BUILTINS))
    for name in BUILTINS:
        layer = builtin(name)
        print(f"{name:<{width}}  {layer.doc}")
    return 0


def cmd_derive(args) -> int:
    from derive import derive
    from derive.builtins import resolve
    from derive.pretty import derivation_text

    print(derivation_text(derive(resolve(args.layer))))
    return 0


def cmd_emit(args) -> int:
    from .emitter import emit

    if args.all == (args.layer is not None):
        raise ValueError("emit takes either NAME_OR_FILE or --all")
    if args.all:
        from .emitter import emit_all

        for path in emit_all(args.out, [args.backend] if args.backend else BACKENDS):
            print(path)
        return 0
    for path in emit(args.layer, args.out, args.backend or "numpy"):
        print(path)
    return 0


def cmd_latex(args) -> int:
    from derive import derive
    from derive.builtins import resolve
    from derive.document import write

    for path in write(derive(resolve(args.layer)), args.out):
        print(path)
    return 0


def cmd_verify(args) -> int:
    import json

    from derive import derive
    from derive.builtins import builtin, resolve

    from derive.catalogue import CATALOGUE
    from derive.claims import ClaimError
    from derive.verify import verify

    if args.catalogue:
        records, failures = [], 0
        for e in CATALOGUE:
            v = verify(derive(builtin(e.model)), e.claim, timeout=args.timeout)
            ok = v.verdict == e.verdict and tuple(v.conditions) == e.conditions
            failures += not ok
            records.append({**v.record(), "name": e.name, "source": e.source,
                            "expected": e.verdict, "expected_conditions": list(e.conditions),
                            "as_expected": ok})
            if not args.json:
                cond = f" [{'; '.join(v.conditions)}]" if v.conditions else ""
                print(f"{v.verdict:<12}{'' if ok else '(UNEXPECTED) '}{e.name:<22} "
                      f"{e.model:<22} {e.claim}{cond}\n{'':12}{e.source}; decided {v.method}")
        if args.json:
            print(json.dumps(records, indent=1))
        else:
            print(f"\n{len(CATALOGUE) - failures} of {len(CATALOGUE)} claims got their "
                  f"expected verdict")
        return 1 if failures else 0
    if not args.claim or not args.model:
        raise ValueError("verify needs --model NAME_OR_FILE and a CLAIM (or --catalogue)")
    mapping = {}
    for item in args.map:
        if "=" not in item:
            raise ValueError(f"--map {item}: expected SYMBOL=TENSOR")
        key, value = item.rsplit("=", 1)
        mapping[key.strip()] = value.strip()
    try:
        v = verify(derive(resolve(args.model)), args.claim, mapping, timeout=args.timeout)
    except ClaimError as exc:
        print(f"backprop: cannot read the claim: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(v.record(), indent=1) if args.json else v.text())
    return 0


def cmd_bench(args) -> int:
    import os

    # Three thread pools share the cores here (our OpenMP, PyTorch's OpenMP, OpenBLAS's
    # threads); OpenMP workers that spin after a parallel region steal the cores BLAS
    # needs next (a 64x512x512 backward took 6 ms instead of 0.5).  Sleeping workers are
    # the fair setting for every implementation; it must be set before OpenMP starts.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # OpenBLAS's workers likewise spin after each call (2^28 cycles by default): a NumPy
    # peer's matrix product left one spinning on the second core, and the next 2-thread
    # kernel ran at 1-thread speed (layer norm 1.8 ms, 1.25 with them asleep).  2^4 cycles
    # lets them sleep at once; it must be set before NumPy loads OpenBLAS.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    from bench.run import main as bench

    if args.repeat < 1:
        raise ValueError("--repeat must be at least 1")
    if args.min_time < 0:
        raise ValueError("--min-time must be at least 0")
    return bench(repeat=args.repeat, only=args.only, quick=args.quick, as_json=args.json,
                 min_seconds=args.min_time,
                 use_torch=not args.no_torch)


def cmd_tour(args) -> int:
    from .tour import tour

    return tour(seed=args.seed)


COMMANDS = {"list": cmd_list, "derive": cmd_derive, "emit": cmd_emit, "latex": cmd_latex,
            "verify": cmd_verify, "tour": cmd_tour, "bench": cmd_bench}

if __name__ == "__main__":
    sys.exit(main())
