"""Camera refinement's gauge: the common similarity of the pose corrections is taken out exactly.

References: scipy's rotations, a direct numerical minimisation of the stated objective (scipy.optimize),
and known similarities applied to whole camera sets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import kernel_backend
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

from recon3d.cameras import Cameras
from recon3d.train.camera_opt import (
    CameraRefinement,
    apply_similarity,
    pose_similarity_fit,
    remove_common_motion,
    rigid_inverse,
    se3_log,
    twist_matrix,
)


def _orbit(n: int = 12, line: bool = False) -> torch.Tensor:
    """n world-to-camera poses (float64): on a tilted orbit looking at the origin, or along a line."""
    poses = []
    for k in range(n):
        a = 2 * math.pi * k / n
        eye = (0.3 * k - 1.5, 2.0, 0.5) if line else (3 * math.cos(a), 3 * math.sin(a), 1.0 + 0.3 * math.sin(2 * a))
        target = (0.3 * k - 1.5, 0.0, 0.0) if line else (0.0, 0.0, 0.0)
        poses.append(Cameras.look_at(eye, target, fov_x=0.9, width=8, height=6).world_to_camera[0].double())
    poses = torch.stack(poses)
    u, _, vt = torch.linalg.svd(poses[:, :3, :3])  # exact rotations in float64 (look_at's are float32)
    poses[:, :3, :3] = u @ vt
    return poses


def _similarity(seed: int, with_scale: bool = True) -> tuple[float, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    rot = torch.from_numpy(Rotation.from_rotvec(rng.normal(size=3) * 0.3).as_matrix())
    scale = float(np.exp(rng.normal() * 0.2)) if with_scale else 1.0
    return scale, rot, torch.from_numpy(rng.normal(size=3))


def _jitter(poses: torch.Tensor, seed: int, size: float = 0.03) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return twist_matrix(torch.randn(len(poses), 6, generator=g, dtype=torch.float64) * size) @ poses


_backend = kernel_backend


def _same_poses(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    return bool((a.double() - b.double()).abs().max() < atol)


def test_se3_log_inverts_the_twist_exponential():
    g = torch.Generator().manual_seed(0)
    for size in (2.5, 1e-3, 1e-7):  # rotation angles up to ``size`` (the logarithm is unique under 180°)
        xi = torch.randn(200, 6, generator=g, dtype=torch.float64)
        xi[:, :3] *= size * torch.rand(200, 1, generator=g, dtype=torch.float64) / xi[:, :3].norm(dim=-1, keepdim=True)
        assert torch.allclose(se3_log(twist_matrix(xi)), xi, atol=1e-10 * size, rtol=1e-9)
    # and the other way: random rigid motions from scipy's rotations
    rng = np.random.default_rng(1)
    m = torch.eye(4, dtype=torch.float64).repeat(50, 1, 1)
    m[:, :3, :3] = torch.from_numpy(Rotation.from_rotvec(rng.normal(size=(50, 3)) * 0.9).as_matrix())
    m[:, :3, 3] = torch.from_numpy(rng.normal(size=(50, 3)))
    assert torch.allclose(twist_matrix(se3_log(m)), m, atol=1e-12)
    assert torch.allclose(rigid_inverse(m), torch.linalg.inv(m), atol=1e-12)


@pytest.mark.parametrize("line", [False, True])
def test_a_known_similarity_of_all_cameras_is_recovered_exactly(line):
    """Cameras on an orbit, and on a line (the centres leave the rotation about it open; orientations fix it)."""
    base = _orbit(10, line)
    scale, rot, trans = _similarity(2)
    moved = apply_similarity(base, scale, rot, trans)
    s, r, t = pose_similarity_fit(base, moved, reach=2.0)
    assert s == pytest.approx(scale, rel=1e-12)
    assert torch.allclose(r, rot, atol=1e-12) and torch.allclose(t, trans, atol=1e-11)
    fixed, _ = remove_common_motion(base, moved, 2.0)
    assert _same_poses(fixed, base, 1e-11)


def test_the_fit_minimises_its_stated_objective():
    """Against scipy's minimisation of Σ|sRc + t − c'|² + (s·reach)²·Σ‖RA − A'‖² over (log s, rotation vector, t)."""
    base = _orbit(9)
    moved = _jitter(apply_similarity(base, *_similarity(3)), seed=4, size=0.05)
    reach = 1.7
    b2w, m2w = torch.linalg.inv(base).numpy(), torch.linalg.inv(moved).numpy()

    def objective(p: np.ndarray) -> float:
        s, r, t = math.exp(p[0]), Rotation.from_rotvec(p[1:4]).as_matrix(), p[4:]
        centres = s * b2w[:, :3, 3] @ r.T + t - m2w[:, :3, 3]
        turns = r @ b2w[:, :3, :3] - m2w[:, :3, :3]
        return float((centres**2).sum() + (s * reach) ** 2 * (turns**2).sum())

    best = minimize(objective, np.zeros(7), method="BFGS", options={"gtol": 1e-12})
    s, r, t = pose_similarity_fit(base, moved, reach)
    got = np.concatenate([[math.log(s)], Rotation.from_matrix(r.numpy()).as_rotvec(), t.numpy()])
    assert objective(got) <= best.fun + 1e-12
    assert np.allclose(got, best.x, atol=1e-6)


