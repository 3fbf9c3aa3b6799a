"""The CPU pixel loops (AVX-512 build) take exp without its clamp at -80 and run with denormal results flushed to
zero instead. Tiny Gaussians put most lanes of every row they visit far below -80 (where the unclamped exp and
the products after it underflow): images and gradients must still match the dense reference, and the caller's
floating-point mode must come back as it was (denormals still representable after a render)."""

from __future__ import annotations

import math

import torch
from test_render_blend_batches import _grads, camera

import recon3d


def tiny_scene(n: int, seed: int) -> recon3d.GaussianScene:
    """Gaussians of ~0.1-0.3 px (64 px image) spread over the view, some opaque, some faint."""
    g = torch.Generator().manual_seed(seed)
    means = torch.stack([torch.rand(n, generator=g) * 1.8 - 0.9, torch.rand(n, generator=g) * 1.8 - 0.9,
                         torch.rand(n, generator=g) * 0.6 - 0.3], -1)
    scales = math.log(0.006) + 0.4 * torch.randn(n, 3, generator=g)
    quats = torch.randn(n, 4, generator=g)
    return recon3d.GaussianScene(means=means, scales=scales, quats=quats,
                                 opacities=2.0 * torch.randn(n, generator=g),
                                 sh0=torch.randn(n, 1, 3, generator=g), shN=0.2 * torch.randn(n, 3, 3, generator=g))


def test_tiny_gaussians_match_reference():
    scene = tiny_scene(300, seed=4)
    cams = camera(64, 48)
    ref, ref_g = _grads(scene, cams, "reference")
    cpu, cpu_g = _grads(scene, cams, "cpu")
    assert float(cpu.alpha.detach().max()) > 0.5  # the scene draws something
    for name in ("rgb", "alpha", "depth"):
        diff = float((getattr(ref, name) - getattr(cpu, name)).detach().abs().max())
        assert diff <= 1e-4, f"{name}: max abs diff {diff:.3g}"
    for name, a in ref_g.items():
        rel = float((a - cpu_g[name]).norm() / a.norm())
        assert rel <= 1e-3, f"{name}: relative error {rel:.3g}"


def test_render_leaves_denormals_on():
    tiny = torch.tensor([1e-38], dtype=torch.float32)
    assert float(tiny * 1e-3) > 0  # denormals work before
    _grads(tiny_scene(50, seed=1), camera(32, 32), "cpu")
    assert float(tiny * 1e-3) > 0  # and after a forward and backward on this thread
