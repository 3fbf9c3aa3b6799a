"""Real spherical harmonics up to degree 3 with the 3DGS basis and sign conventions (PyTorch)."""

from __future__ import annotations

import torch

from .constants import SH_C0

SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_basis(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Basis values …×(degree+1)² for unit ``directions`` …×3."""
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(coeffs: torch.Tensor, directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Colour = Σ basis·coeffs + 0.5, clamped at 0 (as 3DGS does); ``coeffs`` …×K×3, ``directions`` …×3 unit."""
    k = (degree + 1) ** 2
    basis = sh_basis(directions, degree)
    return torch.clamp_min((basis[..., None] * coeffs[..., :k, :]).sum(dim=-2) + 0.5, 0.0)
