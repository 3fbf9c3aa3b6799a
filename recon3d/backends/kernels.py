"""The ``cpu`` and ``cuda`` backends: our kernels in ``cuda/``, built on first use and cached.

The build goes through ``torch.utils.cpp_extension.load`` into a folder keyed by a hash of the sources,
the flags and the torch version (under ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/recon3d/kernels``), so a
second process or a second machine with another CPU never picks up a stale or unsuitable binary.

Two autograd functions split the work like the reference does: ``_Project`` (3D -> screen space, SH
colours) and ``_Rasterize`` (binning, sorting, compositing). ``means2d`` is the tensor between them, so
``out.means2d.retain_grad()`` gives exactly the screen-space gradient densification reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from ..constants import kernel_source_dir
from ..errors import BackendUnavailable, BuildError

if TYPE_CHECKING:
    from ..cameras import Cameras
    from ..render import RenderOutput
    from ..scene import GaussianScene

_SOURCES_CPU = ("src/binding.cpp", "src/rasterizer_cpu.cpp")
_SOURCES_CUDA = ("src/rasterizer_cuda.cu",)
_modules: dict[str, ModuleType] = {}
_lock = threading.Lock()


_ISA_LEVELS = ("native", "avx2", "generic")


def _cpu_flags() -> list[str]:
    """SIMD flags the running CPU supports (the build folder is keyed by them, so caches never mix).

    ``RECON3D_CPU_ISA`` caps them: ``avx2`` (what an AVX2-only CPU gets) or ``generic`` (the x86-64
    baseline), so tests can exercise those code paths on an AVX-512 machine; ``native`` (default) is all.
    """
    isa = os.environ.get("RECON3D_CPU_ISA", "native").strip().lower() or "native"
    if isa not in _ISA_LEVELS:
        raise BuildError(f"RECON3D_CPU_ISA={isa!r}: expected one of {', '.join(_ISA_LEVELS)}")
    flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"]
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    words = set(cpuinfo.split())
    if {"avx2", "fma"} <= words and isa != "generic":
        flags += ["-mavx2", "-mfma"]
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= words and isa == "native":
        flags += ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mprefer-vector-width=512"]
    if _libmvec() is not None:
        flags.append("-DRECON3D_LIBMVEC")  # vector expf/logf: the projection loops vectorise over Gaussians
    return flags


def _libmvec() -> str | None:
    """glibc's vector maths library (x86-64 Linux), or None where there is none."""
    import ctypes.util
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    return ctypes.util.find_library("mvec")


def _cache_root() -> Path:
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "recon3d" / "kernels"


def _find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda/bin/nvcc"
    return None


def load_kernels(with_cuda: bool = False) -> ModuleType:
    """Build (first use) or load the compiled kernels; ``with_cuda`` adds the CUDA driver."""
    variant = "cuda" if with_cuda else "cpu"
    if variant in _modules:
        return _modules[variant]
    with _lock:
        if variant in _modules:
            return _modules[variant]
        _modules[variant] = _build(with_cuda)
        if not with_cuda:
            _modules.setdefault("cpu", _modules[variant])
    return _modules[variant]


