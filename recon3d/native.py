"""Native builds, once for the rasterizer (``backends/kernels.py``) and the training ops (``train/cpu_ops.py``).

Both compile for the running CPU and cache the result, so they share one set of rules:

- **ISA**: the SIMD flags follow ``/proc/cpuinfo``; ``RECON3D_CPU_ISA=avx2|generic`` caps them (``native``,
  the default, is all the CPU has), so the narrower code paths can be tested on an AVX-512 machine.
- **libmvec**: glibc's vector ``expf``/``logf`` where there is one (x86-64 Linux), linked by its soname.
- **One cache root**: ``$RECON3D_CACHE`` or ``~/.cache/recon3d``; the rasterizer builds in ``kernels/`` (or in
  ``$TORCH_EXTENSIONS_DIR`` when set, torch's own variable), the training ops in ``train_ops/``. Each build
  folder is keyed by a hash of its sources, flags and toolchain, never by PATH.
- **One ninja**: torch's extension builder runs whichever ``ninja`` comes first on PATH, and two ninja
  versions write build logs the other rejects (each switch of entry point rebuilt everything, ~45 s). The
  build runs the ninja of this interpreter's environment (the ``ninja`` package), by putting its folder
  first on PATH for the build only, so ``make``, ``.venv/bin/recon3d`` and an activated venv share one build,
  and a machine without a system ninja builds too.
- **One lock**: an flock per build folder, which also clears a lock file a killed torch build left behind.
- **One error type**: :class:`recon3d.errors.BuildError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

from .errors import BuildError

ISA_LEVELS = ("native", "avx2", "generic")
_AVX512 = ("avx512f", "avx512vl", "avx512bw", "avx512dq")
_env_lock = threading.Lock()  # PATH is process-wide: one build at a time changes it


def isa_level() -> str:
    """The ``RECON3D_CPU_ISA`` cap (``native`` by default); BuildError for an unknown value."""
    isa = os.environ.get("RECON3D_CPU_ISA", "native").strip().lower() or "native"
    if isa not in ISA_LEVELS:
        raise BuildError(f"RECON3D_CPU_ISA={isa!r}: expected one of {', '.join(ISA_LEVELS)}")
    return isa


def cpu_features() -> set[str]:
    """The CPU's feature words from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def simd_flags() -> list[str]:
    """Compiler flags for the SIMD the CPU supports, capped by ``RECON3D_CPU_ISA``, plus ``-DRECON3D_LIBMVEC``."""
    isa = isa_level()
    words = cpu_features()
    flags: list[str] = []
    if {"avx2", "fma"} <= words and isa != "generic":
        flags += ["-mavx2", "-mfma"]
    if set(_AVX512) <= words and isa == "native":
        flags += [f"-m{w}" for w in _AVX512] + ["-mprefer-vector-width=512"]
    if libmvec() is not None:
        flags.append("-DRECON3D_LIBMVEC")  # vector expf/logf: loops over Gaussians vectorise
    return flags


def libmvec() -> str | None:
    """glibc's vector maths library's soname (x86-64 Linux), or None where there is none."""
    import ctypes.util
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    return ctypes.util.find_library("mvec")


def link_flags(flags: list[str]) -> list[str]:
    """Libraries to link for ``flags``; they go after the sources (``--as-needed`` drops earlier ones)."""
    mvec = libmvec()
    # -l:<soname> links the runtime library itself (no -dev symlink needed)
    return [f"-l:{mvec}"] if "-DRECON3D_LIBMVEC" in flags and mvec else []


