"""Viewer camera maths: viser's camera <-> recon3d Cameras, and camera-path interpolation (no browser)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import viser.transforms as vtf
from recon3d.viewer.camera import (
    camera_up_direction,
    cameras_to_view_pose,
    quat_wxyz_to_rotmat,
    render_size,
    rotmat_to_quat_wxyz,
    viser_to_cameras,
)
from recon3d.viewer.camera_path import ViewPose, catmull_rom, interpolate_path, path_cameras, slerp

from recon3d.cameras import Cameras, look_at_world_to_camera


def project(cams: Cameras, point) -> np.ndarray:
    """Pixel coordinates (u, v) of a world point by the pinhole model K [R|t] written out by hand."""
    p = torch.tensor([*point, 1.0], dtype=torch.float64)
    x, y, z, _ = (cams.world_to_camera[0].double() @ p).tolist()
    return np.array([cams.fx[0] * x / z + cams.cx[0], cams.fy[0] * y / z + cams.cy[0]], dtype=np.float64)


def random_rotations(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    qs = rng.normal(size=(n, 4))
    return [q / np.linalg.norm(q) for q in qs]


def test_quaternions_agree_with_viser_transforms():
    for q in random_rotations(50):
        ours = quat_wxyz_to_rotmat(q)
        theirs = vtf.SO3(q).as_matrix()
        assert np.allclose(ours, theirs, atol=1e-12)
        back = rotmat_to_quat_wxyz(ours)
        assert np.allclose(back, q if q[0] >= 0 else -q, atol=1e-9)
    # the branch where the trace is negative (rotations by ~π)
    for axis in np.eye(3):
        r = vtf.SO3.exp(axis * (math.pi - 1e-3)).as_matrix()
        assert np.allclose(quat_wxyz_to_rotmat(rotmat_to_quat_wxyz(r)), r, atol=1e-9)


def test_viser_camera_projects_like_three_js():
    # viser: camera at the origin, R_world_camera = identity -> looks along world +z, image y along world +y
    fov = math.radians(60.0)
    cams = viser_to_cameras(np.array([1.0, 0, 0, 0]), np.zeros(3), fov, width=400, height=300)
    # a point on the optical axis lands on the image centre
    assert np.allclose(project(cams, (0, 0, 5)), (200.0, 150.0))
    # a point at half the vertical FOV below the axis (OpenCV +y is down) lands on the bottom edge
    assert np.allclose(project(cams, (0, 5 * math.tan(fov / 2), 5)), (200.0, 300.0))
    # square pixels: the horizontal half-angle is atan(aspect * tan(fov/2))
    assert np.allclose(project(cams, (5 * math.tan(fov / 2) * 400 / 300, 0, 5)), (400.0, 150.0))


def test_viser_pose_round_trip_through_cameras():
    for i, q in enumerate(random_rotations(20, seed=1)):
        position = np.array([0.3 * i, -1.0, 2.0 + i])
        cams = viser_to_cameras(q, position, 0.9, 320, 240)
        # the camera centre is where viser says the camera is
        assert np.allclose(cams.centers()[0].double().numpy(), position, atol=1e-5)
        pose = cameras_to_view_pose(cams)
        assert np.allclose(pose.position, position, atol=1e-5)
        assert abs(abs(float(np.dot(pose.wxyz, q))) - 1.0) < 1e-6
        assert pose.fov == pytest.approx(0.9, abs=1e-6) and pose.aspect == pytest.approx(320 / 240)


def test_look_at_camera_converts_to_the_same_view():
    eye, target = (2.0, -3.0, 1.5), (0.1, 0.2, 0.3)
    cams = Cameras.look_at(eye, target, (0, 0, 1), fov_x=1.0, width=300, height=200)
    pose = cameras_to_view_pose(cams)
    back = viser_to_cameras(pose.wxyz, pose.position, pose.fov, 300, 200)
    assert torch.allclose(back.world_to_camera, look_at_world_to_camera(eye, target, (0, 0, 1))[None], atol=1e-5)
    for point in [target, (1.0, 1.0, 1.0), (-0.5, 0.3, 0.0)]:
        assert np.allclose(project(back, point), project(cams, point), atol=1e-3)


def test_camera_up_direction_from_upright_cameras():
    w2c = torch.stack([look_at_world_to_camera((3 * math.cos(a), 3 * math.sin(a), 1.0), (0, 0, 0), (0, 1, 0))
                       for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)])
    cams = Cameras.from_fov(w2c, 0.8, 64, 64)
    up = camera_up_direction(cams)
    assert up[1] > 0.9  # the cameras were held with world +y up


def test_render_size_keeps_aspect_and_caps_the_long_side():
    assert render_size(800, 600, 1024, 1.0) == (800, 600)
    assert render_size(800, 600, 400, 1.0) == (400, 300)
    assert render_size(800, 600, 1024, 0.25) == (200, 150)


def test_slerp_and_catmull_rom_basics():
    q0 = np.array([1.0, 0, 0, 0])
    q1 = vtf.SO3.from_z_radians(1.2).wxyz
    mid = slerp(q0, q1, 0.5)
    assert np.allclose(mid, vtf.SO3.from_z_radians(0.6).wxyz, atol=1e-9)
    assert np.allclose(slerp(q0, -q1, 0.5), mid, atol=1e-9)  # −q is the same rotation: short way round
    pts = [np.array(p, dtype=float) for p in [(0, 0, 0), (1, 0, 0), (2, 1, 0), (3, 1, 1)]]
    assert np.allclose(catmull_rom(*pts, 0.0), pts[1]) and np.allclose(catmull_rom(*pts, 1.0), pts[2])


def test_interpolated_path_passes_through_keyframes():
    keys = [
        ViewPose(vtf.SO3.from_z_radians(a).wxyz, np.array([math.cos(a), math.sin(a), 0.5]), 0.8 + 0.1 * i, 1.5)
        for i, a in enumerate([0.0, 0.7, 1.5])
    ]
    poses = interpolate_path(keys, 9)  # frames 0, 4, 8 are the keyframes
    for frame, key in zip([0, 4, 8], keys):
        assert np.allclose(poses[frame].position, key.position)
        assert abs(abs(float(np.dot(poses[frame].wxyz, key.wxyz))) - 1) < 1e-9
        assert poses[frame].fov == pytest.approx(key.fov)
    for p in poses:
        assert np.linalg.norm(p.wxyz) == pytest.approx(1.0)
    cams = path_cameras(poses, 64, 48)
    assert len(cams) == 9 and cams.image_size() == (48, 64)
    loop = interpolate_path(keys, 12, loop=True)
    assert np.allclose(loop[0].position, keys[0].position) and len(loop) == 12
    with pytest.raises(ValueError):
        interpolate_path([], 3)
