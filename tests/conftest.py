import hashlib
import os

import numpy as np
import pytest
from hypothesis import settings

# CI runs the property tests on the same examples every time (a failure there is
# reproducible, and a green run is not luck of the draw); locally they explore anew.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="session")
def _private_kernel_cache(tmp_path_factory):
    """Generated modules go to a temporary cache, not the user's ~/.cache.  Under
    pytest-xdist the workers share one (their temporary folders' common parent): a kernel
    one worker built, the other loads (codegen/build.py locks each entry, so two workers
    asking for the same kernel at once compile it once)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache = root / "kernel-cache"
    cache.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("BACKPROP_CACHE", str(cache))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def builtin_numpy_kernels():
    """name -> a built-in's NumPy kernels, derived and emitted once per session (per xdist
    worker) for every test file that checks them (they hold no state between calls)."""
    import codegen

    from .oracles import OnFirstUse

    return OnFirstUse(codegen.load)


@pytest.fixture(scope="session")
def symbolic_oracle():
    """derive.evaluate.evaluate, computed once per (layer, derivation, arrays, options):
    the float32 and float64 cases of a test draw the same float64 arrays, so both dtypes
    compare against one evaluation.  The values it returns
    are read-only: a test cannot alter what another one compares with."""
    from derive.evaluate import evaluate

    remembered = {}

    def symbolic_values(derivation, arrays, **options):
        layer = derivation.layer
        key = (layer.name, layer.source, layer.equations, derivation.steps,
               tuple(sorted(options.items())), _digest(arrays))
        if key not in remembered:
            # copies: the values include the inputs themselves, which the caller may still
            # change (a finite difference nudges them in place)
            values = {n: v.copy() if isinstance(v, np.ndarray) else v
                      for n, v in evaluate(derivation, arrays, **options).items()}
            for v in values.values():
                if isinstance(v, np.ndarray):
                    v.setflags(write=False)
            remembered[key] = values
        return dict(remembered[key])

    return symbolic_values


def _digest(arrays) -> str:
    """A hash of named arrays: their names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
