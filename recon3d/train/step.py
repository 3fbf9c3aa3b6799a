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


@dataclass
class Batch:
    """What one step trains on: a camera, its target image and the background to render over."""

    index: int
    camera: Cameras
    image: torch.Tensor  # H×W×3, on ``background``
    background: torch.Tensor  # 3
    mask: torch.Tensor | None = None  # H×W×1, 1 = the loss counts the pixel


def _next_index(state: TrainState, views: TrainViews) -> int:
    """The next camera of the epoch's shuffled order (a new order each epoch)."""
    if state.order_pos >= len(state.order):
        perm = torch.randperm(len(views.train_idx), generator=state.rng_cpu)
        state.order = torch.tensor(views.train_idx)[perm]
        state.order_pos = 0
    index = int(state.order[state.order_pos])
    state.order_pos += 1
    return index


def upcoming(state: TrainState, views: TrainViews) -> int:
    """The camera the next ``next_batch`` call will give (the state is left untouched): for the prefetch."""
    if state.order_pos < len(state.order):
        return int(state.order[state.order_pos])
    probe = copy.copy(state)  # a new epoch's order comes from the generator: draw it from a copy
    probe.rng_cpu = torch.Generator().set_state(state.rng_cpu.get_state())
    return _next_index(probe, views)


def next_batch(state: TrainState, views: TrainViews) -> Batch:
    """The next camera of the epoch's shuffled order (a new order each epoch), on this step's background."""
    index = _next_index(state, views)
    view = views.view(index)  # from the image store (resident, prefetched or prepared now)
    target = view.image
    if views.random_background:
        background = torch.rand(3, generator=state.rng_cpu).to(target.device)
        if view.alpha is not None:
            # the store composited on the data's colour; recomposite on this step's colour
            target = target + (1 - view.alpha) * (background - views.background)
    else:
        background = views.background
    return Batch(index, views.cameras[index], target, background, view.mask)


def schedule_scale(state: TrainState, cfg: TrainConfig) -> float:
    """How much the planned run is longer than ``run.steps`` (a time budget stretches every schedule)."""
    return state.total_steps / cfg.run.steps


def train_step(state: TrainState, batch: Batch, method: Method, cfg: TrainConfig,
               profile: StepProfile | None = None) -> dict[str, float]:
    """Render, loss, backward, Adam, densification; returns loss, PSNR and the strategy's counts."""
    prof = profile or StepProfile(torch.device("cpu"), enabled=False)
    scale = schedule_scale(state, cfg)
    params = state.params
    # the poses move only once the scene is roughly in place (before, their gradients are mostly noise)
    warmup = int(cfg.optim.camera_warmup * state.total_steps)
    refining = state.camera_opt is not None and state.camera_opt.active and state.step >= warmup
    cameras = state.camera_opt if refining else None
    correction = (cameras, batch.index) if cameras is not None else None
    prof.mark("prepare")
    out = method.render(params, batch.camera, background=batch.background, step=state.step, schedule_scale=scale,
                        correction=correction)
    method.before_backward(state, out, batch.camera)
    prof.mark("render")
    # a view, not rgb[0]: select's backward would allocate and zero a full image to copy the gradient into
    rendered = out.rgb.view(out.rgb.shape[1:])
    if state.appearance is not None:
        rendered = state.appearance.apply(rendered, batch.index)  # the render as this photo's exposure saw it
    target = batch.image
    if batch.mask is not None:
        # masked-out pixels (1 = keep) take the render's own value: zero L1 there, and SSIM windows see no
        # difference; the fused loss runs unchanged
        detached = rendered.detach()
        target = detached + batch.mask * (target - detached)
    loss = image_loss(rendered, target, cfg.optim.ssim_weight)
    mse = cpu_ops.loss_mse(loss)  # the fused loss computes the MSE for PSNR on the way
    reg = method.regulariser(params)
    if state.appearance is not None:
        reg = reg + state.appearance.regulariser()
    if cameras is not None:
        reg = reg + cameras.regulariser(batch.index)
    total = loss + reg
    if not bool(torch.isfinite(total)):
        raise NonFinite(f"loss is {float(total.detach())}")
    prof.mark("loss")
    total.backward()
    prof.mark("backward")
    lr_means = method.set_learning_rates(state, scale)
    state.optimizer.step(lr_scale=state.lr_factor)
    report: dict[str, float] = {}
    if state.appearance is not None:
        state.appearance.step(state.lr_factor)
    if cameras is not None:
        if cameras.optimizer.count == 0 and not cameras.has_gradient():
            cameras.active = False  # the render backend gives the cameras no gradient: the loop says so
            report["camera_refinement_off"] = 1
        # large early (SfM errors of a degree or so), 100× smaller at the end so the poses settle
        cameras.step(state.lr_factor * exponential_lr(state.step - warmup, max(1, state.total_steps - warmup), 1.0, 0.01))
    prof.mark("adam")
    report.update(method.after_backward(state, out, batch.camera, scale))
    prof.mark("strategy_refine")
    method.after_optimizer(state, lr_means)
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