@pytest.mark.parametrize("with_scale", [False, True])
def test_removing_the_common_motion_ignores_any_similarity_added_to_all_cameras(with_scale):
    """fit(base, G∘X) = G∘fit(base, X): a common motion added to every correction is removed exactly, and
    what is left has no common motion (removing again changes nothing)."""
    base = _orbit(11)
    corrected = _jitter(base, seed=5)
    reference, _ = remove_common_motion(base, corrected, 2.5)
    moved = apply_similarity(corrected, *_similarity(6, with_scale))
    fixed, _ = remove_common_motion(base, moved, 2.5)
    assert _same_poses(fixed, reference, 1e-11)
    s, r, t = pose_similarity_fit(base, fixed, 2.5)
    assert s == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(r, torch.eye(3, dtype=torch.float64), atol=1e-12) and float(t.norm()) < 1e-11


def test_remove_gauge_takes_a_common_rigid_motion_out_of_the_corrections():
    """Corrections that are one rigid motion of every training camera come back to zero; per-camera
    corrections beside it come back to what they were without it; held-out cameras are untouched."""
    poses = _orbit(12)
    train = [i for i in range(12) if i % 4]
    scale, rot, trans = _similarity(7, with_scale=False)
    common = apply_similarity(poses, scale, rot, trans)
    refine = CameraRefinement(12, poses=poses.float(), train=train, gauge_every=0)
    with torch.no_grad():
        refine.delta[:] = se3_log(common @ rigid_inverse(poses)).float()
        refine.delta[0] = 0.5  # a held-out camera's row (never trained): left as it is
    fit = refine.remove_gauge()
    assert fit is not None and torch.allclose(fit[1], rot, atol=1e-6)
    assert float(refine.delta.detach()[train].abs().max()) < 1e-6
    assert torch.equal(refine.delta.detach()[0], torch.full((6,), 0.5))
    assert refine.gauge_removed["count"] == 1
    assert refine.gauge_removed["rotation_deg"] == pytest.approx(math.degrees(Rotation.from_matrix(rot.numpy()).magnitude()),
                                                                 rel=1e-5)

    # per-camera corrections with the same common motion added: only the common part goes
    jitter = torch.randn(12, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 0.02
    alone = CameraRefinement(12, poses=poses.float(), train=train)
    with torch.no_grad():
        alone.delta[:] = jitter.float()
    alone.remove_gauge()
    both = CameraRefinement(12, poses=poses.float(), train=train)
    with torch.no_grad():
        jittered = twist_matrix(jitter) @ poses.float().double()
        both.delta[:] = se3_log(apply_similarity(jittered, scale, rot, trans) @ rigid_inverse(poses.float())).float()
    both.remove_gauge()
    assert torch.allclose(both.delta.detach()[train], alone.delta.detach()[train], atol=2e-6)
    assert float(alone.delta.detach()[train].abs().max()) > 1e-3  # the per-camera parts stay


def test_remove_gauge_needs_two_training_cameras_apart():
    poses = _orbit(3)
    assert CameraRefinement(3).remove_gauge() is None  # no poses given
    assert CameraRefinement(3, poses=poses, train=[1]).remove_gauge() is None
    assert CameraRefinement(3, poses=poses[[0, 0, 0]]).remove_gauge() is None  # all at one spot


def test_step_removes_the_gauge_every_n_steps():
    poses = _orbit(6)
    refine = CameraRefinement(6, poses=poses, gauge_every=3, lr=1e-2)
    target = torch.randn(6, 6, generator=torch.Generator().manual_seed(9)) * 0.1
    counts = []
    for _ in range(7):
        (refine.delta - target).square().sum().backward()
        refine.step()
        counts.append(refine.gauge_removed["count"])
    assert counts == [0, 0, 1, 1, 1, 2, 2]
    state = refine.state()
    again = CameraRefinement(6, poses=poses, gauge_every=3)
    again.load_state(state)
    assert again.gauge_removed == refine.gauge_removed


def test_training_keeps_the_refined_cameras_in_the_given_frame(tmp_path):
    """A short photo run with refinement on: the exported training cameras moved, yet carry no common
    similarity against the given ones; metrics.json states the held-out protocol."""
    import dataclasses

    from recon3d.api import reconstruct
    from recon3d.train.rundir import read_cameras_json
    from recon3d.train.synthetic import make_synthetic_data

    data = make_synthetic_data(tmp_path / "data", num_views=10, size=32, backend=_backend())
    photos = dataclasses.replace(data, background=None, _cache={}, _alpha={})
    _, _, metrics = reconstruct(photos, tmp_path / "run", steps=40, preset="fast", quiet=True, threads=1,
                                backend=_backend(), appearance="none", refine_cameras=True,
                                **{"optim.camera_warmup": 0.0, "optim.camera_gauge_every": 5, "optim.camera_lr": 3e-3})
    report = metrics["camera_refinement"]
    assert report["active"] and report["gauge_every"] == 5 and report["gauge_removed"]["count"] >= 8
    assert "not refined" in report["held_out_cameras"]
    got, _, _ = read_cameras_json(tmp_path / "run" / "cameras.json")
    train, test = data.train_indices(), data.test_indices()
    given = data.cameras.world_to_camera.double()
    out = got.world_to_camera.double()
    assert float((out[train] - given[train]).abs().max()) > 1e-4  # the corrections did something
    assert torch.equal(out[test].float(), given[test].float())
    centres = data.cameras.centers()[train].double()
    reach = float((centres - centres.mean(0)).norm(dim=-1).mean())
    s, r, t = pose_similarity_fit(given[train], out[train], reach)
    assert s == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(r, torch.eye(3, dtype=torch.float64), atol=1e-5) and float(t.norm()) < 1e-5 * reach
