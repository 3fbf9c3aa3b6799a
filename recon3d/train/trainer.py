"""The trainer: SceneData + TrainConfig -> a trained GaussianScene, with checkpoints, resume and fault handling.

Data flows one way: cameras (normalised for training) → scene → ``recon3d.render`` → loss → Adam →
strategy edits → back to the input's world frame for export. Everything random comes from two seeded
``torch.Generator`` objects whose states are checkpointed, so a resumed run retraces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cameras import Cameras
from ..errors import Recon3dError
from ..io_utils import atomic_open, atomic_write_text
from ..metrics import PROTOCOL_COMPOSITED, PROTOCOL_NOTES, PROTOCOL_OPAQUE, lpips_available, view_metrics
from ..render import render
from ..scene import GaussianScene, num_sh_rest, rgb_to_sh0
from . import cpu_ops
from .appearance import AffineAppearance
from .camera_opt import CameraRefinement
from .checkpoint import load_latest_checkpoint, save_checkpoint
from .config import TrainConfig
from .init import frustum_points
from .monitor import NullMonitor, TrainingMonitor
from .optim import PARAM_NAMES, GaussianAdam, exponential_lr
from .strategy import DefaultStrategy, MCMCStrategy, Strategy

CHECKPOINT_FORMAT = "recon3d-train-checkpoint"
CHECKPOINT_VERSION = 1


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


# ---------------------------------------------------------------------------------------------- world frame
@dataclass
class WorldTransform:
    """Training frame x' = scale·(x − center); uniform, so images and SH directions are unchanged."""

    center: torch.Tensor
    scale: float

    @classmethod
    def from_cameras(cls, cameras: Cameras) -> WorldTransform:
        """Centre at the mean camera centre, unit = the largest camera distance from it (as 3DGS)."""
        centers = cameras.centers().double()
        center = centers.mean(0)
        radius = float((centers - center).norm(dim=-1).max()) if len(cameras) > 1 else 0.0
        if not math.isfinite(radius) or radius < 1e-8:  # one camera or all at one spot: keep the units
            radius = 1.0
        return cls(center.float(), 1.0 / radius)

    def points_to_train(self, points: torch.Tensor) -> torch.Tensor:
        """World points to the training frame."""
        return (points.double() - self.center.double().to(points.device)).mul(self.scale).to(points.dtype)

    def cameras_to_train(self, cameras: Cameras) -> Cameras:
        """The same cameras looking at the normalised world (view space scaled by the same factor)."""
        w2c = cameras.world_to_camera.double()
        rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
        new_t = self.scale * (trans + (rot @ self.center.double()[:, None])[..., 0])
        out = w2c.clone()
        out[:, :3, 3] = new_t
        return Cameras(out.float(), cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height)

    def scene_to_world(self, scene: GaussianScene) -> GaussianScene:
        """Undo the normalisation: positions and log-scales back to the input's world frame."""
        s = scene.detach()
        center = self.center.to(s.means.device, s.means.dtype)
        return GaussianScene(
            means=s.means / self.scale + center,
            scales=s.scales - math.log(self.scale),
            quats=s.quats,
            opacities=s.opacities,
            sh0=s.sh0,
            shN=s.shN,
        )

    def state(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"center": self.center.clone(), "scale": float(self.scale)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WorldTransform:
        """Inverse of ``state``."""
        return cls(state["center"].float(), float(state["scale"]))


def focus_point(cameras: Cameras) -> torch.Tensor:
    """The point nearest (least squares) to every camera's optical axis; the centre of the cameras if ill-posed."""
    c2w = cameras.camera_to_world().double()
    origins, dirs = c2w[:, :3, 3], c2w[:, :3, 2]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64) - dirs[:, :, None] * dirs[:, None, :]
    a = proj.sum(0)
    b = (proj @ origins[:, :, None]).sum(0)[:, 0]
    if len(cameras) < 2 or torch.linalg.cond(a) > 1e6:
        return (origins.mean(0) + dirs.mean(0)).float()
    point = torch.linalg.solve(a, b)
    # a focus behind most cameras means the axes diverge (e.g. a panorama): fall back to in front of them
    if ((point - origins) * dirs).sum(-1).median() <= 0:
        return (origins.mean(0) + dirs.mean(0)).float()
    return point.float()


def knn_log_scale(points: torch.Tensor, k: int = 3) -> torch.Tensor:
    """log of the mean distance to the ``k`` nearest other points (per point), N."""
    n = points.shape[0]
    if n <= 1:
        return torch.full((n,), math.log(0.01))
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    kk = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)
    mean = torch.from_numpy(dist[:, 1:]).mean(-1)
    positive = mean[mean > 0]
    floor = float(positive.min()) if len(positive) else 1e-4
    return torch.log(mean.clamp_min(floor)).float()


