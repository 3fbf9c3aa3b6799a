"""Camera refinement in pixel units (optim.camera_units=pixels): a unit step moves the image by about one
pixel whatever the lens, turns about the scene in front of the camera are separate from image shifts, and the
gauge, checkpoints and gradients work as with twists.

References: the pinhole projection of known points (analytic image motions, by finite differences),
torch.autograd.gradcheck, known similarities applied to whole camera sets, renders of a known scene.
"""

from __future__ import annotations

import math

import pytest
import torch

from recon3d.cameras import Cameras
from recon3d.render import render
from recon3d.train.camera_opt import (
    CameraRefinement,
    apply_similarity,
    pivot_depths,
    pose_similarity_fit,
    rigid_inverse,
    se3_log,
    twist_matrix,
)
from recon3d.train.synthetic import truth_scene


def _project(w2c: torch.Tensor, f: float, point: torch.Tensor) -> torch.Tensor:
    """Pixel offset from the principal point of a world point seen by a pinhole camera (float64)."""
    cam = w2c[:3, :3] @ point + w2c[:3, 3]
    return f * cam[:2] / cam[2]


def _units(focal: float, depth: float, n: int = 1, pivot: bool = False) -> CameraRefinement:
    return CameraRefinement(n, focal=torch.full((n,), focal), depth=torch.full((n,), depth), pivot=pivot)


