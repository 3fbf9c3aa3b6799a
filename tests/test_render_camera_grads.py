"""Gradients with respect to the cameras (world_to_camera, fx, fy, cx, cy): the reference's autograd and the
cpu kernels' hand-written chain against finite differences (float64 gradcheck), and cpu against reference
on random scenes with the edge cases (frustum clamp active, culled Gaussians, several cameras)."""

from __future__ import annotations

import pytest
import torch
from test_render_cpu import EYES, cameras, edge_case_scene, random_scene
from test_render_gradients import tiny_cameras, tiny_scene

import recon3d

CAMERA_FIELDS = ("world_to_camera", "fx", "fy", "cx", "cy")


def _camera_fn(backend: str, scene: recon3d.GaussianScene, cams: recon3d.Cameras, sh_degree: int, bg: torch.Tensor):
    def fn(w2c, fx, fy, cx, cy):
        c = recon3d.Cameras(w2c, fx, fy, cx, cy, cams.width, cams.height)
        out = recon3d.render(scene, c, background=bg, sh_degree=sh_degree, backend=backend)
        return out.rgb, out.alpha, out.depth

    return fn


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("sh_degree, n_cams", [(0, 1), (3, 2)])
def test_camera_gradcheck(backend, sh_degree, n_cams):
    scene = tiny_scene(seed=10 + sh_degree, sh_degree=sh_degree)
    cams = tiny_cameras(n_cams).to(dtype=torch.float64)
    inputs = tuple(getattr(cams, k).detach().clone().requires_grad_() for k in CAMERA_FIELDS)
    fn = _camera_fn(backend, scene, cams, sh_degree, torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64))
    with torch.no_grad():
        assert float(fn(*inputs)[1].max()) > 0.3
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_camera_gradcheck_frustum_clamp():
    """A Gaussian beyond the frustum clamp (x/z clamped in the Jacobian): the clamp bounds depend on fx, cx."""
    scene = tiny_scene(seed=3, sh_degree=1)
    cams = tiny_cameras(1).to(dtype=torch.float64)
    c2w = torch.linalg.inv(cams.world_to_camera[0])
    means = scene.means.detach().clone()
    means[0] = (c2w @ torch.tensor([0.95, 0.3, 1.2, 1.0], dtype=torch.float64))[:3]  # x/z far past the clamp
    scales = scene.scales.detach().clone()
    scales[0] = torch.log(torch.tensor([0.6, 0.3, 0.4], dtype=torch.float64))
    scene = recon3d.GaussianScene(means, scales, scene.quats, scene.opacities, scene.sh0, scene.shN)
    for backend in ("reference", "cpu"):
        inputs = tuple(getattr(cams, k).detach().clone().requires_grad_() for k in CAMERA_FIELDS)
        fn = _camera_fn(backend, scene, cams, 1, torch.zeros(3, dtype=torch.float64))
        rgb = fn(*inputs)[0]
        (rgb.sum()).backward()
        assert float(inputs[1].grad.abs()) > 0  # the clamped Gaussian reaches the image
        inputs = tuple(t.detach().clone().requires_grad_() for t in inputs)
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True), backend


def _camera_grads(backend, scene, cams, weights, **kwargs):
    w2c = cams.world_to_camera.detach().clone().requires_grad_()
    intr = [getattr(cams, k).detach().clone().requires_grad_() for k in ("fx", "fy", "cx", "cy")]
    c = recon3d.Cameras(w2c, *intr, cams.width, cams.height)
    out = recon3d.render(scene, c, backend=backend, background=(0.1, 0.2, 0.3), **kwargs)
    loss = (out.rgb * weights[0]).sum() + (out.depth * weights[1]).sum() + (out.alpha * weights[2]).sum()
    loss.backward()
    return [w2c.grad] + [t.grad for t in intr]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-8), (torch.float32, 2e-3)])
def test_camera_grads_cpu_match_reference(dtype, tol):
    scene = edge_case_scene(3, seed=4, camera_eye=EYES[0], camera_target=(0.0, 0.0, 0.0), dtype=dtype)
    scene = recon3d.GaussianScene.cat([scene, random_scene(160, 3, seed=9, dtype=dtype)])
    cams = cameras(37, 29, EYES).to(dtype=dtype)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(3, 29, 37, k, generator=g).to(dtype) for k in (3, 1, 1)]
    ref = _camera_grads("reference", scene, cams, weights)
    cpu = _camera_grads("cpu", scene, cams, weights)
    for name, a, b in zip(CAMERA_FIELDS, ref, cpu):
        scale = max(1.0, float(a.abs().max()))
        assert torch.allclose(a, b, atol=tol * scale, rtol=tol), (name, a, b)
    assert float(ref[0].abs().sum()) > 0 and float(ref[1].abs().sum()) > 0


def test_no_camera_grad_when_cameras_are_constant():
    """Cameras that do not require grad get none, and the scene's gradients are those of a plain render."""
    scene = tiny_scene(seed=1, sh_degree=2)
    params = [t.detach().clone().requires_grad_() for t in scene.tensors()]
    cams = tiny_cameras(2).to(dtype=torch.float64)
    out = recon3d.render(recon3d.GaussianScene(*params), cams, backend="cpu")
    out.rgb.sum().backward()
    assert cams.world_to_camera.grad is None and cams.fx.grad is None
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_camera_gradcheck_antialiased_off_centre(backend):
    """Anti-aliased mode (its opacity compensation depends on the projected covariance, so on the camera) with
    principal points a few pixels off the image centre, on a non-square image: against finite differences."""
    scene = tiny_scene(seed=12, sh_degree=3)
    cams = tiny_cameras(2).to(dtype=torch.float64)
    cams = recon3d.Cameras(cams.world_to_camera, cams.fx, cams.fy,
                           cams.cx + torch.tensor([2.3, -1.7], dtype=torch.float64),
                           cams.cy + torch.tensor([-1.1, 1.9], dtype=torch.float64), cams.width, cams.height)
    inputs = tuple(getattr(cams, k).detach().clone().requires_grad_() for k in CAMERA_FIELDS)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)

    def fn(w2c, fx, fy, cx, cy):
        c = recon3d.Cameras(w2c, fx, fy, cx, cy, cams.width, cams.height)
        out = recon3d.render(scene, c, background=bg, sh_degree=3, backend=backend, antialiased=True)
        return out.rgb, out.alpha, out.depth

    with torch.no_grad():
        assert float(fn(*inputs)[1].max()) > 0.3
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
