"""One training step: ``train_step(state, batch, method, cfg)``. Everything a step does is in this file.

Reads: ``state.optimizer`` (parameters and Adam moments), ``state.appearance`` and ``state.camera_opt``
(per-image colour transforms and per-camera pose corrections, each with its own Adam), ``state.strategy_state``,
``state.step``, ``state.total_steps``, ``state.lr_factor``, ``state.rng_device`` (densification samples, MCMC
noise), and the ``batch`` (one training camera, its image and mask, drawn by ``next_batch`` with
``state.rng_cpu`` from ``state.order``). Writes: the parameters and moments of every group (Adam, then
densification's row edits), the strategy state, the generators' states, and ``state.step`` (+1 when the
step succeeded). A NaN/Inf in the loss or the
updated parameters raises ``NonFinite`` and the loop restores its last good snapshot.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..cameras import Cameras
from . import cpu_ops
from .config import TrainConfig
from .faults import NonFinite
from .loss import image_loss, params_finite
from .method import Method
from .optim import exponential_lr
from .profile import StepProfile
from .state import TrainState
from .views import TrainViews

if TYPE_CHECKING:
    from .distributed import Sync


@dataclass
class Batch:
    """What one step trains on: its cameras, their target images and the backgrounds to render over.

    One camera (the default): ``image`` H×W×3, ``background`` 3, ``mask`` H×W×1. Several (``--batch-size``):
    ``image`` B×H×W×3, ``background`` B×3, ``mask`` B×H×W×1 (ones where a view is unmasked)."""

    indices: list[int]
    camera: Cameras
    image: torch.Tensor  # on ``background``
    background: torch.Tensor
    mask: torch.Tensor | None = None  # 1 = the loss counts the pixel

    @property
    def index(self) -> int:
        """The (first) camera's index."""
        return self.indices[0]


def _draw(state: TrainState, views: TrainViews, count: int) -> list[tuple[int, torch.Tensor | None]]:
    """The next ``count`` (camera, background) draws of the epoch's shuffled order (a new order each epoch)."""
    picks = []
    for _ in range(count):
        if state.order_pos >= len(state.order):
            perm = torch.randperm(len(views.train_idx), generator=state.rng_cpu)
            state.order = torch.tensor(views.train_idx)[perm]
            state.order_pos = 0
        index = int(state.order[state.order_pos])
        state.order_pos += 1
        picks.append((index, torch.rand(3, generator=state.rng_cpu) if views.random_background else None))
    return picks


def upcoming(state: TrainState, views: TrainViews, batch_size: int = 1, rank: int = 0, world_size: int = 1) -> list[int]:
    """The camera indices the next ``next_batch`` call will give this process (the state is left untouched):
    for the prefetch."""
    total = batch_size * world_size
    if state.order_pos + total <= len(state.order):  # within the epoch: no generator to copy
        picks = [int(i) for i in state.order[state.order_pos:state.order_pos + total]]
    else:
        probe = copy.copy(state)
        probe.rng_cpu = torch.Generator().set_state(state.rng_cpu.get_state())
        picks = [i for i, _ in _draw(probe, views, total)]
    return picks[rank * batch_size:(rank + 1) * batch_size]


def next_batch(state: TrainState, views: TrainViews, batch_size: int = 1, rank: int = 0,
               world_size: int = 1) -> Batch:
    """This process's ``batch_size`` cameras of the next global batch (the epoch's shuffled order, a new order
    each epoch), on this step's backgrounds (one per camera).

    Every process draws the whole global batch (``batch_size × world_size`` cameras, in order) from the same
    generator and keeps its own slice, so the generators stay equal across processes and N processes with
    batch B train on exactly the cameras (and backgrounds) of one process with batch N·B."""
    picks = _draw(state, views, batch_size * world_size)[rank * batch_size:(rank + 1) * batch_size]
    indices, images, backgrounds, masks = [], [], [], []
    for index, drawn in picks:
        view = views.view(index)
        target = view.image
        if drawn is not None:
            background = drawn.to(target.device)
            if view.alpha is not None:
                # the store composited on the data's colour; recomposite on this step's colour
                target = target + (1 - view.alpha) * (background - views.background)
        else:
            background = views.background
        indices.append(index)
        images.append(target)
        backgrounds.append(background)
        masks.append(view.mask)
    if len(indices) == 1:
        return Batch(indices, views.cameras[indices[0]], images[0], backgrounds[0], masks[0])
    mask = None
    if any(m is not None for m in masks):
        mask = torch.stack([m if m is not None else torch.ones_like(images[0][..., :1]) for m in masks])
    return Batch(indices, views.train_cameras[indices], torch.stack(images), torch.stack(backgrounds), mask)


