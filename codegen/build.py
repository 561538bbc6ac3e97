"""Compile generated C into a Python extension (cffi API mode), cached on disk.

Cache entry: CACHE/c/<key>/ holding the extension and manifest.json (the extension's
SHA-256).  The key hashes the sources, the cffi declarations, the flags, the compiler (its
resolved path, size and mtime, found without running it), the Python ABI and cffi's
version: any change makes a new entry, and a warm cache loads without starting the
compiler.  OpenMP support is probed only when building; the compiler's identity fixes it.

    1. look without a lock: a valid entry (manifest present, hash matches) is imported;
    2. on a miss, take the entry's file lock (flock: released by the kernel if the holder
       dies, so no stale locks), look again, and only then compile;
    3. compile into a private temporary folder, write the manifest last, rename the folder
       into place: a killed build leaves no half entry, and a corrupt or truncated entry
       fails the hash check and is rebuilt;
    4. before compiling, sweep what killed builds left: `.build-*` folders whose lock no
       one holds, and the lock files of entries that exist.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import cffi

NUMPY_HINT = ("To run without a C compiler, use the NumPy backend: "
              "codegen.load(layer, backend=\"numpy\").")
BASE_FLAGS = ["-fPIC"]
# -fno-math-errno: math calls have no side effect, so loops around them can vectorize.
# -fno-trapping-math: no code here reads floating-point exception flags, and with them
# GCC 12 would not if-convert the own float log (its subnormal select; a branch around an
# int-to-float conversion that "could trap"): an elementwise log loop stayed scalar, 5.1 ns
# an element against 0.54 vectorized (docs/benchmarks.md).  Values are unchanged: no
# reassociation, NaN, Inf and signed zeros as IEEE.
# Override with $BACKPROP_CFLAGS (the key includes whatever is used).
DEFAULT_OPT_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"]
OPENMP_FLAGS = ["-fopenmp"]
_loaded: dict[str, object] = {}        # key -> module, within this process
_accepted: dict[tuple, bool] = {}      # (compiler[, flag]) -> whether it is accepted


class CompilerError(RuntimeError):
    """The C compiler is missing or failed; the message carries its own output."""


def compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc")) or ["cc"]


def _run(cmd, cwd=None):
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _cannot_run(cmd, exc) from None


def _cannot_run(cmd, exc) -> CompilerError:
    if isinstance(exc, FileNotFoundError):
        return CompilerError(f"no C compiler found: '{cmd[0]}' is not on PATH (set CC to "
                             f"choose another). {NUMPY_HINT}")
    return CompilerError(f"could not run the C compiler '{cmd[0]}': {exc}. {NUMPY_HINT}")


def compiler_identity(cc) -> str:
    """Who the compiler is, without running it (a warm cache never starts the compiler):
    its resolved path, size and modification time, which change when it is upgraded."""
    path = shutil.which(cc[0])
    if path is None:
        raise CompilerError(f"no C compiler found: '{cc[0]}' is not on PATH (set CC to "
                            f"choose another). {NUMPY_HINT}")
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{' '.join([real] + cc[1:])}|{st.st_size}|{st.st_mtime_ns}"


def compiler_version(cc) -> str:
    r = _run(cc + ["--version"])
    if r.returncode != 0:
        raise CompilerError(f"'{' '.join(cc)} --version' failed:\n{r.stderr.strip()}\n"
                            f"{NUMPY_HINT}")
    return r.stdout.strip().splitlines()[0] if r.stdout.strip() else "unknown"


def accepted(cc, flags) -> list[str]:
    """The flags this compiler accepts (-march=native is unknown to some), probed once
    per compiler when a build is needed: all in one compiler run, and one by one only
    when that run fails (one run per flag cost a cold build 0.13 s)."""
    unknown = [f for f in flags if (tuple(cc), f) not in _accepted]
    if len(unknown) > 1 and _compiles(cc, unknown):
        _accepted.update({(tuple(cc), f): True for f in unknown})
    for flag in flags:
        if (tuple(cc), flag) not in _accepted:
            _accepted[(tuple(cc), flag)] = _compiles(cc, [flag])
    return [f for f in flags if _accepted[(tuple(cc), f)]]


def _compiles(cc, flags) -> bool:
    """Whether the compiler takes these flags on an empty function."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("int bp_probe(void) { return 0; }\n")
        return _run(cc + flags + ["-c", str(src), "-o", str(Path(tmp) / "probe.o")]) \
            .returncode == 0