@pytest.mark.parametrize("pivot", [False, True])
@pytest.mark.parametrize("focal", [270.0, 8900.0])  # the garden's lens and the statue's longest telephoto
def test_a_unit_step_moves_the_image_by_one_pixel_whatever_the_focal_length(focal, pivot):
    """By finite differences of the projection: u_v moves a point at the scene depth by 1 px per unit, u_ω
    moves a far point by 1 px per unit; with the pivot ("orbit") u_ω leaves the point at the pivot in place."""
    depth = 2.5
    refine = _units(focal, depth, pivot=pivot)
    w2c = Cameras.look_at((0.3, -0.4, depth), (0.3, -0.4, 0.0), fov_x=0.8, width=64, height=48).world_to_camera[0].double()
    c2w = rigid_inverse(w2c)
    on_pivot = c2w[:3, :3] @ torch.tensor([0.0, 0.0, depth], dtype=torch.float64) + c2w[:3, 3]
    far = c2w[:3, :3] @ torch.tensor([0.0, 0.0, 1e7], dtype=torch.float64) + c2w[:3, 3]
    eps = 1e-3

    def motion(coord: int, point: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            refine.delta.zero_()
            refine.delta[0, coord] = eps
        moved = refine.matrices(0, detach=True) @ w2c
        return (_project(moved, focal, point) - _project(w2c, focal, point)) / eps

    for axis in (0, 1):  # v_x moves the image along x, v_y along y: one pixel per unit at the pivot
        step = motion(3 + axis, on_pivot)
        assert float(step.norm()) == pytest.approx(1.0, rel=1e-3)
        assert float(step[axis].abs()) == pytest.approx(1.0, rel=1e-3)
    for axis in (0, 1):  # ω_x, ω_y: a far point moves ~1 px; an orbit about the pivot leaves it in place
        assert float(motion(axis, far).norm()) == pytest.approx(1.0, rel=1e-3)
        if pivot:
            assert float(motion(axis, on_pivot).norm()) < 1e-6
        else:  # a turn about the camera centre moves every point alike
            assert float(motion(axis, on_pivot).norm()) == pytest.approx(1.0, rel=1e-3)
    # a twist of the same size (the "twist" units) moves this telephoto by f·ε px, not ε
    plain = CameraRefinement(1)
    with torch.no_grad():
        plain.delta[0, 0] = eps
    moved = plain.matrices(0, detach=True) @ w2c
    assert float((_project(moved, focal, far) - _project(w2c, focal, far)).norm()) / eps == pytest.approx(focal, rel=1e-3)


@pytest.mark.parametrize("pivot", [False, True])
def test_pixel_units_round_trip_and_twist_units_are_the_old_twists(pivot):
    g = torch.Generator().manual_seed(0)
    n = 7
    refine = CameraRefinement(n, focal=torch.linspace(200, 9000, n), depth=torch.linspace(0.5, 4.0, n), pivot=pivot)
    with torch.no_grad():
        refine.delta[:] = torch.randn(n, 6, generator=g) * 20  # tens of pixels: a few degrees on the short lens
    rows = list(range(n))
    back = refine.from_matrices(refine.matrices(rows, detach=True), rows)
    assert torch.allclose(back, refine.delta.detach().double(), atol=1e-9, rtol=1e-9)
    plain = CameraRefinement(n)
    with torch.no_grad():
        plain.delta[:] = torch.randn(n, 6, generator=g) * 0.05
    assert torch.equal(plain.matrices(rows, detach=True), twist_matrix(plain.delta.detach().double()))
    assert torch.allclose(plain.from_matrices(plain.matrices(rows, detach=True), rows), plain.delta.detach().double(),
                          atol=1e-7)


@pytest.mark.parametrize("pivot", [False, True])
def test_the_corrections_differentiate_by_finite_differences(pivot):
    """gradcheck of the projected pixels of a few points through the corrected pose, float64."""
    refine = _units(300.0, 2.0, n=2, pivot=pivot)
    refine.delta = torch.tensor([[1.5, -2.0, 0.7, 3.0, -1.0, 2.0], [0.2, 0.1, -0.3, 0.5, 0.4, -0.6]],
                                dtype=torch.float64, requires_grad=True)
    w2c = Cameras.look_at((1.0, 2.0, 1.5), (0, 0, 0), fov_x=0.8, width=64, height=48).world_to_camera[0].double()
    points = torch.tensor([[0.1, 0.2, -0.1], [0.5, -0.3, 0.2], [-0.4, 0.1, 0.3]], dtype=torch.float64)

    def pixels(delta: torch.Tensor) -> torch.Tensor:
        refine.delta = delta
        moved = refine.matrices(1) @ w2c
        cam = points @ moved[:3, :3].T + moved[:3, 3]
        return 300.0 * cam[:, :2] / cam[:, 2:]

    assert torch.autograd.gradcheck(pixels, (refine.delta,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("pivot", [False, True])
def test_the_gauge_is_removed_in_pixel_units(pivot):
    """A common rigid motion of every training camera, written in pixel units, comes back to zero; the
    corrected cameras then carry no common similarity against the given ones."""
    poses = []
    for k in range(10):
        a = 2 * math.pi * k / 10
        poses.append(Cameras.look_at((3 * math.cos(a), 3 * math.sin(a), 1.0), (0, 0, 0), fov_x=0.9, width=8,
                                     height=6).world_to_camera[0].double())
    poses = torch.stack(poses)
    u, _, vt = torch.linalg.svd(poses[:, :3, :3])
    poses[:, :3, :3] = u @ vt
    train = [i for i in range(10) if i != 3]
    refine = CameraRefinement(10, poses=poses.float(), train=train, focal=torch.full((10,), 500.0),
                              depth=torch.full((10,), 3.0), pivot=pivot)
    rot = twist_matrix(torch.tensor([0.05, -0.1, 0.2, 0, 0, 0], dtype=torch.float64))[:3, :3]
    common = apply_similarity(poses, 1.0, rot, torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    rows = list(range(10))
    with torch.no_grad():
        refine.delta[:] = refine.from_matrices(common @ rigid_inverse(poses.float().double()), rows).float()
    assert float(refine.delta.detach()[train].abs().max()) > 10  # tens of pixels of common motion
    refine.remove_gauge()
    assert float(refine.delta.detach()[train].abs().max()) < 1e-3  # a thousandth of a pixel
    # per-camera corrections keep, with no common similarity left
    with torch.no_grad():
        refine.delta[:] = torch.randn(10, 6, generator=torch.Generator().manual_seed(1)) * 5
    refine.remove_gauge()
    corrected = refine.matrices(train, detach=True) @ poses.float().double()[train]
    s, r, t = pose_similarity_fit(poses.float().double()[train], corrected, refine.reach)
    assert s == pytest.approx(1.0, abs=1e-6) and float(se3_log(torch.cat([torch.cat([r, t[:, None]], 1),
                                                                         torch.tensor([[0, 0, 0, 1.0]],
                                                                                      dtype=torch.float64)]))
                                                              .abs().max()) < 1e-6


def test_checkpointed_units_come_back():
    refine = CameraRefinement(3, focal=torch.tensor([100.0, 200.0, 300.0]), depth=torch.tensor([1.0, 2.0, 3.0]),
                              pivot=True)
    with torch.no_grad():
        refine.delta[:] = 1.0
    state = refine.state()
    again = CameraRefinement(3)  # built as twists: the state says pixels
    again.load_state(state)
    assert again.parametrisation == "orbit"
    assert torch.equal(again.matrices([0, 1, 2], detach=True), refine.matrices([0, 1, 2], detach=True))
    old = {k: v for k, v in CameraRefinement(3).state().items() if k != "units"}  # a checkpoint from before units
    again.load_state(old)
    assert again.parametrisation == "twist"


def test_pivot_depths_are_the_median_depth_of_the_points_in_view():
    cams = Cameras.look_at((0, 0, 5.0), (0, 0, 0), fov_x=0.8, width=40, height=30)
    cams = Cameras(torch.cat([cams.world_to_camera, cams.world_to_camera]), float(cams.fx[0]), float(cams.fy[0]),
                   float(cams.cx[0]), float(cams.cy[0]), 40, 30)
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(101, 3, generator=g) * 0.2
    pts[:, 2] = torch.linspace(-1.0, 1.0, 101)  # depths 4 … 6 from the camera, median 5
    behind = torch.tensor([[0.0, 0.0, 9.0]])  # behind the camera: not counted
    got = pivot_depths(cams, torch.cat([pts, behind.expand(50, 3)]))
    assert torch.allclose(got, torch.full((2,), 5.0, dtype=torch.float64), atol=1e-5)
    # no points: the depth of the point the cameras look at
    assert torch.allclose(pivot_depths(cams, None, torch.tensor([0.0, 0.0, -1.0])), torch.full((2,), 6.0,
                                                                                            dtype=torch.float64))


@pytest.mark.parametrize("fov_x", [0.9, 0.15])  # 52° and 8.6°: f = 40 px and 250 px on a 48 px image
def test_one_pixel_learning_rate_recovers_a_pose_whatever_the_lens(fov_x):
    """Only the pose is optimised against renders of a known scene from the true camera, with the same
    learning rate (0.3 px per step, decaying) for a wide and a long lens: the mean reprojection error of the
    scene's points falls from 3.6-3.9 px to under a third of it on both. (The long lens ends near 0.15 px;
    the wide lens's 48 px image leaves about 1 px undetermined: radians at 0.3/f rad per step end there too.)"""
    scene = truth_scene(200, 0)
    distance = 1.3 / math.tan(fov_x / 2)  # the scene fills a similar part of the image
    cam = Cameras.look_at((0.75 * distance, 0.3 * distance, 0.35 * distance), (0, 0, 0), fov_x=fov_x, width=48,
                          height=36)
    focal = float(cam.fx[0])
    target = render(scene, cam, background=torch.ones(3), backend="reference").rgb[0]
    true_w2c = cam.world_to_camera[0].double()
    depth = float(true_w2c[2, 3])  # the origin's depth: the scene's centre
    error = torch.zeros(6, dtype=torch.float64)  # about 2.5 px of turn and 3 px of shift at the scene's depth
    error[:3] = torch.tensor([1.5, -1.0, 1.5], dtype=torch.float64) / focal
    error[3:] = torch.tensor([2.0, -2.0, 1.0], dtype=torch.float64) * depth / focal
    wrong = Cameras((twist_matrix(error) @ true_w2c).float()[None], cam.fx, cam.fy, cam.cx, cam.cy, cam.width,
                    cam.height)
    points = scene.means.double()

    def reprojection(w2c: torch.Tensor) -> float:
        a = points @ w2c[:3, :3].T + w2c[:3, 3]
        b = points @ true_w2c[:3, :3].T + true_w2c[:3, 3]
        return float((focal * (a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:])).norm(dim=-1).mean())

    refine = CameraRefinement(1, lr=0.3, weight=0.0, focal=torch.tensor([focal]), depth=torch.tensor([depth]))
    start = reprojection(wrong.world_to_camera[0].double())
    for k in range(80):
        out = render(scene, refine.apply(wrong, 0), background=torch.ones(3), backend="reference").rgb[0]
        (out - target).abs().mean().backward()
        refine.step(0.05 ** (k / 80))  # decaying, as in training: constant steps would circle the answer
    end = reprojection(refine.corrected_world_to_camera(wrong.world_to_camera)[0].double())
    assert start > 2.5 and end < 0.33 * start