def cache_root() -> Path:
    """Where every native build is cached: ``$RECON3D_CACHE`` or ``~/.cache/recon3d``."""
    env = os.environ.get("RECON3D_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "recon3d"


def kernels_cache_dir() -> Path:
    """The rasterizer's build folders: ``$TORCH_EXTENSIONS_DIR`` if set, else ``<cache root>/kernels``."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else cache_root() / "kernels"


def find_compiler(kind: str = "c++") -> str:
    """The C (``kind="c"``) or C++ compiler: ``$CC``/``$CXX`` or the first on PATH; BuildError if none."""
    env, names = ("CC", ("cc", "gcc", "clang")) if kind == "c" else ("CXX", ("c++", "g++", "clang++"))
    chosen = os.environ.get(env)
    if chosen:
        if shutil.which(chosen) is None:
            raise BuildError(f"${env}={chosen!r} is not an executable compiler")
        return chosen
    for name in names:
        if shutil.which(name):
            return name
    raise BuildError(
        f"cannot build the recon3d native code: no {'C' if kind == 'c' else 'C++'} compiler "
        f"({'/'.join(names)}) on PATH; install one, e.g. `apt-get install g++`"
    )


def ninja_dir() -> Path:
    """The folder of this interpreter environment's ``ninja`` (the ``ninja`` package), falling back to the
    interpreter's folder, then to PATH; BuildError if there is none."""
    candidates: list[Path] = []
    try:
        import ninja  # the pip package: its BIN_DIR holds the binary it installed

        if getattr(ninja, "BIN_DIR", ""):
            candidates.append(Path(ninja.BIN_DIR))
    except ImportError:
        pass
    candidates.append(Path(sys.executable).parent)  # not resolved: a venv's bin/, not the base interpreter's
    for folder in candidates:
        if (folder / "ninja").is_file() and os.access(folder / "ninja", os.X_OK):
            return folder
    found = shutil.which("ninja")
    if found:
        return Path(found).parent
    raise BuildError(
        f"cannot build the recon3d kernels: ninja not found; install it into this environment "
        f"(`{sys.executable} -m pip install ninja`)"
    )


@contextlib.contextmanager
def build_environment() -> Iterator[Path]:
    """Put this environment's ninja first on PATH while a torch extension builds (PATH restored after)."""
    folder = ninja_dir()
    with _env_lock:
        old = os.environ.get("PATH")
        os.environ["PATH"] = os.pathsep.join([str(folder), *([old] if old else [])])
        try:
            yield folder
        finally:
            if old is None:
                os.environ.pop("PATH", None)
            else:
                os.environ["PATH"] = old


@contextlib.contextmanager
def build_lock(build_dir: Path) -> Iterator[None]:
    """Hold an OS lock on ``build_dir`` while building or loading in it, and clear a stale torch lock.

    torch's own build lock is a plain file that stays behind when a build is killed (Ctrl-C, OOM), and every
    later load then waits for it forever. Ours is an flock, which the kernel drops when its holder dies:
    whoever holds it is the only builder alive, so a torch lock file found then is stale and is removed.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "recon3d.flock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                print(f"removing a stale build lock left by an interrupted build: {stale}", file=sys.stderr, flush=True)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def last_line(exc: BaseException) -> str:
    """The line of an exception's message worth showing: the compiler's last ``error:`` line, else the last one."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "error " in line.lower()[:12]]
    return (errors or lines or [type(exc).__name__])[-1]


def load_torch_extension(name: str, sources: Sequence[Path], build_dir: Path, *, include_dirs: Sequence[Path] = (),
                         cflags: Sequence[str] = (), cuda_cflags: Sequence[str] = (), ldflags: Sequence[str] = (),
                         with_cuda: bool = False, what: str = "the recon3d kernels") -> ModuleType:
    """Build (or load the cached build of) a torch C++/CUDA extension in ``build_dir`` with this environment's
    ninja, under the build lock; BuildError naming the folder and the compiler's last line if it fails."""
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    with build_lock(build_dir), build_environment():
        try:
            return cpp_extension.load(
                name=name, sources=[str(s) for s in sources], extra_include_paths=[str(d) for d in include_dirs],
                extra_cflags=list(cflags), extra_cuda_cflags=list(cuda_cflags), extra_ldflags=list(ldflags),
                build_directory=str(build_dir), with_cuda=with_cuda, verbose=False,
            )
        except (RuntimeError, OSError, ImportError) as exc:
            raise BuildError(f"building {what} in {build_dir} failed: {last_line(exc)}") from exc
