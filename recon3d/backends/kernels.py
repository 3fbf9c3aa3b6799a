"""The ``cpu`` and ``cuda`` backends: our kernels in ``cuda/``, built on first use and cached.

The build goes through ``recon3d.native`` (torch's ``cpp_extension`` with this environment's ninja) into a
folder keyed by a hash of the sources, the flags and the torch version (under ``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/recon3d/kernels``), so a second process or a second machine with another CPU never picks up a
stale or unsuitable binary, and every entry point (``make``, ``.venv/bin/recon3d``, an activated venv)
reuses one build.

Two autograd functions split the work like the reference does: ``_Project`` (3D -> screen space, SH
colours) and ``_Rasterize`` (binning, sorting, compositing). ``means2d`` is the tensor between them, so
``out.means2d.retain_grad()`` gives exactly the screen-space gradient densification reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from .. import native
from ..constants import kernel_source_dir
from ..errors import BackendUnavailable, BuildError
from .base import RenderOptions, RenderOutput, check_depth_mode

if TYPE_CHECKING:
    from ..cameras import Cameras
    from ..scene import GaussianScene

_SOURCES_CPU = ("src/binding.cpp", "src/rasterizer_cpu.cpp")
_SOURCES_CUDA = ("src/rasterizer_cuda.cu",)
_modules: dict[str, ModuleType] = {}
_lock = threading.Lock()


def _cpu_flags() -> list[str]:
    """Compiler flags for the running CPU (the build folder is keyed by them, so caches never mix); see
    ``recon3d.native`` for ``RECON3D_CPU_ISA`` and libmvec."""
    return ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi",
            *native.simd_flags()]


def _cache_root() -> Path:
    return native.kernels_cache_dir()


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


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def included_headers(src_dir: Path, sources: list[Path]) -> list[Path]:
    """The headers under ``src_dir/include/recon3d`` that ``sources`` include, directly or through each other.

    The build key hashes these and no others: a header only another build reads (the NeRF kernels' nerf.h)
    must not rebuild the rasterizer for everyone. Both include forms in use resolve: "recon3d/x.h" from the
    sources and "x.h" from a header next to it.
    """
    root = src_dir / "include" / "recon3d"
    found: set[Path] = set()
    todo = list(sources)
    while todo:
        text = todo.pop().read_text(errors="replace")
        for name in _INCLUDE.findall(text):
            path = root / Path(name).name if name.startswith("recon3d/") or "/" not in name else None
            if path is not None and path.is_file() and path not in found:
                found.add(path)
                todo.append(path)
    return sorted(found)


def _build(with_cuda: bool) -> ModuleType:
    native.find_compiler("c++")
    src_dir = kernel_source_dir()
    rel_sources = list(_SOURCES_CPU) + (list(_SOURCES_CUDA) if with_cuda else [])
    sources = [src_dir / s for s in rel_sources]
    headers = included_headers(src_dir, sources)
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

    # The key holds what the build depends on and nothing from PATH: the sources and where they are, the flags,
    # and the torch built against (its version and its folder). The folders enter because torch's build file
    # names them: two checkouts or venvs sharing one folder would each rewrite it and rebuild in turn.
    digest = hashlib.sha256()
    for path in sources + headers:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(cflags + cuda_flags).encode())
    digest.update(torch.__version__.encode())
    digest.update(f"{src_dir.resolve()}|{Path(torch.__file__).resolve().parent}".encode())
    digest.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    name = f"recon3d_kernels_{'cuda' if with_cuda else 'cpu'}_{digest.hexdigest()[:12]}"
    build_dir = _cache_root() / name
    if not any(build_dir.glob(f"{name}*.so")):
        print(f"building recon3d kernels (first use, ~30 s{' + CUDA' if with_cuda else ''})…", file=sys.stderr, flush=True)
    return native.load_torch_extension(
        name, sources, build_dir, include_dirs=[src_dir / "include"], cflags=cflags, cuda_cflags=cuda_flags,
        ldflags=["-fopenmp", *native.link_flags(cflags)], with_cuda=with_cuda,
    )


def _num_threads() -> int:
    return max(1, torch.get_num_threads())


class _Project(torch.autograd.Function):
    """Gaussians -> per-camera screen-space means, conics, colours, opacities, depths (+ radii, extents)."""

    @staticmethod
    def forward(
        ctx, means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, width, height, sh_degree, ext,
        antialiased=False,
    ):
        outs = ext.project_forward(
            means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, width, height, sh_degree,
            _num_threads(), antialiased,
        )
        means2d, conics, colors, opac, depths, radii, extents = outs
        ctx.save_for_backward(means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, radii)
        ctx.meta = (width, height, sh_degree, ext, antialiased)
        ctx.mark_non_differentiable(radii, extents)
        return means2d, conics, colors, opac, depths, radii, extents

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_colors, g_opac, g_depths, _g_radii, _g_extents):
        means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, radii = ctx.saved_tensors
        width, height, sh_degree, ext, antialiased = ctx.meta
        # the camera pass runs only when a camera tensor requires grad (it costs nothing otherwise)
        camera_grads = any(ctx.needs_input_grad[6:9])
        *grads, g_camera = ext.project_backward(
            means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, width, height, sh_degree, radii,
            g_means2d.contiguous(), g_conics.contiguous(), g_colors.contiguous(), g_opac.contiguous(),
            g_depths.contiguous(), _num_threads(), camera_grads, antialiased,
        )
        g_view = g_intr = g_centers = None
        if camera_grads:
            # g_camera rows: R (row-major) 9, t 3, fx fy cx cy, camera centre 3 (projection.h kCamGrads)
            g_view = viewmats.new_zeros(viewmats.shape)
            g_view[:, :3, :3] = g_camera[:, :9].reshape(-1, 3, 3)
            g_view[:, :3, 3] = g_camera[:, 9:12]
            g_intr, g_centers = g_camera[:, 12:16], g_camera[:, 16:19]
        return (*grads, g_view, g_intr, g_centers, None, None, None, None, None)


class _RasterizeFeatures(torch.autograd.Function):
    """N×K features -> C×H×W×K, composited with the weights of the colour pass whose tile lists it reuses."""

    @staticmethod
    def forward(ctx, means2d, conics, opac, features, colors, depths, radii, extents, background, width, height, ext,
                isect_ids, tile_ranges, final_trans, last, isect_rows):
        (image,) = ext.rasterize_features_forward(
            means2d, conics, colors, opac, depths, radii, extents, background, width, height, isect_ids, tile_ranges,
            features, _num_threads(),
        )
        ctx.save_for_backward(means2d, conics, opac, features, colors, depths, radii, extents, background, isect_ids,
                              tile_ranges, final_trans, last, isect_rows)
        ctx.meta = (width, height, ext)
        return image

    @staticmethod
    def backward(ctx, g_image):
        (means2d, conics, opac, features, colors, depths, radii, extents, background, isect_ids, tile_ranges,
         final_trans, last, isect_rows) = ctx.saved_tensors
        width, height, ext = ctx.meta
        g_means2d, g_conics, g_opac, g_features = ext.rasterize_features_backward(
            means2d, conics, colors, opac, depths, radii, extents, background, width, height, isect_ids, tile_ranges,
            final_trans, last, isect_rows, features, g_image.contiguous(), _num_threads(),
        )
        return (g_means2d, g_conics, g_opac, g_features, *([None] * 13))


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
        ctx.mark_non_differentiable(n_contrib, isect_ids, tile_ranges, final_trans, last, isect_rows)
        if median:
            ctx.mark_non_differentiable(depth)
        # outputs the loss does not read arrive as None, not as zero-filled images
        ctx.set_materialize_grads(False)
        # the tile lists and per-pixel state go out too (not differentiable): a feature pass reuses them
        return rgb, alpha, depth, n_contrib, isect_ids, tile_ranges, final_trans, last, isect_rows

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth, _g_n, *_g_lists):
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
    antialiased: bool = False,
    features: torch.Tensor | None = None,
) -> RenderOutput:
    """Render with our kernels (``device_kind`` ``cpu`` or ``cuda``); see recon3d.render for the contract.
    ``return_stats`` also fills ``out.n_contrib`` (Gaussians composited per pixel, for benchmarks)."""
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
        bool(antialiased),
    )
    if means2d.requires_grad:
        means2d.retain_grad()
    check_depth_mode(depth)
    median = depth == "median"
    rgb, alpha, out_depth, n_contrib, *lists = _Rasterize.apply(
        means2d, conics, colors, opac, depths, radii, extents, bg, width, height, ext, median, return_stats
    )
    out_features = None
    if features is not None:
        out_features = _RasterizeFeatures.apply(
            means2d, conics, opac, features.contiguous(), colors, depths, radii, extents, bg, width, height, ext, *lists
        )
    return RenderOutput(
        rgb=rgb, alpha=alpha[..., None], depth=out_depth[..., None], radii=radii, means2d=means2d,
        features=out_features, n_contrib=n_contrib if return_stats else None,
    )


class KernelBackend:
    """Our kernels as a registry entry: ``cpu`` (OpenMP) or ``cuda``, one source (``cuda/``)."""

    def __init__(self, device_kind: str) -> None:
        self.name = device_kind

    def available_for(self, device: torch.device) -> bool:
        """The device type this build renders on."""
        return device.type == self.name

    def render(
        self, scene: GaussianScene, cameras: Cameras, background: torch.Tensor, sh_degree: int, options: RenderOptions
    ) -> RenderOutput:
        """Render with the kernels and the call's options."""
        return render(
            scene, cameras, background, sh_degree, device_kind=self.name, depth=options.depth,
            antialiased=options.antialiased, features=options.features,
        )


CPU = KernelBackend("cpu")
CUDA = KernelBackend("cuda")
