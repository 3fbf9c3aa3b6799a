"""``TrainState``: everything a run needs to continue, and nothing else.

``train_step`` (``step.py``) reads and writes it; the loop (``trainer.py``) advances its clock, snapshots it
for NaN recovery and saves it; ``checkpoint.py`` is its one serialisation (field by field, by type), so a
field added here is checkpointed and resumed with no other change. A resumed run holds the same state as
the uninterrupted one at that step, which is what makes ``kill -9`` + ``--resume`` bit-identical.

Parameters with other rows than the Gaussians live in their own fields with their own optimiser: the
per-image appearance (``appearance``) and the per-camera pose corrections (``camera_opt``); ``optimizer``
holds the per-Gaussian rows that densification edits. A new group is one more field of that kind (an
object with ``state()`` / ``load_state()``), created at the start and stepped in ``train_step``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .appearance import AffineAppearance, BilateralGridAppearance
from .camera_opt import CameraRefinement
from .frame import WorldTransform
from .optim import GaussianAdam

ON_DEVICE = {"on_device": True}  # a field the checkpoint restores onto the training device (others: the CPU)

@dataclass
class Clock:
    """Seconds of training: those before this process (a resumed run's) plus this process's, pauses left out."""

    offset: float = 0.0  # seconds trained before this clock started
    started: float = field(default_factory=time.monotonic)
    paused: float = 0.0  # seconds spent paused since it started

    def seconds(self) -> float:
        """Training seconds so far."""
        return self.offset + (time.monotonic() - self.started) - self.paused


@dataclass
class TrainState:
    """The state of a training run at the end of ``step`` steps."""

    step: int  # steps done
    total_steps: int  # steps planned (re-estimated under a time budget)
    optimizer: GaussianAdam  # the per-Gaussian parameters (training frame) and their Adam moments
    strategy_state: dict[str, torch.Tensor] = field(metadata=ON_DEVICE)  # the densification strategy's accumulators
    rng_cpu: torch.Generator  # camera order, random backgrounds, random initialisation
    rng_device: torch.Generator = field(metadata=ON_DEVICE)  # densification samples and MCMC noise
    order: torch.Tensor  # this epoch's camera order (indices of training cameras)
    order_pos: int  # the next position in ``order``
    transform: WorldTransform  # the input's world -> the training frame
    clock: Clock = field(default_factory=Clock)
    lr_factor: float = 1.0  # learning-rate multiplier, lowered after each NaN
    nan_events: int = 0
    step_time_ema: float | None = None  # seconds per step, a moving average (time budgets plan with it)
    curve: list[dict[str, float]] = field(default_factory=list)  # held-out PSNR against time
    init_kind: str = "resumed"  # how the parameters started: points | random
    init_fill: int = 0  # points added on the cameras' rays at the start (photos with sparse SfM points)
    # per-image colour transforms (photos, video): one affine transform, or a bilateral grid, per image
    appearance: AffineAppearance | BilateralGridAppearance | None = None
    camera_opt: CameraRefinement | None = None  # per-camera SE(3) corrections (photos, video)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The trainable parameters by name."""
        return self.optimizer.params

    @property
    def num_gaussians(self) -> int:
        """Rows of the per-Gaussian parameters."""
        return len(self.optimizer.params["means"])
