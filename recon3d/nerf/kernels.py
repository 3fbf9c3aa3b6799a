"""The NeRF kernels' CPU build (``cuda/src/nerf_cpu.cpp`` + ``cuda/include/recon3d/nerf.h``) through ctypes,
and the autograd functions the field and the renderer call.

Built like the training ops (``recon3d/train/cpu_ops.py``): the system C++ compiler, OpenMP, the SIMD flags
``recon3d.native`` picks for this CPU (capped by ``RECON3D_CPU_ISA``), no torch headers (a build takes a few
seconds), cached under ``<cache root>/nerf`` keyed by a hash of the sources, flags and compiler, built under
the native build lock.

The CUDA driver (``cuda/src/nerf_cuda.cu``, the same header) is built the same way on first use on CUDA
tensors: ``nvcc`` into a shared library of ``extern "C"`` launchers (raw device pointers and torch's current
stream), loaded through ctypes, no torch headers; cached under ``<cache root>/nerf`` keyed by the sources,
the flags, nvcc and the GPU's architecture. Where a build cannot be made (no nvcc, a float64 tensor) the
functions fall back to the dense PyTorch twins in ``reference.py``. ``RECON3D_NERF_NATIVE=0`` forces that
fallback on both (A/B).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .. import native
from ..constants import kernel_source_dir
from ..errors import BuildError
from . import reference
from .reference import HashGridSpec

_HEADERS = ("include/recon3d/nerf.h", "include/recon3d/common.h", "include/recon3d/constants.h")
_SOURCE = "src/nerf_cpu.cpp"
_CUDA_SOURCE = "src/nerf_cuda.cu"


def _native_enabled() -> bool:
    return os.environ.get("RECON3D_NERF_NATIVE", "1") != "0"


class LazyLibrary:
    """A native library built and opened on its first use, once per process (thread-safe), that remembers why
    it could not be (a failed build is not retried: every later call falls back at once)."""

    def __init__(self, build, enabled=lambda: True) -> None:
        self._build, self._enabled = build, enabled
        self._lock = threading.Lock()
        self.lib: ctypes.CDLL | None = None
        self.error: str | None = None

    def available(self) -> bool:
        """Whether the library is there, building it on the first call."""
        if self.lib is not None:
            return True
        if self.error is not None or not self._enabled():
            return False
        with self._lock:
            if self.lib is None and self.error is None:
                try:
                    self.lib = self._build()
                except (BuildError, OSError, AttributeError) as exc:
                    self.error = str(exc)
        return self.lib is not None


def open_library(path: Path, declare=lambda handle: handle) -> ctypes.CDLL:
    """Open a built shared library through ctypes and ``declare`` its functions' types; a BuildError naming the
    file if it cannot be loaded."""
    try:
        handle = ctypes.CDLL(str(path))
    except OSError as exc:
        raise BuildError(f"loading {path} failed: {exc}") from None
    return declare(handle)


def _flags() -> list[str]:
    return ["-O3", "-fPIC", "-shared", "-fopenmp", "-std=c++17", "-fno-math-errno", "-fno-trapping-math",
            "-Wno-psabi", *native.simd_flags()]


def _compile_cached(compiler: str, flags: list[str], source: str, stem: str) -> Path:
    """Compile ``source`` (relative to the kernel sources) into a shared library in the kernel cache, once: the
    name carries a hash of the sources, flags and compiler; a build lock and an atomic rename keep concurrent
    processes from loading a half-written file."""
    root = kernel_source_dir()
    digest = hashlib.sha256()
    for rel in (source, *_HEADERS):
        digest.update((root / rel).read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(compiler.encode())
    out_dir = native.cache_root() / "nerf"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"{stem}_{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        with native.build_lock(out_dir):
            if not lib.exists():
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
                os.close(fd)
                try:
                    proc = subprocess.run([compiler, *flags, f"-I{root / 'include'}", str(root / source), "-o", tmp],
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise BuildError(f"compiling {root / source} failed: "
                                         f"{native.last_line(RuntimeError(proc.stderr))}")
                    os.replace(tmp, lib)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    return lib


def _build() -> ctypes.CDLL:
    compiler = native.find_compiler("c++")
    flags = _flags()
    handle = open_library(_compile_cached(compiler, flags, _SOURCE, "recon3d_nerf"))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for dtype in ("f32", "f64"):
        getattr(handle, f"r3d_nerf_hash_forward_{dtype}").argtypes = [i64, p, i32, p, p, p, p, i32]
        getattr(handle, f"r3d_nerf_hash_backward_{dtype}").argtypes = [i64, p, i32, p, p, p, p, i32]
        getattr(handle, f"r3d_nerf_composite_forward_{dtype}").argtypes = [i64] + [p] * 9 + [i32]
        getattr(handle, f"r3d_nerf_composite_backward_{dtype}").argtypes = [i64] + [p] * 13 + [i32]
    handle.r3d_nerf_march_count.argtypes = [i64] + [p] * 8 + [i32]
    handle.r3d_nerf_march_fill.argtypes = [i64] + [p] * 11 + [i32]
    return handle


def find_nvcc() -> str | None:
    """nvcc from CUDA_HOME/CUDA_PATH, the PATH or /usr/local/cuda; None if there is none."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    return "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None


