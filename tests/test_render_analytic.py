"""A closed-form case: one isotropic Gaussian seen head-on renders the 2D Gaussian
alpha = o·exp(-½ r² / (σ_px² + 0.3)) with σ_px = f·σ/z (0 below 1/255, at most 0.99)."""

from __future__ import annotations

import math

import pytest
import torch

import recon3d
from recon3d.constants import ALPHA_MAX, ALPHA_MIN, LOW_PASS, SH_C0


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("sigma, opacity, z", [(0.05, 0.8, 2.0), (0.2, 0.995, 3.0), (0.002, 0.6, 1.5)])
def test_head_on_isotropic_gaussian(backend, sigma, opacity, z):
    width, height, f = 41, 33, 60.0
    cx, cy = 20.3, 16.1  # the Gaussian lands between pixel centres
    # float64 throughout, so the comparison with the closed form is exact up to rounding
    f64 = torch.float64
    colour = torch.tensor([0.9, 0.4, 0.1], dtype=f64)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=f64)
    scene = recon3d.GaussianScene(
        means=torch.tensor([[0.0, 0.0, z]], dtype=f64),
        scales=torch.full((1, 3), math.log(sigma), dtype=f64),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=f64),
        opacities=torch.logit(torch.tensor([opacity], dtype=f64)),
        sh0=((colour - 0.5) / SH_C0)[None, None, :],
    )
    cams = recon3d.Cameras(torch.eye(4, dtype=f64)[None], fx=f, fy=f, cx=cx, cy=cy, width=width, height=height)
    out = recon3d.render(scene, cams, background=bg, backend=backend)

    # the expected image, by hand
    sigma_px2 = (f * sigma / z) ** 2 + LOW_PASS
    u = torch.arange(width, dtype=torch.float64) + 0.5
    v = torch.arange(height, dtype=torch.float64) + 0.5
    r2 = (u[None, :] - cx) ** 2 + (v[:, None] - cy) ** 2
    alpha = opacity * torch.exp(-0.5 * r2 / sigma_px2)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha.clamp(max=ALPHA_MAX), torch.zeros_like(alpha))
    rgb = alpha[..., None] * colour + (1 - alpha[..., None]) * bg
    depth = torch.where(alpha > 0, torch.full_like(alpha, z), torch.zeros_like(alpha))
    radius = math.ceil(math.sqrt(2 * math.log(opacity / ALPHA_MIN) * sigma_px2))

    assert (out.alpha[0, ..., 0] - alpha).abs().max() <= 1e-12
    assert (out.rgb[0] - rgb).abs().max() <= 1e-12
    assert (out.depth[0, ..., 0] - depth).abs().max() <= 1e-12
    assert int(out.radii[0, 0]) == radius
    assert torch.allclose(out.means2d[0, 0], torch.tensor([cx, cy], dtype=torch.float64), rtol=0, atol=1e-12)
