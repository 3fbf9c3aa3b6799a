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

from .bilateral import fit_luminance_grid, slice_grid

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


# ---------------------------------------------------------------------------------------------- opaque scenes
SEE_THROUGH_ALPHA = 0.95  # a rendered pixel with alpha below this shows the viewer's background through it
PROTOCOL_OPAQUE = "opaque"  # photos/video: content everywhere; judged over black AND white, the worse counts
PROTOCOL_COMPOSITED = "composited"  # RGBA object data (Blender): targets and renders composited on one colour


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of H×W×C ``values`` over the pixels where the H×W×1 ``mask`` is set (all pixels without one)."""
    if mask is None:
        return values.mean()
    weight = mask.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def masked_psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB over the pixels where ``mask`` (H×W×1, 1 = keep) is set."""
    mse = _masked_mean((prediction.detach().double() - target.detach().double()) ** 2,
                       None if mask is None else mask.double())
    if mse <= 0:
        return float("inf")
    return float(-10.0 * torch.log10(mse))


def masked_ssim(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean SSIM over the valid windows whose centre pixel is kept by ``mask``."""
    smap = ssim_map(prediction.detach().float(), target.detach().float())[0].permute(1, 2, 0)  # h×w×3
    if mask is None:
        return float(smap.mean())
    r = SSIM_WINDOW // 2
    m = mask.float()[r: mask.shape[0] - r, r: mask.shape[1] - r]
    return float(_masked_mean(smap, m)) if float(m.sum()) > 0 else float("nan")


def view_metrics(rgb_over_black: torch.Tensor, alpha: torch.Tensor, target: torch.Tensor, *,
                 protocol: str = PROTOCOL_OPAQUE, background: torch.Tensor | None = None,
                 target_alpha: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 nerfw: bool = False) -> dict[str, float]:
    """PSNR over black and over white, the see-through share and the protocol's PSNR/SSIM of one view.

    ``rgb_over_black`` (H×W×3) and ``alpha`` (H×W×1) are one render over a black background, so the render
    over any colour c is ``rgb_over_black + (1 − alpha)·c``. ``target`` is the photo (``opaque`` protocol:
    the scene must cover it, so it is compared with the render over black and over white, and ``psnr`` is
    the worse of the two) or an RGBA image composited on ``background`` (``composited`` protocol: ``psnr``
    is the render over that colour; over black/white use ``target_alpha`` to recomposite the target).
    ``mask`` (H×W×1, 1 = keep) restricts every figure to the kept pixels. ``nerfw`` adds the NeRF-W
    protocol's PSNR (``psnr_nerfw``: an affine colour transform fitted on the left half, PSNR on the right;
    ``psnr_nerfw_grid``: the same with a bilateral grid over luminance, the worse of black and white).
    """
    with torch.no_grad():
        rgb = rgb_over_black.detach().float()
        a = alpha.detach().float().reshape(*rgb.shape[:2], 1)
        t = target.detach().float().to(rgb.device)
        m = None if mask is None else mask.detach().float().reshape(*rgb.shape[:2], 1).to(rgb.device)
        black, white = torch.zeros(3, device=rgb.device), torch.ones(3, device=rgb.device)

        def over(color: torch.Tensor) -> torch.Tensor:
            return (rgb + (1 - a) * color).clamp(0, 1)

        see = (a < SEE_THROUGH_ALPHA).float()
        out = {"see_through": float(_masked_mean(see, m))}
        if protocol == PROTOCOL_COMPOSITED:
            bg = (torch.ones(3) if background is None else torch.as_tensor(background).float().reshape(3)).to(rgb.device)
            pred = over(bg)
            out["psnr"] = masked_psnr(pred, t, m)
            out["ssim"] = masked_ssim(pred, t, m)
            if target_alpha is not None:
                ta = target_alpha.detach().float().reshape(*rgb.shape[:2], 1).to(rgb.device)
                premult = t - (1 - ta) * bg  # the target's own colour times its alpha
                out["psnr_black"] = masked_psnr(over(black), (premult + (1 - ta) * black).clamp(0, 1), m)
                out["psnr_white"] = masked_psnr(over(white), (premult + (1 - ta) * white).clamp(0, 1), m)
            return out
        if protocol != PROTOCOL_OPAQUE:
            raise ValueError(f"unknown evaluation protocol {protocol!r}")
        pred_black, pred_white = over(black), over(white)
        out["psnr_black"] = masked_psnr(pred_black, t, m)
        out["psnr_white"] = masked_psnr(pred_white, t, m)
        worse = pred_black if out["psnr_black"] <= out["psnr_white"] else pred_white
        out["psnr"] = min(out["psnr_black"], out["psnr_white"])
        out["ssim"] = masked_ssim(worse, t, m)
        if nerfw:
            out["psnr_nerfw_black"] = nerfw_psnr(pred_black, t, m)
            out["psnr_nerfw_white"] = nerfw_psnr(pred_white, t, m)
            out["psnr_nerfw"] = min(out["psnr_nerfw_black"], out["psnr_nerfw_white"])
            out["psnr_nerfw_grid"] = min(nerfw_grid_psnr(pred_black, t, m), nerfw_grid_psnr(pred_white, t, m))
        return out


PROTOCOL_NOTES = {
    PROTOCOL_OPAQUE: "photos: the scene is rendered over black and over white and compared with each held-out "
                     "image; psnr/ssim are the worse of the two; see_through is the share of pixels with alpha < "
                     f"{SEE_THROUGH_ALPHA}",
    PROTOCOL_COMPOSITED: "RGBA object data: targets and renders composited on the data's background colour "
                         "(psnr/ssim); psnr_black/psnr_white recomposite both on black/white",
}


def fit_affine(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
               ridge: float = 1e-4) -> torch.Tensor:
    """The 3×4 transform M minimising Σ‖M·[rgb, 1] − target‖² over the (masked) pixels, by least squares."""
    x = prediction.detach().double().reshape(-1, 3)
    y = target.detach().double().reshape(-1, 3)
    if mask is not None:
        keep = mask.reshape(-1) > 0.5
        x, y = x[keep], y[keep]
    ones = torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
    x1 = torch.cat([x, ones], 1)
    # a small ridge towards the identity keeps a flat (e.g. one-colour) half from giving a wild transform
    identity = torch.cat([torch.eye(3, dtype=x.dtype, device=x.device), ones.new_zeros(3, 1)], 1)
    n = max(len(x1), 1)
    gram = x1.T @ x1 / n + ridge * torch.eye(4, dtype=x.dtype, device=x.device)
    rhs = x1.T @ y / n + ridge * identity.T
    return torch.linalg.solve(gram, rhs).T.float()  # 3×4


def apply_affine(rgb: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a 3×4 affine colour transform to an H×W×3 image."""
    m = matrix.to(rgb.device, rgb.dtype)
    return rgb @ m[:, :3].T + m[:, 3]


def nerfw_grid_psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                    levels: int = 8) -> float:
    """NeRF-W protocol for the bilateral-grid model: a grid over luminance (``levels`` cells of 3×4
    transforms: a colour transform per brightness, i.e. tone curves) fitted on the left half, PSNR on the right.

    The grid's x/y cells over the right half get no data from the left half, so only its luminance axis is fitted.
    """
    half = prediction.shape[1] // 2
    left_mask = None if mask is None else mask[:, :half]
    grid = fit_luminance_grid(prediction[:, :half], target[:, :half], left_mask, levels=levels)
    right = slice_grid(grid.to(prediction.device), prediction[:, half:].float()).clamp(0, 1)
    return masked_psnr(right, target[:, half:], None if mask is None else mask[:, half:])


def nerfw_psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """NeRF-W protocol: fit the affine appearance on the left half of the image, PSNR on the right half."""
    w = prediction.shape[1]
    half = w // 2
    left_mask = None if mask is None else mask[:, :half]
    matrix = fit_affine(prediction[:, :half], target[:, :half], left_mask)
    right = apply_affine(prediction[:, half:].float(), matrix).clamp(0, 1)
    return masked_psnr(right, target[:, half:], None if mask is None else mask[:, half:])