def _build(with_cuda: bool) -> ModuleType:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None or shutil.which(compiler) is None:
        raise BuildError(
            "cannot build the recon3d kernels: no C++ compiler found (g++/c++ not on PATH); "
            "install one, e.g. `apt-get install g++`"
        )
    src_dir = kernel_source_dir()
    rel_sources = list(_SOURCES_CPU) + (list(_SOURCES_CUDA) if with_cuda else [])
    sources = [src_dir / s for s in rel_sources]
    headers = sorted((src_dir / "include" / "recon3d").glob("*.h"))
    cflags = _cpu_flags()
    cuda_flags: list[str] = []
    if with_cuda:
        if torch.version.cuda is None:
            raise BackendUnavailable("the cuda backend needs a CUDA build of torch; this torch is CPU-only")
        nvcc = _find_nvcc()
        if nvcc is None:
            raise BuildError(
                "cannot build the recon3d CUDA kernels: nvcc not found (set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda)"
            )
        os.environ.setdefault("CUDA_HOME", str(Path(nvcc).resolve().parent.parent))
        cflags = cflags + ["-DRECON3D_WITH_CUDA"]
        cuda_flags = ["-O3", "-std=c++17", "--use_fast_math", "-DRECON3D_WITH_CUDA", "-lineinfo"]

    digest = hashlib.sha256()
    for path in sources + headers:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(cflags + cuda_flags).encode())
    digest.update(torch.__version__.encode())
    digest.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    name = f"recon3d_kernels_{'cuda' if with_cuda else 'cpu'}_{digest.hexdigest()[:12]}"
    build_dir = _cache_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    if not any(build_dir.glob(f"{name}*.so")):
        print(f"building recon3d kernels (first use, ~30 s{' + CUDA' if with_cuda else ''})…", file=sys.stderr, flush=True)
    with _build_lock(build_dir):
        return _load(cpp_extension, name, sources, src_dir, cflags, cuda_flags, build_dir, with_cuda)


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """Hold an OS lock on the build directory while torch builds or loads in it, and clear a stale torch lock.

    torch's own build lock is a plain file that stays behind when a build is killed (Ctrl-C, OOM), and every later
    load then waits for it forever. Ours is an flock, which the kernel drops when its holder dies: whoever holds
    it is the only builder alive, so a torch lock file found then is stale and is removed.
    """
    import fcntl

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


def _load(cpp_extension, name, sources, src_dir, cflags, cuda_flags, build_dir, with_cuda) -> ModuleType:
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources],
            extra_include_paths=[str(src_dir / "include")],
            extra_cflags=cflags,
            extra_cuda_cflags=cuda_flags,
            # -l:<soname> links the runtime library itself (no -dev symlink needed)
            extra_ldflags=["-fopenmp"] + ([f"-l:{_libmvec()}"] if "-DRECON3D_LIBMVEC" in cflags else []),
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"building the recon3d kernels in {build_dir} failed: {last}") from exc


def _num_threads() -> int:
    return max(1, torch.get_num_threads())


class _Project(torch.autograd.Function):
    """Gaussians -> per-camera screen-space means, conics, colours, opacities, depths (+ radii, extents)."""

    @staticmethod
    def forward(
        ctx, means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, width, height, sh_degree, ext
    ):
        outs = ext.project_forward(
            means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, width, height, sh_degree,
            _num_threads(),
        )
        means2d, conics, colors, opac, depths, radii, extents = outs
        ctx.save_for_backward(means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, radii)
        ctx.meta = (width, height, sh_degree, ext)
        ctx.mark_non_differentiable(radii, extents)
        return means2d, conics, colors, opac, depths, radii, extents

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_colors, g_opac, g_depths, _g_radii, _g_extents):
        means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, radii = ctx.saved_tensors
        width, height, sh_degree, ext = ctx.meta
        grads = ext.project_backward(
            means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, width, height, sh_degree, radii,
            g_means2d.contiguous(), g_conics.contiguous(), g_colors.contiguous(), g_opac.contiguous(),
            g_depths.contiguous(), _num_threads(),
        )
        return (*grads, None, None, None, None, None, None, None)


