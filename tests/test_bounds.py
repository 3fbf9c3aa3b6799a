"""recon3d.bounds: robust scene bounds (far floaters ignored, clean scenes never cropped) and framing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon3d.bounds import framing_cameras, outside_bounds, scene_bounds
from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.render import render
from recon3d.scene import GaussianScene


def _scene(means: np.ndarray, sigma: float = 0.02, opacity: float = 0.9, colour=(0.8, 0.2, 0.2)) -> GaussianScene:
    n = len(means)
    logit = math.log(opacity / (1 - opacity))
    return GaussianScene(
        means=torch.tensor(means, dtype=torch.float32),
        scales=torch.full((n, 3), math.log(sigma)),
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        opacities=torch.full((n,), logit),
        sh0=((torch.tensor(colour) - 0.5) / 0.28209479177387814).repeat(n, 1, 1).reshape(n, 1, 3),
        shN=torch.zeros(n, 0, 3),
    )


def _cat(a: GaussianScene, b: GaussianScene) -> GaussianScene:
    return GaussianScene(*(torch.cat([getattr(a, k), getattr(b, k)]) for k in
                           ("means", "scales", "quats", "opacities", "sh0", "shN")))  # fmt: skip


def test_far_floaters_do_not_set_the_bounds():
    rng = np.random.default_rng(0)
    body = rng.uniform([-1, -0.5, 0], [1, 0.5, 0.8], (5000, 3))
    floaters = rng.uniform(-3000, 3000, (150, 3))  # 3 % of the Gaussians, kilometres away (as the garden's)
    scene = _cat(_scene(body), _scene(floaters, sigma=5.0))
    lo, hi = scene_bounds(scene)
    # the body's true extent (centres ± 2σ), not a floater's
    np.testing.assert_allclose(lo, [-1.04, -0.54, -0.04], atol=0.02)
    np.testing.assert_allclose(hi, [1.04, 0.54, 0.84], atol=0.02)
    out = outside_bounds(scene, lo, hi)
    assert not out[:5000].any()
    assert out[5000:].float().mean() > 0.99  # (a floater may land inside the box by chance)
    # min/max, as the viewer had it, is kilometres wide
    assert (scene.means.max(0).values - scene.means.min(0).values).min() > 1000


def test_faint_gaussians_do_not_set_the_bounds():
    rng = np.random.default_rng(1)
    body = _scene(rng.uniform(-0.5, 0.5, (2000, 3)))
    haze = _scene(rng.uniform(-20, 20, (2000, 3)), opacity=0.01)  # as many as the body, but invisible
    lo, hi = scene_bounds(_cat(body, haze))
    assert (hi - lo).max() < 1.2


def test_a_small_clean_scene_keeps_its_full_extent():
    """A generated scene of a few hundred Gaussians has no floaters: its percentiles must not crop it."""
    rng = np.random.default_rng(2)
    cube = rng.uniform(-0.3, 0.3, (300, 3))
    sphere = rng.normal(0, 1, (200, 3))
    sphere = sphere / np.linalg.norm(sphere, axis=1, keepdims=True) * 0.2 + [0, 0, 0.6]
    scene = _scene(np.concatenate([cube, sphere]), sigma=0.03)
    lo, hi = scene_bounds(scene)
    m = scene.means.numpy()
    assert (lo <= m.min(0) - 0.05).all() and (hi >= m.max(0) + 0.05).all()


def _border_alpha(scene: GaussianScene, cams: Cameras) -> float:
    out = render(scene, cams, background=torch.ones(3), backend="reference")
    a = out.alpha[0, ..., 0]
    return float(torch.cat([a[0], a[-1], a[:, 0], a[:, -1]]).max())


def test_framing_camera_shows_the_whole_scene_without_cropping():
    rng = np.random.default_rng(3)
    body = rng.uniform([-1.5, -0.2, 0], [1.5, 0.2, 0.4], (400, 3))  # long and thin: the worst case for framing
    scene = _scene(body, sigma=0.04)
    for w, h in ((64, 48), (48, 64)):
        cams = framing_cameras(scene, w, h)
        out = render(scene, cams, background=torch.ones(3), backend="reference")
        alpha = out.alpha[0, ..., 0]
        assert _border_alpha(scene, cams) < 0.02  # nothing touches the image border: not cropped
        assert alpha.mean() > 0.05  # and the scene fills a fair part of the image (not a dot)


def test_framing_from_a_training_camera_keeps_its_side():
    rng = np.random.default_rng(4)
    scene = _scene(rng.uniform(-0.5, 0.5, (300, 3)), sigma=0.03)
    eye = torch.tensor([0.0, -6.0, 1.0])
    w2c = look_at_world_to_camera(eye, [0.0, 0.0, 0.0])
    train = Cameras.from_fov(w2c, 0.9, 80, 60)
    cams = framing_cameras(scene, 80, 60, cameras=train, splits=["train"], up=(0.0, 0.0, 1.0))  # an upright run
    lo, hi = scene_bounds(scene)
    mid = 0.5 * (lo + hi)
    ours, theirs = cams.centers()[0].double().numpy() - mid, eye.double().numpy() - mid
    # on the training camera's side: the same horizontal direction from the scene's centre …
    h_ours, h_theirs = ours[:2] / np.linalg.norm(ours[:2]), theirs[:2] / np.linalg.norm(theirs[:2])
    assert h_ours @ h_theirs > 1 - 1e-5
    # … but looking down on it at 30° (the training camera is at 9.5°, almost level)
    assert math.degrees(math.asin(ours[2] / np.linalg.norm(ours))) == pytest.approx(30.0, abs=1e-3)
    assert _border_alpha(scene, cams) < 0.02


def test_framing_keeps_a_training_camera_that_already_looks_down_steeply():
    scene = _scene(np.random.default_rng(5).uniform(-0.5, 0.5, (200, 3)), sigma=0.03)
    eye = torch.tensor([0.0, -3.0, 4.0])  # 53° above the horizon
    train = Cameras.from_fov(look_at_world_to_camera(eye, [0.0, 0.0, 0.0]), 0.9, 80, 60)
    cams = framing_cameras(scene, 80, 60, cameras=train, splits=["train"], up=(0.0, 0.0, 1.0))  # an upright run
    lo, hi = scene_bounds(scene)
    ours, theirs = cams.centers()[0].double().numpy() - 0.5 * (lo + hi), eye.double().numpy() - 0.5 * (lo + hi)
    assert ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs) > 1 - 1e-5
