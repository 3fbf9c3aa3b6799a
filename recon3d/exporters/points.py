"""Coloured point clouds as binary PLY (``x y z`` float, ``red green blue`` uchar).

That is the layout open3d, trimesh, MeshLab, CloudCompare and nerfstudio's ``sparse_pc.ply`` reader
all take; the Gaussian centres export and the nerfstudio export both write it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io_utils import atomic_open
from ..scene import GaussianScene

POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def write_point_cloud(
    path: str | Path, points: np.ndarray | torch.Tensor, colors: np.ndarray | torch.Tensor | None
) -> Path:
    """Write N×3 ``points`` with N×3 ``colors`` (floats in [0,1] or uint8; grey when None) as a PLY."""
    path = Path(path)
    pts = torch.as_tensor(points).detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    pts = pts.reshape(-1, 3)
    if not np.isfinite(pts).all():
        raise ValueError(f"refusing to write {path}: the points hold NaN or infinite coordinates")
    if colors is None:
        rgb = np.full((len(pts), 3), 128, dtype=np.uint8)
    else:
        rgb = colors.detach().cpu().numpy() if isinstance(colors, torch.Tensor) else np.asarray(colors)
        rgb = rgb.reshape(-1, 3)
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.round(np.nan_to_num(rgb.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)
    if len(rgb) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(rgb)} colours")
    records = np.empty(len(pts), dtype=POINT_DTYPE)
    for i, axis in enumerate("xyz"):
        records[axis] = pts[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        records[channel] = rgb[:, i]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by recon3d\n"
        f"element vertex {len(pts)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with atomic_open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(records.tobytes())
    return path


def gaussian_centers(scene: GaussianScene, min_opacity: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N×3 float32) and base colours (N×3 in [0,1]) of the Gaussians at least ``min_opacity`` opaque."""
    s = scene.detach().to("cpu", torch.float32)
    keep = s.activated_opacities() >= min_opacity
    return s.means[keep].numpy(), s.base_colors()[keep].numpy()


def save_point_cloud(scene: GaussianScene, path: str | Path, *, min_opacity: float = 0.0) -> Path:
    """Write the Gaussian centres with their view-independent colours as a point-cloud PLY."""
    points, colors = gaussian_centers(scene, min_opacity)
    return write_point_cloud(path, points, colors)
