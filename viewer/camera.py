"""Conversions between viser's browser camera and recon3d's OpenCV ``Cameras``.

viser reports a client's camera as ``position`` (the camera centre in world coordinates), ``wxyz`` (the
rotation R_world_camera, in OpenCV axes: +x right, +y down, +z forward), ``fov`` (the *vertical* field
of view in radians) and the canvas size in pixels. three.js draws a symmetric frustum with square pixels,
so the matching pinhole has fx = fy = (H/2) / tan(fov/2) and its principal point at the image centre,
(W/2, H/2), in recon3d's convention of pixel centres at +0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from recon3d.cameras import Cameras
from recon3d.rotations import quaternion_to_rotation, rotation_to_quaternion

quat_wxyz_to_rotmat = quaternion_to_rotation
rotmat_to_quat_wxyz = rotation_to_quaternion


@dataclass
class ViewPose:
    """A camera as viser describes it: centre, R_world_camera as wxyz, vertical FOV (radians), aspect W/H."""

    wxyz: np.ndarray
    position: np.ndarray
    fov: float
    aspect: float = 1.0


def viser_to_world_to_camera(wxyz: np.ndarray, position: np.ndarray) -> torch.Tensor:
    """OpenCV world-to-camera 4×4 (float32) from a viser camera's ``wxyz`` and ``position``."""
    rot_world_camera = quat_wxyz_to_rotmat(wxyz)
    c = np.asarray(position, dtype=np.float64)
    w2c = np.eye(4)
    w2c[:3, :3] = rot_world_camera.T
    w2c[:3, 3] = -rot_world_camera.T @ c
    return torch.from_numpy(w2c).float()


def viser_to_cameras(wxyz: np.ndarray, position: np.ndarray, fov: float, width: int, height: int) -> Cameras:
    """One recon3d ``Cameras`` that sees exactly what the browser's three.js camera sees on a W×H canvas."""
    if not (0 < fov < math.pi):
        raise ValueError(f"vertical field of view must lie in (0, π) radians, got {fov}")
    focal = 0.5 * height / math.tan(0.5 * fov)
    return Cameras(viser_to_world_to_camera(wxyz, position), focal, focal, width / 2.0, height / 2.0, width, height)


def cameras_to_view_pose(cameras: Cameras, index: int = 0) -> ViewPose:
    """The viser pose (wxyz, position, vertical FOV, aspect) of camera ``index``.

    The FOV is taken from ``fy`` and the image height; a principal point off-centre cannot be expressed in
    three.js and is ignored (data sets keep it within a pixel or two of the centre).
    """
    w2c = cameras.world_to_camera[index].double().cpu().numpy()
    rot_world_camera = w2c[:3, :3].T
    position = -rot_world_camera @ w2c[:3, 3]
    height = float(cameras.height[index])
    width = float(cameras.width[index])
    fov = 2.0 * math.atan(0.5 * height / float(cameras.fy[index]))
    return ViewPose(rotmat_to_quat_wxyz(rot_world_camera), position, fov, width / height)


def camera_up_direction(cameras: Cameras) -> np.ndarray:
    """The world's likely 'up': the mean of the cameras' −y axes (photographers hold cameras upright)."""
    w2c = cameras.world_to_camera.double().cpu().numpy()
    ups = -w2c[:, 1, :3]  # row 1 of R_camera_world is the camera's +y (down) axis in world coordinates
    up = ups.mean(axis=0)
    norm = np.linalg.norm(up)
    if not np.isfinite(norm) or norm < 1e-6:
        return np.array([0.0, 0.0, 1.0])
    return up / norm


def render_size(canvas_width: int, canvas_height: int, max_side: int, scale: float = 1.0) -> tuple[int, int]:
    """Image size (W, H) for a canvas, keeping its aspect, at ``scale`` and with the long side ≤ ``max_side``."""
    long_side = max(canvas_width, canvas_height)
    factor = min(scale, max_side / long_side) if long_side > 0 else scale
    w = max(8, int(round(canvas_width * factor)))
    h = max(8, int(round(canvas_height * factor)))
    return w, h
