"""Fixed and random viewpoints of generated scenes, rendered with recon3d's dense reference rasterizer.

Used by the judge (colour, silhouettes), by the image-prompt training data and by the benchmark. The
reference rasterizer needs no build step and is cheap at the small sizes used here (≤ 128²).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..scene import GaussianScene


def orbit_camera(centre, radius: float, azimuth: float, elevation: float, size: int, fov: float = 0.8):
    """One camera at ``azimuth`` (0 = the default front view from −y) and ``elevation`` (radians)."""
    from ..cameras import Cameras, look_at_world_to_camera

    c = torch.as_tensor(centre, dtype=torch.float32)
    d = radius / math.tan(fov / 2) * 1.15
    eye = c + d * torch.tensor([math.sin(azimuth) * math.cos(elevation), -math.cos(azimuth) * math.cos(elevation),
                                math.sin(elevation)], dtype=torch.float32)
    return Cameras.from_fov(look_at_world_to_camera(eye, c, (0.0, 0.0, 1.0))[None], fov, size, size)


def scene_frame(scene: GaussianScene) -> tuple[torch.Tensor, float]:
    """Centre (mean of the visible Gaussians) and radius (98th percentile distance) of a scene."""
    means = scene.means.detach().float()
    keep = torch.isfinite(means).all(1) & (torch.sigmoid(scene.opacities.detach().float()) > 0.05)
    means = means[keep] if keep.any() else torch.zeros(1, 3)
    lo, hi = means.min(0).values, means.max(0).values
    centre = (lo + hi) / 2
    radius = float(torch.quantile((means - centre).norm(dim=1), 0.98).clamp_min(0.1)) if len(means) > 1 else 0.5
    return centre, radius


@torch.no_grad()
def render_view(scene: GaussianScene, size: int = 64, azimuth: float = 0.0, elevation: float = 0.35,
                background: tuple[float, float, float] = (1.0, 1.0, 1.0), centre=None, radius: float | None = None):
    """RGB (size×size×3) and alpha (size×size) of ``scene`` from one orbit viewpoint."""
    from ..render import render

    if centre is None or radius is None:
        c, r = scene_frame(scene)
        centre = c if centre is None else centre
        radius = r if radius is None else radius
    cam = orbit_camera(centre, radius, azimuth, elevation, size)
    out = render(scene, cam, background=background, backend="reference")
    return out.rgb[0].clamp(0, 1), out.alpha[0].reshape(size, size)


def random_view(rng: np.random.Generator) -> tuple[float, float]:
    """A random azimuth (any) and elevation (10°-50°) for training and benchmark images."""
    return float(rng.uniform(0, 2 * math.pi)), float(np.deg2rad(rng.uniform(10, 50)))
