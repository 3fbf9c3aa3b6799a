"""The cpu kernels' projection step on its own, against the dense reference's ``project``.

In float32 the projection forward and backward loops are vectorised over Gaussians (16 per AVX-512
vector, glibc's vector expf/logf); float64 runs the scalar loop. These tests use float32 scenes large
enough to span several of the driver's 2048-Gaussian chunks and a partial last vector, with culled
Gaussians (behind the camera, transparent, off-screen), zero and tiny quaternions, several cameras (the
accumulating path) and a stored SH degree above the one used (coefficients the loops do not write).
"""

from __future__ import annotations

import math

import pytest
import torch

import recon3d
from recon3d.backends import kernels, reference
from recon3d.cameras import look_at_world_to_camera

N = 2 * 2048 + 37  # three chunks, the last not a multiple of 16
EYES = [(0.3, -3.0, 1.1), (2.6, 1.2, -0.9), (-1.5, 2.2, 2.0)]


def projection_scene(sh_degree: int, seed: int) -> recon3d.GaussianScene:
    """Random float32 Gaussians around the origin; the first ones are edge cases for camera 0."""
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2 - 1
    means = torch.rand(N, 3, generator=g) * 2.0 - 1.0
    scales = math.log(0.05) + 0.5 * torch.randn(N, 3, generator=g)
    quats = torch.randn(N, 4, generator=g) * (torch.rand(N, 1, generator=g) * 2.8 + 0.2)
    opac = 1.5 * torch.randn(N, generator=g)
    c2w = torch.linalg.inv(look_at_world_to_camera(EYES[0], (0.0, 0.0, 0.0)))

    def at_view(x: float, y: float, z: float) -> torch.Tensor:
        return (c2w @ torch.tensor([x, y, z, 1.0]))[:3]

    quats[0] = 0.0  # zero quaternion -> identity, no quaternion gradient
    quats[1] *= 1e-3  # tiny but non-zero norm
    means[2] = at_view(0.1, 0.0, -0.5)  # behind camera 0
    opac[3] = -8.0  # below 1/255: culled in every camera
    means[4] = at_view(40.0, 0.0, 2.0)  # far off-screen for camera 0
    opac[5] = 9.0  # near 1
    return recon3d.GaussianScene(
        means=means,
        scales=scales,
        quats=quats,
        opacities=opac,
        sh0=torch.randn(N, 1, 3, generator=g),
        shN=0.3 * torch.randn(N, k, 3, generator=g),
    )


def projection_cameras(n_cams: int, dtype: torch.dtype = torch.float32) -> recon3d.Cameras:
    w2c = torch.stack([look_at_world_to_camera(e, (0.0, 0.0, 0.0)) for e in EYES[:n_cams]]).to(dtype)
    width, height = 64, 48
    f = 0.5 * width / math.tan(0.45)
    full = torch.full((n_cams,), 1.0, dtype=dtype)
    return recon3d.Cameras(
        world_to_camera=w2c, fx=full * f, fy=full * f, cx=full * (width / 2 - 0.3), cy=full * (height / 2 + 0.2),
        width=torch.full((n_cams,), width), height=torch.full((n_cams,), height),
    )


def kernel_projection(scene: recon3d.GaussianScene, cams: recon3d.Cameras, sh_degree: int):
    """_Project (the autograd function the cpu backend uses) on leaf copies of the scene's tensors."""
    ext = kernels.load_kernels()
    height, width = cams.image_size()
    leaves = [t.detach().clone().contiguous().requires_grad_() for t in scene.tensors()]
    viewmats = cams.world_to_camera.contiguous()
    intr = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], -1).contiguous()
    outs = kernels._Project.apply(*leaves, viewmats, intr, cams.centers().contiguous(), width, height, sh_degree, ext)
    return leaves, outs


def reference_projection(scene: recon3d.GaussianScene, cams: recon3d.Cameras, sh_degree: int):
    leaves = [t.detach().clone().requires_grad_() for t in scene.tensors()]
    proj = reference.project(recon3d.GaussianScene(*leaves), cams, sh_degree)
    return leaves, proj


