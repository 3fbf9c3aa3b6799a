"""Per-image appearance learned with the scene: photos of one capture differ in exposure and white balance.

Two models (``model.appearance``): ``affine`` (one colour transform per image) and ``grid`` (a bilateral
grid per image: a colour transform that varies over the image and with the brightness, for vignetting,
local tone mapping and the like). Both start at the identity and leave the scene at the neutral appearance.

``AffineAppearance`` gives every training image a 3×4 colour transform, rgb' = A·rgb + b, applied to the
rendered image before the loss; the scene itself keeps one *neutral* appearance (A = I, b = 0), which is
what ``scene.ply`` stores and what a viewer shows. The transforms and the scene's colours could trade any
common transform between them, so a small regulariser holds the mean transform over the images at the
identity: the neutral appearance is then the capture's average exposure and white balance.

``recon3d.metrics.fit_affine`` is the NeRF-W evaluation protocol for held-out images: the transform that best
maps the neutral render to the image on its left half, by least squares (closed form), applied to the right half.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..bilateral import LUMA, grid_total_variation, identity_grid, slice_grid  # noqa: F401  (the grid's maths)
from ..metrics import apply_affine, fit_affine  # noqa: F401  (the evaluation side of the same model)

APPEARANCE_MODES = ("none", "affine", "grid")


def resolve_appearance(setting: str, source: str, opaque: bool) -> str:
    """The appearance model a run uses: ``setting`` unless it is ``auto``.

    auto: ``affine`` where our own SfM made the capture from a photo folder or a video (mixed exposures and
    devices), ``none`` for data sets that come posed (COLMAP, nerfstudio) and for RGBA object data. On fox, a
    posed capture, affine cost 1.5 dB of neutral held-out PSNR (27.2 vs 28.7 dB) for 0.6 dB under the NeRF-W
    protocol (30.3 vs 29.7): its per-frame exposure is smooth along the video, which view-dependent colour
    also reproduces for held-out frames between training frames.
    """
    if setting != "auto":
        return setting
    return "affine" if opaque and source in ("photos", "video") else "none"


def _training_rows(rows: Sequence[int] | None, num_images: int, device: torch.device | str) -> torch.Tensor:
    """The indices of the images whose mean appearance is the neutral one (all, when not given)."""
    chosen = list(range(num_images)) if rows is None else sorted({int(r) for r in rows})
    if not chosen or chosen[0] < 0 or chosen[-1] >= num_images:
        raise ValueError(f"training rows must be a non-empty subset of 0..{num_images - 1}")
    return torch.tensor(chosen, dtype=torch.long, device=device)


def appearance_name(model: object | None) -> str:
    """The ``model.appearance`` setting a trained appearance model (or None) stands for."""
    return {AffineAppearance: "affine", BilateralGridAppearance: "grid"}.get(type(model), "none")


class SmallAdam:
    """Adam for one small tensor (a few hundred numbers), in a handful of in-place ops.

    torch.optim.Adam's per-call bookkeeping costs more than the update itself at this size, and these
    tensors are stepped every training step.
    """

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-15) -> None:
        self.param = param
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.count = 0
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        """Apply the gradient (if any) and clear it."""
        grad = self.param.grad
        if grad is None:
            return
        b1, b2 = self.betas
        self.count += 1
        self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step = (self.lr if lr is None else lr) / (1 - b1 ** self.count)
        denom = (self.exp_avg_sq / (1 - b2 ** self.count)).sqrt_().add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-step)
        self.param.grad = None

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"count": self.count, "exp_avg": self.exp_avg.cpu().clone(), "exp_avg_sq": self.exp_avg_sq.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``."""
        self.count = int(state["count"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])


