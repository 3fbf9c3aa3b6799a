"""The NeRF kernels' CPU build (``cuda/src/nerf_cpu.cpp`` + ``cuda/include/recon3d/nerf.h``) through ctypes,
and the autograd functions the field and the renderer call.

Built like the training ops (``recon3d/train/cpu_ops.py``): the system C++ compiler, OpenMP, the SIMD flags
``recon3d.native`` picks for this CPU (capped by ``RECON3D_CPU_ISA``), no torch headers (a build takes a few
seconds), cached under ``<cache root>/nerf`` keyed by a hash of the sources, flags and compiler, built under
the native build lock. The CUDA driver (``cuda/src/nerf_cuda.cu``) shares the header and is compiled by
``cuda/compile_check.sh``; on CUDA tensors (and where the CPU build cannot be made) the functions here fall
back to the dense PyTorch twins in ``reference.py``. ``RECON3D_NERF_NATIVE=0`` forces that fallback (A/B).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
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

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed: str | None = None
_HEADERS = ("include/recon3d/nerf.h", "include/recon3d/common.h", "include/recon3d/constants.h")
_SOURCE = "src/nerf_cpu.cpp"


def _flags() -> list[str]:
    return ["-O3", "-fPIC", "-shared", "-fopenmp", "-std=c++17", "-fno-math-errno", "-fno-trapping-math",
            "-Wno-psabi", *native.simd_flags()]


def _build() -> ctypes.CDLL:
    root = kernel_source_dir()
    compiler = native.find_compiler("c++")
    flags = _flags()
    digest = hashlib.sha256()
    for rel in (_SOURCE, *_HEADERS):
        digest.update((root / rel).read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(compiler.encode())
    out_dir = native.cache_root() / "nerf"
    lib = out_dir / f"recon3d_nerf_{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        with native.build_lock(out_dir):
            if not lib.exists():
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
                os.close(fd)
                try:
                    proc = subprocess.run([compiler, *flags, f"-I{root / 'include'}", str(root / _SOURCE), "-o", tmp],
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise BuildError(f"compiling {root / _SOURCE} failed: "
                                         f"{native.last_line(RuntimeError(proc.stderr))}")
                    os.replace(tmp, lib)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    try:
        handle = ctypes.CDLL(str(lib))
    except OSError as exc:
        raise BuildError(f"loading {lib} failed: {exc}") from None
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for dtype in ("f32", "f64"):
        getattr(handle, f"r3d_nerf_hash_forward_{dtype}").argtypes = [i64, p, i32, p, p, p, p, i32]
        getattr(handle, f"r3d_nerf_hash_backward_{dtype}").argtypes = [i64, p, i32, p, p, p, p, i32]
        getattr(handle, f"r3d_nerf_composite_forward_{dtype}").argtypes = [i64] + [p] * 9 + [i32]
        getattr(handle, f"r3d_nerf_composite_backward_{dtype}").argtypes = [i64] + [p] * 13 + [i32]
    handle.r3d_nerf_march_count.argtypes = [i64] + [p] * 8 + [i32]
    handle.r3d_nerf_march_fill.argtypes = [i64] + [p] * 11 + [i32]
    return handle


def available() -> bool:
    """Whether the CPU build is there (building it on first call); False where it cannot be."""
    global _lib, _failed
    if _lib is not None:
        return True
    if _failed is not None or os.environ.get("RECON3D_NERF_NATIVE", "1") == "0":
        return False
    with _lock:
        if _lib is None and _failed is None:
            try:
                _lib = _build()
            except (BuildError, OSError, AttributeError) as exc:
                _failed = str(exc)
    return _lib is not None


def build_error() -> str | None:
    """Why the CPU build is unavailable (None if it is available or was not tried)."""
    return _failed


def _native(*tensors: torch.Tensor) -> bool:
    return (all(t.device.type == "cpu" for t in tensors) and tensors[0].dtype in (torch.float32, torch.float64)
            and available())


def _suffix(dtype: torch.dtype) -> str:
    return "f32" if dtype == torch.float32 else "f64"


def _threads() -> int:
    return max(1, torch.get_num_threads())


class _SpecArrays:
    """A spec's resolutions and offsets as CPU tensors the kernels read (kept alive with the spec)."""

    _cache: dict[HashGridSpec, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def get(cls, spec: HashGridSpec) -> tuple[torch.Tensor, torch.Tensor]:
        if spec not in cls._cache:
            cls._cache[spec] = (torch.tensor(spec.resolutions, dtype=torch.int32),
                                torch.tensor(spec.offsets, dtype=torch.int64))
        return cls._cache[spec]


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, positions: torch.Tensor, table: torch.Tensor, spec: HashGridSpec) -> torch.Tensor:
        pos = positions.detach().to(table.dtype).contiguous()
        tab = table.detach().contiguous()
        res, off = _SpecArrays.get(spec)
        out = torch.empty(len(pos), spec.output_dim, dtype=tab.dtype)
        getattr(_lib, f"r3d_nerf_hash_forward_{_suffix(tab.dtype)}")(
            len(pos), pos.data_ptr(), spec.levels, res.data_ptr(), off.data_ptr(), tab.data_ptr(), out.data_ptr(),
            _threads())
        ctx.save_for_backward(pos)
        ctx.spec = spec
        ctx.table_shape = tab.shape
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (pos,) = ctx.saved_tensors
        spec = ctx.spec
        res, off = _SpecArrays.get(spec)
        g = grad_out.contiguous().to(pos.dtype)
        grad_table = torch.zeros(ctx.table_shape, dtype=pos.dtype)
        getattr(_lib, f"r3d_nerf_hash_backward_{_suffix(pos.dtype)}")(
            len(pos), pos.data_ptr(), spec.levels, res.data_ptr(), off.data_ptr(), g.data_ptr(),
            grad_table.data_ptr(), _threads())
        return None, grad_table, None


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


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigma, rgb, t, dt, start):
        sigma, rgb, t, dt = (x.detach().contiguous() for x in (sigma, rgb, t, dt))
        start = start.contiguous()
        rays = len(start) - 1
        weights = torch.empty_like(sigma)
        color = torch.empty(rays, 3, dtype=sigma.dtype)
        opacity = torch.empty(rays, dtype=sigma.dtype)
        depth = torch.empty(rays, dtype=sigma.dtype)
        getattr(_lib, f"r3d_nerf_composite_forward_{_suffix(sigma.dtype)}")(
            rays, start.data_ptr(), sigma.data_ptr(), rgb.data_ptr(), t.data_ptr(), dt.data_ptr(), weights.data_ptr(),
            color.data_ptr(), opacity.data_ptr(), depth.data_ptr(), _threads())
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
        getattr(_lib, f"r3d_nerf_composite_backward_{_suffix(sigma.dtype)}")(
            rays, start.data_ptr(), sigma.data_ptr(), rgb.data_ptr(), t.data_ptr(), dt.data_ptr(), color.data_ptr(),
            opacity.data_ptr(), depth.data_ptr(), g_color.data_ptr(), g_opacity.data_ptr(), g_depth.data_ptr(),
            grad_sigma.data_ptr(), grad_rgb.data_ptr(), _threads())
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

    ``fparams`` = box min (3), box max (3), contraction radius, dt_min, dt_max, cone (float32);
    ``iparams`` = contracted, grid resolution, max samples per ray (int32). CPU only.
    """
    if not available():
        raise BuildError(f"the NeRF CPU kernels are unavailable: {_failed}")
    o, d, n, f = (x.detach().float().contiguous().cpu() for x in (origins, dirs, near, far))
    g = grid.contiguous().cpu().to(torch.uint8)
    fp, ip = fparams.float().contiguous(), iparams.to(torch.int32).contiguous()
    rays = len(o)
    counts = torch.empty(rays, dtype=torch.int64)
    _lib.r3d_nerf_march_count(rays, o.data_ptr(), d.data_ptr(), n.data_ptr(), f.data_ptr(), fp.data_ptr(),
                              ip.data_ptr(), g.data_ptr(), counts.data_ptr(), _threads())
    start = torch.zeros(rays + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=start[1:])
    total = int(start[-1])
    t = torch.empty(total)
    dt = torch.empty(total)
    u = torch.empty(total, 3)
    _lib.r3d_nerf_march_fill(rays, o.data_ptr(), d.data_ptr(), n.data_ptr(), f.data_ptr(), fp.data_ptr(),
                             ip.data_ptr(), g.data_ptr(), start.data_ptr(), t.data_ptr(), dt.data_ptr(), u.data_ptr(),
                             _threads())
    return start, t, dt, u


def source_files() -> list[Path]:
    """The sources of the CPU build (for packaging checks)."""
    root = kernel_source_dir()
    return [root / _SOURCE, *(root / h for h in _HEADERS)]
