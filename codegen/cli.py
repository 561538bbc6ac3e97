"""The `backprop` command: list, derive, emit, tour."""
from __future__ import annotations

import argparse
import sys

from derive.errors import SpecError

# The subcommands import what they need (SymPy comes with derive), so --help is quick;
# hence the backends are named here too (tests/test_cli.py checks they match codegen.emit).
BACKENDS = ("numpy", "c", "jax")


class _OneLineParser(argparse.ArgumentParser):
    """Bad input is one line and exit status 2 (argparse's default adds a usage line);
    subcommand parsers are made of the same class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


NAME_OR_FILE = "a built-in layer (see `backprop list`) or the path of a spec file"
ENVIRONMENT = """\
environment:
  BACKPROP_CACHE   folder of compiled and generated kernels
                   (default ~/.cache/backprop-toolkit)
  BACKPROP_CFLAGS  C optimization flags, replacing -O3 -march=native -fno-math-errno
                   -fno-trapping-math
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

    parser = _OneLineParser(
        prog="backprop", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Derive backpropagation formulas from a layer's forward equations "
                    "and emit verified kernels.", epilog=ENVIRONMENT)
    parser.add_argument("--version", action="version", version=f"backprop {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="list the built-in layers")

    const_help = ("set the spec's constants, e.g. --const S=2,P=1 for a convolution's "
                  "stride and padding (repeatable)")
    p = sub.add_parser("derive", help="print a layer's derived gradient formulas")
    p.add_argument("layer", metavar="NAME_OR_FILE", help=NAME_OR_FILE)
    p.add_argument("--const", action="append", default=[], metavar="NAME=VALUE",
                   help=const_help)

    p = sub.add_parser("emit", help="write a layer's generated kernels")
    p.add_argument("layer", metavar="NAME_OR_FILE", nargs="?", help=NAME_OR_FILE)
    p.add_argument("--all", action="store_true",
                   help="every built-in layer, into DIR/<backend>/ (how generated/ is made)")
    p.add_argument("--backend", choices=list(BACKENDS),
                   help="numpy (default), c, or jax (jax.numpy, backward by jax.custom_vjp); "
                        "with --all, every backend unless given")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="folder to write into (made if missing): DIR/<layer>.py for numpy "
                        "and jax, DIR/<layer>.h and DIR/<layer>.c for c")
    p.add_argument("--const", action="append", default=[], metavar="NAME=VALUE",
                   help=const_help)

    p = sub.add_parser("compose", help="print the layer spec a network composes to")
    p.add_argument("layer", metavar="NAME_OR_FILE", help="a network: a built-in (mlp2) or "
                   "a spec file starting with 'network NAME'")

    p = sub.add_parser("latex", help="write a layer's derivation as a document")
    p.add_argument("layer", metavar="NAME_OR_FILE", help=NAME_OR_FILE)
    p.add_argument("--const", action="append", default=[], metavar="NAME=VALUE",
                   help=const_help)
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="file ending in .tex, .md, .pdf or .png (PNG: one file per page, "
                        "OUT.png, OUT-2.png, ...)")

    p = sub.add_parser(
        "verify", help="check a claimed formula against the derivation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a claimed formula against the derived truth: HOLDS, CONDITIONAL "
                    "(with the conditions),\nFALSE (with a counterexample) or ILL-FORMED.",
        epilog=CLAIM_FORMS + "\n" + r"""notation (the README's verify section has all of it):
  gradients   \frac{\partial L}{\partial z}, \partial C / \partial b^{(1)}, \nabla_{a^{(2)}} C,
              \bar{z}, \delta^{(2)}; Jacobians \frac{\partial y_i}{\partial z_j}
  layers      W^{(2)}, w^{(2)}_{jk}, symbolic \delta^l, w^{l+1}, a^{l-1}, \delta^L
  indices     W_{jk}, x_n; shifted X_{i+r, j+s}, \delta_{i-r, j-s} (0 outside the range)
  products    A B and A \cdot B (matrix, or elementwise when only that fits) bind
              tighter than \odot; \mathbf{1} is a vector of ones; \delta_{ij} Kronecker
  functions   \sigma \tanh \log \exp \sqrt \Phi \phi \max(a, b) \min(a, b),
              \operatorname{ReLU|softplus|erf|sign}, primes f'(z), powers \tanh^2(z),
              indicators \mathbb{1}[z > 0] and [z > 0]
examples:
  backprop verify --model mlp2 '\delta^{(1)} = \sigma'"'"'(z^{(1)}) \odot (W^{(2)})^T \delta^{(2)}'
  backprop verify --model relu '\frac{\partial L}{\partial z} = \bar{a} \odot [z > 0]'""")
    p.add_argument("claim", nargs="?", metavar="CLAIM",
                   help="one equation, in LaTeX or in the spec language (forms below)")
    p.add_argument("--model", metavar="NAME_OR_FILE", help="the layer the claim is about")
    p.add_argument("--map", action="append", default=[], metavar="SYMBOL=TENSOR",
                   help=r"map a claim symbol to a tensor (repeatable), e.g. '\hat{y}=y'")
    p.add_argument("--json", action="store_true", help="print a machine-readable record")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds of CPU time SymPy may spend before numbers decide (default 5)")
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

    p = sub.add_parser(
        "train", help="train a network with its generated kernels and a step layer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a network (a layer that ends in a loss, one input x[N, D] and one "
                    "target) with its generated\nkernels and the optimizer's step layer, on "
                    "scikit-learn's digits or your own arrays.",
        epilog="example:\n  backprop train mlp2 --data digits --size H=64 --optimizer adam "
               "--epochs 30 --batch 32 --lr 0.003 --plot curve.png --save params.npz")
    p.add_argument("layer", metavar="NETWORK", help=NAME_OR_FILE)
    p.add_argument("--data", default="digits", metavar="DATA",
                   help="'digits' (scikit-learn's 1,797 8x8 images; default), a .npz file "
                        "with arrays x and y, or a .csv file with the label last")
    p.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                   help="share of the examples held out for testing (fixed split; "
                        "default 0.2)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 0.001)")
    p.add_argument("--size", action="append", default=[], metavar="DIM=N",
                   help="size of a dimension the data does not set, e.g. --size H=64")
    p.add_argument("--backend", choices=list(BACKENDS), default="c",
                   help="c (default; compiled kernels) or numpy")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    p.add_argument("--load", metavar="FILE.npz", help="start from saved parameters "
                   "(with --epochs 0: evaluate them)")
    p.add_argument("--save", metavar="FILE.npz", help="save the trained parameters")
    p.add_argument("--plot", metavar="FILE.png", help="write the loss and accuracy plot")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

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


