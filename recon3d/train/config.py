"""Training configuration: one flat dataclass, named YAML presets in ``configs/``, ``key=value`` overrides.

Schedules (``*_steps`` / ``*_every`` fields) are written for ``steps`` total steps; with a time budget the
trainer estimates how many steps fit and scales every schedule by the same factor.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError, Recon3dError

PRESETS = ("fast", "default", "quality")


@dataclass
class TrainConfig:
    """Every knob of a reconstruction run (see configs/*.yaml for the presets)."""

    preset: str = "default"
    # data
    downscale: int = 1
    max_image_size: int = 1600
    test_every: int = 8
    # auto: RGBA object data composites on white (its evaluation protocol); photos train over a random
    # colour each step, so any see-through pixel costs loss and the scene grows opaque (as splatfacto)
    background: str = "auto"  # auto | white | black | random
    masks: str | None = None  # folder of per-image masks by file stem (white = keep)
    video_frames: int = 0  # video input: frames to keep (0: 150, or what video_fps asks)
    video_fps: float = 0.0  # video input: frames per second of video to keep instead (0: use video_frames)
    orient: str = "auto"  # auto (photo folders upright, +Z up; other inputs keep their frame) | up | none
    # run
    steps: int = 30000
    time_budget: float | None = None  # minutes; when set, train until it is spent
    backend: str = "auto"
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int = 0  # torch threads; 0 keeps torch's default
    # initialisation
    init: str = "auto"  # auto (SfM points if any, else random) | points | random
    init_num_random: int = 100_000
    init_extent: float = 0.33  # half-size of the random-init cube, as a fraction of the camera distance
    init_opacity: float = 0.1
    # photos with fewer SfM points than this: add the difference as points on the training cameras' rays
    # (pixel colours, depths within each camera's SfM depth range), so walls and background start covered
    # (0: SfM points only; never more than max_gaussians)
    init_fill: int = 10_000
    init_scale_factor: float = 1.0
    # model
    sh_degree: int = 3
    sh_degree_every: int = 1000
    antialiased: bool = False  # render(antialiased=True) in training, evaluation and the viewer; noted in scene.ply
    # loss
    ssim_weight: float = 0.2
    # per-image appearance (exposure, white balance): auto = affine for photos/video, none for RGBA object
    # data; scene.ply keeps the neutral appearance
    appearance: str = "auto"  # auto | none | affine
    appearance_lr: float = 1e-3
    # learnable per-camera SE(3) corrections; None = auto (on for photos/video, off for RGBA object data)
    refine_cameras: bool | None = None
    camera_lr: float = 1e-3  # decays to 1 % of this over the run
    camera_reg: float = 1e-3
    camera_warmup: float = 0.2  # fraction of the run before the poses start to move
    # optimiser (3DGS constants; the position rate is multiplied by the scene extent)
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 0.05
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    # densification strategy
    strategy: str = "default"  # default | mcmc
    max_gaussians: int = 3_000_000  # MCMC: the hard cap; default strategy: no growth beyond it
    refine_start: int = 500
    refine_stop: int = 15000
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_opacity: float = 0.005
    prune_scale3d: float = 0.1
    mcmc_growth: float = 0.05
    mcmc_reach_cap_at: float = 0.0  # > 0: grow fast enough to reach max_gaussians this far into the refine window
    mcmc_noise_lr: float = 5e5
    mcmc_opacity_reg: float = 0.01
    mcmc_scale_reg: float = 0.01
    # checkpoints, evaluation, faults
    checkpoint_every: int = 1000  # steps
    checkpoint_minutes: float = 5.0  # also save at least this often
    keep_checkpoints: int = 2
    nan_retries: int = 3
    nan_lr_factor: float = 0.5
    eval_renders: int = 1000  # at most this many held-out views rendered to renders/
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in config.yaml

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict of every field."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_FIELD_TYPES = typing.get_type_hints(TrainConfig)


def config_dir() -> Path:
    """Folder holding the preset YAML files (a checkout's configs/ or the installed recon3d._configs)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "configs", here / "_configs"):
        if (candidate / "fast.yaml").is_file():
            return candidate
    raise Recon3dError(f"recon3d presets not found (looked for configs/ next to {here})")


def _coerce(name: str, value: Any, source: str) -> Any:
    if name not in _FIELD_TYPES:
        known = ", ".join(f.name for f in fields(TrainConfig))
        raise InputError(source, f"unknown config key {name!r}; known keys: {known}")
    kind = _FIELD_TYPES[name]
    if value is None:
        if type(None) in typing.get_args(kind):
            return None
        raise InputError(source, f"config key {name!r} cannot be null")
    if typing.get_origin(kind) is dict:
        base = [dict]
    else:
        base = [a for a in typing.get_args(kind) if a is not type(None)]
    target = base[0] if base else kind
    if target is dict or typing.get_origin(target) is dict:
        if not isinstance(value, dict):
            raise InputError(source, f"config key {name!r} must be a mapping, got {value!r}")
        return value
    try:
        if target is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if target is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise InputError(source, f"config key {name!r} expects {target.__name__}, got {value!r}") from None


def _validate(cfg: TrainConfig) -> TrainConfig:
    problems = []
    if cfg.background not in ("auto", "white", "black", "random"):
        problems.append(f"background must be auto, white, black or random, not {cfg.background!r}")
    if cfg.appearance not in ("auto", "none", "affine"):
        problems.append(f"appearance must be auto, none or affine, not {cfg.appearance!r}")
    if not 0 <= cfg.mcmc_reach_cap_at <= 1:
        problems.append(f"mcmc_reach_cap_at must lie in [0, 1], not {cfg.mcmc_reach_cap_at}")
    if cfg.video_frames < 0 or 0 < cfg.video_frames < 3:
        problems.append(f"video_frames (--frames) must be 3 or more (0: the default), not {cfg.video_frames}")
    if not cfg.video_fps >= 0:
        problems.append(f"video_fps (--fps) must be a positive number, not {cfg.video_fps}")
    if cfg.strategy not in ("default", "mcmc"):
        problems.append(f"strategy must be default or mcmc, not {cfg.strategy!r}")
    if cfg.init not in ("auto", "points", "random"):
        problems.append(f"init must be auto, points or random, not {cfg.init!r}")
    if cfg.backend not in ("auto", "reference", "cpu", "cuda", "gsplat"):
        problems.append(f"backend must be auto, reference, cpu, cuda or gsplat, not {cfg.backend!r}")
    if cfg.orient not in ("auto", "up", "none"):
        problems.append(f"orient must be auto, up or none, not {cfg.orient!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        problems.append(f"device must be auto, cpu or cuda, not {cfg.device!r}")
    if not 0 <= cfg.sh_degree <= 3:
        problems.append(f"sh_degree must be 0..3, not {cfg.sh_degree}")
    if cfg.steps < 1:
        problems.append(f"steps must be at least 1, not {cfg.steps}")
    if cfg.downscale < 1:
        problems.append(f"downscale must be at least 1, not {cfg.downscale}")
    if cfg.max_gaussians < 1:
        problems.append(f"max_gaussians must be at least 1, not {cfg.max_gaussians}")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        problems.append(f"time_budget must be positive minutes, not {cfg.time_budget}")
    for name in ("refine_every", "reset_every", "sh_degree_every", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be at least 1")
    if problems:
        raise InputError(None, "invalid config: " + "; ".join(problems))
    return cfg


def load_preset(name_or_path: str | Path) -> TrainConfig:
    """A preset by name (fast, default, quality) or a YAML file path, validated."""
    path = Path(name_or_path)
    if not path.suffix:
        path = config_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise InputError(name_or_path, f"unknown preset; choose one of {', '.join(PRESETS)} or give a YAML file")
    return config_from_yaml(path)


def config_from_yaml(path: str | Path) -> TrainConfig:
    """Read a config YAML (a preset or a run's saved config.yaml)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no such config file") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(path, "a config file must hold a mapping of key: value")
    cfg = TrainConfig()
    for key, value in data.items():
        setattr(cfg, key, _coerce(key, value, str(path)))
    return _validate(cfg)


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any] | None = None, assignments: list[str] | None = None) -> TrainConfig:
    """A copy of ``cfg`` with ``overrides`` (key -> value) and ``assignments`` ("key=value", YAML values) applied."""
    out = dataclasses.replace(cfg, extra=dict(cfg.extra))
    for key, value in (overrides or {}).items():
        setattr(out, key, _coerce(key, value, "override"))
    for text in assignments or []:
        if "=" not in text:
            raise InputError(None, f"--set expects key=value, got {text!r}")
        key, raw = text.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        setattr(out, key, _coerce(key, value, f"--set {text}"))
    return _validate(out)
