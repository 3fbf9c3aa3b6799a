"""Checkpoints: plain tensors and numbers only, written atomically, read with ``weights_only=True``.

``checkpoints/ckpt_<step>.pt`` is written to a temporary file and renamed, so a failure mid-write (an
exception, a full disk, a kill) leaves the previous checkpoint as it was; the newest file that loads wins.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io_utils import atomic_open

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    """Path of the checkpoint of ``step``."""
    return Path(directory) / f"ckpt_{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``directory``, oldest first (temporary files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + rename)."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint of ``step`` and delete all but the newest ``keep``."""
    path = checkpoint_path(directory, step)
    write_checkpoint(path, state)
    for _, old in list_checkpoints(directory)[:-max(keep, 1)]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint (no pickle of arbitrary objects: weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "no such checkpoint") from None
    except Exception as exc:  # truncated, corrupt or hostile: refuse, one line
        raise InputError(path, f"not a readable recon3d checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def load_latest_checkpoint(directory: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads (falling back past unreadable ones), or None."""
    for _step, path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path), path
        except InputError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
    return None