@pytest.mark.parametrize("sh_stored, sh_used, n_cams", [(3, 3, 1), (3, 2, 2), (1, 1, 3), (2, 0, 1)])
def test_float32_projection_forward_matches_reference(sh_stored, sh_used, n_cams):
    scene = projection_scene(sh_stored, seed=sh_stored * 10 + n_cams)
    cams = projection_cameras(n_cams)
    _, (means2d, conics, colors, opac, depths, radii, _ext) = kernel_projection(scene, cams, sh_used)
    _, ref = reference_projection(scene, cams, sh_used)
    assert torch.equal(radii, ref.radii)
    vis = ref.visible
    assert 0 < int(vis.sum()) < vis.numel()  # both visible and culled Gaussians
    for name, a, b in [
        ("means2d", means2d, ref.means2d), ("conics", conics, ref.conics), ("colors", colors, ref.colors),
        ("opacities", opac, ref.opacities), ("depths", depths, ref.depths),
    ]:
        a, b = a.detach()[vis], b.detach()[vis]
        rel = float((a - b).norm() / b.norm())
        assert rel <= 1e-5, f"{name}: relative error {rel:.3g}"
    assert float(colors.detach()[~vis].abs().sum()) == 0.0  # culled: no colour


@pytest.mark.parametrize("sh_stored, sh_used, n_cams", [(3, 3, 1), (3, 2, 2), (1, 1, 3), (2, 0, 1)])
def test_float32_projection_backward_matches_reference(sh_stored, sh_used, n_cams):
    """Random upstream gradients, non-zero for culled Gaussians too: the kernel must ignore those (the
    rasterizer never reads a culled Gaussian), so the reference gets them masked out."""
    scene = projection_scene(sh_stored, seed=100 + sh_stored * 10 + n_cams)
    cams = projection_cameras(n_cams)
    k_leaves, k_outs = kernel_projection(scene, cams, sh_used)
    radii = k_outs[5]
    vis = radii > 0
    g = torch.Generator().manual_seed(7)
    ups = [torch.randn(t.shape, generator=g) for t in k_outs[:5]]
    sum(((o * u).sum() for o, u in zip(k_outs[:5], ups)), torch.zeros(())).backward()

    # float64 reference from the same float32 values
    r_leaves, ref = reference_projection(scene.to(dtype=torch.float64), projection_cameras(n_cams, torch.float64), sh_used)
    assert torch.equal(ref.visible, vis)
    r_outs = [ref.means2d, ref.conics, ref.colors, ref.opacities, ref.depths]
    loss = torch.zeros((), dtype=torch.float64)
    for o, u in zip(r_outs, ups):
        mask = vis.reshape(vis.shape + (1,) * (o.dim() - vis.dim())).to(torch.float64)
        loss = loss + (o * u.to(torch.float64) * mask).sum()
    loss.backward()

    names = ("means", "scales", "quats", "opacities", "sh0", "shN")
    for name, a, b in zip(names, k_leaves, r_leaves):
        ref_grad = b.grad if b.grad is not None else torch.zeros_like(b)
        assert a.grad is not None and a.grad.shape == ref_grad.shape, name
        if float(ref_grad.norm()) == 0.0:  # shN at SH degree 0
            assert float(a.grad.norm()) == 0.0, name
            continue
        rel = float((a.grad.double() - ref_grad).norm() / ref_grad.norm())
        assert rel <= 1e-4, f"{name}: relative error {rel:.3g}"
    culled_everywhere = ~vis.any(dim=0)
    assert bool(culled_everywhere[3])  # the transparent one
    for name, a in zip(names, k_leaves):
        assert float(a.grad[culled_everywhere].abs().sum()) == 0.0, name
    assert float(k_leaves[2].grad[0].abs().sum()) == 0.0  # zero quaternion: constant identity
    used = (sh_used + 1) ** 2 - 1
    assert float(k_leaves[5].grad[:, used:].abs().sum()) == 0.0  # coefficients above the degree used
