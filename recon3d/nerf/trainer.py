"""Training of ``--method nerf``: random ray batches from every training image, the field, compositing over a
random background, Adam, occupancy-grid updates; the same run directory, time budget, resume and
evaluation as the splat trainer (``recon3d/train/trainer.py``).

A NeRF step differs from a splat step in what it renders: rays drawn from all the training images (a whole
image per step would cost millions of samples), so it has its own step and loop here, and shares the rest:
the training frame (``WorldTransform``), the held-out evaluation (``evaluate_views``/``measure_view``, PSNR
over black and white), ``cameras.json``, atomic checkpoints (``checkpoints/ckpt_<step>.pt``, read with
``weights_only=True``), ``TrainingInterrupted`` on Ctrl-C and ``--resume``.

The run's model is ``RUN/nerf.pt`` (``NerfModel.save``): field weights, hash-grid shape, bounds, occupancy
grid and the training-frame transform. ``recon3d.load_run`` opens it and renders through it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cameras import Cameras
from ..errors import InputError, Recon3dError
from ..evaluation import evaluate_views, measure_view
from ..io_utils import atomic_open, atomic_write_text
from ..metrics import PROTOCOL_COMPOSITED, PROTOCOL_OPAQUE
from ..train.checkpoint import load_latest_checkpoint, save_checkpoint
from ..train.config import TrainConfig
from ..train.faults import TrainingDiverged, TrainingInterrupted
from ..train.frame import WorldTransform
from ..train.monitor import NullMonitor
from ..train.profile import peak_ram_mb
from .field import FieldBounds, NerfField, OccupancyGrid, bounds_for, rays_of_pixels, render_camera, render_rays
from .reference import HashGridSpec

MODEL_FILE = "nerf.pt"
METHOD_NAME = "nerf"


def resolve_device(name: str) -> torch.device:
    """``run.device`` for a NeRF run: auto = the GPU where torch sees one; cuda without one is one line."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise Recon3dError("run.device=cuda, but torch sees no CUDA GPU on this machine (use run.device=cpu)")
    return torch.device(name)


def spec_of(cfg: TrainConfig) -> HashGridSpec:
    """The hash grid the config asks for."""
    n = cfg.nerf
    return HashGridSpec(n.levels, n.log2_table, n.base_resolution, n.max_resolution)


@dataclass
class NerfModel:
    """A trained field with what rendering it needs: bounds, occupancy grid, the training frame."""

    field: NerfField
    bounds: FieldBounds
    grid: OccupancyGrid
    transform: WorldTransform

    def render(self, cameras: Cameras, index: int = 0, *, background: torch.Tensor | None = None):
        """Camera ``index`` of world-frame ``cameras``: (rgb H×W×3 over ``background`` or black, alpha
        H×W×1, depth H×W×1 in world units along the ray)."""
        cams = self.transform.cameras_to_train(cameras.to("cpu"))
        rgb, alpha, depth = render_camera(self.field, self.bounds, self.grid, cams, index)
        if background is not None:
            rgb = rgb + (1 - alpha) * background.float().cpu().reshape(1, 1, 3)
        return rgb, alpha, depth / self.transform.scale

    @property
    def device(self) -> torch.device:
        """Where the field's weights live (where it renders)."""
        return self.field.table.device

    def snapshot(self) -> NerfModel:
        """A copy that later training steps do not change (the live viewer draws it), on the same device."""
        field = self._new_field(getattr(self.field, "kind", "ours"), self.field.spec,
                                int(self.field.density_mlp[0].out_features), self.field.dir_degree)
        field = field.to(self.device)
        field.mlp = self.field.mlp
        field.load_state_dict(self.field.state_dict())
        field.requires_grad_(False)
        grid = OccupancyGrid.from_state(self.grid.state())
        grid.mask = grid.mask.to(self.grid.mask.device)
        return NerfModel(field, self.bounds, grid, self.transform)

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers (torch.load with weights_only=True reads it)."""
        spec = self.field.spec
        return {"method": METHOD_NAME, "field_kind": getattr(self.field, "kind", "ours"),
                "field": {k: v.detach().cpu() for k, v in self.field.state_dict().items()},
                "spec": [spec.levels, spec.log2_table, spec.base_resolution, spec.max_resolution],
                "hidden": self.field.density_mlp[0].out_features, "dir_degree": self.field.dir_degree,
                "bounds": self.bounds.state(),
                "grid": self.grid.state(), "transform": self.transform.state()}

    def save(self, path: Path) -> None:
        """Write ``nerf.pt`` atomically."""
        with atomic_open(path, "wb") as f:
            torch.save(self.state(), f)

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> NerfModel:
        """Inverse of ``state``."""
        kind = str(s.get("field_kind", "ours"))
        field = cls._new_field(kind, HashGridSpec(*[int(v) for v in s["spec"]]), int(s["hidden"]),
                               int(s.get("dir_degree", 3)))
        field.load_state_dict({k: v.to(field.table.device) for k, v in s["field"].items()})
        return cls(field.requires_grad_(False), FieldBounds.from_state(s["bounds"]), OccupancyGrid.from_state(s["grid"]),
                   WorldTransform.from_state(s["transform"]))

    @staticmethod
    def _new_field(kind: str, spec: HashGridSpec, hidden: int, dir_degree: int) -> NerfField:
        """An untrained field of ``kind`` (ours on the CPU; tcnn's on the GPU, where tcnn is installed)."""
        from .tcnn_field import check_available, make_field

        if kind == "tcnn":
            check_available()  # a tcnn run renders only where tcnn is: one line otherwise
        return make_field(kind, spec, hidden, dir_degree)

    @classmethod
    def load(cls, path: Path) -> NerfModel:
        """Read ``nerf.pt``; InputError naming the file if it is not one."""
        from ..errors import InputError

        try:
            s = torch.load(path, map_location="cpu", weights_only=True)
            return cls.from_state(s)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"not a readable recon3d NeRF model ({type(exc).__name__}: {exc})") from None


