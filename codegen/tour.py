"""`backprop tour`: the worked example, the two-layer network's formulas, and its NumPy
kernels emitted and checked against central finite differences."""
from __future__ import annotations

import numpy as np

from derive import derive
from derive.builtins import builtin
from derive.evaluate import evaluate
from derive.pretty import derivation_text

from .loader import load


def tour(seed: int = 0) -> int:
    ok = True
    print("1. The worked example: x = 0.5, w = 0.8, z = w x, yhat = sigmoid(z), y = 1, "
          "L = -y log(yhat)\n")
    neuron = derive(builtin("neuron"))
    print(_indent(derivation_text(neuron)))
    v = evaluate(neuron, dict(x=0.5, w=0.8, y=1.0))
    print()
    for label, key in (("yhat", "yhat"), ("L", "L"), ("dL/dz", "dz"), ("dL/dw", "dw")):
        print(f"    {label:<6} = {float(v[key]):.6g}")
    print("\n    dz = y*yhat - y is the general form; it is the textbook yhat - y only when "
          "y = 1,\n    as here (a target of 0 gives dz = 0, not yhat).  The verifier "
          "finds that condition:\n    backprop verify --model neuron "
          "'\\frac{\\partial L}{\\partial z} = \\hat{y} - y'")

    print("\n2. A two-layer network (dense, sigmoid, dense, softmax + cross-entropy):\n")
    mlp2 = derive(builtin("mlp2"))
    print(_indent(derivation_text(mlp2)))
    print("\n    The hidden delta dz1 is the textbook recursion "
          "delta1 = (W2^T delta2) (.) sigma'(z1),\n    with sigma'(z1) = a1 (1 - a1) and "
          "delta2 = dz2 = (y - t)/N for one-hot targets.")

    print("\n3. mlp2's NumPy kernels, emitted and checked against central finite "
          "differences:\n")
    kernels = load(mlp2.layer)
    lines = len(kernels.path.read_text(encoding="utf-8").splitlines())
    print(f"    emitted mlp2.py ({lines} lines), kept in the kernel cache:\n"
          f"    {kernels.path}\n")
    ok &= _check_fd(kernels, seed)
    print("\ntour " + ("passed" if ok else "FAILED"))
    if ok:
        print("\nNext: write a layer of your own (docs/getting-started.md, or the notebook "
              "docs/tutorial.ipynb),\nor try  backprop derive layernorm,  "
              "backprop emit mlp2 -o mine/,  backprop verify --catalogue.")
    return 0 if ok else 1


def _check_fd(kernels, seed) -> bool:
    rng = np.random.default_rng(seed)
    sizes = dict(N=5, D=7, H=3, C=4)
    arrays = {}
    for name, (role, dims) in kernels.tensors.items():
        if role in ("input", "param"):
            arrays[name] = rng.normal(size=[sizes[d] for d in dims])
        elif role == "target":
            arrays[name] = np.eye(sizes["C"])[rng.integers(0, sizes["C"], sizes["N"])]
    grads = kernels.backward(**arrays)
    print(f"    sizes {sizes}, float64, step h = 1e-6, one-hot targets")
    ok = True
    for name in kernels.gradients:
        x = arrays[name[1:]]
        fd = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            keep = x[i]
            x[i] = keep + 1e-6
            up = float(kernels.forward(**arrays)["L"])
            x[i] = keep - 1e-6
            down = float(kernels.forward(**arrays)["L"])
            x[i] = keep
            fd[i] = (up - down) / 2e-6
        err = np.linalg.norm(grads[name] - fd) / max(np.linalg.norm(fd), 1e-300)
        good = err < 1e-6
        ok &= good
        print(f"    {name:<4} {str(x.shape):<8} relative error {err:.1e}  "
              f"{'ok' if good else 'FAILED'} (< 1e-6)")
    return ok


def _indent(text, pad="    "):
    return "\n".join(pad + line if line else line for line in text.splitlines())
