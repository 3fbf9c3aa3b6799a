"""Checkpoints: plain tensors and numbers only, written atomically, read with ``weights_only=True``.

``state_to_dict`` / ``state_from_dict`` are the one serialisation of a ``TrainState``: each field is encoded
by its type (tensors to the CPU, generators as their states, the optimiser as parameters + moments, the
clock as seconds), so the checkpoint's layout is the dataclass's fields and is written down nowhere else
(two keys keep their earlier names: see ``_KEYS``).

``checkpoints/ckpt_<step>.pt`` is written to a temporary file and renamed, so a failure mid-write (an
exception, a full disk, a kill) leaves the previous checkpoint as it was; the newest file that loads wins.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, Recon3dError
from ..io_utils import atomic_open
from .frame import WorldTransform
from .optim import GaussianAdam
from .state import Clock, TrainState

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


# ---------------------------------------------------------------------------------------------- TrainState
CHECKPOINT_FORMAT = "recon3d-train-checkpoint"
CHECKPOINT_VERSION = 1
# the layout of earlier recon3d, kept so old runs resume and tools reading checkpoints keep working: the
# clock's seconds are stored as "train_seconds", and the optimiser as "params" + "optimizer" (its moments)
_KEYS = {"clock": "train_seconds"}


def state_to_dict(state: TrainState, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint of ``state``: every field, encoded by its type, as CPU tensors and plain values."""
    out: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, GaussianAdam):
            out["params"] = _encode(value.params)
            out[f.name] = _encode(value.state_dict())
        else:
            out[_KEYS.get(f.name, f.name)] = _encode(value)
    if config is not None:
        out["config"] = config  # for the record: a resumed run reads config.yaml
    return out


def state_from_dict(data: dict[str, Any], device: torch.device, clock: Clock | None = None,
                    groups: dict[str, Any] | None = None) -> TrainState:
    """The ``TrainState`` a checkpoint holds, its tensors on ``device`` (``clock``: keep this clock instead).

    ``groups`` are fresh objects (with ``state()`` / ``load_state()``) for the fields that hold other parameter
    groups (appearance, camera corrections): each loads its saved state, or stays fresh where none was saved.
    """
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise Recon3dError("not a recon3d training checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise Recon3dError(f"a training checkpoint of version {data.get('version')}; this recon3d reads {CHECKPOINT_VERSION}")
    hints = typing.get_type_hints(TrainState)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(TrainState):
        key = _KEYS.get(f.name, f.name)
        if f.name in (groups or {}):
            continue
        if key not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise Recon3dError(f"training checkpoint lacks {key!r}")
            continue
        raw = {"params": data["params"], **data[key]} if hints[f.name] is GaussianAdam else data[key]
        where = device if f.metadata.get("on_device") else torch.device("cpu")
        values[f.name] = _decode(hints[f.name], raw, where)
    for name, fresh in (groups or {}).items():
        saved = data.get(_KEYS.get(name, name))
        if fresh is not None and saved is not None:
            fresh.load_state(saved)
        values[name] = fresh
    if clock is not None:
        values["clock"] = clock
    return TrainState(**values)


def _encode(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, torch.Generator):
        return value.get_state().cpu()
    if isinstance(value, WorldTransform):
        return value.state()
    if isinstance(value, Clock):
        return value.seconds()
    if hasattr(value, "state") and hasattr(value, "load_state"):  # a parameter group with its own optimiser
        return value.state()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(kind: Any, value: Any, device: torch.device) -> Any:
    if kind is GaussianAdam:
        # a copy: the parameters train in place, and a snapshot may be restored more than once
        params = {k: v.to(device).clone().contiguous().requires_grad_(True) for k, v in value["params"].items()}
        optimizer = GaussianAdam(params, value["lrs"])
        optimizer.load_state_dict({
            "step_count": value["step_count"], "lrs": value["lrs"],
            "exp_avg": {k: v.to(device) for k, v in value["exp_avg"].items()},
            "exp_avg_sq": {k: v.to(device) for k, v in value["exp_avg_sq"].items()},
        })
        return optimizer
    if kind is torch.Generator:
        generator = torch.Generator(device=device)
        generator.set_state(value.to(generator.get_state().device))
        return generator
    if kind is WorldTransform:
        return WorldTransform.from_state(value)
    if kind is Clock:
        return Clock(offset=float(value))
    if kind is torch.Tensor:
        return value.to(device).clone()
    if typing.get_origin(kind) is dict and isinstance(value, dict):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in value.items()}
    if typing.get_origin(kind) is list:
        return [dict(v) if isinstance(v, dict) else v for v in value]
    if kind is int:
        return int(value)
    if kind is float:
        return float(value)
    return value
