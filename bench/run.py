"""`backprop bench`: the generated C kernels against their peers, measured side by side.

For every case in bench/cases.py, in this one process and session, the implementations
run interleaved (A B C ... A B C ...; one warm-up call each first), so machine noise
falls on all of them alike:

    c       the generated C kernel, 1 and 2 threads, into preallocated and fresh outputs,
            and into the buffers the wrapper keeps with reuse=True
    hand-c  plain serial C loops as a person writes a model's CPU path (bench/peer_c.c,
            -O3 -Ofast -march=native), where the case has one, preallocated outputs
    numpy   the emitted NumPy module (fresh outputs)
    hand    hand-written NumPy (fresh outputs)
    torch   PyTorch eager's best CPU path, 2 threads (when installed)
    floor   a C kernel that only streams the same big buffers (1 and 2 threads)
    c, in cache  the generated C kernel, 1 thread, on the case shrunk until its arrays fit
            in IN_CACHE_BYTES, called back to back with nothing flushed: what its
            arithmetic alone takes, scaled to the case's bytes (a memory-bound case only)

Before each timed call of a memory-bound case (one with a floor), the case's buffers are
flushed from every cache level (clflush; untimed), so every implementation and the floor
stream them from memory while the interpreter and libraries stay warm.  Each record has
the median of --repeat timed calls, the ratio vs_torch (PyTorch's median / this one: above
1 is faster than PyTorch), pct_floor (floor time / this time, in percent, at the same
thread count) and achieved GB/s (the floor's bytes / time) or GFLOP/s.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time

import numpy as np

import codegen
from codegen.blas import numpy_blas

from .cases import Case, cases
from . import peer_c
from .floor import Floor

THREADS = (1, 2)
# An in-cache run's arrays: within one core's L2 (2 MB on the Xeon and EPYC guests here),
# so its calls stream nothing from memory.
IN_CACHE_BYTES = 1 << 20


def machine() -> dict:
    info = dict(machine=platform.machine(), cores=os.cpu_count(), cpu=_cpu_model(),
                python=platform.python_version(), numpy=np.__version__)
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    blas = numpy_blas()
    info["kernel_blas"] = blas.describe() if blas else None
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                   "threading_layer", "filepath")} for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed (pip install threadpoolctl)"
    info["openblas_env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                       "OPENBLAS_NUM_THREADS",
                                                       "OPENBLAS_THREAD_TIMEOUT",
                                                       "OMP_NUM_THREADS", "OMP_WAIT_POLICY")
                          if k in os.environ}
    return info


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):         # not on every platform
        return None


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _median_interleaved(impls: dict, repeat: int, min_seconds: float = 0.0,
                        clock=time.perf_counter) -> tuple[dict, int]:
    """impls: key -> (setup, call).  setup runs before each call, untimed (thread counts,
    cache flushes).  Rounds of one call each go on until there are `repeat` of them and
    they have taken `min_seconds` (at most 10 x repeat rounds): a millisecond kernel's
    median then spans seconds of this shared machine's swings, not a few milliseconds of
    one of them.  `clock` times each call (time.thread_time: this thread's CPU time, for
    single-threaded overheads that other processes' load should not inflate).  Returns
    the medians and the number of rounds."""
    for setup, call in impls.values():
        setup()
        call()                                   # warm-up: page faults, lazy init, caches
    times = {k: [] for k in impls}
    start, rounds = time.perf_counter(), 0
    while rounds < repeat or (time.perf_counter() - start < min_seconds
                              and rounds < 10 * repeat):
        for k, (setup, call) in impls.items():
            setup()
            t0 = clock()
            call()
            times[k].append(clock() - t0)
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}, rounds


def case_arrays(case: Case, c, rng) -> tuple[dict, dict]:
    """(every array of the case, including the forward results a backward reuses; the
    arguments the kernel entry takes)."""
    arrays = case.make(rng, case.sizes)
    if case.entry == "backward":
        fwd = c.forward(**{n: arrays[n] for n in c.args})
        arrays.update({n: fwd[n] for n in c.reuses if n not in arrays})
        names = c.args + c.upstream + c.reuses
    elif case.entry == "train_step":
        names = c.args + c.upstream
    else:
        names = c.args
    return arrays, {n: arrays[n] for n in names}


def entry_of(kernels, case: Case):
    """The C kernels' call a case times.  "train_step": forward, then backward from its
    saved values, as one training step runs them (what torch's forward + autograd backward
    does)."""
    if case.entry != "train_step":
        return getattr(kernels, case.entry)

    def step(out=None, reuse=False, **arrays):
        part = lambda names: None if out is None else {n: out[n] for n in names}
        fwd = kernels.forward(out=part(kernels.returns), reuse=reuse,
                              **{n: arrays[n] for n in kernels.args})
        grads = kernels.backward(
            out=part(kernels.gradients), reuse=reuse,
            **{n: arrays[n] for n in kernels.args + kernels.upstream},
            **{n: fwd[n] for n in kernels.reuses})
        return {**fwd, **grads}
    return step


def run_case(case: Case, repeat: int, floor: Floor, rng, use_torch=True,
             min_seconds: float = 0.0) -> list[dict]:
    constants = case.constants or None
    c = codegen.load(case.layer, backend="c", dtype="float32", constants=constants)
    npk = codegen.load(case.layer, constants=constants)
    arrays, args = case_arrays(case, c, rng)
    entry = entry_of(c, case)
    results = entry(**args)
    prealloc = {n: np.empty_like(v) for n, v in results.items() if np.ndim(v)}
    impls = {}
    state = {n: np.array(arrays[n]) for n in case.in_place.values()}   # updated in place
    inplace_args = {**args, **state}
    inplace_out = {r: state[i] for r, i in case.in_place.items()}
    for t in THREADS:
        setup = (lambda t=t: c.set_threads(t))
        impls[("c", t, "preallocated")] = (setup, lambda: entry(out=prealloc, **args))
        impls[("c", t, "fresh")] = (setup, lambda: entry(**args))
        impls[("c", t, "reused")] = (setup, lambda: entry(reuse=True, **args))
        if case.in_place:
            impls[("c", t, "in-place")] = (setup, lambda: entry(out=inplace_out,
                                                                **inplace_args))
    np_entry = getattr(npk, case.entry, None)
    np_args = {n: arrays[n] for n in (npk.args + npk.upstream if case.entry == "backward"
                                      else npk.args)}
    if case.entry == "backward":
        np_args.update({n: arrays[n] for n in c.reuses})
    nothing = lambda: None
    if case.numpy and np_entry is not None:
        impls[("numpy", 2, "fresh")] = (nothing, lambda: np_entry(**np_args))
    if case.hand is not None:
        impls[("hand", 2, "fresh")] = (nothing, lambda: case.hand(arrays))
    if case.peer is not None:        # hand-written serial C: one thread, its own outputs
        peer_out = {n: np.empty_like(v) for n, v in prealloc.items()}
        peer_call = case.peer(peer_c.library(), arrays, peer_out)
        impls[("hand-c", 1, "preallocated")] = (nothing, peer_call)
    torch_call = None
    if use_torch and case.torch is not None:
        try:
            import torch
            torch.set_num_threads(2)
            torch_call = case.torch(torch, arrays)
        except ImportError:
            pass
    if torch_call is not None:       # a case with in-place results runs torch in place too
        impls[("torch", 2, "in-place" if case.in_place else "fresh")] = (nothing, torch_call)
    nbytes = sum(np.asarray(arrays[n]).nbytes for n in case.reads) + \
        sum(prealloc[n].nbytes for n in case.writes)
    if case.reads:
        cached = _in_cache(case, c, rng, nbytes)
        impls[("c", 1, "in cache")] = (cached["setup"], cached["batch"])
        ins = [np.ascontiguousarray(arrays[n], dtype=np.float32) for n in case.reads]
        outs = [prealloc[n] for n in case.writes]
        floor_buffers = ins + outs
        for t in THREADS:
            setup = (lambda t=t: floor.set_threads(t))
            impls[("floor", t, "preallocated")] = (setup, lambda: floor.stream(ins, outs))
            impls[("floor", t, "fresh")] = (setup, lambda: floor.stream(
                ins, [np.empty_like(o) for o in outs]))
            if case.in_place:            # the written arrays first, then the read-only ones
                order = [np.array(arrays[case.in_place[w]]) for w in case.writes] + [
                    np.array(arrays[r]) for r in case.reads if r not in case.in_place.values()]
                floor_buffers += order
                impls[("floor", t, "in-place")] = (setup, lambda order=order:
                                                   floor.stream_in_place(order, len(outs)))
        # Memory-bound: before each timed call the case's buffers are flushed from every
        # cache, so each implementation and the floor stream them from memory.  Without
        # this a case whose buffers nearly fit in L3 (layer norm: 38 MB, 32 MB of L3 here)
        # measured whatever the previous implementation happened to leave there.
        buffers = _distinct([*arrays.values(), *prealloc.values(), *state.values(),
                             *floor_buffers])
        impls = {k: (lambda setup=setup: (floor.flush(buffers), setup()), call)
                 for k, (setup, call) in impls.items()}
    medians, rounds = _median_interleaved(impls, repeat, min_seconds)
    c.set_threads(max(THREADS))
    if case.reads:                    # a batch of calls, each on `share` of the bytes
        medians[("c", 1, "in cache")] /= cached["calls"] * cached["share"]
    torch_time, torch_outputs = next(((v, o) for (impl, _, o), v in medians.items()
                                      if impl == "torch"), (None, None))
    records = []
    for (impl, threads, outputs), median in medians.items():
        rec = dict(kernel=case.kernel, impl=impl, threads=threads, outputs=outputs,
                   median_s=median, calls=rounds, sizes=case.sizes)
        if outputs == "in cache":
            rec["in_cache_sizes"] = cached["sizes"]
        elif torch_time is not None and impl != "torch" and \
                same_traffic(outputs, torch_outputs):
            rec["vs_torch"] = torch_time / median
        if case.reads:
            mode = "preallocated" if outputs in ("reused", "in cache") else outputs
            fl = medians.get(("floor", threads, mode)) or medians[("floor", 2, mode)]
            rec["pct_floor"] = 100 * fl / median
            rec["gbps"] = nbytes / median / 1e9
        if case.flops:
            rec["gflops"] = case.flops(case.sizes) / median / 1e9
        records.append(rec)
    return records


def in_cache_sizes(case: Case, nbytes: int) -> dict:
    """The case's sizes, its dimensions shrunk in order (each to 1 at least) until the
    arrays it streams (nbytes at its full sizes), which grow with every dimension, fit in
    IN_CACHE_BYTES."""
    full = case.sizes
    sizes = dict(full)
    for d in full:
        now = nbytes * math.prod(sizes[k] / full[k] for k in full)
        if now <= IN_CACHE_BYTES:
            break
        sizes[d] = max(1, int(sizes[d] * IN_CACHE_BYTES // now))
    return sizes


def bound_call(c, entry: str, args: dict):
    """(a call of the C entry with no arguments, its outputs): the arrays checked and
    their pointers made once (codegen's entry_point route), so a call of a few
    microseconds is timed without the wrapper's checks, which cost as much.  The outputs
    are the wrapper's own results, in its order, overwritten by each call."""
    out = getattr(c, entry)(**args)
    fn, work_size = c.entry_point(entry)
    inputs = c.args + (c.upstream + c.reuses if entry == "backward" else ())
    sizes = c.checked_sizes(args, inputs)
    dims = c.dim_values(sizes)
    ffi, ctype = c.c_types()
    keep = {n: np.ascontiguousarray(args[n]) for n in inputs}
    work = np.empty(max(int(work_size(*dims)), 1), out[next(iter(out))].dtype)

    def ptr(a):
        kind = "int64_t" if a.dtype == np.int64 else ctype
        return ffi.cast(kind + " *", ffi.from_buffer(a))

    pointers = [ptr(keep[n]) for n in inputs] + [ptr(v) for v in out.values()] + [ptr(work)]
    buffers = (keep, out, work)        # a cast pointer does not keep its array alive

    def call():
        buffers                        # (held by this closure)
        return fn(*dims, *pointers)
    return call, out


def _in_cache(case: Case, c, rng, full_bytes: int) -> dict:
    """The C kernel at 1 thread on the case shrunk to fit in cache, as one more of the
    interleaved implementations: `setup` (one thread, one call to bring the small arrays
    back into cache after the others streamed through it), `batch` (back-to-back calls
    lasting 2 ms or so: a call takes tens of microseconds), `calls` in a batch, and the
    `share` of the case's bytes a call streams.  Interleaved, its median sees the
    machine the others see: timed alone after them, the fastest of 15 batches still moved
    1.4x between runs of the same kernel (softmax + CE 14-20 ms, scaled)."""
    sizes = in_cache_sizes(case, full_bytes)
    small = dataclasses.replace(case, sizes=sizes)
    arrays, args = case_arrays(small, c, rng)
    call, out = bound_call(c, case.entry, args)
    nbytes = sum(np.asarray(arrays[n]).nbytes for n in case.reads) + \
        sum(out[n].nbytes for n in case.writes)
    c.set_threads(1)
    call()
    t0 = time.perf_counter()
    call()
    calls = max(1, int(2e-3 / max(time.perf_counter() - t0, 1e-7)) + 1)
    c.set_threads(max(THREADS))

    def batch():
        for _ in range(calls):
            call()
    return dict(sizes=sizes, calls=calls, share=nbytes / full_bytes, batch=batch,
                setup=lambda: (c.set_threads(1), call()))


def same_traffic(outputs: str, torch_outputs: str) -> bool:
    """Whether a row's time compares with torch's like for like: updating in place reads
    and writes the same arrays (no line is fetched only to be overwritten), so it is
    compared only with an in-place torch, and new arrays (fresh, preallocated, reused)
    only with a torch that writes new arrays."""
    return (outputs == "in-place") == (torch_outputs == "in-place")


def _distinct(arrays) -> list[np.ndarray]:
    """Each buffer once (an array and a view of it are one buffer), scalars left out."""
    seen, out = set(), []
    for a in arrays:
        if isinstance(a, np.ndarray) and a.ndim and a.ctypes.data not in seen:
            seen.add(a.ctypes.data)
            out.append(a)
    return out


def table(info: dict, records: list[dict]) -> str:
    lines = [f"machine: {info['machine']}, {info['cores']} cores, {info['cpu']}; python "
             f"{info['python']}, numpy {info['numpy']}, torch {info['torch'] or 'not installed'}"
             f"; float32; medians, implementations interleaved",
             f"kernel BLAS: {info['kernel_blas'] or 'none (generated loops)'}"]
    pools = info["threadpools"]
    if isinstance(pools, list):
        lines.append("thread pools: " + "; ".join(
            f"{p['internal_api']} {p['version']} ({p.get('architecture') or p.get('threading_layer')}) "
            f"{p['num_threads']} threads, {os.path.basename(p['filepath'] or '')}" for p in pools))
    else:
        lines.append(f"thread pools: {pools}")
    load = info.get("load_average")
    if load:
        lines.append(f"load average (1 min, {info['cores']} cores): " +
                     " before, ".join(str(v) for v in load) + " after")
    if info["openblas_env"]:
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in
                                                   info["openblas_env"].items()))
    if any(k in info["openblas_env"] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")):
        lines.append("NOTE: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set: they slow NumPy's "
                     "BLAS here; unset them for a fair NumPy baseline")
    by_kernel: dict[str, list] = {}
    for r in records:
        by_kernel.setdefault(r["kernel"], []).append(r)
    for kernel, recs in by_kernel.items():
        sizes = " ".join(f"{k}={v}" for k, v in recs[0]["sizes"].items())
        lines += ["", f"{kernel}  ({sizes}; median of {recs[0]['calls']} calls each)",
                  f"  {'impl':<7}{'thr':>4} {'outputs':<13}{'median ms':>11}{'GB/s':>8}"
                  f"{'GFLOP/s':>9}{'% floor':>9}{'vs torch':>10}"]
        for r in recs:
            lines.append(
                f"  {r['impl']:<7}{r['threads']:>4} {r['outputs']:<13}"
                f"{r['median_s'] * 1e3:>11.3f}"
                f"{r['gbps'] if 'gbps' in r else float('nan'):>8.1f}"
                f"{r['gflops'] if 'gflops' in r else float('nan'):>9.1f}"
                f"{r['pct_floor'] if 'pct_floor' in r else float('nan'):>9.1f}"
                f"{r['vs_torch'] if 'vs_torch' in r else float('nan'):>10.2f}")
    lines += ["", "vs torch: PyTorch's median / this one (above 1: faster than PyTorch), only "
                  "where both write new arrays or both update in place; "
                  "% floor: the streaming kernel's time / this one, same threads and outputs; "
                  "in cache: the kernel on arrays shrunk to fit in cache (1 MB), its time per "
                  "byte times the case's bytes: its arithmetic alone, against the 1-thread "
                  "floor (near or under 100%: the arithmetic, not the traffic, bounds it); "
                  "nan: does not apply"]
    return "\n".join(lines)


def main(repeat: int = 9, only: str = "", quick: bool = False, as_json: bool = False,
         use_torch: bool = True, out=None, min_seconds: float = 2.0) -> int:
    import sys

    out = out or sys.stdout
    everything = cases(scale=64 if quick else 1)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in {c.kernel for c in everything}]
    if unknown:       # one misspelt name must not silently drop its benchmark
        names = ", ".join(c.kernel for c in everything)
        raise ValueError(f"no benchmark named {', '.join(map(repr, unknown))}; "
                         f"available: {names}")
    chosen = [c for c in everything if not wanted or c.kernel in wanted]
    info = machine()
    info["load_average"] = [_load()]       # the 1-minute load, before and after: a shared
    floor = Floor()                        # machine's times are only comparable in one run
    rng = np.random.default_rng(0)
    records = []
    for case in chosen:
        records += run_case(case, repeat, floor, rng, use_torch,
                            0.0 if quick else min_seconds)
        if not as_json:
            print(f"  measured {case.kernel}", file=sys.stderr)
    info["load_average"].append(_load())
    if as_json:
        json.dump(dict(machine=info, repeat=repeat, records=records), out, indent=1)
        out.write("\n")
    else:
        out.write(table(info, records) + "\n")
    return 0