class _Targets:
    """The training images as uint8 (and alpha) by training index, and a ray sampler over all of them (over
    their kept pixels only, when the data has masks: a masked pixel gets no ray, so no loss)."""

    def __init__(self, data, train_idx: list[int], composited: bool) -> None:
        self.train_idx = train_idx
        self.images: list[torch.Tensor] = []
        self.alphas: list[torch.Tensor | None] = []
        for i in train_idx:
            img = data.load_image(i)
            self.images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
            alpha = data.load_alpha(i) if composited else None
            self.alphas.append(None if alpha is None else
                               (alpha.reshape(*img.shape[:2], 1).clamp(0, 1) * 255).round().to(torch.uint8))
        self.same_size = len({tuple(im.shape) for im in self.images}) == 1
        if self.same_size:
            self.stack = torch.stack(self.images)
            self.alpha_stack = (torch.stack(self.alphas) if all(a is not None for a in self.alphas) else None)
        bg = data.background
        self.data_background = torch.as_tensor(bg if bg is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
        self.kept: torch.Tensor | None = None  # flat indices (image offset + y·W + x) of every kept pixel
        if any(getattr(data, "mask_path", lambda i: None)(i) is not None for i in train_idx):
            sizes = [im.shape[0] * im.shape[1] for im in self.images]
            self.offsets = torch.tensor([0] + sizes, dtype=torch.int64).cumsum(0)
            kept = []
            for j, i in enumerate(train_idx):
                m = data.load_mask(i)
                flat = (torch.arange(sizes[j], dtype=torch.int64) if m is None
                        else torch.nonzero(m.reshape(-1) >= 0.5).reshape(-1))
                kept.append(flat + self.offsets[j])
            self.kept = torch.cat(kept)
            if len(self.kept) == 0:
                raise InputError(data.mask_path(train_idx[0]), "the masks keep no pixel of any training image")

    def sample(self, n: int, cameras: Cameras, generator: torch.Generator):
        """``n`` random pixels of random training images: (camera index, x, y, rgb, alpha or None)."""
        if self.kept is not None:  # a uniform draw over the kept pixels of all images
            flat = self.kept[torch.randint(len(self.kept), (n,), generator=generator)]
            k = torch.searchsorted(self.offsets, flat, right=True) - 1
            cam = torch.tensor(self.train_idx)[k]
            w = cameras.width[cam].long().cpu()
            local = flat - self.offsets[k]
            px, py = local % w, local // w
        else:
            k = torch.randint(len(self.train_idx), (n,), generator=generator)
            cam = torch.tensor(self.train_idx)[k]
            w = cameras.width[cam].long().cpu()
            h = cameras.height[cam].long().cpu()
            px = (torch.rand(n, generator=generator) * w).long().clamp(max=w - 1)
            py = (torch.rand(n, generator=generator) * h).long().clamp(max=h - 1)
        if self.same_size:
            rgb = self.stack[k, py, px].float() / 255
            alpha = self.alpha_stack[k, py, px].float() / 255 if self.alpha_stack is not None else None
        else:
            rgb = torch.stack([self.images[int(a)][int(y), int(x)] for a, x, y in zip(k, px, py)]).float() / 255
            alpha = None
            if all(a is not None for a in self.alphas):
                alpha = torch.stack([self.alphas[int(a)][int(y), int(x)] for a, x, y in zip(k, px, py)]).float() / 255
        return cam, px, py, rgb, alpha


class NerfTrainer:
    """Trains a hash-grid NeRF on ``data`` into ``run_dir`` (``run.method = nerf``)."""

    name = METHOD_NAME

    def __init__(self, data, config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 monitor: object | None = None, start_time: float | None = None, quiet: bool = False) -> None:
        from ..progress import console

        # a live viewer (``TrainingViewer(..., field=True)``): on_step receives the live NerfModel, it snapshots it
        self.monitor = monitor or NullMonitor()
        self.data, self.cfg, self.run_dir = data, config, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resume = resume
        self.start_time = time.monotonic() if start_time is None else start_time
        self.quiet = quiet
        self.console = console(quiet=quiet)
        self.protocol = PROTOCOL_COMPOSITED if data.background is not None else PROTOCOL_OPAQUE
        self.train_idx = list(data.train_indices())
        self.test_idx = list(data.test_indices())
        self.interrupt = False
        self.steps_done = 0
        # the training clock (seconds); benchmarks/nerf.py ab swaps in each arm's CPU time
        self.clock = time.monotonic

    def _log(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    # ------------------------------------------------------------------ state
    def _fresh(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)
        self.field = NerfModel._new_field(cfg.nerf.field, spec_of(cfg), cfg.nerf.hidden,
                                          cfg.nerf.dir_degree).to(self.device)
        self.field.mlp = cfg.nerf.mlp
        self.bounds = bounds_for(self.train_cameras[self.train_idx], bounded=self.protocol == PROTOCOL_COMPOSITED,
                                 box_scale=cfg.nerf.box_scale, steps_across=cfg.nerf.steps_across,
                                 shell_step=cfg.nerf.shell_step)
        self.grid = OccupancyGrid(cfg.nerf.grid_res).to(self.device)
        self.optimizer = self._optimizer()
        self.rng = torch.Generator().manual_seed(cfg.run.seed)
        self.step = 0
        self.rays = cfg.nerf.initial_rays
        self.seconds_before = 0.0
        self.curve: list[dict[str, float]] = []
        self.loss_sum: list[float] = [0.0, 0]

    def _optimizer(self) -> torch.optim.Optimizer:
        n = self.cfg.nerf
        mlp_weights = [p for name, p in self.field.named_parameters() if name != "table" and p.ndim == 2]
        others = [p for name, p in self.field.named_parameters() if name == "table" or p.ndim != 2]
        groups = [{"params": others, "weight_decay": 0.0}, {"params": mlp_weights, "weight_decay": n.weight_decay}]
        try:
            return torch.optim.Adam(groups, lr=n.lr, betas=(0.9, 0.99), eps=1e-15, fused=True)
        except (RuntimeError, TypeError):  # no fused Adam for this device/torch
            return torch.optim.Adam(groups, lr=n.lr, betas=(0.9, 0.99), eps=1e-15)

    def _checkpoint_state(self) -> dict[str, Any]:
        model = NerfModel(self.field, self.bounds, self.grid, self.transform).state()
        return {**model, "optimizer": self.optimizer.state_dict(), "step": self.step, "rays": self.rays,
                "rng": self.rng.get_state(), "seconds": self._seconds(), "curve": self.curve,
                "loss_sum": list(self.loss_sum),
                "config": self.cfg.to_dict()}

    def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
        if ckpt.get("method") != METHOD_NAME:
            raise Recon3dError(f"{path}: this run's checkpoints are a Gaussian-splat run's; resume it without "
                               f"--method nerf (or start a new run directory)")
        model = NerfModel.from_state(ckpt)
        self.field, self.bounds = model.field.to(self.device).requires_grad_(True), model.bounds
        self.grid = model.grid.to(self.device)
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.rng = torch.Generator()
        self.rng.set_state(ckpt["rng"])
        self.step, self.rays = int(ckpt["step"]), int(ckpt["rays"])
        self.seconds_before = float(ckpt["seconds"])
        self.curve = list(ckpt.get("curve", []))
        self.loss_sum = list(ckpt.get("loss_sum", [0.0, 0]))

    def _seconds(self) -> float:
        return self.seconds_before + (self.clock() - self.clock_start)

    def save_checkpoint(self) -> Path:
        """Write a checkpoint now."""
        path = save_checkpoint(self.ckpt_dir, self.step, self._checkpoint_state(), keep=self.cfg.run.keep_checkpoints)
        self.last_checkpoint_time = time.monotonic()
        return path

    # ------------------------------------------------------------------ run
    def run(self):
        """Train (or resume), save ``nerf.pt``, evaluate; returns a ``TrainResult`` without a splat scene."""
        from ..train.trainer import TrainResult

        cfg = self.cfg
        threads_before = torch.get_num_threads()
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        try:
            self.prepare()
            self.last_checkpoint_time = time.monotonic()
            budget_end = None
            if cfg.run.time_budget is not None:
                spent_before = time.monotonic() - self.start_time
                reserve = min(0.1 * cfg.run.time_budget * 60, 5.0 + 0.5 * len(self.test_idx))
                budget_end = cfg.run.time_budget * 60 - spent_before - reserve + self.seconds_before
            self.budget_end = budget_end
            old = self._install_sigint()
            try:
                self._loop(budget_end)
            finally:
                if old is not None:
                    signal.signal(signal.SIGINT, old)
            return self._finish(TrainResult)
        finally:
            self.monitor.close()
            torch.set_num_threads(threads_before)

    def prepare(self) -> None:
        """Everything before the first step: device, training frame, a fresh field or the resumed checkpoint,
        the training images; starts the training clock."""
        self.device = resolve_device(self.cfg.run.device)
        if not self.train_idx:
            raise Recon3dError(f"{self.data.root}: no training images (every camera is in the held-out split)")
        self.transform = WorldTransform.from_cameras(self.data.cameras[self.train_idx])
        self.train_cameras = self.transform.cameras_to_train(self.data.cameras).to("cpu")
        found = load_latest_checkpoint(self.ckpt_dir) if self.resume else None
        if found is not None:
            self._restore(*found)
            self._log(f"resuming {self.run_dir} from step {self.step} ({found[1].name})")
        else:
            self._fresh()
            self._log(f"NeRF: hash grid {self.field.spec.levels} levels x 2^{self.field.spec.log2_table} rows "
                      f"({self.field.table.numel():,} table values), "
                      f"{'box' if not self.bounds.contracted else 'contracted unbounded'} scene")
        self.targets = _Targets(self.data, self.train_idx, self.protocol == PROTOCOL_COMPOSITED)
        self.clock_start = self.clock()

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self.interrupt = True
            signal.signal(signal.SIGINT, signal.default_int_handler)

        return signal.signal(signal.SIGINT, handler)

    def _progress_fraction(self) -> float:
        if self.budget_end is not None:
            return min(1.0, self._seconds() / max(self.budget_end, 1e-9))
        return min(1.0, self.step / max(1, self.cfg.run.steps))

    def _loop(self, budget_end: float | None) -> None:
        from ..progress import Progress

        cfg = self.cfg
        with Progress(enabled=not self.quiet and cfg.run.progress, unit="steps") as progress:
            total = cfg.run.steps if budget_end is None else max(self.step + 1, cfg.run.steps)
            task = progress.add_task("training (nerf)", total=total, completed=self.step, info="")
            last_bar = 0.0
            step_ema: float | None = None
            while True:
                if budget_end is None and self.step >= cfg.run.steps:
                    break
                if budget_end is not None and self._seconds() >= budget_end:
                    break
                if self.interrupt:
                    path = self.save_checkpoint()
                    raise TrainingInterrupted(
                        f"interrupted at step {self.step}; checkpoint saved to {path}; continue with --resume",
                        self.step, path)
                self._wait_while_paused()
                t0 = time.monotonic()
                stats = self.train_step()
                self._record(stats)
                now = time.monotonic()
                step_ema = now - t0 if step_ema is None else 0.95 * step_ema + 0.05 * (now - t0)
                if not isinstance(self.monitor, NullMonitor):
                    self.monitor.on_step(self.step, self.model(), {
                        "loss": stats["loss"], "psnr": stats["psnr"], "steps_per_second": 1.0 / max(step_ema, 1e-9),
                        "step": float(self.step), "rays": float(self.rays), "samples": float(stats["samples"])})
                want_save = self.monitor.take_save_request()
                if budget_end is not None and self.step % 20 == 0:
                    rate = self.step / max(self._seconds(), 1e-9)
                    total = max(self.step + 1, int(rate * budget_end))
                if now - last_bar >= 0.25:
                    last_bar = now
                    progress.update(task, completed=self.step, total=total,
                                    info=f"loss {stats['loss']:.4f}  PSNR {stats['psnr']:5.2f}  "
                                         f"{stats['samples']:,} samples  occupied {100 * stats['occupied']:.1f} %")
                if (want_save or self.step % cfg.run.checkpoint_every == 0
                        or now - self.last_checkpoint_time > cfg.run.checkpoint_minutes * 60):
                    self.save_checkpoint()
        self.save_checkpoint()

    def _wait_while_paused(self) -> None:
        """Sleep while the viewer's "Pause training" is on; the paused time is not training time (budget, clock)."""
        if not self.monitor.paused():
            return
        t0 = self.clock()
        while self.monitor.paused() and not self.interrupt:
            time.sleep(0.1)
        self.clock_start += self.clock() - t0

    def _record(self, stats: dict[str, float]) -> None:
        # the training curve: the mean batch loss over each interval of ``run.steps / 100`` steps
        self.loss_sum[0] += stats["loss"]
        self.loss_sum[1] += 1
        if self.step % max(1, self.cfg.run.steps // 100) == 0:
            mse = self.loss_sum[0] / self.loss_sum[1]
            self.curve.append({"step": self.step, "loss": mse, "psnr": -10 * math.log10(max(mse, 1e-10)),
                               "seconds": round(self._seconds(), 3)})
            self.loss_sum = [0.0, 0]

    def _lr(self) -> float:
        n = self.cfg.nerf
        f = self._progress_fraction()
        return n.lr * (n.lr_final / n.lr) ** f

    def train_step(self) -> dict[str, float]:
        """One step: rays, render over a random background per ray, MSE, Adam; the grid every few steps."""
        n = self.cfg.nerf
        if self.step >= n.grid_warmup and self.step % n.grid_every == 0:
            if getattr(self, "_thresholds", None) is None:  # a cell whose step would stop < 1 % of the light is empty
                self._thresholds = (self.grid.thresholds(self.bounds) if n.grid_cell_steps
                                    else 0.01 / self.bounds.dt_min)
            self.occupied = self.grid.update(self.field, self._thresholds, self.rng)
        cam, px, py, rgb, alpha = self.targets.sample(self.rays, self.train_cameras, self.rng)
        origins, dirs = rays_of_pixels(self.train_cameras, cam, px, py)
        # the batch is drawn on the CPU (same random stream on any device: resume reproduces a run), then moves
        origins, dirs, rgb = origins.to(self.device), dirs.to(self.device), rgb.to(self.device)
        alpha = alpha.to(self.device) if alpha is not None else None
        target = rgb
        if alpha is not None or self.protocol == PROTOCOL_OPAQUE:
            # a random colour per ray: any see-through costs loss (photos), and RGBA data learns its alpha
            background = torch.rand(self.rays, 3, generator=self.rng).to(self.device)
            if alpha is not None:  # the loader composited on the data's colour: recomposite on this ray's
                target = rgb + (1 - alpha) * (background - self.targets.data_background.to(self.device))
        else:  # object data without alpha: its images show its background colour
            background = self.targets.data_background.to(self.device).expand(self.rays, 3)
        out = render_rays(self.field, self.bounds, self.grid, origins, dirs, max_samples=n.max_samples)
        pred = out.rgb + (1 - out.opacity)[:, None] * background
        loss = torch.nn.functional.mse_loss(pred, target)
        if not bool(torch.isfinite(loss)):
            raise TrainingDiverged(f"NeRF training diverged at step {self.step}: loss is {float(loss)}")
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        # aim the next batch at samples_per_step samples (instant-ngp's adaptive ray count)
        if out.samples > 0:
            target_rays = self.rays * n.samples_per_step / out.samples
            self.rays = int(min(max(64, target_rays, 0.5 * self.rays), 2 * self.rays, 1 << 16))
        mse = float(loss.detach())
        return {"loss": mse, "psnr": -10 * math.log10(max(mse, 1e-10)), "samples": out.samples,
                "occupied": getattr(self, "occupied", 1.0)}

    # ------------------------------------------------------------------ evaluation and output
    def model(self) -> NerfModel:
        """The field as trained so far, with what rendering it needs."""
        return NerfModel(self.field, self.bounds, self.grid, self.transform)

    def _view(self, i: int):
        rgb, alpha, _ = render_camera(self.field, self.bounds, self.grid, self.train_cameras, i)
        target = self.data.load_image(i)
        target_alpha = self.data.load_alpha(i) if self.protocol == PROTOCOL_COMPOSITED else None
        background = self.targets.data_background
        mask_path = self.data.mask_path(i) if hasattr(self.data, "mask_path") else None
        mask = self.data.load_mask(i) if mask_path is not None else None
        values, shown = measure_view(rgb, alpha, target, protocol=self.protocol, background=background,
                                     target_alpha=target_alpha, mask=None if mask is None else mask[..., None])
        return ({"mask": str(mask_path)} if mask_path is not None else {}) | values, shown

    def _finish(self, result_type):
        from ..train.rundir import data_masks, write_cameras_json

        cfg, data = self.cfg, self.data
        train_seconds = self._seconds()
        if not all(bool(torch.isfinite(p).all()) for p in self.field.parameters()):
            raise TrainingDiverged("the trained field holds NaN/Inf values; nothing was written")
        self.field.requires_grad_(False)
        self.model().save(self.run_dir / MODEL_FILE)
        write_cameras_json(self.run_dir / "cameras.json", data.cameras, list(data.image_paths), list(data.split),
                           masks=data_masks(data))
        t0 = time.monotonic()
        evaluation = evaluate_views(self.test_idx, self._view, data.image_paths, protocol=self.protocol,
                                    renders_dir=self.run_dir / "renders", max_renders=cfg.run.eval_renders)
        eval_seconds = time.monotonic() - t0
        per_view = evaluation["per_view"]
        metrics = {key: evaluation[key] for key in ("psnr", "ssim", "protocol", "protocol_note", "psnr_black",
                                                    "psnr_white", "see_through", "psnr_nerfw", "psnr_nerfw_black",
                                                    "psnr_nerfw_white", "lpips", "lpips_note")}
        metrics.update({
            "method": METHOD_NAME,
            "num_test_views": len(per_view),
            "num_train_views": len(self.train_idx),
            "steps": self.step,
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "total_seconds": round(time.monotonic() - self.start_time, 3),
            "steps_per_second": round(self.step / max(train_seconds, 1e-9), 3),
            "rays_per_step": self.rays,
            "occupied_share": float(self.grid.mask.float().mean()),
            "table_values": self.field.table.numel(),
            "hash_grid": {"levels": self.field.spec.levels, "log2_table": self.field.spec.log2_table,
                          "resolutions": list(self.field.spec.resolutions)},
            "scene": "contracted" if self.bounds.contracted else "box",
            "num_gaussians": 0,
            "peak_ram_mb": round(peak_ram_mb(), 1),
            "device": str(self.device),
            "image_size": [int(self.train_cameras.width[self.train_idx[0]]),
                           int(self.train_cameras.height[self.train_idx[0]])],
            "curve": self.curve,
            "per_view": per_view,
            "threads": torch.get_num_threads(),
            "pid": os.getpid(),
        })
        if not per_view:
            metrics["note"] = "no held-out views in this data set, so no PSNR/SSIM"
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        if metrics["psnr"] is not None:
            extra = (f"over black {metrics['psnr_black']:.2f}, over white {metrics['psnr_white']:.2f}; "
                     if metrics["psnr_black"] is not None else "")
            self._log(f"held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} over {len(per_view)} views "
                      f"({extra}{self.protocol} protocol); NeRF after {self.step:,} steps in {train_seconds:.0f} s")
        # no splat scene: `recon3d export RUN --format ply` distils one from the field
        return result_type(None, data.cameras, metrics, self.run_dir, list(data.image_paths), list(data.split))
