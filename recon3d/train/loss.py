"""The training loss and the finiteness test of the parameters (the C paths on a CPU, torch elsewhere)."""

from __future__ import annotations

import torch

from . import cpu_ops


def image_loss(rendered: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    """L1 + ssim_weight·(1 − SSIM) of one H×W×3 image."""
    if ssim_weight > 0:
        # one C call for the value, the gradient and the MSE on a CPU (float32); None elsewhere
        fused = cpu_ops.fused_image_loss(rendered, target, ssim_weight)
        if fused is not None:
            return fused[0]
    l1 = (rendered - target).abs().mean()
    if ssim_weight == 0:
        return l1
    # the fused C SSIM (same value and gradient as recon3d.metrics.ssim) where it applies: CPU float32
    return l1 + ssim_weight * (1.0 - cpu_ops.ssim_loss_term(rendered, target))


def background_color(name: str) -> torch.Tensor:
    """The RGB of a background name (white; black otherwise)."""
    return torch.ones(3) if name == "white" else torch.zeros(3)


def params_finite(params: dict[str, torch.Tensor]) -> bool:
    """Whether every element of every parameter is finite."""
    # A NaN or ±Inf anywhere makes a tensor's sum NaN or ±Inf, so a finite sum proves every element finite
    # (one cheap reduction: isfinite().all() costs 15× more on a CPU); a non-finite sum may also be an
    # overflow of large finite values, so only then is the elementwise test run, and its answer is exact.
    tensors = [p.detach() for p in params.values() if p.numel()]
    if not tensors:
        return True
    exact = cpu_ops.all_finite(tensors)  # one C pass over every tensor (CPU float32), exact
    if exact is not None:
        return exact
    if bool(torch.isfinite(torch.stack([t.sum() for t in tensors])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)