def _constants(items) -> dict:
    """--const S=2,P=1 (repeatable) -> {"S": 2, "P": 1}."""
    out = {}
    for item in ",".join(items).split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if name.strip() in out:
            raise ValueError(f"--const sets {name.strip()} twice; give each constant once")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            raise ValueError(f"--const takes NAME=INTEGER pairs, e.g. --const S=2,P=1; got "
                             f"'{item}'") from None
        if not sep:
            raise ValueError(f"--const takes NAME=INTEGER pairs; got '{item}'")
    return out


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

    print(derivation_text(derive(resolve(args.layer, _constants(args.const)))))
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
    layer = args.layer
    if args.const:
        from derive.builtins import resolve

        layer = resolve(layer, _constants(args.const))
    for path in emit(layer, args.out, args.backend or "numpy"):
        print(path)
    return 0


def cmd_compose(args) -> int:
    from derive.builtins import resolve

    print(resolve(args.layer).source, end="")
    return 0


def cmd_latex(args) -> int:
    from derive import derive
    from derive.builtins import resolve
    from derive.document import write

    for path in write(derive(resolve(args.layer, _constants(args.const))), args.out):
        print(path)
    return 0


def cmd_verify(args) -> int:
    import json

    from derive import derive
    from derive.builtins import resolve

    from derive.catalogue import CATALOGUE, catalogue_layer
    from derive.claims import ClaimError
    from derive.verify import unreadable, verify

    if args.catalogue:
        records, failures = [], 0
        for e in CATALOGUE:
            try:
                # (a model's later claims find its derivation remembered: derive's own)
                v = verify(derive(catalogue_layer(e.model)), e.claim, e.mapping,
                           timeout=args.timeout)
            except ClaimError as exc:
                v = unreadable(exc, e.claim, e.model)
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
    d = derive(resolve(args.model))
    try:
        v = verify(d, args.claim, mapping, timeout=args.timeout)
    except ClaimError as exc:
        if args.json:
            print(json.dumps(unreadable(exc, args.claim, d.layer.name).record(), indent=1))
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


def cmd_train(args) -> int:
    from derive.builtins import resolve

    from .datasets import load_data
    from .train_report import load_params, plot, save_params, table
    from .training import train

    sizes = {name: int(n) for name, n in _constants(args.size).items()}
    data = load_data(args.data, args.test_fraction)
    init = load_params(args.load) if args.load else None
    trainer, history = train(resolve(args.layer), data, args.optimizer, args.epochs,
                             args.batch, args.lr, args.seed, args.backend, args.dtype,
                             sizes, init, progress=not args.quiet)
    n_train, n_test = len(data.y_train), len(data.y_test)
    print(f"{trainer.layer.name} on {data.name} ({n_train} training, {n_test} test "
          f"examples, {data.classes} classes): {args.optimizer}, lr {args.lr}, batch "
          f"{args.batch}, {args.backend} kernels in {args.dtype}")
    if history.epochs:
        print(table(history))
        last = history.epochs[-1]
        per_epoch = sum(e["seconds"] for e in history.epochs) / len(history.epochs)
        print(f"test accuracy {100 * last['test_accuracy']:.2f}% after {last['epoch']} "
              f"epochs ({trainer.steps} steps); {per_epoch:.3f} s per epoch")
    else:
        loss, acc = trainer.evaluate(data.x_test, data.y_test, data.classes)
        print(f"test loss {loss:.4f}, test accuracy {100 * acc:.2f}% (no training: "
              f"--epochs 0)")
    if args.save:
        print(f"saved parameters to {save_params(args.save, trainer.params)}")
    if args.plot:
        if not history.epochs:
            raise ValueError("--plot needs at least one epoch")
        print(f"wrote {plot(history, args.plot, trainer.layer.name + ' on ' + data.name)}")
    return 0


def cmd_tour(args) -> int:
    from .tour import tour

    return tour(seed=args.seed)


COMMANDS = {"list": cmd_list, "derive": cmd_derive, "emit": cmd_emit, "latex": cmd_latex,
            "compose": cmd_compose, "train": cmd_train,
            "verify": cmd_verify, "tour": cmd_tour, "bench": cmd_bench}

if __name__ == "__main__":
    sys.exit(main())
