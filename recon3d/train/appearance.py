"""Per-image appearance learned with the scene: photos of one capture differ in exposure and white balance.

``AffineAppearance`` gives every training image a 3×4 colour transform, rgb' = A·rgb + b, applied to the
rendered image before the loss; the scene itself keeps one *neutral* appearance (A = I, b = 0), which is
what ``scene.ply`` stores and what a viewer shows. The transforms and the scene's colours could trade any
common transform between them, so a small regulariser holds the mean transform over the images at the
identity: the neutral appearance is then the capture's average exposure and white balance.

``recon3d.metrics.fit_affine`` is the NeRF-W evaluation protocol for held-out images: the transform that best
maps the neutral render to the image on its left half, by least squares (closed form), applied to the right half.
"""

from __future__ import annotations

from typing import Any

import torch

from ..metrics import apply_affine, fit_affine  # noqa: F401  (the evaluation side of the same model)

APPEARANCE_MODES = ("none", "affine")


class AffineAppearance:
    """A learnable 3×4 affine colour transform per image (stored as its difference from the identity)."""

    def __init__(self, num_images: int, device: torch.device | str = "cpu", *, lr: float = 1e-3,
                 mean_weight: float = 1.0) -> None:
        self.delta = torch.zeros(num_images, 3, 4, device=device, requires_grad=True)
        self.lr = lr
        self.mean_weight = mean_weight
        self.optimizer = torch.optim.Adam([self.delta], lr=lr, eps=1e-15)

    def apply(self, rgb: torch.Tensor, index: int) -> torch.Tensor:
        """H×W×3 ``rgb`` as image ``index`` saw it."""
        d = self.delta[index]
        matrix = d[:, :3] + torch.eye(3, device=rgb.device, dtype=rgb.dtype)
        return rgb @ matrix.T + d[:, 3]

    def regulariser(self) -> torch.Tensor:
        """Holds the mean transform at the identity, so the scene keeps the capture's average appearance."""
        return self.mean_weight * self.delta.mean(0).square().sum()

    def step(self, lr_scale: float = 1.0) -> None:
        """One Adam step on the transforms, then clear their gradient."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * lr_scale
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"delta": self.delta.detach().cpu().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""
        with torch.no_grad():
            self.delta.copy_(state["delta"].to(self.delta.device))
        self.optimizer.load_state_dict(state["optimizer"])