def cuda_arch() -> str:
    """The architecture to build for: ``RECON3D_CUDA_ARCH`` (e.g. sm_90), else the current GPU's, else sm_90."""
    arch = os.environ.get("RECON3D_CUDA_ARCH")
    if arch:
        return arch
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"sm_{major}{minor}"
    return "sm_90"


def cuda_flags(arch: str) -> list[str]:
    """nvcc flags of the CUDA driver's shared library (static cudart: it shares the process's primary context
    with torch, so torch's device pointers and streams are valid in it)."""
    return [f"-arch={arch}", "-std=c++17", "-O3", "-DRECON3D_WITH_CUDA", "-shared", "-Xcompiler", "-fPIC",
            "-cudart", "static"]


def build_cuda_library(arch: str | None = None) -> Path:
    """Compile (once; cached by content) the CUDA driver into a shared library; its path. Needs nvcc, not a GPU."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("cannot build the NeRF CUDA kernels: nvcc not found (set CUDA_HOME, e.g. "
                         "CUDA_HOME=/usr/local/cuda)")
    flags = cuda_flags(arch or cuda_arch())
    return _compile_cached(nvcc, flags, _CUDA_SOURCE, "recon3d_nerf_cuda")


def load_cuda_library(path: Path) -> ctypes.CDLL:
    """Open the CUDA driver's library and declare its launchers' argument types."""
    return open_library(path, declare_cuda_launchers)


CUDA_LAUNCHERS = ("hash_forward_f32", "hash_backward_f32", "composite_forward_f32", "composite_backward_f32",
                  "march_count", "march_fill")


def declare_cuda_launchers(handle):
    """Set the argument and return types of the CUDA driver's ``extern "C"`` launchers on ``handle``."""
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    handle.r3d_nerf_cuda_hash_forward_f32.argtypes = [i64, p, i32, p, p, p, p, p]
    handle.r3d_nerf_cuda_hash_backward_f32.argtypes = [i64, p, i32, p, p, p, p, p]
    handle.r3d_nerf_cuda_composite_forward_f32.argtypes = [i64] + [p] * 9 + [p]
    handle.r3d_nerf_cuda_composite_backward_f32.argtypes = [i64] + [p] * 13 + [p]
    handle.r3d_nerf_cuda_march_count.argtypes = [i64] + [p] * 10 + [ctypes.POINTER(ctypes.c_size_t), p]
    handle.r3d_nerf_cuda_march_fill.argtypes = [i64] + [p] * 11 + [p]
    for name in CUDA_LAUNCHERS:
        getattr(handle, f"r3d_nerf_cuda_{name}").restype = i32
    return handle


def cuda_available() -> bool:
    """Whether the CUDA driver is there (building it on first call); False without a GPU, nvcc or a build."""
    return _cuda.available()


def cuda_build_error() -> str | None:
    """Why the CUDA driver is unavailable (None if it is available or was not tried)."""
    return _cuda.error


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise BuildError(f"the NeRF CUDA kernel {what} failed (cudaError {rc})")


def available() -> bool:
    """Whether the CPU build is there (building it on first call); False where it cannot be."""
    return _cpu.available()


