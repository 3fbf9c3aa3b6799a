"""The generator's config: one typed tree (name / model / data / train / sample), presets in ``configs/``.

The same mechanism as the reconstruction config (``recon3d.configtree``): each setting is defined once,
here (the network sizes in ``model.ModelConfig``), presets ``configs/generator-*.yaml`` are nested YAML of
this shape, and overrides are nested mappings or dotted keys (``train.steps=500``). Checkpoints store
``to_dict()``, the plain nested dict they always held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import configtree
from ..errors import InputError
from .model import ModelConfig


@dataclass
class DataConfig:
    """The synthetic training set: where it is built, how large, and how its kinds of scenes mix."""

    dir: str = "runs/generator-data"
    num_pairs: int = 12000
    num_gaussians: int = 256
    seed: int = 0
    mix: dict[str, float] | None = None  # share of single / pair / mesh / scan scenes (None: the data's own)
    # slot-query models (model.object_queries > 0): num_gaussians is per object, and the data is a bank of
    # num_scenes grammar scenes with captions (generation/bank.py) built in dir on the first run
    num_scenes: int = 6000
    # how often a batch holds 1..5 objects (None: bank.OBJECT_MIX), the scene kinds' weights when the bank is
    # drawn (grammar.SCENE_KINDS; None: grammar.KIND_WEIGHTS), the wider caption forms (grammar.WIDE_*), and a
    # bank the new one extends (its scenes and feature statistics kept: a fine-tune sees the units it learned in)
    object_mix: list[float] | None = None
    kind_weights: list[float] | None = None
    wide_wording: bool = False
    base: str | None = None


@dataclass
class TrainConfig:
    """Optimisation, checkpoints and the time budget of a generator run."""

    out: str = "runs/generator"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    cond_drop: float = 0.1
    ot_pairing: bool = True
    ema: float = 0.999
    seed: int = 0
    checkpoint_every: int = 100
    time_budget_minutes: float | None = None
    threads: int | None = None
    save_rank_weights: bool = False  # each rank writes rank{r}.pt at the end (to check DDP agreement)
    # warm start: a shipped checkpoint or a run's last.pt; parameters it lacks (new slot ones) keep their
    # zero initialisation, every other one must match in shape
    init_from: str | None = None
    # slot-query models: the share of samples conditioned on a rendered view (60 % of them image-only),
    # and the weight of the object-existence loss
    image_share: float = 0.0
    exist_weight: float = 0.1
    # the slot-attribute loss (model.attributes > 0): each slot state names its object's shape, colour, place
    attribute_weight: float = 0.0


@dataclass
class SampleConfig:
    """Default sampling settings stored with the exported weights."""

    steps: int = 24
    guidance: float = 3.0
    num_gaussians: int = 512
    solver: str = "euler"
    # slot-query models: guidance only for t below this, and the velocity network's precision (float32/bfloat16)
    guidance_until: float = 1.0
    precision: str = "float32"


@dataclass
class GeneratorConfig:
    """Every setting of a generator training run."""

    name: str = "generator"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what checkpoints and config.json hold)."""
        return configtree.to_mapping(self)


def find_config(name_or_path: str | Path) -> Path:
    """A config path, or a preset name (``small``, ``generator-small``) looked up in the shipped configs."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    here = Path(__file__).resolve().parent.parent
    stem = p.stem if p.suffix else p.name
    stem = stem if stem.startswith("generator") else f"generator-{stem}"
    for folder in (here / "_configs", here.parent / "configs"):
        if (folder / f"{stem}.yaml").is_file():
            return folder / f"{stem}.yaml"
    raise InputError(p, "config not found (a YAML file, or a preset: tiny, small, base)")


def load_config(name_or_path: str | Path, overrides: dict | None = None,
                assignments: list[str] | None = None) -> GeneratorConfig:
    """A generator config (YAML preset or file) over the defaults, then nested ``overrides`` and ``key=value``s."""
    path = find_config(name_or_path)
    cfg = configtree.from_mapping(GeneratorConfig, configtree.read_yaml(path), path)
    if overrides:
        cfg = configtree.update(cfg, overrides, "override")
    return configtree.apply(cfg, assignments=assignments)


def as_config(cfg: GeneratorConfig | dict) -> GeneratorConfig:
    """``cfg`` itself, or the config a plain nested dict (a checkpoint's ``config``) describes."""
    return cfg if isinstance(cfg, GeneratorConfig) else configtree.from_mapping(GeneratorConfig, cfg, "config")
