"""Cameras: batching, conventions, look-at, conversions from OpenGL camera-to-world."""

from __future__ import annotations

import pytest
import torch

from recon3d.cameras import Cameras, look_at_world_to_camera, opengl_camera_to_world_to_opencv_world_to_camera


def test_batch_broadcast_and_slicing():
    w2c = torch.eye(4).expand(3, 4, 4).clone()
    cams = Cameras(w2c, fx=100.0, fy=torch.tensor([100.0, 110.0, 120.0]), cx=32, cy=24, width=64, height=48)
    assert len(cams) == 3 and cams.fy[2] == 120.0 and cams.width.dtype == torch.int64
    assert len(cams[1:]) == 2 and len(cams[0]) == 1
    both = Cameras.cat([cams, cams[:1]])
    assert len(both) == 4
    assert cams.image_size() == (48, 64)


def test_mixed_sizes_rejected_for_render():
    cams = Cameras(torch.eye(4).expand(2, 4, 4), 100.0, 100.0, 32, 24, torch.tensor([64, 32]), 48)
    with pytest.raises(ValueError, match="share an image size"):
        cams.image_size()


def test_invalid_inputs():
    with pytest.raises(ValueError, match="positive"):
        Cameras(torch.eye(4), 100.0, 100.0, 32, 24, 0, 48)
    bad = torch.eye(4)
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Cameras(bad, 100.0, 100.0, 32, 24, 64, 48)


def test_look_at_projects_target_to_centre_and_up_is_up():
    eye, target = torch.tensor([0.0, -4.0, 1.0]), torch.tensor([0.0, 0.0, 0.0])
    w2c = look_at_world_to_camera(eye, target)
    p = w2c @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert abs(p[0]) < 1e-6 and abs(p[1]) < 1e-6 and p[2] > 0  # on the optical axis, in front
    above = w2c @ torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert above[1] < 0  # world +z appears up in the image (OpenCV y points down)
    cams = Cameras(w2c, 100.0, 100.0, 50.0, 50.0, 100, 100)
    assert torch.allclose(cams.centers()[0], eye, atol=1e-5)


def test_opengl_conversion():
    # An OpenGL camera at (0,0,5) looking down -z (its default) sees the origin straight ahead.
    c2w = torch.eye(4)
    c2w[2, 3] = 5.0
    w2c = opengl_camera_to_world_to_opencv_world_to_camera(c2w)
    p = w2c @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert torch.allclose(p[:3], torch.tensor([0.0, 0.0, 5.0]))
    # world +y (up in OpenGL) maps to image up (negative OpenCV y)
    q = w2c @ torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert q[1] < 0


def test_scaled_intrinsics():
    cams = Cameras(torch.eye(4), 200.0, 200.0, 100.0, 50.0, 200, 100)
    half = cams.scaled(0.5)
    assert half.width.item() == 100 and half.height.item() == 50
    assert torch.allclose(half.fx, torch.tensor([100.0])) and torch.allclose(half.cy, torch.tensor([25.0]))