class _Rasterize(torch.autograd.Function):
    """Screen-space Gaussians -> rgb C×H×W×3, alpha C×H×W and depth C×H×W: the expected depth (acc / alpha,
    differentiable) or, when ``median``, the median depth (not differentiable); and, not differentiable, the
    Gaussians composited per pixel when ``count`` (an empty tensor otherwise: the kernels only count when asked)."""

    @staticmethod
    def forward(
        ctx, means2d, conics, colors, opac, depths, radii, extents, background, width, height, ext, median, count=False
    ):
        extras = (1 if median else 0) | (2 if count else 0)
        outs = ext.rasterize_forward(
            means2d, conics, colors, opac, depths, radii, extents, background, width, height, _num_threads(), extras
        )
        rgb, alpha, acc_depth, final_trans, last, n_contrib, isect_ids, tile_ranges, isect_rows, median_depth = outs
        # the expected depth in one kernel pass (five torch ops and their autograd nodes otherwise)
        depth = median_depth if median else ext.expected_depth_forward(acc_depth, alpha)
        ctx.save_for_backward(
            means2d, conics, colors, opac, depths, radii, extents, background, isect_ids, tile_ranges, final_trans, last,
            isect_rows, alpha, acc_depth,
        )
        ctx.meta = (width, height, ext, median)
        ctx.mark_non_differentiable(n_contrib)
        if median:
            ctx.mark_non_differentiable(depth)
        # outputs the loss does not read arrive as None, not as zero-filled images
        ctx.set_materialize_grads(False)
        return rgb, alpha, depth, n_contrib

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth, _g_n):
        (means2d, conics, colors, opac, depths, radii, extents, background, isect_ids, tile_ranges, final_trans,
         last, isect_rows, alpha, acc_depth) = ctx.saved_tensors
        width, height, ext, median = ctx.meta
        # the expected depth's gradient goes to the accumulated depth and to alpha (none in median mode)
        g_acc_depth = None
        if g_depth is not None and not median:
            g_alpha, g_acc_depth = ext.expected_depth_backward(acc_depth, alpha, g_alpha, g_depth)
        g_rgb = alpha.new_zeros((*alpha.shape, 3)) if g_rgb is None else g_rgb.contiguous()
        # an image no gradient reaches goes in empty (the kernels read zeros), not as an image-sized zero fill
        none = alpha.new_empty(0)
        grads = ext.rasterize_backward(
            means2d, conics, colors, opac, depths, radii, extents, background, width, height, isect_ids, tile_ranges,
            final_trans, last, isect_rows, g_rgb, none if g_alpha is None else g_alpha.contiguous(),
            none if g_acc_depth is None else g_acc_depth, _num_threads(),
        )
        return (*grads, None, None, None, None, None, None, None, None)


def render(
    scene: GaussianScene,
    cameras: Cameras,
    background: torch.Tensor,
    sh_degree: int,
    device_kind: str = "cpu",
    return_stats: bool = False,
    depth: str = "expected",
) -> RenderOutput:
    """Render with our kernels (``device_kind`` ``cpu`` or ``cuda``); see recon3d.render for the contract."""
    from ..render import RenderOutput, check_depth_mode

    if device_kind not in ("cpu", "cuda"):
        raise ValueError(f"device_kind must be 'cpu' or 'cuda', got {device_kind!r}")
    if device_kind == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable("the cuda backend needs a CUDA GPU; none is visible to torch")
        if scene.device.type != "cuda":
            raise BackendUnavailable(f"the cuda backend renders scenes on a CUDA device; this scene is on {scene.device}")
        if scene.means.dtype != torch.float32:
            raise TypeError("the cuda backend renders float32 scenes; use the cpu backend for float64")
    elif scene.device.type != "cpu":
        raise BackendUnavailable(f"the cpu backend renders scenes on the CPU; this scene is on {scene.device}")
    ext = load_kernels(with_cuda=device_kind == "cuda")

    dtype = scene.means.dtype
    height, width = cameras.image_size()
    viewmats = cameras.world_to_camera.to(dtype).contiguous()
    intrinsics = torch.stack([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1).to(dtype).contiguous()
    # centres as the reference computes them (in the cameras' dtype), so float64 renders agree exactly
    centers = cameras.centers().to(dtype).contiguous()
    bg = background.to(dtype).contiguous()
    means2d, conics, colors, opac, depths, radii, extents = _Project.apply(
        scene.means.contiguous(), scene.scales.contiguous(), scene.quats.contiguous(), scene.opacities.contiguous(),
        scene.sh0.contiguous(), scene.shN.contiguous(), viewmats, intrinsics, centers, width, height, sh_degree, ext,
    )
    if means2d.requires_grad:
        means2d.retain_grad()
    check_depth_mode(depth)
    median = depth == "median"
    rgb, alpha, out_depth, n_contrib = _Rasterize.apply(
        means2d, conics, colors, opac, depths, radii, extents, bg, width, height, ext, median, return_stats
    )
    out = RenderOutput(rgb=rgb, alpha=alpha[..., None], depth=out_depth[..., None], radii=radii, means2d=means2d)
    if return_stats:
        out.n_contrib = n_contrib  # type: ignore[attr-defined]  # Gaussians composited per pixel (benchmarks)
    return out
