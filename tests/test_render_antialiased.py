"""The anti-aliased mode (opacity × sqrt(det Σ₂D / det(Σ₂D + 0.3·I))): cpu against the dense reference
(forward and backward), the reference's gradient against finite differences (float64 gradcheck), the
compensation against its closed form, and the default mode untouched by the flag's existence."""

from __future__ import annotations

import math

import pytest
import torch
from test_render_cpu import EYES, cameras, edge_case_scene, random_scene
from test_render_gradients import _render_fn, tiny_cameras, tiny_scene

import recon3d
from recon3d.backends import reference
from recon3d.constants import LOW_PASS

PARAMS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def test_compensation_matches_closed_form():
    """An isotropic Gaussian facing the camera: Σ₂D = s²I (s in pixels), so the factor is
    sqrt(s⁴ / (s² + 0.3)²) = s² / (s² + 0.3)."""
    sigma_world, z, fx = 0.01, 2.0, 100.0
    scene = recon3d.GaussianScene(
        means=torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64),
        scales=torch.full((1, 3), math.log(sigma_world), dtype=torch.float64),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64),
        opacities=torch.tensor([2.0], dtype=torch.float64),
        sh0=torch.zeros(1, 1, 3, dtype=torch.float64),
        shN=torch.zeros(1, 0, 3, dtype=torch.float64),
    )
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[2, 3] = z
    cams = recon3d.Cameras(w2c, fx, fx, 16.0, 16.0, 32, 32)
    s2 = (fx * sigma_world / z) ** 2
    plain = reference.project(scene, cams, 0).opacities
    aa = reference.project(scene, cams, 0, antialiased=True).opacities
    assert torch.allclose(aa / plain, torch.tensor(s2 / (s2 + LOW_PASS), dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_antialiased_cpu_matches_reference(dtype, tol):
    scene = recon3d.GaussianScene.cat(
        [edge_case_scene(2, seed=3, camera_eye=EYES[0], camera_target=(0.0, 0.0, 0.0), dtype=dtype),
         random_scene(200, 2, seed=5, dtype=dtype)]
    )
    small = scene.scales.clone()
    small[40:120] = math.log(0.003)  # far below a pixel: the compensation is small
    if dtype == torch.float32:
        # the edge case scaled exp(4) along one axis projects to a nearly rank-1 Σ₂D of ~1e5 px²: there
        # det Σ₂D − det(Σ₂D + 0.3·I) cancels in float32 in any implementation (the AVX2 build and torch's
        # differ by 3x on its scale gradient); float64 keeps it
        small[2] = math.log(0.3)
    scene = recon3d.GaussianScene(scene.means, small, scene.quats, scene.opacities, scene.sh0, scene.shN)
    cams = cameras(41, 33, EYES)
    outs = {}
    for backend in ("reference", "cpu"):
        params = {k: getattr(scene, k).detach().clone().requires_grad_() for k in PARAMS}
        out = recon3d.render(recon3d.GaussianScene(**params), cams, backend=backend, antialiased=True,
                             background=(0.2, 0.1, 0.4))
        g = torch.Generator().manual_seed(11)
        loss = (out.rgb * torch.randn(out.rgb.shape, generator=g).to(dtype)).sum() + out.depth.sum() + out.alpha.sum()
        loss.backward()
        outs[backend] = (out, {k: v.grad for k, v in params.items()})
    (ref, ref_g), (cpu, cpu_g) = outs["reference"], outs["cpu"]
    for name in ("rgb", "alpha", "depth"):
        assert torch.allclose(getattr(ref, name), getattr(cpu, name), atol=tol, rtol=tol), name
    assert torch.equal(ref.radii, cpu.radii)
    for k in PARAMS:
        scale = max(1.0, float(ref_g[k].abs().max()))
        assert torch.allclose(ref_g[k], cpu_g[k], atol=10 * tol * scale, rtol=10 * tol), k
    # the mode changes the image (small Gaussians fade) and the default stays the default
    plain = recon3d.render(scene, cams, backend="cpu", background=(0.2, 0.1, 0.4))
    assert float((plain.rgb - cpu.rgb.detach()).abs().max()) > 1e-2


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_antialiased_gradcheck(backend):
    scene = tiny_scene(seed=2, sh_degree=1)
    small = scene.scales.clone()
    small[1] = math.log(0.02)  # about a pixel: the compensation is far from 1
    scene = recon3d.GaussianScene(scene.means, small, scene.quats, scene.opacities, scene.sh0, scene.shN)
    cams = tiny_cameras(2).to(dtype=torch.float64)
    inputs = tuple(t.detach().clone().requires_grad_() for t in scene.tensors())
    plain = _render_fn(backend, cams, 1, torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64))

    def fn(*args):
        scene = recon3d.GaussianScene(*args)
        out = recon3d.render(scene, cams, background=torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64),
                             sh_degree=1, backend=backend, antialiased=True)
        return out.rgb, out.alpha, out.depth

    with torch.no_grad():
        assert not torch.allclose(fn(*inputs)[0], plain(*inputs)[0])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_antialiased_camera_gradients_match_reference():
    scene = random_scene(120, 1, seed=8, dtype=torch.float64)
    cams = cameras(29, 23, EYES[:2]).to(dtype=torch.float64)
    grads = {}
    for backend in ("reference", "cpu"):
        w2c = cams.world_to_camera.clone().requires_grad_()
        fx = cams.fx.clone().requires_grad_()
        c = recon3d.Cameras(w2c, fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height)
        recon3d.render(scene, c, backend=backend, antialiased=True).rgb.sum().backward()
        grads[backend] = (w2c.grad, fx.grad)
    for a, b in zip(grads["reference"], grads["cpu"]):
        assert torch.allclose(a, b, atol=1e-8, rtol=1e-8)


def test_antialiased_must_be_a_bool():
    scene = random_scene(5, 0, seed=1)
    with pytest.raises(ValueError, match="antialiased"):
        recon3d.render(scene, cameras(8, 8, EYES[:1]), antialiased="yes")


def test_ply_header_carries_the_mode(tmp_path):
    """save_ply(antialiased=True) writes the header comment, ply_antialiased reads it, load_ply still reads the
    file (other readers skip comments); a plain PLY says nothing."""
    from recon3d.ply import ANTIALIASED_COMMENT, load_ply, ply_antialiased, save_ply

    scene = random_scene(6, 1, seed=3)
    aa, plain = save_ply(scene, tmp_path / "aa.ply", antialiased=True), save_ply(scene, tmp_path / "plain.ply")
    assert ply_antialiased(aa) and not ply_antialiased(plain)
    assert ANTIALIASED_COMMENT.encode() in aa.read_bytes()[:400]
    assert torch.equal(load_ply(aa).means, load_ply(plain).means)


def test_config_key_and_flag():
    from recon3d.train.config import TrainConfig, apply_overrides

    assert TrainConfig().model.antialiased is False
    assert apply_overrides(TrainConfig(), {"model.antialiased": "true"}).model.antialiased is True
