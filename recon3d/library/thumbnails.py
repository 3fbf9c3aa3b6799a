"""Thumbnails of a scene: a few views at 128² with our rasterizer.

A run directory is seen through its own cameras (evenly spread over its views, centre-cropped to a
square), since its scene is only right from where it was photographed. Any other scene is seen from an
orbit around its visible Gaussians, Z up (the generator's and the upright reconstructions' convention).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..scene import GaussianScene

THUMB_SIZE = 128
NUM_VIEWS = 3
ELEVATION = 0.35  # radians above the horizon, as the generator's judge looks
BACKGROUND = (1.0, 1.0, 1.0)  # the composer's and the image prompts' background


def orbit_cameras(scene: GaussianScene, num_views: int = NUM_VIEWS, size: int = THUMB_SIZE) -> Cameras:
    """``num_views`` cameras evenly around the scene's visible Gaussians, from the front view on."""
    from ..generation.views import orbit_camera, scene_frame

    centre, radius = scene_frame(scene)
    return Cameras.cat([orbit_camera(centre, radius, 2 * math.pi * k / num_views, ELEVATION, size)
                        for k in range(num_views)])


def run_cameras(cameras_json: Path, num_views: int = NUM_VIEWS, size: int = THUMB_SIZE) -> Cameras:
    """``num_views`` of a run's cameras, evenly spread, re-framed as centre-cropped ``size``² images."""
    from ..train.rundir import read_cameras_json

    cams, _, _ = read_cameras_json(cameras_json)
    picks = np.linspace(0, len(cams) - 1, num_views).round().astype(int).tolist() if len(cams) > 1 else [0] * num_views
    cams = cams[picks]
    w, h = cams.width.float(), cams.height.float()
    s = size / torch.minimum(w, h)  # scale the short side to size, crop the long one
    return Cameras(cams.world_to_camera, cams.fx * s, cams.fy * s, cams.cx * s - (w * s - size) / 2,
                   cams.cy * s - (h * s - size) / 2, size, size)


@torch.no_grad()
def render_thumbnails(scene: GaussianScene, cameras: Cameras, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """RGB (V×S×S×3 over white) and alpha (V×S×S) of ``scene`` from each camera."""
    from ..render import render

    out = render(scene, cameras, background=torch.tensor(BACKGROUND), backend=backend)
    v, size = len(cameras), int(cameras.height[0])
    return out.rgb.clamp(0, 1).reshape(v, size, size, 3), out.alpha.reshape(v, size, size)


def thumbnail_strip(rgb: torch.Tensor) -> np.ndarray:
    """The views side by side as one uint8 image (S×(V·S)×3), for the index's thumbnail file."""
    return (torch.cat(list(rgb), dim=1).numpy() * 255).round().astype(np.uint8)
