"""Image quality metrics: PSNR and SSIM (11×11 Gaussian window, σ = 1.5), in PyTorch.

Images are H×W×3 (or B×H×W×3) float tensors in [0, 1]. SSIM follows Wang et al. 2004 with the usual
constants C1 = (0.01·L)², C2 = (0.03·L)², L = 1, and a Gaussian window applied over the *valid* region
(no padding), as scikit-image and torchmetrics do; the training loss uses the same function.
LPIPS needs pretrained network weights that recon3d does not ship and never downloads at run time, so it
is reported only when ``lpips_available()`` finds them installed locally.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (inf when identical)."""
    mse = torch.mean((prediction.detach().double() - target.detach().double()) ** 2)
    if mse <= 0:
        return float("inf")
    return float(-10.0 * torch.log10(mse))


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _to_bchw(image: torch.Tensor) -> torch.Tensor:
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an H×W×C or B×H×W×C image, got shape {tuple(image.shape)}")
    return image.permute(0, 3, 1, 2)


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    # Separable Gaussian: rows then columns, depthwise over channels, valid region only.
    c = x.shape[1]
    k = window.numel()
    x = F.conv2d(x, window.reshape(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, window.reshape(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM over the valid region, B×C×(H−10)×(W−10); differentiable in ``prediction``."""
    x, y = _to_bchw(prediction), _to_bchw(target).to(prediction.dtype)
    if x.shape != y.shape:
        raise ValueError(f"SSIM of images of different shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {tuple(x.shape[-2:])}")
    window = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA, x.dtype, str(x.device))
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    sxx = _blur(x * x, window) - mu_x * mu_x
    syy = _blur(y * y, window) - mu_y * mu_y
    sxy = _blur(x * y, window) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sxy + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sxx + syy + SSIM_C2)
    return num / den


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (a 0-d tensor, differentiable in ``prediction``)."""
    return ssim_map(prediction, target).mean()


def lpips_available() -> bool:
    """True only if LPIPS weights are installed locally (recon3d never downloads them)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False
    # The lpips package carries its linear heads, but its backbone comes from torchvision's download
    # cache; without a cached backbone it would try the network, which recon3d must not do.
    import os
    from pathlib import Path

    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return hub.is_dir() and any(p.name.startswith(("alexnet", "vgg16")) for p in hub.iterdir())


def image_metrics(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR and SSIM of one H×W×3 image against its target."""
    with torch.no_grad():
        p = prediction.detach().clamp(0, 1).float()
        t = target.detach().float()
        return {"psnr": psnr(p, t), "ssim": float(ssim(p, t))}
