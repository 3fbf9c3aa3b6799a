"""The reconstruction config: one typed tree (data / model / optim / strategy / run), presets in ``configs/``.

Each setting is defined once, in the dataclass of the section that uses it, with its default there; the
``strategy`` section is the densification strategy itself (``DefaultStrategy`` or ``MCMCStrategy``). Presets
and a run's saved ``config.yaml`` are nested YAML of the same shape; overrides use dotted keys
(``--set strategy.cap=200000``) or, where only one section has it, a setting's own name (``steps=2000``).
Keys of the flat config of earlier versions are mapped with a one-line warning naming their new key
(``max_gaussians`` -> ``strategy.cap``), so an old run's config.yaml still resumes.

Schedules (``*_steps`` / ``*_every`` / ``refine_*`` settings) are written for ``run.steps`` total steps; with
a time budget the trainer estimates how many steps fit and scales every schedule by the same factor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import configtree
from ..errors import InputError, Recon3dError
from .nerf_config import NerfConfig
from .strategy import DefaultStrategy, MCMCStrategy

PRESETS = ("fast", "default", "quality")
METHODS = ("gaussians", "nerf")  # run.method (--method): the names of train/method.py's METHOD_TRAINERS
BACKENDS = ("auto", "reference", "cpu", "cuda", "gsplat")


@dataclass
class DataConfig:
    """How the input views are loaded."""

    downscale: int = 1  # load images at 1/N resolution
    max_image_size: int = 1600  # and at most this many pixels on the longest side
    test_every: int = 8  # every N-th view held out for evaluation (where the data names no split)
    # auto: RGBA object data composites on white (its evaluation protocol); photos train over a random
    # colour each step, so any see-through pixel costs loss and the scene grows opaque (as splatfacto)
    background: str = "auto"  # auto | white | black | random
    masks: str | None = None  # folder of per-image masks by file stem (white = keep)
    video_frames: int = 0  # video input: frames to keep (0: 150, or what video_fps asks)
    video_fps: float = 0.0  # video input: frames per second of video to keep instead (0: use video_frames)
    orient: str = "auto"  # auto (photo folders upright, +Z up; other inputs keep their frame) | up | none
    # photo folders: SfM maps on one thread, so the same photos give the same model on every run; false maps on
    # every core (the model may then differ a little run to run). Extraction and matching use every core either way
    sfm_deterministic: bool = True
    # training images (recon3d/data/image_store.py): auto = float32 when the training views fit image_cache_gb
    # as floats (as before), else uint8 in memory when they fit as bytes, else a decoded uint8 copy on disk in
    # RUN_DIR/image_cache with the recent views in memory
    image_cache: str = "auto"  # auto | float | ram | disk
    image_cache_gb: float | None = None  # RAM bound of the image store (None: a quarter of free memory, ≤ 2 GiB)
    prefetch: bool = True  # prepare the next steps' images on a background thread while a step runs


@dataclass
class ModelConfig:
    """The Gaussian-splat model: SH degree and initialisation."""

    sh_degree: int = 3
    sh_degree_every: int = 1000  # raise the rendered SH degree by one every N steps
    init: str = "auto"  # auto (SfM points if any, else random) | points | random
    init_num_random: int = 100_000
    init_extent: float = 0.33  # half-size of the random-init cube, as a fraction of the camera distance
    init_opacity: float = 0.1
    # photos with fewer SfM points than this: add the difference as points on the training cameras' rays
    # (pixel colours, depths within each camera's SfM depth range), so walls and background start covered
    # (0: SfM points only; never more than strategy.cap)
    init_fill: int = 10_000
    init_scale_factor: float = 1.0
    # per-image appearance (exposure, white balance): auto = affine for photo folders and video (our own SfM),
    # none for posed data sets (COLMAP, nerfstudio) and RGBA object data; grid = a bilateral grid per image (colour transforms varying across the image and with
    # brightness: vignetting, tone curves); scene.ply keeps the neutral appearance
    appearance: str = "auto"  # auto | none | affine | grid
    appearance_grid: list[int] = field(default_factory=lambda: [16, 16, 8])  # grid cells (x, y, luminance)
    # learnable per-camera SE(3) corrections; None = auto = off: held-out PSNR with it on was 0.4-0.9 dB lower
    # on every capture measured (garden, fox, statue; docs/real_captures.md), so it is asked for, not assumed
    refine_cameras: bool | None = None
    antialiased: bool = False  # render(antialiased=True) in training, evaluation and the viewer; noted in scene.ply


@dataclass
class OptimConfig:
    """Loss, learning rates (3DGS constants; the position rate is multiplied by the scene extent), NaN recovery."""

    ssim_weight: float = 0.2
    # cameras per step. gsplat's convention for the batch B: learning rates × sqrt(B), Adam betas 1 − B·(1 − β),
    # eps / sqrt(B); the loss is the mean over the batch, and the densification statistics undo that mean
    # (docs/scale.md)
    batch_size: int = 1
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 0.05
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    appearance_lr: float = 1e-3  # the per-image affine colour transforms (model.appearance)
    # affine appearance: Adam over the rendered images' rows only (RowAdam, as the cameras), each row counting
    # its own steps; off = dense Adam over every image's transform each step (the measured default)
    appearance_row_adam: bool = False
    grid_lr: float = 2e-3  # the per-image bilateral grids (model.appearance: grid)
    grid_tv: float = 10.0  # total-variation weight that keeps each grid smooth
    # the per-camera pose corrections (model.refine_cameras), radians / training units per step of a camera;
    # decays to camera_lr_end of it. 3e-3 with per-camera Adam rows (camera_row_adam): dense Adam moved a
    # camera ~5.5 rates per gradient at 1e-3 (garden, 1,000 steps, docs/real_captures.md)
    camera_lr: float = 3e-3
    camera_reg: float = 1e-3  # L2 pull of each pose correction towards zero
    # fraction of the run before the poses start to move. 0.05 recovers large pose errors better (garden,
    # cameras perturbed 1.5° / 2 %, 1,500 steps: 0.43° / 0.70 % left vs 0.57° / 0.92 %, held-out 22.18 vs
    # 20.09 dB) but costs 0.6 dB on exact cameras (23.00 vs 23.60), the SfM-like case: 0.2 stays the default
    # (docs/real_captures.md)
    camera_warmup: float = 0.2
    # units of the pose corrections (train/camera_opt.py): twist = radians and training-frame units (camera_lr);
    # pixels = a unit step moves the image ~1 px whatever the focal length (camera_lr_pixels, pixels per step);
    # orbit = pixels, turning about the scene in front of the camera instead of the camera centre
    camera_units: str = "twist"
    camera_lr_pixels: float = 0.9  # 3× the 0.3 of dense Adam, as camera_lr (not measured on its own)
    # the camera learning rate at the end of the run, as a fraction of its start (log-linear decay from the
    # end of the warm-up). 0.1 keeps the weak direction (each camera's orbit about the scene) converging: garden,
    # cameras perturbed 1.5° / 2 %, warm-up 0.05, 3,000 steps: 0.22° / 0.34 % left; 1,500 steps: 0.34° / 0.55 %
    # vs 0.45° / 0.72 % at 0.01. On exact cameras that recipe costs held-out PSNR (24.18 vs 26.08 dB unrefined),
    # so the default stays (docs/real_captures.md)
    camera_lr_end: float = 0.01
    # steps between removals of the corrections' common similarity (the gauge: scene and cameras moving
    # together); keeps the scene in the input cameras' frame, where the held-out cameras are (0: never)
    camera_gauge_every: int = 10
    # with each gauge removal, also take out the corrections' mean rotation in the cameras' own frames (a
    # common pitch, yaw or roll: a shift of every image alike that the scene can follow, no similarity on an
    # orbit; camera_opt.CameraRefinement._remove_common_rotation)
    camera_common_rotation: bool = True
    # Adam over each camera's row on the steps that render it (true) or dense Adam over all rows every step
    camera_row_adam: bool = True
    nan_retries: int = 3  # restarts from the last good state before giving up
    nan_lr_factor: float = 0.5  # learning rates are multiplied by this at each restart


@dataclass
class RunConfig:
    """Length, device, checkpoints, evaluation and progress of a run."""

    method: str = "gaussians"  # gaussians | nerf (METHODS)
    steps: int = 30000
    time_budget: float | None = None  # minutes; when set, train until it is spent
    backend: str = "auto"  # auto | reference | cpu | cuda | gsplat
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int = 0  # torch threads; 0 keeps torch's default
    checkpoint_every: int = 1000  # steps
    checkpoint_minutes: float = 5.0  # also save at least this often
    keep_checkpoints: int = 2
    eval_renders: int = 1000  # at most this many held-out views rendered to renders/
    curve_every_s: float = 0.0  # a held-out PSNR point every N seconds of training (0: none)
    curve_views: int = 5  # held-out views per curve point
    # also measure the held-out views after test-time pose alignment (recon3d/train/pose_align.py), reported beside
    # the headline in metrics.json (aligned_poses); the headline figures stay unaligned
    eval_align_poses: bool = False
    progress: bool = True


@dataclass
class TrainConfig:
    """Every setting of a reconstruction run (see configs/*.yaml for the presets)."""

    preset: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: DefaultStrategy | MCMCStrategy = field(default_factory=DefaultStrategy)
    run: RunConfig = field(default_factory=RunConfig)
    nerf: NerfConfig = field(default_factory=NerfConfig)  # run.method = nerf only

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every setting."""
        return configtree.to_mapping(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return configtree.to_yaml(self)


def _prune_opacity(cfg: TrainConfig) -> str:
    return "strategy.min_opacity" if isinstance(cfg.strategy, MCMCStrategy) else "strategy.prune_opacity"


# keys of the flat config (before the tree) whose name no section has any more
RENAMED: dict[str, Any] = {
    "max_gaussians": "strategy.cap",
    "mcmc_growth": "strategy.growth",
    "mcmc_noise_lr": "strategy.noise_lr",
    "mcmc_opacity_reg": "strategy.opacity_reg",
    "mcmc_scale_reg": "strategy.scale_reg",
    "mcmc_reach_cap_at": "strategy.reach_cap_at",
    "prune_opacity": _prune_opacity,
}


def config_dir() -> Path:
    """Folder holding the preset YAML files (a checkout's configs/ or the installed recon3d._configs)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "configs", here / "_configs"):
        if (candidate / "fast.yaml").is_file():
            return candidate
    raise Recon3dError(f"recon3d presets not found (looked for configs/ next to {here})")


def validate(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` itself, or InputError listing every setting out of range."""
    problems = []
    if cfg.data.background not in ("auto", "white", "black", "random"):
        problems.append(f"data.background must be auto, white, black or random, not {cfg.data.background!r}")
    if cfg.model.appearance not in ("auto", "none", "affine", "grid"):
        problems.append(f"model.appearance must be auto, none, affine or grid, not {cfg.model.appearance!r}")
    grid = cfg.model.appearance_grid
    if len(grid) != 3 or not all(isinstance(v, int) and v >= 1 for v in grid) or grid[2] < 2:
        problems.append(f"model.appearance_grid must be three cell counts [x, y, luminance] (at least 1, 1, 2), "
                        f"not {grid!r}")
    if cfg.data.video_frames < 0 or 0 < cfg.data.video_frames < 3:
        problems.append(f"data.video_frames (--frames) must be 3 or more (0: the default), not {cfg.data.video_frames}")
    if not cfg.data.video_fps >= 0:
        problems.append(f"data.video_fps (--fps) must be a positive number, not {cfg.data.video_fps}")
    if cfg.data.orient not in ("auto", "up", "none"):
        problems.append(f"data.orient must be auto, up or none, not {cfg.data.orient!r}")
    if cfg.model.init not in ("auto", "points", "random"):
        problems.append(f"model.init must be auto, points or random, not {cfg.model.init!r}")
    if cfg.run.backend not in BACKENDS:
        problems.append(f"run.backend must be {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}, not {cfg.run.backend!r}")
    if cfg.run.device not in ("auto", "cpu", "cuda"):
        problems.append(f"run.device must be auto, cpu or cuda, not {cfg.run.device!r}")
    if not 0 <= cfg.model.sh_degree <= 3:
        problems.append(f"model.sh_degree must be 0..3, not {cfg.model.sh_degree}")
    if cfg.data.image_cache not in ("auto", "float", "ram", "disk"):
        problems.append(f"data.image_cache must be auto, float, ram or disk, not {cfg.data.image_cache!r}")
    if cfg.data.image_cache_gb is not None and not cfg.data.image_cache_gb >= 0:
        problems.append(f"data.image_cache_gb (--image-cache-gb) must be 0 or more GB, not {cfg.data.image_cache_gb}")
    if cfg.optim.batch_size < 1:
        problems.append(f"optim.batch_size (--batch-size) must be at least 1, not {cfg.optim.batch_size}")
    if cfg.run.steps < 1:
        problems.append(f"run.steps must be at least 1, not {cfg.run.steps}")
    if cfg.data.downscale < 1:
        problems.append(f"data.downscale must be at least 1, not {cfg.data.downscale}")
    if cfg.run.time_budget is not None and cfg.run.time_budget <= 0:
        problems.append(f"run.time_budget must be positive minutes, not {cfg.run.time_budget}")
    for name, value in (("model.sh_degree_every", cfg.model.sh_degree_every),
                        ("run.checkpoint_every", cfg.run.checkpoint_every), ("run.curve_views", cfg.run.curve_views)):
        if value < 1:
            problems.append(f"{name} must be at least 1")
    if cfg.run.method not in METHODS:
        problems.append(f"run.method (--method) must be one of {', '.join(METHODS)}, not {cfg.run.method!r}")
    problems += cfg.strategy.problems()
    problems += cfg.nerf.problems()
    if problems:
        raise InputError(None, "invalid config: " + "; ".join(problems))
    return cfg


def _from_flat(data: dict[str, Any], path: Path) -> TrainConfig:
    """A config of the flat layout (before the tree): each key mapped to its place, one warning line."""
    cfg = TrainConfig()
    if "strategy" in data:
        cfg = configtree.set_key(cfg, "strategy", data["strategy"], path)
    other = {f.name for f in fields(DefaultStrategy)} ^ {f.name for f in fields(MCMCStrategy)}
    for key, value in data.items():
        if key == "strategy":
            continue
        if key == "extra":  # the untyped side channel: the keys it carried are run settings now
            for name, inner in (value or {}).items():
                if name in ("curve_every_s", "curve_views"):
                    cfg = configtree.set_key(cfg, f"run.{name}", inner, path)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", configtree.RenamedConfigKey)
                new = configtree.resolve_key(cfg, key, RENAMED, path)
        except InputError:
            if key in other:  # a setting of the strategy this run did not use
                continue
            raise
        cfg = configtree.set_key(cfg, new, value, path)
    warnings.warn(f"{path}: a flat config (recon3d before the data/model/optim/strategy/run tree); read as "
                  f"the tree (max_gaussians is now strategy.cap, mcmc_growth strategy.growth)",
                  configtree.RenamedConfigKey, stacklevel=3)
    return cfg


def config_from_yaml(path: str | Path) -> TrainConfig:
    """Read a config YAML (a preset or a run's saved config.yaml; the old flat layout too)."""
    path = Path(path)
    data = configtree.read_yaml(path)
    sections = {"preset"} | {f.name for f in fields(TrainConfig)}
    flat = any(k not in sections for k in data) or isinstance(data.get("strategy"), str)
    cfg = _from_flat(data, path) if flat else configtree.from_mapping(TrainConfig, data, path)
    return validate(cfg)


def load_preset(name_or_path: str | Path) -> TrainConfig:
    """A preset by name (fast, default, quality) or a YAML file path, validated."""
    path = Path(name_or_path)
    if not path.suffix:
        path = config_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise InputError(name_or_path, f"unknown preset; choose one of {', '.join(PRESETS)} or give a YAML file")
    return config_from_yaml(path)


def default_preset() -> str:
    """``fast`` on a CPU-only machine, ``default`` where CUDA is available."""
    import torch

    return "default" if torch.cuda.is_available() else "fast"


def resolve_config(run_dir: Path, *, preset: str | None = None, resume: bool = False,
                   overrides: dict[str, Any] | None = None, assignments: list[str] | None = None) -> TrainConfig:
    """The config of a run: the saved one when resuming, else the preset; then the overrides."""
    saved = Path(run_dir) / "config.yaml"
    if resume and saved.is_file():
        base = config_from_yaml(saved)
    else:
        base = load_preset(preset or default_preset())
    return apply_overrides(base, overrides, assignments)


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any] | None = None,
                    assignments: list[str] | None = None) -> TrainConfig:
    """A copy of ``cfg`` with ``overrides`` (key -> value) and ``assignments`` ("key=value", YAML values).

    A key is dotted (``strategy.cap``), a setting's own name where one section has it (``steps``), a section
    with a mapping (``run={"steps": 5}``) or a kind (``strategy="mcmc"``), or a renamed key of the flat
    config (``max_gaussians``: one warning line names ``strategy.cap``).
    """
    if overrides and "extra" in overrides:  # the flat config's side channel (benchmarks used it for the curve)
        overrides = dict(overrides)
        for name, value in (overrides.pop("extra") or {}).items():
            overrides[f"run.{name}"] = value
    return validate(configtree.apply(cfg, overrides, assignments, RENAMED))