def openmp_flags(cc) -> list[str]:
    """-fopenmp when this compiler accepts it; the kernels compile to serial code without."""
    key = tuple(cc)
    if key not in _accepted:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text("#include <omp.h>\nint main(void){return omp_get_max_threads()<1;}\n")
            r = _run(cc + OPENMP_FLAGS + [str(src), "-o", str(Path(tmp) / "probe")])
            _accepted[key] = r.returncode == 0
    return OPENMP_FLAGS if _accepted[key] else []


def opt_flags() -> list[str]:
    env = os.environ.get("BACKPROP_CFLAGS")
    if env is not None:
        return shlex.split(env)
    flags = list(DEFAULT_OPT_FLAGS)
    if sys.platform.startswith("linux") and platform.machine() == "x86_64" \
            and platform.libc_ver()[0] == "glibc":
        # glibc's <math.h> declares the vector variants of exp, log, tanh... (libmvec,
        # within 4 ulp) only when __FAST_MATH__ is defined.  Defining it, without
        # -ffast-math itself, lets `omp simd` loops call them while the arithmetic stays
        # IEEE: no reassociation outside simd reductions, no finite-math assumption, and
        # no flush-to-zero switched on in the calling process.
        flags.append("-D__FAST_MATH__")
    return flags


def cpu_identity() -> str:
    """-march=native code runs only on this kind of CPU: its model and flags join the key."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            wanted = [l for l in f if l.startswith(("model name", "flags"))][:2]
        return hashlib.sha256("".join(wanted).encode()).hexdigest()[:16]
    except OSError:
        return platform.processor() or platform.machine()


def build(name: str, sources: dict[str, str], cdef: str, cache_root: Path,
          defines: tuple[str, ...] = ()):
    """The compiled extension module for `sources` (file name -> text), from the cache
    when a valid entry exists, else compiled once even under concurrent callers.
    defines: -D options for the sources (part of the key; no compiler is asked about them)."""
    cc = compiler()
    flags = BASE_FLAGS + opt_flags()
    key = _key(sources, cdef, flags + list(defines), compiler_identity(cc) + "|" + cpu_identity())
    if key in _loaded:
        return _loaded[key]
    module_name = module_name_for(name, key)
    root = Path(cache_root) / "c"
    entry = root / key
    module = _try_load(entry, module_name)
    if module is None:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f"{key}.lock"):
            module = _try_load(entry, module_name)      # another process may have built it
            if module is None:
                _sweep_stale(root, key)
                _compile_entry(entry, module_name, sources, cdef, cc,
                               accepted(cc, flags) + list(defines) + openmp_flags(cc),
                               compiler_version(cc))
                module = _try_load(entry, module_name)
        if module is None:
            raise CompilerError(f"the freshly built kernel in {entry} does not load")
    _loaded[key] = module
    return module


_FINGERPRINT: list = []


def toolkit_fingerprint() -> str:
    """A hash of the toolkit's own code and templates: what turns a spec into C."""
    if not _FINGERPRINT:
        root = Path(__file__).resolve().parent.parent
        h = hashlib.sha256()
        for folder, pattern in (("derive", "*.py"), ("derive", "*.lark"), ("codegen", "*.py"),
                                ("templates", "*.j2")):
            for f in sorted((root / folder).glob(pattern)):
                h.update(f.name.encode())
                h.update(f.read_bytes())
        _FINGERPRINT.append(h.hexdigest())
    return _FINGERPRINT[0]


