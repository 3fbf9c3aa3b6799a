"""Finite-difference checks of the hand-written backward (cpu kernels, float64) and of the reference's
autograd, on tiny scenes, with torch.autograd.gradcheck."""

from __future__ import annotations

import pytest
import torch

import recon3d
from recon3d.cameras import look_at_world_to_camera


def tiny_scene(seed: int, sh_degree: int) -> recon3d.GaussianScene:
    """Four well-separated-in-depth Gaussians in front of the camera, away from the clamp thresholds."""
    g = torch.Generator().manual_seed(seed)
    n = 4
    means = torch.tensor([[0.0, 0.0, 0.0], [0.25, -0.15, 0.3], [-0.2, 0.2, -0.35], [0.1, 0.25, 0.6]])
    means = means + 0.05 * torch.randn(n, 3, generator=g)
    k = (sh_degree + 1) ** 2 - 1
    return recon3d.GaussianScene(
        means=means,
        scales=torch.log(torch.tensor(0.25)) + 0.3 * torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g) * 1.7,
        opacities=torch.tensor([0.3, -0.2, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.randn(n, k, 3, generator=g) * 0.3,
    ).to(dtype=torch.float64)


def tiny_cameras(n: int) -> recon3d.Cameras:
    eyes = [(2.2, 0.4, 0.5), (0.3, 2.4, -0.6)][:n]
    w2c = torch.stack([look_at_world_to_camera(e, (0, 0, 0)) for e in eyes])
    return recon3d.Cameras(w2c, fx=14.0, fy=13.0, cx=6.2, cy=4.9, width=12, height=10)


def _render_fn(backend: str, cams: recon3d.Cameras, sh_degree: int, background: torch.Tensor):
    def fn(means, scales, quats, opacities, sh0, shN):
        scene = recon3d.GaussianScene(means, scales, quats, opacities, sh0, shN)
        out = recon3d.render(scene, cams, background=background, sh_degree=sh_degree, backend=backend)
        return out.rgb, out.alpha, out.depth

    return fn


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("sh_degree, n_cams", [(1, 1), (3, 2)])
def test_gradcheck(backend, sh_degree, n_cams):
    scene = tiny_scene(seed=sh_degree, sh_degree=sh_degree)
    cams = tiny_cameras(n_cams).to(dtype=torch.float64)
    inputs = tuple(t.detach().clone().requires_grad_() for t in scene.tensors())
    fn = _render_fn(backend, cams, sh_degree, torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64))
    # the scene is visible and gradients are not trivially zero
    with torch.no_grad():
        _, alpha, _ = fn(*inputs)
    assert float(alpha.max()) > 0.3
    # fast mode compares vᵀJu for random u, v against central differences (the full Jacobian costs minutes)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_means2d_gradient_matches_finite_differences():
    """means2d.grad (what densification reads) equals d loss / d means2d through the rasterizer."""
    from recon3d.backends import kernels

    scene = tiny_scene(seed=5, sh_degree=0)
    cams = tiny_cameras(1).to(dtype=torch.float64)
    bg = torch.zeros(1, 3, dtype=torch.float64)
    ext = kernels.load_kernels()
    height, width = cams.image_size()
    viewmats = cams.world_to_camera.contiguous()
    intr = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], -1).contiguous()
    proj = ext.project_forward(
        *[t.contiguous() for t in scene.tensors()], viewmats, intr, cams.centers().contiguous(), width, height, 0, 1
    )
    means2d, conics, colors, opac, depths, radii, extents = proj
    weights = torch.rand(1, height, width, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss_of(m2d: torch.Tensor) -> torch.Tensor:
        rgb = ext.rasterize_forward(m2d.contiguous(), conics, colors, opac, depths, radii, extents, bg, width, height, 1, 0)[0]
        return (rgb * weights).sum()

    m2d = means2d.detach().clone().requires_grad_()
    out = kernels._Rasterize.apply(m2d, conics, colors, opac, depths, radii, extents, bg, width, height, ext, False)
    (out[0] * weights).sum().backward()
    eps = 1e-6
    for i in range(means2d.shape[1]):
        for axis in range(2):
            plus, minus = means2d.clone(), means2d.clone()
            plus[0, i, axis] += eps
            minus[0, i, axis] -= eps
            fd = (loss_of(plus) - loss_of(minus)) / (2 * eps)
            assert abs(float(fd) - float(m2d.grad[0, i, axis])) <= 1e-6 + 1e-4 * abs(float(fd)), (i, axis)
