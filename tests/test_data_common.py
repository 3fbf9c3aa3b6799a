"""Helpers the data tests share: a small splat scene rendered from an orbit, and files written from it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import recon3d
from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.scene import GaussianScene


def small_scene(seed: int = 0, n: int = 300) -> GaussianScene:
    """Coloured Gaussians in a unit cube around the origin."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 3, generator=g) * 2 - 1
    colors = torch.rand(n, 3, generator=g)
    return GaussianScene.from_points(points, colors, scale=0.08, opacity=0.8)


def orbit_cameras(num: int, width: int = 48, height: int = 36, radius: float = 4.0) -> Cameras:
    """Cameras on a circle around the origin, looking at it, Z up; fx ≠ fy and an off-centre principal point."""
    w2c = []
    for i in range(num):
        a = 2 * math.pi * i / num
        eye = (radius * math.cos(a), radius * math.sin(a), 1.0 + 0.3 * math.sin(2 * a))
        w2c.append(look_at_world_to_camera(eye, (0.0, 0.0, 0.0)))
    return Cameras(torch.stack(w2c), 50.0, 52.0, width / 2 + 1.5, height / 2 - 1.0, width, height)


def render_views(scene: GaussianScene, cameras: Cameras) -> torch.Tensor:
    """C×H×W×3 renders on a white background with the reference backend."""
    out = recon3d.render(scene, cameras, background=torch.ones(3), backend="reference")
    return out.rgb.clamp(0, 1)


def save_png(path: Path, image: torch.Tensor) -> None:
    """Save H×W×3 float in [0,1] as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.numpy() * 255 + 0.5).astype(np.uint8)).save(path)


def quantized(image: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG round trip gives back."""
    return torch.from_numpy((image.numpy() * 255 + 0.5).astype(np.uint8)).float() / 255
