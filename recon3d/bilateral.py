"""Bilateral grids: a small 3-D grid of 3×4 colour transforms over (x, y, luminance) of an image.

Sliced at a pixel, the grid gives the transform interpolated trilinearly at the pixel's position across the
image and its luminance; the pixel's colour goes through it (out = A·[r, g, b, 1]). Learnt per training
image, a grid absorbs exposure, white balance, vignetting and tone curves that vary across a capture
("bilateral guided" radiance-field processing); ``recon3d.train.appearance.BilateralGridAppearance`` trains
them, and the NeRF-W evaluation protocol fits the grid's luminance axis on the left half of a held-out
image (``fit_luminance_grid``). Grids are stored as 12×L×Gy×Gx tensors (row-major 3×4 per cell), the layout
``grid_sample`` reads; a shape is written (Gx, Gy, L).
"""

from __future__ import annotations

import torch

LUMA = (0.299, 0.587, 0.114)  # Rec. 601 luminance: the grid's third axis


def identity_grid(shape: tuple[int, int, int], count: int = 1, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``count`` bilateral grids of identity transforms: count×12×L×Gy×Gx for ``shape`` = (Gx, Gy, L)."""
    gx, gy, levels = shape
    eye = torch.eye(3, 4, device=device, dtype=dtype).reshape(12, 1, 1, 1)
    return eye.expand(12, levels, gy, gx).repeat(count, 1, 1, 1, 1)


def slice_grid(grid: torch.Tensor, rgb: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
    """H×W×3 ``rgb`` through one bilateral grid (12×L×Gy×Gx: a 3×4 transform per cell), differentiably.

    Each pixel takes the transform interpolated trilinearly at (its position across the image, its
    luminance) — grid corners sit on the corner pixels and on luminance 0 and 1 — and applies it to its
    colour: out = A·[r, g, b, 1]. ``guide`` (H×W) is the luminance; by default that of ``rgb`` itself.
    """
    h, w = rgb.shape[:2]
    if guide is None:
        guide = rgb @ torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=rgb.dtype, device=rgb.device) if w > 1 else rgb.new_zeros(1)
    ys = torch.linspace(-1.0, 1.0, h, dtype=rgb.dtype, device=rgb.device) if h > 1 else rgb.new_zeros(1)
    coords = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), guide * 2 - 1], -1)
    # grid_sample on a 5-D input is trilinear; border padding clamps luminance outside [0, 1]
    cells = torch.nn.functional.grid_sample(grid[None].to(rgb.dtype), coords[None, None], mode="bilinear",
                                            padding_mode="border", align_corners=True)  # 1×12×1×H×W
    a = cells.view(3, 4, h, w)
    r, g, b = rgb.unbind(-1)
    return torch.stack([a[c, 0] * r + a[c, 1] * g + a[c, 2] * b + a[c, 3] for c in range(3)], -1)


def grid_total_variation(grid: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring cells along each of the grid's three axes, summed."""
    total = grid.new_zeros(())
    for axis in (-1, -2, -3):
        if grid.shape[axis] > 1:
            total = total + grid.diff(dim=axis).square().mean()
    return total


def fit_luminance_grid(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                       levels: int = 8, ridge: float = 1e-4, smooth: float = 1e-3) -> torch.Tensor:
    """The 1×1×``levels`` grid (12×L×1×1) whose slice of ``prediction`` best matches ``target``, by least squares.

    A grid varying only with luminance: the part of a bilateral grid that the left half of an image says
    anything about for its right half. Closed form: the slice is linear in the grid, so this is a small
    ridge regression (towards the identity) with a smoothness term between neighbouring levels.
    """
    x = prediction.detach().double().reshape(-1, 3)
    y = target.detach().double().reshape(-1, 3)
    if mask is not None:
        keep = mask.reshape(-1) > 0.5
        x, y = x[keep], y[keep]
    n = max(len(x), 1)
    lum = (x @ torch.tensor(LUMA, dtype=x.dtype, device=x.device)).clamp(0, 1) * (levels - 1)
    lo = lum.floor().clamp(max=max(levels - 2, 0)).long()
    frac = lum - lo
    weights = x.new_zeros(len(x), levels)
    weights.scatter_add_(1, lo[:, None], (1 - frac)[:, None])
    if levels > 1:
        weights.scatter_add_(1, (lo + 1)[:, None], frac[:, None])
    x1 = torch.cat([x, x.new_ones(len(x), 1)], 1)
    features = (weights[:, :, None] * x1[:, None, :]).reshape(len(x), levels * 4)
    diff = torch.eye(levels, dtype=x.dtype, device=x.device).diff(dim=0)  # (L−1)×L first differences
    penalty = ridge * torch.eye(levels * 4, dtype=x.dtype, device=x.device)
    penalty = penalty + smooth * torch.kron(diff.T @ diff, torch.eye(4, dtype=x.dtype, device=x.device))
    identity = torch.eye(4, 3, dtype=x.dtype, device=x.device).repeat(levels, 1)  # (L·4)×3: A = [I | 0]
    solution = torch.linalg.solve(features.T @ features / n + penalty,
                                  features.T @ y / n + ridge * identity)  # (L·4)×3
    # solution[l·4 + j, c] is A_l[c, j]; the grid row c·4 + j at level l
    return solution.reshape(levels, 4, 3).permute(2, 1, 0).reshape(12, levels, 1, 1).float()
