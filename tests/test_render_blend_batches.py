"""The CPU forward blend walks each tile's Gaussians in batches of 16, a flat list of (Gaussian, row) visits per
batch, and a pixel that stops parks its transmittance (trans = 0 afterwards); the backward reads the row masks
the batches wrote. These scenes put many thin, opaque Gaussians into every tile (several batches), so rows stop
in the middle of a batch and later Gaussians of the batch still visit them, and leave Gaussians that reach no
row between ones that do; forward and backward must still match the dense reference."""

from __future__ import annotations

import math

import pytest
import torch

import recon3d
from recon3d.backends import kernels

PARAMS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def striped_scene(n: int, seed: int, dtype: torch.dtype) -> recon3d.GaussianScene:
    """Flat Gaussians, long in x and thin in y (1-3 pixel rows at 48 px), mostly opaque, at random depths."""
    g = torch.Generator().manual_seed(seed)
    means = torch.stack([torch.rand(n, generator=g) * 1.6 - 0.8, torch.rand(n, generator=g) * 1.6 - 0.8,
                         torch.rand(n, generator=g) * 0.8 - 0.4], -1)
    scales = torch.stack([torch.full((n,), math.log(0.3)), math.log(0.012) + 0.4 * torch.randn(n, generator=g),
                          torch.full((n,), math.log(0.01))], -1)
    # a small random tilt, so the stripes are not aligned with the pixel rows
    angle = (torch.rand(n, generator=g) - 0.5) * 0.3
    quats = torch.stack([torch.cos(angle / 2), torch.zeros(n), torch.zeros(n), torch.sin(angle / 2)], -1)
    return recon3d.GaussianScene(
        means=means, scales=scales, quats=quats,
        opacities=2.5 + torch.randn(n, generator=g),  # logits: most alphas near the 0.99 cap
        sh0=torch.randn(n, 1, 3, generator=g), shN=0.2 * torch.randn(n, 3, 3, generator=g),
    ).to(dtype=dtype)


def camera(width: int, height: int) -> recon3d.Cameras:
    """Head-on view of the stripes (the scene spans about the whole image)."""
    return recon3d.Cameras.look_at((0.0, 0.0, 2.6), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), fov_x=0.75, width=width,
                                   height=height)


def _grads(scene, cams, backend: str):
    s = scene.clone().requires_grad_()
    out = recon3d.render(s, cams, backend=backend, background=torch.tensor([0.3, 0.6, 0.9]), sh_degree=1)
    g = torch.Generator().manual_seed(11)
    w = [torch.rand(t.shape, generator=g, dtype=t.dtype) for t in (out.rgb, out.alpha, out.depth)]
    loss = (out.rgb * w[0]).sum() + (out.alpha * w[1]).sum() + 0.1 * (out.depth * w[2]).sum()
    loss.backward()
    grads = {p: getattr(s, p).grad for p in PARAMS}
    grads["means2d"] = out.means2d.grad
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_blend_matches_reference_where_rows_stop_mid_batch(dtype):
    scene = striped_scene(400, seed=3, dtype=dtype)
    cams = camera(48, 45)  # 3 x 3 tiles, the last row of tiles partial
    ref, ref_g = _grads(scene, cams, "reference")
    cpu, cpu_g = _grads(scene, cams, "cpu")
    stats = kernels.render(scene, cams, torch.tensor([0.3, 0.6, 0.9], dtype=dtype), 1, return_stats=True)
    # the scene does what the docstring says: tiles hold several batches of Gaussians, and pixels stop
    # (alpha at 1 - T_MIN) after many different numbers of them, so rows stop at many points of a batch
    stopped = stats.alpha[..., 0] > 0.999
    assert float(stopped.float().mean()) > 0.3
    assert int(stats.n_contrib[stopped].unique().numel()) > 5
    assert float(stats.n_contrib.float().max()) > 16
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for name in ("rgb", "alpha", "depth"):
        diff = float((getattr(ref, name) - getattr(cpu, name)).detach().abs().max())
        assert diff <= tol, f"{name}: max abs diff {diff:.3g}"
    for name, a in ref_g.items():
        rel = float((a - cpu_g[name]).norm() / a.norm())
        assert rel <= 1e-3, f"{name}: relative error {rel:.3g}"


def test_batched_blend_same_on_one_and_two_threads():
    """Tiles handed to two threads in any order composite the same pixels (the forward is per tile)."""
    scene = striped_scene(600, seed=5, dtype=torch.float32)
    cams = camera(64, 40)
    outs = []
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            outs.append(recon3d.render(scene, cams, backend="cpu", background=torch.zeros(3), sh_degree=1))
        finally:
            torch.set_num_threads(old)
    for name in ("rgb", "alpha", "depth"):
        assert torch.equal(getattr(outs[0], name), getattr(outs[1], name)), name
