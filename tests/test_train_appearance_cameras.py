"""The per-image appearance model, the NeRF-W evaluation protocol and camera refinement."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from recon3d.cameras import Cameras
from recon3d.metrics import apply_affine, fit_affine, nerfw_psnr, psnr
from recon3d.render import render
from recon3d.train.appearance import AffineAppearance
from recon3d.train.camera_opt import CameraRefinement, twist_matrix
from recon3d.train.synthetic import truth_scene


def test_fit_affine_recovers_a_known_colour_transform():
    torch.manual_seed(0)
    pred = torch.rand(20, 30, 3)
    m = torch.tensor([[0.9, 0.05, 0.0, 0.03], [0.02, 1.1, -0.05, -0.02], [0.0, 0.1, 0.8, 0.05]])
    target = pred @ m[:, :3].T + m[:, 3]
    assert torch.allclose(fit_affine(pred, target, ridge=0.0), m, atol=1e-5)
    # masked pixels do not count: garbage there changes nothing
    mask = torch.ones(20, 30, 1)
    mask[:, :10] = 0
    spoiled = target.clone()
    spoiled[:, :10] = torch.rand(20, 10, 3)
    assert torch.allclose(fit_affine(pred, spoiled, mask, ridge=0.0), m, atol=1e-5)
    assert torch.allclose(apply_affine(pred, m), target, atol=1e-6)


def test_nerfw_protocol_fits_on_the_left_half_and_scores_the_right():
    torch.manual_seed(1)
    pred = torch.rand(16, 32, 3) * 0.6 + 0.1
    m = torch.tensor([[1.3, 0.0, 0.0, -0.05], [0.0, 0.75, 0.0, 0.02], [0.0, 0.0, 1.0, 0.04]])
    target = (pred @ m[:, :3].T + m[:, 3]).clamp(0, 1)
    assert nerfw_psnr(pred, target) > 60  # an exposure change alone is forgiven
    assert psnr(pred, target) < 30  # ... which plain PSNR is not
    # a difference only on the right half is not fitted away
    damaged = target.clone()
    damaged[:, 16:] = 1 - damaged[:, 16:]
    assert nerfw_psnr(pred, damaged) == pytest.approx(psnr(apply_affine(pred[:, 16:], fit_affine(
        pred[:, :16], target[:, :16])).clamp(0, 1), damaged[:, 16:]), abs=1e-6)


def test_affine_appearance_starts_neutral_and_its_mean_is_held_at_identity():
    app = AffineAppearance(3)
    rgb = torch.rand(8, 8, 3)
    assert torch.equal(app.apply(rgb, 1), rgb @ torch.eye(3).T + 0)
    assert float(app.regulariser().detach()) == 0.0
    with torch.no_grad():
        app.delta[:, 0, 3] = torch.tensor([0.1, -0.1, 0.0])  # offsets that average out cost nothing
    assert float(app.regulariser().detach()) == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        app.delta[:, 0, 3] = 0.1  # a common offset belongs to the scene, not to the images
    assert float(app.regulariser().detach()) > 0


def test_affine_appearance_learns_an_exposure_difference():
    torch.manual_seed(2)
    scene_rgb = torch.rand(12, 12, 3) * 0.6 + 0.2
    photos = [scene_rgb * 1.2, scene_rgb * 0.8]  # one bright and one dark photo of the same scene
    app = AffineAppearance(2, lr=1e-2)
    for _ in range(400):
        loss = sum((app.apply(scene_rgb, i) - photos[i]).abs().mean() for i in range(2)) + app.regulariser()
        loss.backward()
        app.step()
    assert float((app.apply(scene_rgb, 0) - photos[0]).abs().max()) < 0.02
    assert float((app.apply(scene_rgb, 1) - photos[1]).abs().max()) < 0.02


def _train_scene_with_appearance(app, photos, steps=600):
    """Joint training of a scene's colours and the per-image appearance, one photo per step (as the trainer)."""
    torch.manual_seed(0)
    scene = torch.full_like(photos[0], 0.5).requires_grad_(True)
    opt = torch.optim.Adam([scene], lr=1e-2)
    for step in range(steps):
        i = step % len(photos)
        loss = (app.apply(scene, i) - photos[i]).abs().mean() + app.regulariser()
        opt.zero_grad()
        loss.backward()
        opt.step()
        app.step()
    return scene.detach()


def test_held_out_images_take_no_part_in_the_neutral_appearance():
    # two training photos, both 10 % brighter than the truth, and one held-out image (index 2) that is never
    # trained: the neutral scene must be the training photos' average look and the held-out transform must
    # stay the identity. Before the fix the held-out row absorbed the mean term (Adam moved it to cancel
    # the training rows' mean), so the neutral render drifted away from every training photo.
    torch.manual_seed(1)
    truth = torch.rand(10, 10, 3) * 0.5 + 0.2
    photos = [truth * 1.1 * 1.05, truth * 1.1 / 1.05]
    app = AffineAppearance(3, lr=1e-2, rows=[0, 1])
    scene = _train_scene_with_appearance(app, photos)
    assert torch.count_nonzero(app.delta[2]) == 0
    average = (photos[0] + photos[1]) / 2
    assert float((scene - average).abs().max()) < 0.02
    assert float(app.delta[:2].mean(0).abs().max()) < 5e-3