class AffineAppearance:
    """A learnable 3×4 affine colour transform per image (stored as its difference from the identity)."""

    def __init__(self, num_images: int, device: torch.device | str = "cpu", *, lr: float = 1e-3,
                 mean_weight: float = 1.0, rows: Sequence[int] | None = None, row_adam: bool = False) -> None:
        self.delta = torch.zeros(num_images, 3, 4, device=device, requires_grad=True)
        self.lr = lr
        self.mean_weight = mean_weight
        self.rows = _training_rows(rows, num_images, device)
        # row_adam: only the images a step rendered move (their share of the mean pull included), each row
        # with its own step count; dense Adam moves every row each step, on the mean pull and its momentum
        self.row_adam = row_adam
        self.optimizer: RowAdam | SmallAdam = RowAdam(self.delta, lr) if row_adam else SmallAdam(self.delta, lr)
        self._applied: list[int] = []
        self._eye = torch.eye(3, device=device)

    def apply(self, rgb: torch.Tensor, index: int) -> torch.Tensor:
        """H×W×3 ``rgb`` as image ``index`` saw it."""
        if self.row_adam and int(index) not in self._applied:
            self._applied.append(int(index))
        d = self.delta[index]
        matrix = d[:, :3] + self._eye.to(rgb.dtype)
        # one addmm over the pixels (its backward is two small matmuls and a sum): the cost per step is tiny
        return torch.addmm(d[:, 3], rgb.reshape(-1, 3), matrix.T).view(rgb.shape)

    def regulariser(self) -> torch.Tensor:
        """Holds the mean transform of the training images at the identity, so the scene keeps their average
        appearance. Held-out images take no part: their transforms never see data, and with them in the mean
        Adam let them absorb the whole term (they moved to cancel the training images' mean, which then
        drifted freely: fox's neutral render came out 3 dB off its own training images)."""
        return self.mean_weight * self.delta[self.rows].mean(0).square().sum()

    def step(self, lr_scale: float = 1.0) -> None:
        """One Adam step on the transforms (``row_adam``: the rows applied since the last step), then clear
        their gradient."""
        if self.row_adam:
            rows, self._applied = self._applied, []
            if not rows:
                self.delta.grad = None
                return
            self.optimizer.step(rows, self.lr * lr_scale)
        else:
            self.optimizer.step(self.lr * lr_scale)

    def state(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"delta": self.delta.detach().cpu().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""
        with torch.no_grad():
            self.delta.copy_(state["delta"].to(self.delta.device))
        saved = state["optimizer"]
        if self.row_adam and "counts" not in saved:  # dense Adam's state: every row counted as stepped each step
            saved = {**saved, "counts": torch.full((len(self.delta),), int(saved["count"]), dtype=torch.long)}
        self.optimizer.load_state_dict(saved)


class RowAdam:
    """Adam over the rows of one tensor, updating only the rows a step names (as torch's SparseAdam).

    A bilateral grid per image is tens of thousands of numbers times the image count, and each step trains
    one image: a dense Adam would touch every image's grid every step. Each row keeps its own step count
    for the bias correction, so a row moves exactly as a dense Adam would on its own gradients.
    """

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-15) -> None:
        self.param = param
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.counts = torch.zeros(len(param), dtype=torch.long)
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.count = 0  # steps taken (calls with a gradient), whatever rows they updated

    @torch.no_grad()
    def step(self, row: int | Sequence[int], lr: float | None = None) -> None:
        """Apply row ``row`` (or each of the rows ``row``) of the gradient (if any), then clear the gradient."""
        grad = self.param.grad
        if grad is None:
            return
        b1, b2 = self.betas
        self.count += 1
        for r in ([row] if isinstance(row, int) else row):
            self.counts[r] += 1
            n = int(self.counts[r])
            g, m, v = grad[r], self.exp_avg[r], self.exp_avg_sq[r]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = (self.lr if lr is None else lr) / (1 - b1 ** n)
            denom = (v / (1 - b2 ** n)).sqrt_().add_(self.eps)
            self.param[r].addcdiv_(m, denom, value=-step)
        self.param.grad = None

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"counts": self.counts.clone(), "exp_avg": self.exp_avg.cpu().clone(),
                "exp_avg_sq": self.exp_avg_sq.cpu().clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``."""
        self.counts.copy_(state["counts"])
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.count = int(state.get("count", int(self.counts.max()) if len(self.counts) else 0))


class BilateralGridAppearance:
    """A bilateral grid per image (Gx×Gy×L cells of 3×4 colour transforms), sliced by pixel position and the
    rendered luminance; starts at the identity. A total-variation term keeps each grid smooth, and the mean
    grid over the images is held at the identity (as the affine model's mean), so the scene keeps the
    capture's average appearance."""

    def __init__(self, num_images: int, device: torch.device | str = "cpu", *,
                 shape: tuple[int, int, int] = (16, 16, 8), lr: float = 2e-3, tv_weight: float = 10.0,
                 mean_weight: float = 1.0, rows: Sequence[int] | None = None) -> None:
        self.shape = tuple(int(v) for v in shape)
        self.grids = identity_grid(self.shape, num_images, device).requires_grad_(True)
        # the images the mean is over (the training images; held-out grids stay at the identity)
        self.rows = _training_rows(rows, num_images, device)
        self._in_mean = torch.zeros(num_images, dtype=torch.bool)
        self._in_mean[self.rows.cpu()] = True
        self.lr = lr
        self.tv_weight = tv_weight
        self.mean_weight = mean_weight
        self.optimizer = RowAdam(self.grids, lr)
        # the sum over the images, kept up to date, so the mean term costs one grid per step, not all of them
        self._sum = self.grids.detach()[self.rows].sum(0)
        self._index: int | None = None

    def apply(self, rgb: torch.Tensor, index: int) -> torch.Tensor:
        """H×W×3 ``rgb`` as image ``index`` saw it."""
        self._index = index
        return slice_grid(self.grids[index], rgb)

    def regulariser(self) -> torch.Tensor:
        """TV of the last applied image's grid, and the mean grid's distance from the identity (through that
        image's grid; the others enter as constants)."""
        if self._index is None:
            return self.grids.new_zeros(())
        g = self.grids[self._index]
        tv = self.tv_weight * grid_total_variation(g)
        if not bool(self._in_mean[self._index]):
            return tv
        n = len(self.rows)
        mean = (self._sum - g.detach() + g) / n
        eye = identity_grid(self.shape, 1, g.device, g.dtype)[0]
        # × n: each grid is pulled once per pass over the images rather than at every step
        return tv + self.mean_weight * n * (mean - eye).square().mean()

    def step(self, lr_scale: float = 1.0) -> None:
        """One Adam step on the last applied image's grid, then clear the gradient."""
        if self._index is None:
            self.grids.grad = None
            return
        i = self._index
        with torch.no_grad():
            before = self.grids[i].clone()
            self.optimizer.step(i, self.lr * lr_scale)
            if bool(self._in_mean[i]):
                self._sum += self.grids[i] - before

    def state(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"grids": self.grids.detach().cpu().clone(), "optimizer": self.optimizer.state_dict(),
                "shape": list(self.shape)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""
        with torch.no_grad():
            self.grids.copy_(state["grids"].to(self.grids.device))
            self._sum = self.grids.detach()[self.rows].sum(0)
        self.optimizer.load_state_dict(state["optimizer"])
