"""Removing lens distortion: any COLMAP camera model -> an ideal pinhole camera, by remapping pixels.

The projection of every model comes from ``pycolmap.Camera.img_from_cam`` (COLMAP's own camera
models), so each model COLMAP knows is handled by the same code. The new pinhole camera keeps the
image size, puts the principal point at the centre and picks the widest field of view for which
every output pixel still samples inside the source image (COLMAP's "no blank pixels" choice), within
a focal scale of 0.5 to 2.
"""

from __future__ import annotations

import numpy as np
import pycolmap
import torch
import torch.nn.functional as F

from ..errors import InputError
from .colmap_io import PINHOLE_MODELS, ColmapCamera

MIN_SCALE, MAX_SCALE = 0.5, 2.0


def make_pycolmap_camera(camera: ColmapCamera, width: int | None = None, height: int | None = None) -> pycolmap.Camera:
    """A pycolmap camera with ``camera``'s model and parameters, rescaled to ``width``×``height`` if given."""
    cam = pycolmap.Camera.create_from_model_name(1, camera.model, 1.0, camera.width, camera.height)
    cam.params = camera.params.tolist()
    if width is not None and height is not None and (width, height) != (camera.width, camera.height):
        cam.rescale(int(width), int(height))
    return cam


def needs_undistortion(camera: ColmapCamera) -> bool:
    """True unless the model is a plain pinhole (or its distortion parameters are all zero for radial/OpenCV)."""
    if camera.model in PINHOLE_MODELS:
        return False
    # Fisheye models project differently from a pinhole even with zero coefficients.
    zero_is_pinhole = {"SIMPLE_RADIAL": 3, "RADIAL": 3, "OPENCV": 4, "FULL_OPENCV": 4, "SIMPLE_DIVISION": 3}
    start = zero_is_pinhole.get(camera.model)
    return start is None or bool(np.any(camera.params[start:] != 0))


def pinhole_intrinsics(camera: ColmapCamera) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a pinhole-type camera, or the focal lengths and principal point of any model."""
    p = camera.params
    if camera.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE",
                        "SIMPLE_DIVISION", "SIMPLE_FISHEYE"):  # fmt: skip
        return float(p[0]), float(p[0]), float(p[1]), float(p[2])
    return float(p[0]), float(p[1]), float(p[2]), float(p[3])


def _source_coords(cam: pycolmap.Camera, fx: float, fy: float, cx: float, cy: float, u: np.ndarray, v: np.ndarray):
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)
    uv = np.asarray(cam.img_from_cam(rays.astype(np.float64)), dtype=np.float64)
    return uv.reshape(*u.shape, 2)


def _border(width: int, height: int, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.linspace(0.0, width, n), np.linspace(0.0, height, n)
    u = np.concatenate([xs, xs, np.zeros(n), np.full(n, float(width))])
    v = np.concatenate([np.zeros(n), np.full(n, float(height)), ys, ys])
    return u, v


def undistorted_intrinsics(cam: pycolmap.Camera) -> tuple[float, float, float, float]:
    """Pinhole (fx, fy, cx, cy) at ``cam``'s size with no blank pixels: the smallest focal scale in [0.5, 2]."""
    w, h = int(cam.width), int(cam.height)
    fx0, fy0 = float(cam.focal_length_x), float(cam.focal_length_y)
    cx, cy = w / 2.0, h / 2.0
    u, v = _border(w, h)

    def inside(scale: float) -> bool:
        uv = _source_coords(cam, fx0 * scale, fy0 * scale, cx, cy, u, v)
        ok = np.isfinite(uv).all(axis=-1)
        ok &= (uv[:, 0] >= -1e-3) & (uv[:, 0] <= w + 1e-3) & (uv[:, 1] >= -1e-3) & (uv[:, 1] <= h + 1e-3)
        return bool(ok.all())

    if not inside(MAX_SCALE):
        scale = MAX_SCALE  # extreme distortion: accept some blank border rather than fail
    elif inside(MIN_SCALE):
        scale = MIN_SCALE
    else:
        lo, hi = MIN_SCALE, MAX_SCALE  # inside(lo) is False, inside(hi) is True
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if inside(mid) else (mid, hi)
        scale = hi
    return fx0 * scale, fy0 * scale, cx, cy


def undistortion_grid(cam: pycolmap.Camera, intrinsics: tuple[float, float, float, float]) -> torch.Tensor:
    """H×W×2 sampling grid (grid_sample's [-1, 1] units) from the pinhole ``intrinsics`` back into ``cam``'s image."""
    w, h = int(cam.width), int(cam.height)
    fx, fy, cx, cy = intrinsics
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    uv = _source_coords(cam, fx, fy, cx, cy, u, v)
    uv = np.nan_to_num(uv, nan=-1e4, posinf=-1e4, neginf=-1e4)
    # grid_sample with align_corners=False: -1 and +1 are the outer edges, matching pixel centres at +0.5.
    return torch.from_numpy(np.stack([2.0 * uv[..., 0] / w - 1.0, 2.0 * uv[..., 1] / h - 1.0], axis=-1)).float()


def remap(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of H×W×C ``image`` at ``grid`` (from ``undistortion_grid``)."""
    out = F.grid_sample(
        image.permute(2, 0, 1)[None].float(), grid[None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0].permute(1, 2, 0).contiguous()


def undistort_image(
    image: torch.Tensor, cam: pycolmap.Camera, intrinsics: tuple[float, float, float, float]
) -> torch.Tensor:
    """Resample H×W×C ``image`` taken with ``cam`` (at its size) into the pinhole camera ``intrinsics``."""
    h, w = image.shape[:2]
    if (w, h) != (int(cam.width), int(cam.height)):
        raise InputError(None, f"image is {w}×{h} but its camera is {cam.width}×{cam.height}")
    return remap(image, undistortion_grid(cam, intrinsics))