def test_grid_mean_is_over_the_training_images_only():
    from recon3d.train.appearance import BilateralGridAppearance

    torch.manual_seed(1)
    truth = torch.rand(10, 10, 3) * 0.5 + 0.2
    photos = [truth * 1.1 * 1.05, truth * 1.1 / 1.05]
    app = BilateralGridAppearance(3, shape=(2, 2, 2), lr=1e-2, tv_weight=0.0, rows=[0, 1])
    identity = app.grids[2].detach().clone()
    scene = _train_scene_with_appearance(app, photos)
    assert torch.equal(app.grids[2].detach(), identity)
    assert float((scene - (photos[0] + photos[1]) / 2).abs().max()) < 0.03
    assert torch.allclose(app._sum, app.grids.detach()[:2].sum(0), atol=1e-5)


def test_auto_appearance_is_affine_for_our_own_captures_only():
    from recon3d.train.appearance import resolve_appearance

    assert resolve_appearance("auto", "photos", True) == "affine"
    assert resolve_appearance("auto", "video", True) == "affine"
    assert resolve_appearance("auto", "colmap", True) == "none"
    assert resolve_appearance("auto", "nerfstudio", True) == "none"
    assert resolve_appearance("auto", "blender", False) == "none"
    assert resolve_appearance("auto", "photos", False) == "none"  # RGBA photos keep the composited protocol
    assert resolve_appearance("grid", "colmap", True) == "grid"  # an explicit choice always wins


def test_appearance_rows_must_be_images_of_the_capture():
    with pytest.raises(ValueError, match="training rows"):
        AffineAppearance(3, rows=[0, 3])


def test_twist_of_a_pure_rotation_is_the_rotation_matrix():
    omega = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    t = twist_matrix(torch.cat([omega, torch.zeros(3, dtype=torch.float64)]))
    expected = torch.from_numpy(Rotation.from_rotvec(omega.numpy()).as_matrix())
    assert torch.allclose(t[:3, :3], expected, atol=1e-12)
    assert torch.allclose(t[:3, 3], torch.zeros(3, dtype=torch.float64))
    pure_shift = twist_matrix(torch.tensor([0, 0, 0, 0.1, 0.2, 0.3], dtype=torch.float64))
    assert torch.allclose(pure_shift[:3, 3], torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))


def test_camera_refinement_recovers_a_perturbed_pose_on_the_reference_backend():
    """Only the pose is optimised, against renders of a known scene from the true camera."""
    scene = truth_scene(200, 0)
    cam = Cameras.look_at((2.5, 0.8, 1.0), (0, 0, 0), fov_x=0.9, width=40, height=30)
    target = render(scene, cam, background=torch.ones(3), backend="reference").rgb[0]
    perturbation = torch.tensor([0.02, -0.015, 0.01, 0.03, -0.02, 0.02])  # ≈ 1.6° and 0.04 (radius 2.8)
    wrong = Cameras(twist_matrix(perturbation) @ cam.world_to_camera[0], cam.fx, cam.fy, cam.cx, cam.cy,
                    cam.width, cam.height)
    refine = CameraRefinement(1, lr=4e-3, weight=0.0)
    for _ in range(80):
        out = render(scene, refine.apply(wrong, 0), background=torch.ones(3), backend="reference").rgb[0]
        (out - target).abs().mean().backward()
        assert refine.has_gradient()
        refine.step()
    error = refine.corrected_world_to_camera(wrong.world_to_camera)[0].double() @ torch.linalg.inv(
        cam.world_to_camera[0].double())
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(error[:3, :3])) - 1) / 2))))
    start_angle = math.degrees(float(perturbation[:3].norm()))
    assert angle < 0.1 * start_angle
    assert float(error[:3, 3].norm()) < 0.1 * float(perturbation[3:].norm())


def test_moving_the_scene_renders_what_the_corrected_camera_sees():
    """apply_to_scene (any backend) and apply (camera gradients) give one image and one gradient."""
    scene = truth_scene(150, 3)
    scene = type(scene)(scene.means, scene.scales, scene.quats, scene.opacities, scene.sh0, scene.shN * 0)
    cam = Cameras.look_at((2.2, -1.0, 0.7), (0, 0, 0), fov_x=0.9, width=36, height=28)
    target = render(scene, cam, background=torch.ones(3), backend="reference").rgb[0]
    grads = []
    for how in ("camera", "scene"):
        refine = CameraRefinement(1)
        with torch.no_grad():
            refine.delta[0] = torch.tensor([0.01, -0.02, 0.015, 0.02, 0.01, -0.03])
        if how == "camera":
            out = render(scene, refine.apply(cam, 0), background=torch.ones(3), backend="reference").rgb[0]
        else:
            out = render(refine.apply_to_scene(scene, cam, 0), cam, background=torch.ones(3), backend="reference").rgb[0]
        (out - target).square().mean().backward()
        grads.append((out.detach(), refine.delta.grad[0].clone()))
    (img_cam, g_cam), (img_scene, g_scene) = grads
    assert torch.allclose(img_cam, img_scene, atol=1e-5)
    assert torch.allclose(g_cam, g_scene, rtol=1e-3, atol=1e-7)
    assert float(g_cam.abs().max()) > 0
