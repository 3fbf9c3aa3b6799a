"""What can go wrong in training, as recon3d errors with one-line messages, and how an OOM is recognised."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import Recon3dError


class TrainingDiverged(Recon3dError):
    """Loss or parameters became NaN/Inf and restarting with lower learning rates did not help."""


class TrainingInterrupted(Recon3dError):
    """The run was interrupted (Ctrl-C); a checkpoint was saved and ``--resume`` continues it."""

    def __init__(self, message: str, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class OutOfMemory(Recon3dError):
    """Training ran out of memory."""


class NonFinite(Exception):
    """A NaN/Inf appeared in this step (the loop restores the last good state and lowers the rates)."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (of torch, the CPU allocator or Python)."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")
    )