def spec_key(spec_text: str, name: str, dtype: str = "", defines: tuple[str, ...] = ()) -> str:
    """The key of a spec as written, for the index that lets a warm load skip SymPy: the
    spec text, the dtype built, the toolkit's fingerprint, flags, compiler, CPU, ABI and
    cffi."""
    cc = compiler()
    h = hashlib.sha256()
    for part in (name, dtype, spec_text, toolkit_fingerprint(),
                 " ".join(BASE_FLAGS + opt_flags() + list(defines)),
                 compiler_identity(cc), cpu_identity(), sys.implementation.cache_tag,
                 sysconfig.get_config_var("EXT_SUFFIX") or "", cffi.__version__):
        h.update(part.encode())
        h.update(b"\1")
    return h.hexdigest()


def load_indexed(cache_root: Path, skey: str):
    """(module, metadata) when the index names a valid entry for this spec, else None."""
    index = Path(cache_root) / "c" / "index" / f"{skey}.json"
    try:
        meta = json.loads(index.read_text())
        key, module_name = meta["key"], meta["module"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if key in _loaded:
        return _loaded[key], meta
    module = _try_load(Path(cache_root) / "c" / key, module_name)
    if module is None:
        return None
    _loaded[key] = module
    return module, meta


def remember(cache_root: Path, skey: str, meta: dict) -> None:
    """Record which entry a spec built, and what the wrapper needs to know of it."""
    folder = Path(cache_root) / "c" / "index"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".index-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    os.replace(tmp, folder / f"{skey}.json")


def module_name_for(name: str, key: str) -> str:
    return f"_bp_{name}_{key[:16]}"


def build_key(sources: dict, cdef: str, defines: tuple[str, ...] = ()) -> str:
    """The cache key build() uses for these sources."""
    return _key(sources, cdef, BASE_FLAGS + opt_flags() + list(defines),
                compiler_identity(compiler()) + "|" + cpu_identity())


def _key(sources, cdef, flags, identity) -> str:
    h = hashlib.sha256()
    for part in ([f"{n}\0{t}" for n, t in sorted(sources.items())] +
                 [cdef, " ".join(flags), identity, sys.implementation.cache_tag,
                  sysconfig.get_config_var("EXT_SUFFIX") or "", cffi.__version__,
                  platform.machine()]):
        h.update(part.encode())
        h.update(b"\1")
    return h.hexdigest()


def _ext_suffix() -> str:
    return sysconfig.get_config_var("EXT_SUFFIX") or importlib.machinery.EXTENSION_SUFFIXES[0]


def _try_load(entry: Path, module_name: str):
    """Import the entry's extension if its manifest and hash check out, else None."""
    manifest = entry / "manifest.json"
    library = entry / (module_name + _ext_suffix())
    try:
        meta = json.loads(manifest.read_text())
        data = library.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, library)
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None
    sys.modules[module_name] = module
    return module


def _compile_entry(entry, module_name, sources, cdef, cc, flags, version):
    root = entry.parent
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".build-{entry.name}-"))
    try:
        for fname, text in sources.items():
            (tmp / fname).write_text(text, encoding="utf-8")
        header = next(f for f in sources if f.endswith(".h"))
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        # quiet: cffi would announce "generating ..." (not through redirect_stdout, which
        # swaps sys.stdout for the whole process: two builds on two threads, the kernels'
        # and the GEMM hook's, left it pointing at a dead buffer)
        ffi.set_source(module_name, f'#include "{header}"', compiler_verbose=False)
        ffi.emit_c_code(str(tmp / f"{module_name}.c"))
        library = module_name + _ext_suffix()
        started = time.time()
        units = [(f"{module_name}.c", 0)] + [
            (fname, part) for fname, text in sources.items() if fname.endswith(".c")
            for part in _parts(text)]
        objects = _compile_units(units, cc, flags, tmp, module_name)
        cmd = cc + flags + ["-shared"] + objects + ["-o", library, "-lm"]
        if sys.platform == "darwin":
            cmd[-3:-3] = ["-undefined", "dynamic_lookup"]
        r = _run(cmd, cwd=tmp)
        if r.returncode != 0:
            raise _failed(module_name, cmd, r)
        digest = hashlib.sha256((tmp / library).read_bytes()).hexdigest()
        (tmp / "manifest.json").write_text(json.dumps({
            "sha256": digest, "module": module_name, "compiler": version,
            "command": cmd, "seconds": round(time.time() - started, 3)}, indent=1))
        if entry.exists():                    # a corrupt entry: replace it
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(tmp, entry)
        with open(root / "builds.log", "a", encoding="utf-8") as log:
            log.write(f"{entry.name} {module_name} pid={os.getpid()}\n")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _parts(text: str) -> list[int]:
    """How a generated source splits for a parallel build: it says `bp-parts: K` and
    compiles part k alone under -DBP_PART=k; any other source compiles whole (part 0)."""
    found = re.search(r"\bbp-parts: (\d+)\b", text)
    return list(range(1, int(found.group(1)) + 1)) if found else [0]


