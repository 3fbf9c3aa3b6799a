"""SSIM and PSNR against an independent NumPy/SciPy implementation of Wang et al. 2004."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from recon3d.metrics import psnr, ssim, ssim_map


def numpy_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM with an 11×11 Gaussian window (σ = 1.5) over the valid region, written from the paper."""
    r = np.arange(11) - 5.0
    w = np.exp(-(r**2) / (2 * 1.5**2))
    w /= w.sum()

    def filt(img):
        out = correlate1d(img, w, axis=0, mode="constant")
        out = correlate1d(out, w, axis=1, mode="constant")
        return out[5:-5, 5:-5]  # drop the border, where the window leaves the image

    values = []
    for c in range(x.shape[2]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        mu_a, mu_b = filt(a), filt(b)
        var_a = filt(a * a) - mu_a**2
        var_b = filt(b * b) - mu_b**2
        cov = filt(a * b) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(32, 32), (23, 41), (11, 11)])
def test_ssim_matches_numpy_reference(shape):
    rng = np.random.default_rng(0)
    x = rng.random((*shape, 3))
    # a structured, partly correlated second image
    y = np.clip(0.6 * x + 0.3 * rng.random((*shape, 3)) + 0.05, 0, 1)
    got = float(ssim(torch.from_numpy(x), torch.from_numpy(y)))
    assert got == pytest.approx(numpy_ssim(x, y), abs=1e-9)
    got32 = float(ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float()))
    assert got32 == pytest.approx(numpy_ssim(x, y), abs=1e-5)


def test_ssim_identity_and_shape():
    x = torch.rand(20, 30, 3)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert ssim_map(x, x).shape == (1, 3, 10, 20)
    assert float(ssim(x, 1 - x)) < 0.5
    with pytest.raises(ValueError):
        ssim(torch.rand(8, 8, 3), torch.rand(8, 8, 3))


def test_ssim_gradient_matches_finite_differences():
    torch.manual_seed(0)
    x = torch.rand(14, 13, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(14, 13, 3, dtype=torch.float64)
    # fast mode checks random directional derivatives against finite differences (the full Jacobian is slow)
    assert torch.autograd.gradcheck(lambda a: ssim(a, y), (x,), fast_mode=True)


def test_psnr_closed_form():
    x = torch.full((8, 8, 3), 0.5)
    assert psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-5)  # MSE 0.01
    assert psnr(x, x) == float("inf")
