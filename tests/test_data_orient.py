"""recon3d.data.orient: synthetic captures in a known tilted frame -> the upright frame is recovered."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from recon3d.cameras import look_at_world_to_camera
from recon3d.data.orient import (
    EYE_HEIGHT,
    Orientation,
    compute_orientation,
    fit_ground_plane,
    load_orientation,
    resolve_orient,
    save_orientation,
)


def _random_rotation(seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def _look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    return look_at_world_to_camera(list(map(float, eye)), list(map(float, target)), up).double().numpy()


def _ground_and_objects(rng: np.random.Generator, n_ground: int = 1500) -> np.ndarray:
    """A textured ground (z = 0, 6×6 m, slight noise) and a few objects standing on it."""
    ground = np.c_[rng.uniform(-3, 3, (n_ground, 2)), rng.normal(0, 0.005, n_ground)]
    box = rng.uniform([-0.4, -0.3, 0.0], [0.2, 0.3, 0.6], (500, 3))
    ball = rng.normal(0, 1, (300, 3))
    ball = ball / np.linalg.norm(ball, axis=1, keepdims=True) * 0.25 + [1.0, 0.8, 0.25]
    floaters = rng.uniform(-40, 40, (30, 3))  # far outliers SfM always leaves
    return np.concatenate([ground, box, ball, floaters])


def _to_input_frame(w2c_true: np.ndarray, pts_true: np.ndarray, rot: np.ndarray, scale: float, shift: np.ndarray):
    """Express a true (Z-up, metric) capture in an arbitrary SfM-like frame: x_in = scale·rot·x + shift."""
    o = Orientation(rot, shift, scale)  # true -> input
    return o.apply_world_to_camera(w2c_true), o.apply_points(pts_true)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def _orbit(n: int = 24, radius: float = 3.5, height: float = 1.6, target=(0.0, 0.0, 0.3), arc: float = 2 * math.pi,
           jitter: float = 0.0, seed: int = 0) -> np.ndarray:  # fmt: skip
    rng = np.random.default_rng(seed)
    w2c = []
    for k in range(n):
        t = arc * k / n
        eye = np.array([radius * math.sin(t), -radius * math.cos(t), height]) + rng.normal(0, jitter, 3)
        w2c.append(_look_at(eye, np.asarray(target) + rng.normal(0, jitter, 3)))
    return np.stack(w2c)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tilted_orbit_above_a_plane_is_set_upright_centred_and_metric(seed):
    rng = np.random.default_rng(seed)
    w2c_true = _orbit(jitter=0.05, seed=seed)
    pts_true = _ground_and_objects(rng)
    rot = _random_rotation(seed)
    scale = float(rng.uniform(0.1, 5.0))
    w2c_in, pts_in = _to_input_frame(w2c_true, pts_true, rot, scale, rng.normal(0, 3, 3))

    o = compute_orientation(w2c_in, pts_in)
    # up: the true +Z mapped into the input frame, then through the recovered rotation, is +Z again
    up_recovered = o.rotation @ (rot @ np.array([0.0, 0.0, 1.0]))
    assert _angle_deg(up_recovered, np.array([0.0, 0.0, 1.0])) < 1.0, o.methods
    assert "ground plane" in o.methods["up"]
    # the whole similarity: true coordinates come back up to a yaw (the first camera's view defines +Y)
    back = o.apply_points(pts_in[:1500])  # the ground points
    assert np.abs(back[:, 2]).max() < 0.05  # ground at z = 0 (true noise 5 mm)
    cams = o.apply_world_to_camera(w2c_in)
    centres = -np.einsum("nji,nj->ni", cams[:, :3, :3], cams[:, :3, 3])
    assert np.median(centres[:, 2]) == pytest.approx(EYE_HEIGHT, rel=1e-3)
    # cameras orbit the origin: the horizontal centre is the orbit's axis (true x = y = 0)
    assert np.linalg.norm(centres[:, :2].mean(0)) < 0.1
    # in metric-ish units: the true orbit (radius 3.5 at height 1.6) scaled by EYE_HEIGHT / 1.6
    assert np.linalg.norm(centres[:, :2], axis=1) == pytest.approx(3.5 * EYE_HEIGHT / 1.6, abs=0.15)
    # the first camera sits on -Y and looks along +Y
    assert centres[0, 1] < -3.0 and abs(centres[0, 0]) < 0.3
    assert cams[0, 2, 1] > 0.9  # its view direction (row 2 of R) points along +Y


def test_tilted_orbit_without_ground_uses_the_orbit_plane_and_a_stated_normalisation():
    rng = np.random.default_rng(7)
    # cameras at mixed pitch (some look down more than others): the mean of their up vectors is biased, the
    # orbit plane is not
    w2c_true = np.stack([
        _look_at([3 * math.sin(t), -3 * math.cos(t), 1.0], [0.0, 0.0, 0.2 + 0.4 * math.sin(3 * t)])
        for t in np.linspace(0, 2 * math.pi, 30, endpoint=False)
    ])  # fmt: skip
    blob = rng.normal(0, 0.4, (800, 3)) + [0, 0, 0.5]  # an object in the air: no dominant plane
    rot = _random_rotation(11)
    w2c_in, pts_in = _to_input_frame(w2c_true, blob, rot, 0.37, np.array([1.0, -2.0, 0.5]))
    o = compute_orientation(w2c_in, pts_in)
    assert o.methods["up"] == "orbit plane of the cameras"
    assert _angle_deg(o.rotation @ rot @ [0, 0, 1.0], np.array([0, 0, 1.0])) < 0.5
    assert "normalised" in o.methods["scale"]
    cams = o.apply_world_to_camera(w2c_in)
    centres = -np.einsum("nji,nj->ni", cams[:, :3, :3], cams[:, :3, 3])
    dist = np.linalg.norm(centres, axis=1)
    assert np.median(dist) == pytest.approx(4.0, rel=1e-6)


def test_forward_facing_capture_pitched_down_uses_the_ground():
    """Cameras side by side, all pitched 25° down at a ground: the mean camera up is tilted by 25°, the
    ground plane is level."""
    rng = np.random.default_rng(3)
    w2c_true = np.stack([
        _look_at([x, -4.0, 1.6], [x * 0.3, 0.0, 1.6 - 4.0 * math.tan(math.radians(25))]) for x in np.linspace(-1, 1, 12)
    ])  # fmt: skip
    ground = np.c_[rng.uniform(-3, 3, 2000), rng.uniform(-3, 4, 2000), np.zeros(2000)]
    wall = np.c_[rng.uniform(-3, 3, 600), np.full(600, 4.0), rng.uniform(0, 2, 600)]  # a plane facing the cameras
    rot = _random_rotation(5)
    w2c_in, pts_in = _to_input_frame(w2c_true, np.concatenate([ground, wall]), rot, 2.0, np.zeros(3))
    o = compute_orientation(w2c_in, pts_in)
    assert "ground plane" in o.methods["up"]
    assert _angle_deg(o.rotation @ rot @ [0, 0, 1.0], np.array([0, 0, 1.0])) < 0.5
    # the view direction is +Y after orientation (the cameras face the wall, which stays in front)
    cams = o.apply_world_to_camera(w2c_in)
    assert (cams[:, 2, 1] > 0.8).all()


def test_forward_facing_without_points_falls_back_to_camera_up():
    w2c = np.stack([_look_at([x, -4.0, 1.0], [x, 0.0, 1.0]) for x in np.linspace(-1, 1, 6)])
    rot = _random_rotation(9)
    w2c_in, _ = _to_input_frame(w2c, np.zeros((1, 3)), rot, 1.0, np.zeros(3))
    o = compute_orientation(w2c_in, None)
    assert o.methods["up"] == "camera up vectors"
    assert _angle_deg(o.rotation @ rot @ [0, 0, 1.0], np.array([0, 0, 1.0])) < 1e-6


def test_oriented_cameras_see_the_same_pixels():
    """Orientation is a similarity applied to world and view space together: every point projects to the
    same pixel before and after."""
    rng = np.random.default_rng(0)
    w2c = _orbit(8)
    pts = rng.normal(0, 1, (50, 3))
    o = Orientation(_random_rotation(4), rng.normal(0, 1, 3), 2.7)
    w2c_o, pts_o = o.apply_world_to_camera(w2c), o.apply_points(pts)

    def project(m, p):
        cam = p @ m[:3, :3].T + m[:3, 3]
        return cam[:, :2] / cam[:, 2:]

    for k in range(len(w2c)):
        np.testing.assert_allclose(project(w2c_o[k], pts_o), project(w2c[k], pts), atol=1e-9)
        r = w2c_o[k, :3, :3]  # still a rotation (as orthonormal as the float32 look-at poses it came from)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(o.input_from_oriented @ o.oriented_from_input, np.eye(4), atol=1e-12)


def test_ground_plane_ignores_walls_and_reports_none_without_a_plane():
    rng = np.random.default_rng(1)
    wall = np.c_[rng.uniform(-1, 1, 500), np.zeros(500), rng.uniform(0, 2, 500)]
    assert fit_ground_plane(wall, np.array([0, 0, 1.0]), 0.01) is None
    blob = rng.normal(0, 1, (500, 3))
    assert fit_ground_plane(blob, np.array([0, 0, 1.0]), 0.01) is None
    tilted = np.c_[rng.uniform(-1, 1, (500, 2)), np.zeros(500)] @ _random_rotation(2).T
    n, d, share = fit_ground_plane(tilted, _random_rotation(2)[:, 2] + [0.1, 0, 0], 0.01)
    assert _angle_deg(n, _random_rotation(2)[:, 2]) < 1e-3 and share == 1.0


def test_orientation_file_round_trip_and_bad_file(tmp_path):
    o = Orientation(_random_rotation(3), np.array([1.0, 2.0, 3.0]), 0.5, {"up": "test"})
    save_orientation(tmp_path / "orientation.json", o)
    back = load_orientation(tmp_path / "orientation.json")
    np.testing.assert_allclose(back.oriented_from_input, o.oriented_from_input)
    rec = json.loads((tmp_path / "orientation.json").read_text())
    np.testing.assert_allclose(np.array(rec["input_from_oriented"]) @ np.array(rec["oriented_from_input"]), np.eye(4),
                               atol=1e-12)  # fmt: skip
    assert load_orientation(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text('{"rotation": 3}')
    with pytest.raises(Exception, match="bad.json"):
        load_orientation(tmp_path / "bad.json")


def test_resolve_orient():
    assert resolve_orient("auto", "photos") and resolve_orient("auto", "video")
    assert not resolve_orient("auto", "colmap") and not resolve_orient("auto", "nerfstudio")
    assert resolve_orient("up", "colmap") and not resolve_orient("none", "photos")
    with pytest.raises(ValueError, match="orient must be"):
        resolve_orient("sideways", "photos")


def test_inward_cameras_without_points_centre_on_their_focus():
    """A hemisphere of cameras looking at a point off the origin, no sparse points (a transforms.json input)."""
    target = np.array([0.5, -0.3, 0.4])
    w2c = np.stack([
        _look_at(target + 3 * np.array([math.cos(a) * math.cos(e), math.sin(a) * math.cos(e), math.sin(e)]), target)
        for a, e in zip(np.linspace(0, 2 * math.pi, 20, endpoint=False), np.tile([0.2, 0.6, 1.0, 0.4], 5))
    ])  # fmt: skip
    o = compute_orientation(w2c, None)
    assert o.methods["centre"] == "focus of the cameras' optical axes"
    np.testing.assert_allclose(o.apply_points(target[None])[0], 0.0, atol=1e-4)


def test_cameras_pitched_up_from_one_side_are_levelled_by_their_right_axes():
    """A statue photographed from below over a 100° arc, no points: the mean up vector leans with the pitch,
    the cameras' right axes (level, no roll) give the true up."""
    target = np.array([0.0, 0.0, 3.0])
    w2c = np.stack([
        _look_at([6 * math.cos(a), 6 * math.sin(a), 1.5], target + [0.0, 0.0, 0.6 * math.sin(5 * a)])
        for a in np.linspace(-0.9, 0.9, 15)
    ])  # fmt: skip
    rot = _random_rotation(21)
    w2c_in, _ = _to_input_frame(w2c, np.zeros((1, 3)), rot, 1.0, np.zeros(3))
    ups = -w2c_in[:, 1, :3]
    assert _angle_deg(ups.mean(0), rot @ [0, 0, 1.0]) > 10  # what the mean up vector would give
    o = compute_orientation(w2c_in, None)
    assert o.methods["up"] == "camera right axes (level cameras)"
    assert _angle_deg(o.rotation @ rot @ [0, 0, 1.0], np.array([0, 0, 1.0])) < 1e-3


def test_load_run_carries_the_orientation(tmp_path):
    """recon3d.load_run reads orientation.json, the record of the run's frame (None when there is none)."""
    import torch

    import recon3d
    from recon3d.scene import GaussianScene

    recon3d.save_ply(GaussianScene.from_points(torch.zeros(2, 3), torch.full((2, 3), 0.5)), tmp_path / "scene.ply")
    assert recon3d.load_run(tmp_path).orientation is None
    o = Orientation(_random_rotation(6), np.array([0.0, 1.0, 2.0]), 3.0)
    save_orientation(tmp_path / "orientation.json", o)
    run = recon3d.load_run(tmp_path)
    np.testing.assert_allclose(run.orientation.oriented_from_input, o.oriented_from_input)
