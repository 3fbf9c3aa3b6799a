"""``recon3d.render``: the one entry point to every rasterizer backend."""

from __future__ import annotations

import torch

from .backends import REGISTRY
from .backends.base import (
    DEPTH_MODES,
    MAX_FEATURE_CHANNELS,
    RenderOptions,
    RenderOutput,
    check_depth_mode,
    expected_depth,
)
from .cameras import Cameras
from .scene import GaussianScene

BACKENDS = ("auto", *REGISTRY)

__all__ = ["BACKENDS", "DEPTH_MODES", "RenderOutput", "check_depth_mode", "expected_depth", "render", "resolve_backend"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete backend name for tensors on ``device``."""
    if backend != "auto" and backend not in REGISTRY:
        raise ValueError(f"unknown render backend {backend!r}; choose one of auto, {', '.join(REGISTRY)}")
    if backend == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    return backend


def check_features(features: torch.Tensor, scene: GaussianScene) -> torch.Tensor:
    """``features`` as an N×K tensor of the scene's dtype and device; a one-line ValueError naming it otherwise."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"features must be a torch.Tensor of shape (N, K), got {type(features).__name__}")
    n = scene.means.shape[0]
    if features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"features must have shape ({n}, K) for a scene of {n} Gaussians, got {tuple(features.shape)}")
    if not 1 <= features.shape[1] <= MAX_FEATURE_CHANNELS:
        raise ValueError(f"features must have 1 to {MAX_FEATURE_CHANNELS} channels (K), got {features.shape[1]}")
    if features.is_complex():
        raise ValueError(f"features must be real numbers, got dtype {features.dtype}")
    features = features.to(device=scene.device, dtype=scene.means.dtype)
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features hold NaN or Inf")
    return features


def render(
    scene: GaussianScene,
    cameras: Cameras,
    *,
    background: torch.Tensor | tuple[float, float, float] | None = None,
    sh_degree: int | None = None,
    backend: str = "auto",
    depth: str = "expected",
    antialiased: bool = False,
    features: torch.Tensor | None = None,
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

    ``antialiased`` multiplies each Gaussian's opacity by sqrt(det Σ₂D / det(Σ₂D + 0.3·I)) (gsplat's
    ``rasterize_mode="antialiased"``, Mip-Splatting's 2D filter): a scene trained with it renders without
    aliasing when zoomed out. ``features`` (N×K, K ≤ 64) are composited with the same weights as the
    colours into ``out.features`` (C×H×W×K, no background), with gradients.
    When ``cameras.world_to_camera``, ``fx``, ``fy``, ``cx`` or ``cy`` require grad, they get gradients.
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
    if not isinstance(antialiased, bool):
        raise ValueError(f"antialiased must be True or False, got {antialiased!r}")
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
    if features is not None:
        features = check_features(features, scene)
    options = RenderOptions(depth=depth, antialiased=antialiased, features=features)
    return REGISTRY[resolve_backend(backend, scene.device)].render(scene, cameras, bg, sh_degree, options)