def schedule_scale(state: TrainState, cfg: TrainConfig) -> float:
    """How much the planned run is longer than ``run.steps`` (a time budget stretches every schedule)."""
    return state.total_steps / cfg.run.steps


def batch_scaling(total_batch: int, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-15) -> tuple[float, tuple[float, float], float]:
    """gsplat's rule for B cameras per optimiser step (all processes together): learning rates × sqrt(B),
    Adam betas 1 − B·(1 − β) (floored at 0), eps / sqrt(B). B = 1 returns the inputs unchanged."""
    if total_batch <= 1:
        return 1.0, betas, eps
    root = math.sqrt(total_batch)
    return root, (max(0.0, 1 - total_batch * (1 - betas[0])), max(0.0, 1 - total_batch * (1 - betas[1]))), eps / root


def train_step(state: TrainState, batch: Batch, method: Method, cfg: TrainConfig,
               profile: StepProfile | None = None, sync: Sync | None = None) -> dict[str, float]:
    """Render, loss, backward, Adam, densification; returns loss, PSNR and the strategy's counts.

    ``sync`` (data-parallel training, ``distributed.py``): the processes agree on a NaN, average their
    gradients after the backward pass, and take rank 0's Gaussians after a densification step."""
    prof = profile or StepProfile(torch.device("cpu"), enabled=False)
    scale = schedule_scale(state, cfg)
    params = state.params
    count = len(batch.indices)
    # the poses move only once the scene is roughly in place (before, their gradients are mostly noise)
    warmup = int(cfg.optim.camera_warmup * state.total_steps)
    refining = state.camera_opt is not None and state.camera_opt.active and state.step >= warmup
    cameras = state.camera_opt if refining else None
    correction = None
    if cameras is not None:
        correction = (cameras, batch.index) if count == 1 else (cameras, list(batch.indices))
    prof.mark("prepare")
    out = method.render(params, batch.camera, background=batch.background, step=state.step, schedule_scale=scale,
                        correction=correction)
    method.before_backward(state, out, batch.camera)
    prof.mark("render")
    if count == 1:
        # a view, not rgb[0]: select's backward would allocate and zero a full image to copy the gradient into
        rendered = out.rgb.view(out.rgb.shape[1:])
        if state.appearance is not None:
            rendered = state.appearance.apply(rendered, batch.index)  # the render as this photo's exposure saw it
        loss, mse, rendered, target = _view_loss(rendered, batch.image, batch.mask, cfg)
    else:
        # the mean over the batch of each view's loss (gsplat's: one loss over the stacked images)
        losses, mses = [], []
        for k, index in enumerate(batch.indices):
            view = out.rgb[k]
            if state.appearance is not None:
                view = state.appearance.apply(view, index)
            view_loss, view_mse, _, _ = _view_loss(view, batch.image[k], None if batch.mask is None else batch.mask[k], cfg)
            losses.append(view_loss)
            mses.append(view_mse)
        loss = torch.stack(losses).mean()
        mse = None if any(m is None for m in mses) else sum(mses) / count
        rendered, target = out.rgb, batch.image
    # the terms every process computes alike (the strategy's and the appearance model's regularisers)
    shared = method.regulariser(params)
    if state.appearance is not None:
        shared = shared + state.appearance.regulariser()
    own = loss  # the terms of this process's cameras
    if cameras is not None:
        for index in batch.indices:
            own = own + cameras.regulariser(index) / count
    total = own + shared
    bad = not bool(torch.isfinite(total))
    if sync is not None:
        bad = sync.any(bad)  # every process restores together, or none does
    if bad:
        raise NonFinite(f"loss is {float(total.detach())}")
    prof.mark("loss")
    if sync is None:
        total.backward()
    else:
        # average the cameras' gradients, then add the shared terms' once: the sum one process with the whole
        # batch forms (its backward adds the two to each leaf), bit for bit. Averaging a shared term with the
        # rest, ((g0 + r) + (g1 + r)) / 2, rounds otherwise, and Adam turns such 1e-10 differences of
        # near-zero gradients into whole learning-rate steps (docs/scale.md).
        own.backward()
        sync.average_gradients(_trainable(state))
        if isinstance(shared, torch.Tensor) and shared.requires_grad:
            shared.backward()
    prof.mark("backward")
    total_batch = cfg.optim.batch_size * (sync.world_size if sync is not None else 1)
    lr_batch, betas, eps = batch_scaling(total_batch)
    if total_batch > 1:
        state.optimizer.betas, state.optimizer.eps = betas, eps
    lr_means = method.set_learning_rates(state, scale)
    state.optimizer.step(lr_scale=state.lr_factor * lr_batch)
    report: dict[str, float] = {}
    if state.appearance is not None:
        state.appearance.step(state.lr_factor * lr_batch)
    if cameras is not None:
        if cameras.optimizer.count == 0 and not cameras.has_gradient():
            cameras.active = False  # the render backend gives the cameras no gradient: the loop says so
            report["camera_refinement_off"] = 1
        # large early (SfM errors of a degree or so), 100× smaller at the end so the poses settle
        cameras.step(state.lr_factor * lr_batch
                     * exponential_lr(state.step - warmup, max(1, state.total_steps - warmup), 1.0,
                                                    cfg.optim.camera_lr_end))
    prof.mark("adam")
    report.update(method.after_backward(state, out, batch.camera, scale))
    if sync is not None and sync.any(any(report.values())):
        sync.adopt_rank0_rows(state)  # densification is decided once: every process takes rank 0's rows
    prof.mark("strategy_refine")
    method.after_optimizer(state, lr_means * lr_batch)
    prof.mark("strategy_noise")
    state.optimizer.zero_grad()
    if not params_finite(state.params):
        raise NonFinite("parameters hold NaN/Inf after the update")
    prof.mark("finite_check")
    if mse is None:
        with torch.no_grad():
            mse = float(((rendered.detach().clamp(0, 1) - target) ** 2).mean())
    state.step += 1
    stats = {"loss": float(loss.detach()), "psnr": -10 * math.log10(max(mse, 1e-10)),
             **{k: float(v) for k, v in report.items()}}
    prof.mark("step_metrics")
    return stats


def _view_loss(rendered: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
               cfg: TrainConfig) -> tuple[torch.Tensor, float | None, torch.Tensor, torch.Tensor]:
    """The image loss of one H×W×3 view, the MSE the fused loss computed (or None), and the pair compared."""
    if mask is not None:
        # masked-out pixels (1 = keep) take the render's own value: zero L1 there, and SSIM windows see no
        # difference; the fused loss runs unchanged
        detached = rendered.detach()
        target = detached + mask * (target - detached)
    loss = image_loss(rendered, target, cfg.optim.ssim_weight)
    return loss, cpu_ops.loss_mse(loss), rendered, target  # the fused loss computes the MSE for PSNR on the way


def _trainable(state: TrainState) -> list[torch.Tensor]:
    """Every tensor the optimisers step: the Gaussians' parameters, then the per-image and per-camera groups."""
    tensors = list(state.params.values())
    if state.appearance is not None:
        model = state.appearance
        tensors.append(model.delta if hasattr(model, "delta") else model.grids)
    if state.camera_opt is not None:
        tensors.append(state.camera_opt.delta)
    return tensors
