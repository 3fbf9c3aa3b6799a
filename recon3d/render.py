"""``recon3d.render``: the one entry point to every rasterizer backend."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from .cameras import Cameras
from .errors import BackendUnavailable
from .scene import GaussianScene

BACKENDS = ("auto", "reference", "cpu", "cuda", "gsplat")
DEPTH_MODES = ("expected", "median")


def check_depth_mode(depth: str) -> None:
    """Raise a one-line ValueError unless ``depth`` is one of DEPTH_MODES (every backend and caller uses this)."""
    if depth not in DEPTH_MODES:
        raise ValueError(f"unknown depth mode {depth!r}; choose one of {', '.join(DEPTH_MODES)}")

# backend name -> module whose ``render(scene, cameras, background, sh_degree)`` does the work
_BACKEND_MODULES = {
    "reference": "recon3d.backends.reference",
    "cpu": "recon3d.backends.kernels",
    "cuda": "recon3d.backends.kernels",
    "gsplat": "recon3d.backends.gsplat_backend",
}


@dataclass
class RenderOutput:
    """What ``render`` returns for C cameras of size H×W and N Gaussians."""

    rgb: torch.Tensor  # C×H×W×3
    alpha: torch.Tensor  # C×H×W×1, 1 − final transmittance
    depth: torch.Tensor  # C×H×W×1, view-space z: expected (0 where alpha = 0) or median (see ``render``)
    radii: torch.Tensor  # C×N int32 screen-space radius in pixels, 0 where culled
    means2d: torch.Tensor  # C×N×2 projected centres in pixels; its .grad drives densification

    @property
    def visible(self) -> torch.Tensor:
        """C×N bool: Gaussians that reached the image in each camera."""
        return self.radii > 0


def expected_depth(accumulated_depth: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Normalise Σ wᵢzᵢ by the accumulated alpha (0 where nothing was drawn)."""
    return torch.where(alpha > 0, accumulated_depth / alpha.clamp_min(1e-10), torch.zeros_like(alpha))


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete backend name for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    return backend


def render(
    scene: GaussianScene,
    cameras: Cameras,
    *,
    background: torch.Tensor | tuple[float, float, float] | None = None,
    sh_degree: int | None = None,
    backend: str = "auto",
    depth: str = "expected",
) -> RenderOutput:
    """Render ``scene`` from every camera in ``cameras`` (all of one image size).

    ``background`` is an RGB colour (3 or C×3, default black); ``sh_degree`` limits the SH degree used
    (default: all the scene stores); ``backend`` is one of ``auto``, ``reference``, ``cpu``, ``cuda``,
    ``gsplat``; ``auto`` picks ``cuda`` for scenes on a GPU, else ``cpu``.

    ``depth`` chooses what ``out.depth`` holds: ``expected`` (default), the alpha-weighted mean view-space
    z of the blended Gaussians (differentiable); or ``median``, the view-space z of the Gaussian during
    whose blend the transmittance first falls to <= 0.5 (0 where it never does): a surface even in a hazy
    scene, not differentiable (out.depth then carries no gradient; rgb, alpha and means2d still do).
    The gsplat backend has no median depth and raises BackendUnavailable for it.
    """
    check_depth_mode(depth)
    if not isinstance(scene, GaussianScene):
        raise TypeError(f"render expects a GaussianScene, got {type(scene).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"render expects Cameras, got {type(cameras).__name__}")
    if len(cameras) == 0:
        raise ValueError("render needs at least one camera")
    if sh_degree is None:
        sh_degree = scene.sh_degree
    if not 0 <= sh_degree <= scene.sh_degree:
        raise ValueError(f"sh_degree={sh_degree} but the scene stores SH up to degree {scene.sh_degree}")
    if scene.means.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"scene parameters must be float32 or float64, got {scene.means.dtype}")
    cameras = cameras.to(scene.device)
    cameras.image_size()  # raises a clear error on mixed sizes
    if cameras.distortion is not None and bool((cameras.distortion != 0).any()):
        raise ValueError("render draws pinhole images: undistort the images and drop Cameras.distortion first")
    if background is None:
        background = torch.zeros(3)
    bg = torch.as_tensor(background, dtype=scene.means.dtype, device=scene.device)
    if bg.shape == (3,):
        bg = bg.expand(len(cameras), 3)
    if bg.shape != (len(cameras), 3):
        raise ValueError(f"background must have shape (3,) or ({len(cameras)}, 3), got {tuple(bg.shape)}")

    name = resolve_backend(backend, scene.device)
    try:
        module = importlib.import_module(_BACKEND_MODULES[name])
    except ImportError as exc:
        raise BackendUnavailable(f"render backend {name!r} is not available: {exc}") from exc
    if name in ("cpu", "cuda"):
        return module.render(scene, cameras, bg, sh_degree, device_kind=name, depth=depth)
    return module.render(scene, cameras, bg, sh_degree, depth=depth)