def _compile_units(units, cc, flags, cwd: Path, module_name) -> list[str]:
    """Compile each (file, part) to an object file, all at once (gcc is single-threaded,
    the parts are independent), and return the object names in link order."""
    include = ["-I.", f"-I{sysconfig.get_paths()['include']}"]
    jobs = []
    for fname, part in units:
        obj = f"{Path(fname).stem}.{part}.o"
        glue = Path(fname).stem == module_name
        cmd = cc + (_glue_flags(flags) if glue else flags) + include + \
            ([f"-DBP_PART={part}"] if part else []) + ["-c", fname, "-o", obj]
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            _reap(jobs)
            raise _cannot_run(cmd, exc) from None
        jobs.append((cmd, obj, proc))
    failure = None
    for cmd, obj, proc in jobs:
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode != 0 and failure is None:
            failure = _failed(module_name, cmd, subprocess.CompletedProcess(
                cmd, proc.returncode, out, err))
    if failure is not None:
        raise failure
    return [obj for _, obj, _ in jobs]


def _glue_flags(flags: list[str]) -> list[str]:
    """cffi's wrapper converts arguments and calls the kernels: no loop in it gains from
    -O3, which took 0.9 s of an LSTM's 3.8 s of compiling; -O1 takes 0.25."""
    if not any(f in ("-O2", "-O3", "-Ofast") for f in flags):
        return flags
    return [f for f in flags if not f.startswith("-O")] + ["-O1"]


def _reap(jobs) -> None:
    for _, _, proc in jobs:
        proc.kill()
        proc.communicate()


def _failed(module_name, cmd, r) -> CompilerError:
    return CompilerError(f"the C compiler failed building kernel '{module_name}' "
                         f"({' '.join(cmd)}):\n{(r.stderr or r.stdout).strip()}\n"
                         f"{NUMPY_HINT}")


def _sweep_stale(root: Path, own_key: str) -> None:
    """Remove what killed builds left (`kill -9` skips every cleanup): `.build-KEY-*`
    folders whose key's lock no process holds (a build holds it for as long as its folder
    exists), and lock files of finished entries.  A lock file is removed only once its
    entry exists, so a process still waiting on it finds the entry when it gets the lock
    and never builds under a lock no one else can see.  Called holding own_key's lock."""
    try:
        import fcntl
    except ImportError:                      # no flock: nothing can prove a build dead
        return
    for folder in root.glob(f".build-{own_key}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    keys = {f.name[len(".build-"):].rsplit("-", 1)[0] for f in root.glob(".build-*")}
    keys |= {lock.name[:-len(".lock")] for lock in root.glob("*.lock")}
    for key in keys - {own_key}:
        lock = root / f"{key}.lock"
        try:
            with open(lock, "a+") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                for folder in root.glob(f".build-{key}-*"):
                    shutil.rmtree(folder, ignore_errors=True)
                if (root / key / "manifest.json").exists():
                    lock.unlink()
        except OSError:                      # held: that build is running
            continue


@contextmanager
def _locked(path: Path):
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:           # not POSIX: no cross-process lock, still atomic
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
