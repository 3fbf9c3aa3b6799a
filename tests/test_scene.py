"""GaussianScene: construction, validation, slicing, concatenation, activations; PLY round trip."""

from __future__ import annotations

import math

import pytest
import torch

import recon3d
from recon3d.scene import GaussianScene, num_sh_rest, quat_to_rotmat, sh0_to_rgb


def random_scene(n: int, degree: int = 3, seed: int = 0) -> GaussianScene:
    g = torch.Generator().manual_seed(seed)
    return GaussianScene(
        means=torch.randn(n, 3, generator=g),
        scales=torch.randn(n, 3, generator=g) - 2,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, num_sh_rest(degree), 3, generator=g),
    )


def test_shapes_and_degree():
    s = random_scene(10, degree=2)
    assert len(s) == 10 and s.num_gaussians == 10 and s.sh_degree == 2
    assert GaussianScene.empty(sh_degree=3).sh_degree == 3
    assert len(GaussianScene.empty()) == 0


def test_validation_errors():
    s = random_scene(4)
    with pytest.raises(ValueError, match="scales"):
        GaussianScene(s.means, s.scales[:3], s.quats, s.opacities, s.sh0, s.shN)
    with pytest.raises(ValueError, match="degree"):
        GaussianScene(s.means, s.scales, s.quats, s.opacities, s.sh0, torch.zeros(4, 5, 3))
    with pytest.raises(TypeError):
        GaussianScene(s.means.numpy(), s.scales, s.quats, s.opacities, s.sh0, s.shN)


def test_slicing_mask_and_cat_pad_sh():
    s = random_scene(6, degree=3)
    assert torch.equal(s[2:4].means, s.means[2:4])
    mask = torch.tensor([True, False, True, False, False, True])
    assert torch.equal(s[mask].opacities, s.opacities[mask])
    assert len(s[0]) == 1 and len(s[-1]) == 1 and torch.equal(s[-1].means, s.means[-1:])
    low = random_scene(3, degree=1, seed=1)
    both = GaussianScene.cat([s, low])
    assert len(both) == 9 and both.sh_degree == 3
    assert torch.equal(both.shN[6:, :3], low.shN) and torch.all(both.shN[6:, 3:] == 0)


def test_activations_and_covariance():
    s = random_scene(5)
    s.quats[0] = 0.0  # a zero quaternion means no rotation
    q = s.normalized_quats()
    assert torch.allclose(q.norm(dim=1), torch.ones(5))
    assert torch.equal(q[0], torch.tensor([1.0, 0, 0, 0]))
    r = quat_to_rotmat(q)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    cov = s.covariances()
    eig = torch.linalg.eigvalsh(cov)
    expected = torch.sort(torch.exp(2 * s.scales), dim=1).values
    assert torch.allclose(eig, expected, rtol=1e-4, atol=1e-7)
    assert torch.allclose(s.activated_opacities(), 1 / (1 + torch.exp(-s.opacities)))


def test_from_points_colors_roundtrip():
    pts = torch.rand(7, 3)
    cols = torch.rand(7, 3)
    s = GaussianScene.from_points(pts, cols, scale=0.05, opacity=0.3)
    assert torch.allclose(sh0_to_rgb(s.sh0[:, 0]), cols, atol=1e-6)
    assert torch.allclose(s.activated_scales(), torch.full((7, 3), 0.05))
    assert torch.allclose(s.activated_opacities(), torch.full((7,), 0.3))
    per_point = GaussianScene.from_points(pts, scale=torch.linspace(0.1, 0.7, 7))
    assert torch.allclose(per_point.activated_scales()[:, 1], torch.linspace(0.1, 0.7, 7))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip_is_exact(tmp_path, degree):
    s = random_scene(50, degree=degree, seed=degree)
    path = recon3d.save_ply(s, tmp_path / "s.ply")
    back = recon3d.load_ply(path)
    for a, b in zip(s.tensors(), back.tensors()):
        assert torch.equal(a, b)


def test_ply_layout_matches_3dgs(tmp_path):
    """f_rest is channel-major, properties in the standard order, little-endian float32."""
    s = random_scene(2, degree=1)
    recon3d.save_ply(s, tmp_path / "s.ply")
    from plyfile import PlyData

    ply = PlyData.read(str(tmp_path / "s.ply"))
    names = [p.name for p in ply["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    v = ply["vertex"]
    # f_rest_1 is the 2nd red coefficient, f_rest_3 the 1st green one
    assert math.isclose(float(v["f_rest_1"][0]), float(s.shN[0, 1, 0]), rel_tol=1e-6)
    assert math.isclose(float(v["f_rest_3"][0]), float(s.shN[0, 0, 1]), rel_tol=1e-6)


def test_save_refuses_nan(tmp_path):
    s = random_scene(3)
    s.means[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        recon3d.save_ply(s, tmp_path / "bad.ply")
    assert not (tmp_path / "bad.ply").exists()