_cpu = LazyLibrary(_build, _native_enabled)
_cuda = LazyLibrary(lambda: load_cuda_library(build_cuda_library()),
                    lambda: _native_enabled() and torch.cuda.is_available())


def build_error() -> str | None:
    """Why the CPU build is unavailable (None if it is available or was not tried)."""
    return _cpu.error


def _native(*tensors: torch.Tensor) -> bool:
    """Whether our kernels take these tensors: all on the CPU (float32/64, CPU build) or all on one GPU
    (float32, CUDA build)."""
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        return False
    if device.type == "cpu":
        return tensors[0].dtype in (torch.float32, torch.float64) and available()
    if device.type == "cuda":
        return tensors[0].dtype == torch.float32 and cuda_available()
    return False


def _suffix(dtype: torch.dtype) -> str:
    return "f32" if dtype == torch.float32 else "f64"


def _threads() -> int:
    return max(1, torch.get_num_threads())


class _SpecArrays:
    """A spec's resolutions and offsets as CPU tensors the kernels read (kept alive with the spec)."""

    _cache: dict[tuple[HashGridSpec, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def get(cls, spec: HashGridSpec, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        key = (spec, torch.device(device))
        if key not in cls._cache:
            cls._cache[key] = (torch.tensor(spec.resolutions, dtype=torch.int32, device=device),
                               torch.tensor(spec.offsets, dtype=torch.int64, device=device))
        return cls._cache[key]


def _hash_forward(pos: torch.Tensor, tab: torch.Tensor, spec: HashGridSpec) -> torch.Tensor:
    """Features of contiguous points ``pos`` (table's dtype and device) by the CPU or CUDA driver."""
    res, off = _SpecArrays.get(spec, tab.device)
    out = torch.empty(len(pos), spec.output_dim, dtype=tab.dtype, device=tab.device)
    if tab.device.type == "cuda":
        _check(_cuda.lib.r3d_nerf_cuda_hash_forward_f32(
            len(pos), pos.data_ptr(), spec.levels, res.data_ptr(), off.data_ptr(), tab.data_ptr(), out.data_ptr(),
            _stream(tab.device)), "hash forward")
    else:
        getattr(_cpu.lib, f"r3d_nerf_hash_forward_{_suffix(tab.dtype)}")(
            len(pos), pos.data_ptr(), spec.levels, res.data_ptr(), off.data_ptr(), tab.data_ptr(), out.data_ptr(),
            _threads())
    return out


def _hash_backward(pos: torch.Tensor, grad_out: torch.Tensor, spec: HashGridSpec, table_shape) -> torch.Tensor:
    """The table's gradient from the features' (CPU: parallel over levels; CUDA: atomics)."""
    res, off = _SpecArrays.get(spec, pos.device)
    g = grad_out.contiguous().to(pos.dtype)
    grad_table = torch.zeros(table_shape, dtype=pos.dtype, device=pos.device)
    if pos.device.type == "cuda":
        _check(_cuda.lib.r3d_nerf_cuda_hash_backward_f32(
            len(pos), pos.data_ptr(), spec.levels, res.data_ptr(), off.data_ptr(), g.data_ptr(),
            grad_table.data_ptr(), _stream(pos.device)), "hash backward")
    else:
        getattr(_cpu.lib, f"r3d_nerf_hash_backward_{_suffix(pos.dtype)}")(
            len(pos), pos.data_ptr(), spec.levels, res.data_ptr(), off.data_ptr(), g.data_ptr(),
            grad_table.data_ptr(), _threads())
    return grad_table


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, positions: torch.Tensor, table: torch.Tensor, spec: HashGridSpec) -> torch.Tensor:
        pos = positions.detach().to(table.dtype).contiguous()
        out = _hash_forward(pos, table.detach().contiguous(), spec)
        ctx.save_for_backward(pos)
        ctx.spec = spec
        ctx.table_shape = table.shape
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (pos,) = ctx.saved_tensors
        return None, _hash_backward(pos, grad_out, ctx.spec, ctx.table_shape), None


class _HashEncodeGiven(torch.autograd.Function):
    """The hash encoding's backward for features already computed (the renderer's early-stop pass made them)."""

    @staticmethod
    def forward(ctx, positions: torch.Tensor, table: torch.Tensor, spec: HashGridSpec,
                features: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(positions.detach().to(table.dtype).contiguous())
        ctx.spec = spec
        ctx.table_shape = table.shape
        return features.detach().clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return (*_HashEncode.backward(ctx, grad_out), None)


def hash_encode_given(positions: torch.Tensor, table: torch.Tensor, spec: HashGridSpec,
                      features: torch.Tensor) -> torch.Tensor:
    """``features`` (= ``hash_encode(positions, table, spec)``, computed without a graph) with the encoding's
    gradient into ``table``: the forward is not run again."""
    if _native(table, positions):
        return _HashEncodeGiven.apply(positions, table, spec, features)
    return reference.hash_encode(positions, table, spec)


def hash_encode(positions: torch.Tensor, table: torch.Tensor, spec: HashGridSpec) -> torch.Tensor:
    """N×3 points in [0, 1]³ -> N×(levels·F) features (native CPU kernels, else the PyTorch reference)."""
    if _native(table, positions):
        return _HashEncode.apply(positions, table, spec)
    return reference.hash_encode(positions, table, spec)


def _composite_forward(sigma, rgb, t, dt, start):
    rays = len(start) - 1
    kw = {"dtype": sigma.dtype, "device": sigma.device}
    weights = torch.empty_like(sigma)
    color, opacity, depth = torch.empty(rays, 3, **kw), torch.empty(rays, **kw), torch.empty(rays, **kw)
    ptrs = (start.data_ptr(), sigma.data_ptr(), rgb.data_ptr(), t.data_ptr(), dt.data_ptr(), weights.data_ptr(),
            color.data_ptr(), opacity.data_ptr(), depth.data_ptr())
    if sigma.device.type == "cuda":
        _check(_cuda.lib.r3d_nerf_cuda_composite_forward_f32(rays, *ptrs, _stream(sigma.device)), "composite forward")
    else:
        getattr(_cpu.lib, f"r3d_nerf_composite_forward_{_suffix(sigma.dtype)}")(rays, *ptrs, _threads())
    return color, opacity, depth, weights


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigma, rgb, t, dt, start):
        sigma, rgb, t, dt = (x.detach().contiguous() for x in (sigma, rgb, t, dt))
        start = start.contiguous()
        color, opacity, depth, weights = _composite_forward(sigma, rgb, t, dt, start)
        ctx.save_for_backward(sigma, rgb, t, dt, start, color, opacity, depth)
        ctx.mark_non_differentiable(weights)
        return color, opacity, depth, weights

    @staticmethod
    def backward(ctx, g_color, g_opacity, g_depth, _g_weights):
        sigma, rgb, t, dt, start, color, opacity, depth = ctx.saved_tensors
        rays = len(start) - 1
        g_color = (g_color if g_color is not None else torch.zeros_like(color)).contiguous()
        g_opacity = (g_opacity if g_opacity is not None else torch.zeros_like(opacity)).contiguous()
        g_depth = (g_depth if g_depth is not None else torch.zeros_like(depth)).contiguous()
        grad_sigma = torch.empty_like(sigma)
        grad_rgb = torch.empty_like(rgb)
        ptrs = (start.data_ptr(), sigma.data_ptr(), rgb.data_ptr(), t.data_ptr(), dt.data_ptr(), color.data_ptr(),
                opacity.data_ptr(), depth.data_ptr(), g_color.data_ptr(), g_opacity.data_ptr(), g_depth.data_ptr(),
                grad_sigma.data_ptr(), grad_rgb.data_ptr())
        if sigma.device.type == "cuda":
            _check(_cuda.lib.r3d_nerf_cuda_composite_backward_f32(rays, *ptrs, _stream(sigma.device)),
                   "composite backward")
        else:
            getattr(_cpu.lib, f"r3d_nerf_composite_backward_{_suffix(sigma.dtype)}")(rays, *ptrs, _threads())
        return grad_sigma, grad_rgb, None, None, None


def composite(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
              start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(colour R×3, opacity R, depth R, weights S) of packed rays (``start``: R + 1 int64 offsets)."""
    if _native(sigma, rgb, t, dt):
        return _Composite.apply(sigma, rgb.to(sigma.dtype), t.to(sigma.dtype), dt.to(sigma.dtype), start.long())
    return reference.composite(sigma, rgb, t, dt, start)


def march(origins: torch.Tensor, dirs: torch.Tensor, near: torch.Tensor, far: torch.Tensor, grid: torch.Tensor,
          fparams: torch.Tensor, iparams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples of each ray where the occupancy grid is set: (start R+1, t S, dt S, unit-cube points S×3).

    ``fparams`` = box min (3), box max (3), contraction radius, dt_min, dt_max, cone, shell step (float32);
    ``iparams`` = contracted, grid resolution, max samples per ray (int32); both stay on the CPU. On the device
    of ``origins``: the CPU driver, or the CUDA driver for CUDA rays (then ``grid`` moves there too).
    """
    fp, ip = fparams.float().contiguous().cpu(), iparams.to(torch.int32).contiguous().cpu()
    if origins.device.type == "cuda":
        return _march_cuda(origins, dirs, near, far, grid, fp, ip)
    if not available():
        raise BuildError(f"the NeRF CPU kernels are unavailable: {_cpu.error}")
    o, d, n, f = (x.detach().float().contiguous().cpu() for x in (origins, dirs, near, far))
    g = grid.contiguous().cpu().to(torch.uint8)
    rays = len(o)
    counts = torch.empty(rays, dtype=torch.int64)
    _cpu.lib.r3d_nerf_march_count(rays, o.data_ptr(), d.data_ptr(), n.data_ptr(), f.data_ptr(), fp.data_ptr(),
                              ip.data_ptr(), g.data_ptr(), counts.data_ptr(), _threads())
    start = torch.zeros(rays + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=start[1:])
    total = int(start[-1])
    t = torch.empty(total)
    dt = torch.empty(total)
    u = torch.empty(total, 3)
    _cpu.lib.r3d_nerf_march_fill(rays, o.data_ptr(), d.data_ptr(), n.data_ptr(), f.data_ptr(), fp.data_ptr(),
                             ip.data_ptr(), g.data_ptr(), start.data_ptr(), t.data_ptr(), dt.data_ptr(), u.data_ptr(),
                             _threads())
    return start, t, dt, u


def _march_cuda(origins, dirs, near, far, grid, fp, ip):
    """The marcher's CUDA driver: a counting kernel, cub's exclusive scan into ``start``, a filling kernel."""
    if not cuda_available():
        raise BuildError(f"the NeRF CUDA kernels are unavailable: {_cuda.error or 'no GPU'}")
    device = origins.device
    o, d, n, f = (x.detach().float().contiguous().to(device) for x in (origins, dirs, near, far))
    g = grid.to(device=device, dtype=torch.uint8).contiguous()
    rays = len(o)
    stream = _stream(device)
    counts = torch.empty(rays + 1, dtype=torch.int64, device=device)
    start = torch.empty(rays + 1, dtype=torch.int64, device=device)
    args = (rays, o.data_ptr(), d.data_ptr(), n.data_ptr(), f.data_ptr(), fp.data_ptr(), ip.data_ptr(), g.data_ptr())
    scratch_bytes = ctypes.c_size_t(0)
    _check(_cuda.lib.r3d_nerf_cuda_march_count(*args, counts.data_ptr(), start.data_ptr(), None,
                                               ctypes.byref(scratch_bytes), stream), "march (scan size)")
    scratch = torch.empty(max(1, int(scratch_bytes.value)), dtype=torch.uint8, device=device)
    _check(_cuda.lib.r3d_nerf_cuda_march_count(*args, counts.data_ptr(), start.data_ptr(), scratch.data_ptr(),
                                               ctypes.byref(scratch_bytes), stream), "march count")
    total = int(start[-1])  # the one host sync of a march: the sample count sizes the outputs
    t = torch.empty(total, device=device)
    dt = torch.empty(total, device=device)
    u = torch.empty(total, 3, device=device)
    _check(_cuda.lib.r3d_nerf_cuda_march_fill(*args, start.data_ptr(), t.data_ptr(), dt.data_ptr(), u.data_ptr(),
                                              stream), "march fill")
    return start, t, dt, u


def source_files() -> list[Path]:
    """The sources of the CPU and CUDA builds (for packaging checks)."""
    root = kernel_source_dir()
    return [root / _SOURCE, root / _CUDA_SOURCE, *(root / h for h in _HEADERS)]