# ---------------------------------------------------------------------------------------------- helpers
def peak_ram_mb() -> float:
    """Peak resident memory of this process in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")
    )


def image_loss(rendered: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    """L1 + ssim_weight·(1 − SSIM) of one H×W×3 image."""
    if ssim_weight > 0:
        # one C call for the value, the gradient and the MSE on a CPU (float32); None elsewhere
        fused = cpu_ops.fused_image_loss(rendered, target, ssim_weight)
        if fused is not None:
            return fused[0]
    l1 = (rendered - target).abs().mean()
    if ssim_weight == 0:
        return l1
    # the fused C SSIM (same value and gradient as recon3d.metrics.ssim) where it applies: CPU float32
    return l1 + ssim_weight * (1.0 - cpu_ops.ssim_loss_term(rendered, target))


def _background_color(name: str) -> torch.Tensor:
    return torch.ones(3) if name == "white" else torch.zeros(3)


def _params_finite(params: dict[str, torch.Tensor]) -> bool:
    # A NaN or ±Inf anywhere makes a tensor's sum NaN or ±Inf, so a finite sum proves every element finite
    # (one cheap reduction: isfinite().all() costs 15× more on a CPU); a non-finite sum may also be an
    # overflow of large finite values, so only then is the elementwise test run, and its answer is exact.
    tensors = [p.detach() for p in params.values() if p.numel()]
    if not tensors:
        return True
    exact = cpu_ops.all_finite(tensors)  # one C pass over every tensor (CPU float32), exact
    if exact is not None:
        return exact
    if bool(torch.isfinite(torch.stack([t.sum() for t in tensors])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@dataclass
class TrainResult:
    """What a finished run returns: the scene and cameras in the input's world frame, and the metrics."""

    scene: GaussianScene
    cameras: Cameras
    metrics: dict[str, Any]
    run_dir: Path
    image_paths: list[Path] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains a GaussianScene on ``data`` (a ``recon3d.data.SceneData``) and writes RUN_DIR."""

    def __init__(self, data, config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 monitor: TrainingMonitor | None = None, start_time: float | None = None,
                 quiet: bool = False) -> None:
        self.data = data
        self.cfg = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.monitor: TrainingMonitor = monitor or NullMonitor()
        self.start_time = time.monotonic() if start_time is None else start_time
        self.quiet = quiet
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._interrupt = False
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        data = self.data
        self.train_idx = list(data.train_indices())
        self.test_idx = list(data.test_indices())
        if not self.train_idx:
            raise Recon3dError(f"{data.root}: no training images (every camera is in the held-out split)")
        self.transform = WorldTransform.from_cameras(data.cameras[self.train_idx])
        self.train_cameras = self.transform.cameras_to_train(data.cameras).to(self.device)
        self.scene_scale = 1.1  # the training frame puts the farthest camera at distance 1
        # the colour RGBA inputs were composited on; RGB data renders over the configured colour
        if data.background is not None:
            self.eval_background = torch.as_tensor(data.background, dtype=torch.float32).reshape(3)
        else:
            self.eval_background = _background_color(cfg.background)
        mode = cfg.background
        if mode == "auto":
            mode = "white" if data.background is not None else "random"
        self.background_mode = mode
        self.random_background = mode == "random"
        # RGBA object data keeps its protocol (composited on one colour); a photo has content everywhere
        self.protocol = PROTOCOL_COMPOSITED if data.background is not None else PROTOCOL_OPAQUE
        self._masks: dict[int, torch.Tensor | None] = {}
        self._load_alpha = getattr(data, "load_alpha", None) if self.random_background else None
        self.images: dict[int, torch.Tensor] = {}
        self.alphas: dict[int, torch.Tensor] = {}
        for i in self.train_idx:
            self.images[i] = data.load_image(i).to(self.device)
            if self._load_alpha is not None:
                alpha = self._load_alpha(i)
                if alpha is not None:
                    self.alphas[i] = alpha.to(self.device).reshape(*self.images[i].shape[:2], 1)
        opaque = self.protocol == PROTOCOL_OPAQUE
        mode = cfg.appearance if cfg.appearance != "auto" else ("affine" if opaque else "none")
        self.appearance = (AffineAppearance(len(data), self.device, lr=cfg.appearance_lr)
                           if mode == "affine" else None)
        refine = cfg.refine_cameras if cfg.refine_cameras is not None else opaque
        self.camera_opt = (CameraRefinement(len(data), self.device, lr=cfg.camera_lr, weight=cfg.camera_reg)
                           if refine else None)
        self._camera_grad_checked = False
        self.camera_path = "camera" if cfg.backend == "reference" else "scene"
        self.gen_cpu = torch.Generator().manual_seed(cfg.seed)
        self.gen_dev = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.single_cams = {i: self.train_cameras[i] for i in self.train_idx}

    def _initial_params(self) -> dict[str, torch.Tensor]:
        cfg, data = self.cfg, self.data
        points = getattr(data, "points", None)
        use_points = points is not None and len(points) > 0 and cfg.init != "random"
        if cfg.init == "points" and not use_points:
            raise Recon3dError(f"{data.root}: init=points but the data has no structure-from-motion points")
        if use_points:
            pts = self.transform.points_to_train(points.float().cpu())
            colors = data.point_colors.float().cpu() if data.point_colors is not None else torch.full_like(pts, 0.5)
        else:
            all_cams = self.data.cameras[self.train_idx]
            focus = self.transform.points_to_train(focus_point(all_cams)[None])[0]
            dist = (self.transform.points_to_train(all_cams.centers()) - focus).norm(dim=-1).median()
            half = cfg.init_extent * float(dist)
            pts = focus + (torch.rand(cfg.init_num_random, 3, generator=self.gen_cpu) * 2 - 1) * half
            colors = torch.rand(cfg.init_num_random, 3, generator=self.gen_cpu)
        opacity = torch.full((pts.shape[0],), float(cfg.init_opacity))
        self.init_fill_count = 0
        fill_to = min(cfg.init_fill, cfg.max_gaussians)
        if use_points and self.protocol == PROTOCOL_OPAQUE and len(pts) < fill_to:
            # SfM leaves textureless walls, sky and far background of a photo without points, and growth from
            # a few thousand points cannot reach them: add points along the cameras' rays at the depths SfM saw
            fill, fill_colors = frustum_points(self.train_cameras.to("cpu"), self.train_idx, self.images, pts,
                                              fill_to - len(pts), self.gen_cpu,
                                              masks={i: self._mask(i) for i in self.train_idx})
            if len(fill):
                pts = torch.cat([pts, fill])
                colors = torch.cat([colors, fill_colors])
                # faint, so a point at a wrong depth hides little and dies (MCMC relocates it) if unneeded
                opacity = torch.cat([opacity, torch.full((len(fill),), min(float(cfg.init_opacity), 0.1))])
                self.init_fill_count = len(fill)
        n = pts.shape[0]
        log_scale = knn_log_scale(pts) + math.log(cfg.init_scale_factor)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        params = {
            "means": pts.float(),
            "scales": log_scale[:, None].repeat(1, 3),
            "quats": quats,
            "opacities": torch.logit(opacity.clamp(1e-4, 1 - 1e-4)),
            "sh0": rgb_to_sh0(colors.clamp(0, 1))[:, None, :],
            "shN": torch.zeros(n, num_sh_rest(cfg.sh_degree), 3),
        }
        self.init_kind = "points" if use_points else "random"
        return {k: v.to(self.device).contiguous().requires_grad_(True) for k, v in params.items()}

    def _make_strategy(self) -> Strategy:
        cfg = self.cfg
        # the early-growth schedule is for photo captures; RGBA object data keeps the 5 % recipe it is tuned on
        reach = cfg.mcmc_reach_cap_at if self.protocol == PROTOCOL_OPAQUE else 0.0
        if cfg.strategy == "mcmc":
            return MCMCStrategy(
                cap=cfg.max_gaussians, refine_start=cfg.refine_start, refine_stop=cfg.refine_stop,
                refine_every=cfg.refine_every, growth=cfg.mcmc_growth,
                reach_cap_at=reach, min_opacity=cfg.prune_opacity,
                noise_lr=cfg.mcmc_noise_lr, opacity_reg=cfg.mcmc_opacity_reg, scale_reg=cfg.mcmc_scale_reg,
                seed_generator=self.gen_dev,
            )
        return DefaultStrategy(
            scene_scale=self.scene_scale, refine_start=cfg.refine_start, refine_stop=cfg.refine_stop,
            refine_every=cfg.refine_every, reset_every=cfg.reset_every, grow_grad2d=cfg.grow_grad2d,
            grow_scale3d=cfg.grow_scale3d, prune_opacity=cfg.prune_opacity, prune_scale3d=cfg.prune_scale3d,
            max_gaussians=cfg.max_gaussians, seed_generator=self.gen_dev,
        )

    def _base_lrs(self) -> dict[str, float]:
        cfg = self.cfg
        return {
            "means": cfg.lr_means * self.scene_scale,
            "scales": cfg.lr_scales,
            "quats": cfg.lr_quats,
            "opacities": cfg.lr_opacities,
            "sh0": cfg.lr_sh0,
            "shN": cfg.lr_shN,
        }

    # ------------------------------------------------------------------ state (checkpoints, snapshots)
    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "total_steps": self.total_steps,
            "params": {k: v.detach().cpu().clone() for k, v in self.optimizer.params.items()},
            "optimizer": {k: (
                {n: t.cpu() for n, t in v.items()} if isinstance(v, dict) and k.startswith("exp") else v
            ) for k, v in self.optimizer.state_dict().items()},
            "strategy_state": {k: v.detach().cpu().clone() for k, v in self.strategy_state.items()},
            "rng_cpu": self.gen_cpu.get_state(),
            "rng_device": self.gen_dev.get_state().cpu(),
            "order": self.order.clone(),
            "order_pos": self.order_pos,
            "transform": self.transform.state(),
            "lr_factor": self.lr_factor,
            "nan_events": self.nan_events,
            "train_seconds": self._train_seconds(),
            "step_time_ema": self.step_time_ema,
            "curve": [dict(p) for p in self.curve],
            "init_kind": self.init_kind,
            "config": self.cfg.to_dict(),
            "appearance": None if self.appearance is None else self.appearance.state(),
            "camera_opt": None if self.camera_opt is None else self.camera_opt.state(),
        }

    def _load_state(self, state: dict[str, Any], restore_clock: bool = True) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise Recon3dError("not a recon3d training checkpoint")
        self.step = int(state["step"])
        self.total_steps = int(state["total_steps"])
        params = {k: state["params"][k].to(self.device).contiguous().requires_grad_(True) for k in PARAM_NAMES}
        self.optimizer = GaussianAdam(params, self._base_lrs())
        opt_state = state["optimizer"]
        self.optimizer.load_state_dict({
            "step_count": opt_state["step_count"], "lrs": opt_state["lrs"],
            "exp_avg": {k: v.to(self.device) for k, v in opt_state["exp_avg"].items()},
            "exp_avg_sq": {k: v.to(self.device) for k, v in opt_state["exp_avg_sq"].items()},
        })
        self.strategy_state = {k: v.to(self.device) for k, v in state["strategy_state"].items()}
        self.gen_cpu.set_state(state["rng_cpu"])
        self.gen_dev.set_state(state["rng_device"].to(self.gen_dev.get_state().device))
        self.order = state["order"].clone()
        self.order_pos = int(state["order_pos"])
        self.transform = WorldTransform.from_state(state["transform"])
        self.lr_factor = float(state["lr_factor"])
        self.nan_events = int(state["nan_events"])
        if restore_clock:
            self._train_offset = float(state["train_seconds"])
        self.step_time_ema = state.get("step_time_ema")
        self.curve = [dict(p) for p in state.get("curve", [])]
        self.init_kind = state.get("init_kind", "resumed")
        if self.appearance is not None and state.get("appearance") is not None:
            self.appearance.load_state(state["appearance"])
        if self.camera_opt is not None and state.get("camera_opt") is not None:
            self.camera_opt.load_state(state["camera_opt"])

    def _snapshot(self) -> None:
        self._good = self._state()

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint now (skipped, with a warning, if the parameters are not finite)."""
        if not _params_finite(self.optimizer.params):
            self._log("[yellow]not checkpointing: parameters are not finite[/]")
            return self.last_checkpoint
        path = save_checkpoint(self.ckpt_dir, self.step, self._state(), keep=self.cfg.keep_checkpoints)
        self.last_checkpoint = path
        self._last_ckpt_time = time.monotonic()
        return path

    # ------------------------------------------------------------------ small pieces
    def _log(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def _train_seconds(self) -> float:
        return self._train_offset + (time.monotonic() - self._train_start) - self._paused_seconds

    def _schedule_scale(self) -> float:
        return self.total_steps / self.cfg.steps

    def _sh_degree_now(self) -> int:
        every = max(1, int(round(self.cfg.sh_degree_every * self._schedule_scale())))
        return min(self.cfg.sh_degree, self.step // every)

    def _next_camera(self) -> int:
        if self.order_pos >= len(self.order):
            self.order = torch.tensor(self.train_idx)[torch.randperm(len(self.train_idx), generator=self.gen_cpu)]
            self.order_pos = 0
        idx = int(self.order[self.order_pos])
        self.order_pos += 1
        return idx

    def _scene(self) -> GaussianScene:
        p = self.optimizer.params
        return GaussianScene(p["means"], p["scales"], p["quats"], p["opacities"], p["sh0"], p["shN"])

    def _lr_means(self) -> float:
        return exponential_lr(self.step, self.total_steps, self.cfg.lr_means * self.scene_scale,
                              self.cfg.lr_means_final * self.scene_scale)

    def _update_total_steps(self, budget_end: float) -> None:
        """Time budget: steps still to run = remaining time / recent time per step."""
        if self.step_time_ema is None or self.step_time_ema <= 0:
            return
        remaining = budget_end - self._train_seconds()
        self.total_steps = max(self.step + 1, self.step + int(remaining / self.step_time_ema))
        if isinstance(self.strategy, MCMCStrategy) and self.strategy.reach_cap_at > 0:
            # the count the budget affords: the one at which the remaining time still runs the preset's planned
            # steps, taking the time per step as proportional to the count (pessimistic: part of it is fixed)
            n = max(1, len(self.optimizer.params["means"]))
            steps_left = max(1, self.cfg.steps - self.step)
            self.strategy.budget_cap = int(n * remaining / steps_left / self.step_time_ema)

    # ------------------------------------------------------------------ one step
    def _train_step(self) -> dict[str, float]:
        cfg = self.cfg
        prof = self.profile
        prof.start()
        idx = self._next_camera()
        target = self.images[idx]
        cam = self.single_cams[idx]
        # the poses move only once the scene is roughly in place (before, their gradients are mostly noise)
        refining = (self.camera_opt is not None and self.camera_opt.active
                    and self.step >= cfg.camera_warmup * self.total_steps)
        if self.random_background:
            bg = torch.rand(3, generator=self.gen_cpu).to(self.device)
            if idx in self.alphas:
                # the loader composited on the eval colour; recomposite on this step's colour
                a = self.alphas[idx]
                target = target + (1 - a) * (bg - self.eval_background.to(self.device))
        else:
            bg = self.eval_background.to(self.device)
        scene = self._scene()
        if refining:
            # the reference backend differentiates the camera; the others get the same image from the scene
            # moved rigidly the other way (see camera_opt), through their gradients for means and rotations
            if self.camera_path == "camera":
                cam = self.camera_opt.apply(cam, idx)
            else:
                scene = self.camera_opt.apply_to_scene(scene, cam, idx)
        sh_degree = min(self._sh_degree_now(), scene.sh_degree)
        prof.mark("prepare")
        out = render(scene, cam, background=bg, sh_degree=sh_degree, backend=cfg.backend, antialiased=cfg.antialiased)
        info = {"means2d": out.means2d, "radii": out.radii, "width": int(cam.width[0]), "height": int(cam.height[0])}
        self.strategy.step_pre_backward(self.optimizer, self.strategy_state, self.step, info)
        prof.mark("render")
        # a view, not rgb[0]: select's backward would allocate and zero a full image to copy the gradient into
        rendered = out.rgb.view(out.rgb.shape[1:])
        if self.appearance is not None:
            rendered = self.appearance.apply(rendered, idx)  # the render as this photo's exposure saw it
        mask = self._mask(idx)
        if mask is not None:
            # masked-out pixels (1 = keep) take the render's own value: zero L1 there, and SSIM windows see
            # no difference; the fused loss runs unchanged
            detached = rendered.detach()
            target = detached + mask * (target - detached)
        loss = image_loss(rendered, target, cfg.ssim_weight)
        mse = cpu_ops.loss_mse(loss)  # the fused loss computes the MSE for PSNR on the way
        reg = self.strategy.loss_terms(self.optimizer.params)
        if self.appearance is not None:
            reg = reg + self.appearance.regulariser()
        if refining:
            reg = reg + self.camera_opt.regulariser(idx)
        total = loss + reg
        if not bool(torch.isfinite(total)):
            raise _NonFinite(f"loss is {float(total.detach())}")
        prof.mark("loss")
        total.backward()
        prof.mark("backward")
        lr_means = self._lr_means()
        self.optimizer.lrs["means"] = lr_means
        # the backends give exact zero gradients to the SH coefficients above the degree rendered, so Adam
        # may skip those whose moments are still zero (the same result; shN is 3/4 of the parameters)
        self.optimizer.used_columns["shN"] = 3 * num_sh_rest(sh_degree)
        self.optimizer.step(lr_scale=self.lr_factor)
        if self.appearance is not None:
            self.appearance.step(self.lr_factor)
        if refining:
            if not self._camera_grad_checked and not self.camera_opt.has_gradient():
                self.camera_opt.active = False
                self._log(f"[yellow]camera refinement off: no gradient reached the camera corrections through the "
                          f"{cfg.backend} render backend[/]")
            self._camera_grad_checked = True
            # large early (SfM errors of a degree or so), 100× smaller at the end so the poses settle
            start = cfg.camera_warmup * self.total_steps
            progress_steps = max(1, self.total_steps - int(start))
            self.camera_opt.step(self.lr_factor * exponential_lr(self.step - int(start), progress_steps, 1.0, 0.01))
        prof.mark("adam")
        report = self.strategy.step_post_backward(self.optimizer, self.strategy_state, self.step, info,
                                                  schedule_scale=self._schedule_scale())
        prof.mark("strategy_refine")
        self.strategy.step_post_optimizer(self.optimizer, self.strategy_state, self.step,
                                          lr_means * self.lr_factor, generator=self.gen_dev)
        prof.mark("strategy_noise")
        self.optimizer.zero_grad()
        if not _params_finite(self.optimizer.params):
            raise _NonFinite("parameters hold NaN/Inf after the update")
        prof.mark("finite_check")
        if mse is None:
            with torch.no_grad():
                mse = float(((rendered.detach().clamp(0, 1) - target) ** 2).mean())
        stats = {"loss": float(loss.detach()), "psnr": -10 * math.log10(max(mse, 1e-10)), **{k: float(v) for k, v in report.items()}}
        prof.mark("step_metrics")
        return stats

    def _handle_nonfinite(self, problem: str) -> None:
        self.nan_events += 1
        if self.nan_events > self.cfg.nan_retries or self._good is None:
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingDiverged(
                f"training diverged at step {self.step}: {problem}; restarted {self.nan_events - 1} time(s) with "
                f"lower learning rates without success{where}. Try a lower learning rate "
                f"(e.g. --set lr_means={self.cfg.lr_means / 4:g}) or another --seed"
            )
        factor = self.lr_factor * self.cfg.nan_lr_factor
        events = self.nan_events
        self.optimizer.zero_grad()
        self._load_state(self._good, restore_clock=False)
        self.lr_factor = factor
        self.nan_events = events
        self._log(f"[yellow]step {self.step}: {problem}; restored the last good state and lowered the learning "
                  f"rates to ×{factor:g}[/]")

    # ------------------------------------------------------------------ main loop
    def run(self) -> TrainResult:
        """Train (or resume), export, evaluate; returns the result in the input's world frame."""
        from ..progress import console

        self.console = console(quiet=self.quiet)
        threads_before = torch.get_num_threads()
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads_before)

    def _run(self) -> TrainResult:
        self._setup()
        cfg = self.cfg
        self._train_offset = 0.0
        self._paused_seconds = 0.0
        self._good = None
        self.curve: list[dict[str, float]] = []
        self.step_time_ema: float | None = None
        resumed = None
        if self.resume:
            found = load_latest_checkpoint(self.ckpt_dir)
            if found is not None:
                resumed = found
        self.strategy = self._make_strategy()
        if resumed is not None:
            state, path = resumed
            self._load_state(state)
            self.last_checkpoint = path
            if cfg.time_budget is None:  # --steps may have been changed for the resumed run
                self.total_steps = cfg.steps
            self._log(f"resuming {self.run_dir} from step {self.step} ({path.name})")
        else:
            self.step = 0
            self.total_steps = cfg.steps
            params = self._initial_params()
            self.optimizer = GaussianAdam(params, self._base_lrs())
            self.strategy_state = self.strategy.initialize_state(len(params["means"]))
            self.order = torch.zeros(0, dtype=torch.long)
            self.order_pos = 0
            self.lr_factor = 1.0
            self.nan_events = 0
            self._log(f"initialised {len(params['means']):,} Gaussians from "
                      f"{'structure-from-motion points' if self.init_kind == 'points' else 'random points'}")
        self._train_start = time.monotonic()
        self._last_ckpt_time = time.monotonic()
        budget_end = None
        if cfg.time_budget is not None:
            # reserve time for export and evaluation of the held-out views after training
            spent_before = time.monotonic() - self.start_time  # loading data, SfM: part of the budget
            reserve = min(0.1 * cfg.time_budget * 60, 5.0 + 0.5 * len(self.test_idx))
            budget_end = cfg.time_budget * 60 - spent_before - reserve
        self.profile = StepProfile(self.device)
        self._install_sigint()
        try:
            self._loop(budget_end)
        finally:
            self._restore_sigint()
        if self.profile.enabled and self.profile.steps:
            print(self.profile.table(), file=sys.stderr, flush=True)
        return self._finish()

    def _loop(self, budget_end: float | None) -> None:
        cfg = self.cfg
        self._snapshot()
        progress = self._progress()
        last_curve = self._train_seconds()
        last_bar = 0.0
        with progress:
            task = progress.add_task("training", total=self.total_steps, completed=self.step, info="")
            while self.step < self.total_steps:
                if budget_end is not None and self._train_seconds() >= budget_end:
                    break
                if self._interrupt:
                    self._interrupted()
                while self.monitor.paused() and not self._interrupt:
                    t0 = time.monotonic()
                    time.sleep(0.1)
                    self._paused_seconds += time.monotonic() - t0
                t0 = time.monotonic()
                try:
                    stats = self._train_step()
                except _NonFinite as exc:
                    self._handle_nonfinite(str(exc))
                    continue
                except (RuntimeError, MemoryError) as exc:
                    if _is_oom(exc):
                        raise OutOfMemory(
                            f"out of memory at step {self.step} with {len(self.optimizer.params['means']):,} Gaussians: "
                            f"try --downscale 2 or a lower Gaussian cap (--max-gaussians "
                            f"{max(1000, len(self.optimizer.params['means']) // 2)})"
                        ) from None
                    raise
                self.profile.start()
                dt = time.monotonic() - t0
                self.step_time_ema = dt if self.step_time_ema is None else 0.95 * self.step_time_ema + 0.05 * dt
                self.step += 1
                if budget_end is not None and (self.step == 20 or self.step % 50 == 0):
                    self._update_total_steps(budget_end)
                elif budget_end is not None and self.step >= self.total_steps:
                    # the last estimate (from earlier, often slower steps) ran out before the budget did:
                    # keep going while at least one more step fits, rather than leave the time unused
                    if budget_end - self._train_seconds() > (self.step_time_ema or float("inf")):
                        self._update_total_steps(budget_end)
                n = len(self.optimizer.params["means"])
                metrics = {"loss": stats["loss"], "psnr": stats["psnr"], "num_gaussians": float(n),
                           "steps_per_second": 1.0 / max(self.step_time_ema, 1e-9), "step": float(self.step)}
                self.monitor.on_step(self.step, self._monitor_scene(), metrics)
                now = time.monotonic()
                if now - last_bar >= 0.25 or self.step >= self.total_steps:  # a few updates a second suffice
                    last_bar = now
                    progress.update(task, completed=self.step, total=self.total_steps, info=(
                        f"loss {stats['loss']:.4f}  PSNR {stats['psnr']:5.2f}  {n:,} Gaussians"))
                if self.step % 100 == 0:
                    self._snapshot()
                want_save = self.monitor.take_save_request()
                if (want_save or self.step % cfg.checkpoint_every == 0
                        or time.monotonic() - self._last_ckpt_time > cfg.checkpoint_minutes * 60):
                    self.save_checkpoint()
                if self.extra_curve_due(last_curve):
                    last_curve = self._train_seconds()
                    self._curve_point()
                self.profile.mark("loop_bookkeeping")
                self.profile.end()
        self.save_checkpoint()

    def extra_curve_due(self, last: float) -> bool:
        """Whether a PSNR-vs-time point is due (``extra.curve_every_s`` seconds of training apart)."""
        every = float(self.cfg.extra.get("curve_every_s", 0) or 0)
        return every > 0 and self.test_idx and self._train_seconds() - last >= every

    def _curve_point(self) -> None:
        views = self.test_idx[:: max(1, len(self.test_idx) // int(self.cfg.extra.get("curve_views", 5)))]
        values = [self._evaluate_view(i)[0]["psnr"] for i in views]
        self.curve.append({"step": self.step, "seconds": self._train_seconds(),
                           "wall_seconds": time.monotonic() - self.start_time,
                           "psnr": sum(values) / len(values), "num_gaussians": len(self.optimizer.params["means"])})

    def _monitor_scene(self) -> GaussianScene:
        if isinstance(self.monitor, NullMonitor):
            return None  # type: ignore[return-value]
        return self.transform.scene_to_world(self._scene())

    def _progress(self):
        from ..progress import Progress  # a bar on a terminal, a plain line every 10 s with the true steps/s elsewhere

        return Progress(enabled=not self.quiet and self.cfg.progress, unit="steps")

    # ------------------------------------------------------------------ Ctrl-C
    def _install_sigint(self) -> None:
        self._old_handler = None
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self._interrupt = True
            # a second Ctrl-C stops at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

        self._old_handler = signal.signal(signal.SIGINT, handler)

    def _restore_sigint(self) -> None:
        if self._old_handler is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, self._old_handler)

    def _interrupted(self) -> None:
        path = self.save_checkpoint()
        self.monitor.close()
        raise TrainingInterrupted(
            f"interrupted at step {self.step}; checkpoint saved to {path}; continue with --resume",
            self.step, path,
        )

    # ------------------------------------------------------------------ export and evaluation
    def _evaluate_view(self, i: int) -> tuple[dict[str, float], torch.Tensor]:
        # one render over black gives the render over any colour: rgb + (1 − alpha)·colour
        with torch.no_grad():
            out = render(self._scene().detach(), self.train_cameras[i], background=torch.zeros(3, device=self.device),
                         sh_degree=min(self._sh_degree_now(), self.cfg.sh_degree), backend=self.cfg.backend,
                         antialiased=self.cfg.antialiased)
        rgb, alpha = out.rgb[0], out.alpha[0]
        target = self.images[i] if i in self.images else self.data.load_image(i).to(self.device)
        target_alpha = None
        load_alpha = getattr(self.data, "load_alpha", None)
        if self.protocol == PROTOCOL_COMPOSITED and load_alpha is not None:
            target_alpha = load_alpha(i)
        values = view_metrics(rgb, alpha, target, protocol=self.protocol, background=self.eval_background,
                              target_alpha=target_alpha, mask=self._mask(i), nerfw=self.protocol == PROTOCOL_OPAQUE)
        # what a viewer shows: RGBA data over its background, a photo scene over black (see-through shows)
        shown = self.eval_background.to(self.device) if self.protocol == PROTOCOL_COMPOSITED else 0.0
        return values, (rgb + (1 - alpha) * shown).clamp(0, 1)

    def _mask(self, i: int) -> torch.Tensor | None:
        """H×W×1 mask of view ``i`` (1 = keep) where the data has masks, else None."""
        load_mask = getattr(self.data, "load_mask", None)
        if load_mask is None:
            return None
        if i not in self._masks:
            mask = load_mask(i)
            self._masks[i] = None if mask is None else mask.float().to(self.device).reshape(
                int(self.train_cameras.height[i]), int(self.train_cameras.width[i]), 1)
        return self._masks[i]

    def _refined_cameras(self) -> Cameras:
        """The data's cameras in its world frame, with the learnt corrections applied to the training ones."""
        cams = self.data.cameras
        if self.camera_opt is None or not self.camera_opt.active:
            return cams
        # a correction acts in camera space, which the training frame scales by transform.scale
        corrected = self.camera_opt.corrected_world_to_camera(cams.world_to_camera, 1.0 / self.transform.scale)
        w2c = cams.world_to_camera.clone()
        w2c[self.train_idx] = corrected[self.train_idx].to(w2c.dtype)
        return Cameras(w2c, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height, cams.distortion)

    def _finish(self) -> TrainResult:
        import numpy as np
        from PIL import Image

        from ..ply import save_ply
        from .rundir import write_cameras_json

        cfg, data = self.cfg, self.data
        train_seconds = self._train_seconds()
        world_scene = self.transform.scene_to_world(self._scene())
        if not world_scene.is_finite():
            raise TrainingDiverged("the trained scene holds NaN/Inf values; nothing was written")
        save_ply(world_scene, self.run_dir / "scene.ply", antialiased=cfg.antialiased)
        cameras = self._refined_cameras()
        write_cameras_json(self.run_dir / "cameras.json", cameras, list(data.image_paths), list(data.split))
        per_view = []
        renders = self.run_dir / "renders"
        renders.mkdir(exist_ok=True)
        t0 = time.monotonic()
        for k, i in enumerate(self.test_idx):
            values, pred = self._evaluate_view(i)
            name = Path(data.image_paths[i]).stem
            mask_path = data.mask_path(i) if hasattr(data, "mask_path") else None
            per_view.append({"index": i, "image": str(data.image_paths[i]),
                             **({"mask": str(mask_path)} if mask_path is not None else {}), **values})
            if k < cfg.eval_renders:
                with atomic_open(renders / f"{k:04d}_{name}.png", "wb") as f:
                    Image.fromarray((pred.cpu().numpy() * 255).round().astype(np.uint8)).save(f, format="PNG")
        eval_seconds = time.monotonic() - t0
        mean = (lambda key: sum(v[key] for v in per_view) / len(per_view)) if per_view else (lambda key: None)
        metrics = {
            "psnr": mean("psnr"),
            "ssim": mean("ssim"),
            "protocol": self.protocol,
            "protocol_note": PROTOCOL_NOTES[self.protocol],
            "psnr_black": mean("psnr_black") if per_view and "psnr_black" in per_view[0] else None,
            "psnr_white": mean("psnr_white") if per_view and "psnr_white" in per_view[0] else None,
            "see_through": mean("see_through"),
            "psnr_nerfw": mean("psnr_nerfw") if per_view and "psnr_nerfw" in per_view[0] else None,
            "psnr_nerfw_black": mean("psnr_nerfw_black") if per_view and "psnr_nerfw" in per_view[0] else None,
            "psnr_nerfw_white": mean("psnr_nerfw_white") if per_view and "psnr_nerfw" in per_view[0] else None,
            "masked": bool(per_view) and self._mask(self.test_idx[0]) is not None,
            "lpips": None,
            "lpips_note": ("LPIPS weights found locally but not wired in" if lpips_available()
                           else "LPIPS not computed: its network weights are not available locally and recon3d never downloads them"),
            "num_test_views": len(per_view),
            "num_train_views": len(self.train_idx),
            "steps": self.step,
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "total_seconds": round(time.monotonic() - self.start_time, 3),
            "steps_per_second": round(self.step / max(train_seconds, 1e-9), 3),
            "num_gaussians": len(world_scene),
            "peak_ram_mb": round(peak_ram_mb(), 1),
            "backend": cfg.backend,
            "device": str(self.device),
            "strategy": cfg.strategy,
            "initialisation": self.init_kind,
            "initial_fill_points": getattr(self, "init_fill_count", 0),
            "appearance": "none" if self.appearance is None else "affine",
            "camera_refinement": self._camera_report(),
            "nan_events": self.nan_events,
            "image_size": [int(self.train_cameras.width[self.train_idx[0]]), int(self.train_cameras.height[self.train_idx[0]])],
            "curve": self.curve,
            "per_view": per_view,
            "threads": torch.get_num_threads(),
            "pid": os.getpid(),
        }
        if self.profile.enabled and self.profile.steps:  # RECON3D_PROFILE=1: ms per phase of a step
            metrics["step_profile"] = {"steps": self.profile.steps, "threads": torch.get_num_threads(),
                                       "wall_ms": self.profile.summary(), "cpu_ms": self.profile.summary(cpu=True)}
        if not per_view:
            metrics["note"] = "no held-out views in this data set, so no PSNR/SSIM"
        import json

        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        self.monitor.close()
        # the one summary of the run (the CLI adds only where the result is)
        if metrics["psnr_black"] is not None:
            self._log(f"held-out PSNR over black {metrics['psnr_black']:.2f} dB, over white "
                      f"{metrics['psnr_white']:.2f} dB; see-through {100 * metrics['see_through']:.1f} % of pixels "
                      f"({self.protocol} protocol)")
        if metrics["psnr_nerfw"] is not None:
            self._log(f"held-out PSNR, NeRF-W protocol (appearance fitted on each image's left half, PSNR on "
                      f"its right half): {metrics['psnr_nerfw']:.2f} dB")
        figures = (f"held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} over {len(per_view)} views; "
                   if metrics["psnr"] is not None else "")
        self._log(f"{figures}{len(world_scene):,} Gaussians after {self.step:,} steps in {train_seconds:.0f} s "
                  f"({metrics['steps_per_second']:.1f} steps/s)")
        return TrainResult(world_scene, cameras, metrics, self.run_dir, list(data.image_paths), list(data.split))

    def _camera_report(self) -> dict[str, Any] | None:
        if self.camera_opt is None:
            return None
        rot, trans = self.camera_opt.magnitudes()
        return {"active": self.camera_opt.active, "max_rotation_deg": rot,
                "max_translation": trans / self.transform.scale, "max_translation_relative": trans}


class StepProfile:
    """Wall time per phase of a training step, on when ``RECON3D_PROFILE=1`` (a summary is printed at the end).

    Each ``mark(name)`` charges the time since the previous mark to ``name``; on a GPU it synchronises
    first, so the figures are honest there too (and the run is slower: profile only to measure).
    ``RECON3D_PROFILE_FROM=N`` discards the first N steps (e.g. those before an MCMC cap is reached).
    """

    def __init__(self, device: torch.device, enabled: bool | None = None) -> None:
        self.enabled = os.environ.get("RECON3D_PROFILE", "0") not in ("", "0") if enabled is None else enabled
        self.skip = int(os.environ.get("RECON3D_PROFILE_FROM", "0") or 0)
        self._seen = 0
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}
        self.cpu_totals: dict[str, float] = {}  # process CPU time (all threads): robust on a shared machine
        self.steps = 0
        self._last = 0.0
        self._last_cpu = 0.0

    def start(self) -> None:
        """Begin a step."""
        if self.enabled:
            self._sync()
            self._last = time.perf_counter()
            self._last_cpu = time.process_time()

    def mark(self, name: str) -> None:
        """Charge the time since the last mark to ``name``."""
        if self.enabled:
            self._sync()
            now, cpu = time.perf_counter(), time.process_time()
            self.totals[name] = self.totals.get(name, 0.0) + now - self._last
            self.cpu_totals[name] = self.cpu_totals.get(name, 0.0) + cpu - self._last_cpu
            self._last, self._last_cpu = now, cpu

    def end(self) -> None:
        """Finish a step."""
        if self.enabled:
            self._seen += 1
            if self._seen <= self.skip:  # warm-up steps: forget what they cost
                self.totals.clear()
                self.cpu_totals.clear()
                return
            self.steps += 1

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def summary(self, cpu: bool = False) -> dict[str, float]:
        """Mean milliseconds per step for each phase (wall clock, or process CPU time with ``cpu``)."""
        totals = self.cpu_totals if cpu else self.totals
        return {k: 1000.0 * v / max(self.steps, 1) for k, v in totals.items()}

    def table(self) -> str:
        """The summary as text, the largest phase first."""
        wall, cpu = self.summary(), self.summary(cpu=True)
        rows = sorted(wall.items(), key=lambda kv: -kv[1])
        total, total_cpu = sum(wall.values()), sum(cpu.values())
        lines = [f"step profile over {self.steps} steps: {total:.1f} ms/step wall, {total_cpu:.1f} ms CPU "
                 f"({torch.get_num_threads()} threads)"]
        lines += [f"  {k:<18s} {v:8.2f} ms  {100 * v / max(total, 1e-12):5.1f} %   CPU {cpu.get(k, 0.0):8.2f} ms"
                  for k, v in rows]
        return "\n".join(lines)


class _NonFinite(Exception):
    """Internal: a NaN/Inf appeared in this step."""
