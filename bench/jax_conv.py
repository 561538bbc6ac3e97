"""What the JAX backend's shifted reads cost: a training step (forward, then the derived
backward through jax.custom_vjp: jax.grad of sum(y * dy)) of conv2d (stride 1 and stride 2
with padding), conv1d and maxpool2d, jitted, against JAX differentiating its own
jax.lax.conv_general_dilated / jax.lax.reduce_window on the same arrays.

    python -m bench.jax_conv [--repeat 20] [--json]

Medians of interleaved rounds (bench.run._median_interleaved) of the compiled step, wall
time, float32, on JAX's CPU device; compilation is in the warm-up, not the times."""
from __future__ import annotations

import argparse
import json

import numpy as np

import codegen
from derive.builtins import builtin

from .run import _median_interleaved, machine

CASES = {   # name: (layer, constants, sizes)
    "conv2d 3x3": ("conv2d", None, dict(N=8, C=16, O=32, H=32, W=32, KH=3, KW=3)),
    "conv2d 3x3 S=2 P=1": ("conv2d", dict(S=2, P=1),
                           dict(N=8, C=16, O=32, H=32, W=32, KH=3, KW=3)),
    "conv1d k=5": ("conv1d", None, dict(N=16, C=32, O=32, L=256, K=5)),
    "maxpool2d 2x2": ("maxpool2d", None, dict(N=8, C=32, H=32, W=32)),
}


def native(layer: str, constants: dict | None):
    """JAX's own op of the layer (torch's conventions, as the specs): f(x, *params)."""
    import jax

    defaults = dict(K=2, S=2) if layer == "maxpool2d" else dict(S=1, P=0, D=1)
    c = {**defaults, **(constants or {})}
    if layer == "maxpool2d":
        k, s = c["K"], c["S"]
        return lambda x: jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, 1, k, k),
                                               (1, 1, s, s), "VALID")
    spatial = 2 if layer == "conv2d" else 1
    pads = [(c["P"], c["P"])] * spatial

    def conv(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, (c["S"],) * spatial, pads,
                                         rhs_dilation=(c["D"],) * spatial)
        return y + b.reshape((1, -1) + (1,) * spatial)
    return conv


def steps(name: str, rng) -> dict:
    """The jitted training steps of one case, derived and native, checked to agree."""
    import jax
    import jax.numpy as jnp

    layer, constants, sizes = CASES[name]
    kernels = codegen.load(builtin(layer, constants), backend="jax")
    spec = kernels.layer
    full = spec.dim_sizes(sizes)
    args = [jnp.asarray(rng.standard_normal([full[d] for d in spec.tensors[n].dims]),
                        jnp.float32) for n in kernels.args]
    (out,) = [t.name for t in spec.outputs]
    dy = jnp.asarray(rng.standard_normal([full[d] for d in spec.tensors[out].dims]),
                     jnp.float32)
    argnums = tuple(range(len(args)))

    def step(f):
        g = jax.jit(jax.grad(lambda *a: (f(*a) * dy).sum(), argnums=argnums))
        return lambda: jax.block_until_ready(g(*args))

    ours, theirs = step(kernels.module.apply), step(native(layer, constants))
    for a, b in zip(ours(), theirs()):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-3)
    return {"derived": ours, "jax": theirs}


def measure(repeat: int, names=None) -> dict:
    rng = np.random.default_rng(0)
    nothing = lambda: None                                       # noqa: E731
    record = {}
    for name in names or CASES:
        calls = steps(name, rng)
        times, rounds = _median_interleaved({k: (nothing, f) for k, f in calls.items()},
                                            repeat)
        record[name] = dict(times, rounds=rounds, sizes=CASES[name][2],
                            derived_over_jax=times["derived"] / times["jax"])
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import jax

    record = dict(machine=machine(), jax=jax.__version__, cases=measure(args.repeat))
    if args.json:
        print(json.dumps(record, indent=1, default=str))
        return
    print(f"training step (jax.grad of sum(y * dy), jitted), float32, JAX {jax.__version__}:")
    for name, r in record["cases"].items():
        print(f"  {name:20s} derived {r['derived'] * 1e3:9.2f} ms   JAX's own "
              f"{r['jax'] * 1e3:9.2f} ms   derived/JAX {r['derived_over_jax']:6.2f}")


if __name__ == "__main__":
    main()
