"""The training loop: a data set + a config -> a trained run directory, with checkpoints, resume and faults.

One step is ``step.train_step`` (render, loss, backward, Adam, densification) on a ``TrainState``
(``state.py``); this file owns what surrounds the steps: the start (a fresh state or the last checkpoint),
the time budget, Ctrl-C, the monitor (a live viewer), NaN recovery from the last good snapshot,
checkpoints, and at the end the export and the held-out evaluation. Everything random comes from the
state's two seeded generators, which checkpoints keep, so a resumed run retraces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..cameras import Cameras
from ..data.protocol import SceneDataProtocol
from ..evaluation import evaluate_views, measure_view
from ..io_utils import atomic_write_text
from ..metrics import PROTOCOL_COMPOSITED, PROTOCOL_OPAQUE
from ..scene import GaussianScene
from .appearance import AffineAppearance, BilateralGridAppearance, appearance_name, resolve_appearance
from .budget import StepCost
from .camera_opt import CameraRefinement, pivot_depths
from .checkpoint import load_latest_checkpoint, save_checkpoint, state_from_dict, state_to_dict
from .config import TrainConfig
from .faults import NonFinite, OutOfMemory, TrainingDiverged, TrainingInterrupted, is_oom
from .frame import WorldTransform, focus_point
from .loss import params_finite
from .method import GaussianSplats, Method
from .monitor import NullMonitor, TrainingMonitor
from .optim import GaussianAdam
from .profile import StepProfile, peak_ram_mb
from .state import TrainState
from .step import next_batch, schedule_scale, train_step, upcoming
from .views import TrainViews

if TYPE_CHECKING:
    from .distributed import Sync

__all__ = ["OutOfMemory", "TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted"]


@dataclass
class TrainResult:
    """What a finished run returns: the scene and cameras in the input's world frame, and the metrics."""

    scene: GaussianScene
    cameras: Cameras
    metrics: dict[str, Any]
    run_dir: Path
    image_paths: list[Path] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)


class Trainer:
    """Trains ``method`` (Gaussian splats by default) on ``data`` and writes ``run_dir``."""

    def __init__(self, data: SceneDataProtocol, config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 monitor: TrainingMonitor | None = None, start_time: float | None = None, quiet: bool = False,
                 method: Method | None = None, sync: Sync | None = None) -> None:
        from ..progress import console

        self.sync = sync  # data-parallel training (torchrun): this process's place among several
        self.rank = sync.rank if sync is not None else 0
        self.world_size = sync.world_size if sync is not None else 1
        quiet = quiet or self.rank != 0

        self.data = data
        self.cfg = config
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resume = resume
        self.monitor: TrainingMonitor = monitor or NullMonitor()
        self.start_time = time.monotonic() if start_time is None else start_time
        self.quiet = quiet
        self.console = console(quiet=quiet)
        # RGBA object data keeps its protocol (composited on one colour); a photo has content everywhere
        self.protocol = PROTOCOL_COMPOSITED if data.background is not None else PROTOCOL_OPAQUE
        self.method: Method = method or GaussianSplats(config, opaque=self.protocol == PROTOCOL_OPAQUE)
        if config.run.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.run.device)
        if sync is not None and self.device.type == "cuda":
            self.device = sync.device  # this process's GPU (LOCAL_RANK)
        if sync is not None and hasattr(self.method, "set_sync"):
            self.method.set_sync(sync)
        self.profile = StepProfile(self.device)
        self.step_cost = StepCost()
        self.train_idx = list(data.train_indices())
        self.test_idx = list(data.test_indices())
        # filled in by run(): the views in the training frame, the state, the last good snapshot
        self.views: TrainViews | None = None
        self.train_cameras: Cameras | None = None
        self.state: TrainState | None = None
        self.good: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_time = time.monotonic()
        self.interrupt = False
        self.old_sigint_handler: Any = None

    # ------------------------------------------------------------------ start
    def _load_views(self) -> WorldTransform:
        if not self.train_idx:
            from ..errors import Recon3dError

            raise Recon3dError(f"{self.data.root}: no training images (every camera is in the held-out split)")
        transform = WorldTransform.from_cameras(self.data.cameras[self.train_idx])
        self.train_cameras = transform.cameras_to_train(self.data.cameras).to(self.device)
        batch = self.cfg.optim.batch_size
        if batch > 1:
            from ..errors import InputError

            sizes = {(int(self.train_cameras.width[i]), int(self.train_cameras.height[i])) for i in self.train_idx}
            if len(sizes) > 1:
                listed = ", ".join(f"{w}×{h}" for w, h in sorted(sizes)[:4])
                raise InputError(self.data.root, f"--batch-size {batch} renders its cameras together, which needs "
                                 f"training images of one size; these have {len(sizes)} sizes ({listed})")
        if batch * self.world_size > 1 and self.cfg.model.appearance == "grid":
            from ..errors import InputError

            raise InputError(self.data.root, f"--appearance grid trains one image's grid per step: use it with "
                             f"--batch-size 1 in one process, or --appearance affine ({batch * self.world_size} "
                             f"cameras per step here)")
        self.views = TrainViews.load(self.data, self.train_cameras, self.train_idx, self.cfg, self.device,
                                     cache_dir=self.run_dir / "image_cache")
        self._log(self.views.store.describe())
        return transform

    def _fresh_state(self, transform: WorldTransform) -> TrainState:
        seed = self.cfg.run.seed
        rng_cpu = torch.Generator().manual_seed(seed)
        rng_device = torch.Generator(device=self.device).manual_seed(seed + 1)
        params, init_kind, filled = self.method.init_params(self.data, self.views, transform, rng_cpu, self.device)
        return TrainState(
            step=0, total_steps=self.cfg.run.steps, optimizer=GaussianAdam(params, self.method.learning_rates()),
            strategy_state=self.method.new_strategy_state(len(params["means"])), rng_cpu=rng_cpu,
            rng_device=rng_device, order=torch.zeros(0, dtype=torch.long), order_pos=0, transform=transform,
            init_kind=init_kind, init_fill=filled, **self._new_groups(),
        )

    def _new_groups(self) -> dict[str, Any]:
        """Fresh per-image appearance and per-camera corrections, where the config (or the protocol) asks."""
        model, optim, opaque = self.cfg.model, self.cfg.optim, self.protocol == PROTOCOL_OPAQUE
        mode = resolve_appearance(model.appearance, getattr(self.data, "source", ""), opaque)
        refine = bool(model.refine_cameras)  # auto (None) = off: see the setting's note in config.py
        appearance: AffineAppearance | BilateralGridAppearance | None = None
        if mode == "affine":
            appearance = AffineAppearance(len(self.data), self.device, lr=optim.appearance_lr, rows=self.train_idx,
                                          row_adam=optim.appearance_row_adam)
        elif mode == "grid":
            appearance = BilateralGridAppearance(len(self.data), self.device, shape=tuple(model.appearance_grid),
                                                 lr=optim.grid_lr, tv_weight=optim.grid_tv, rows=self.train_idx)
        return {
            "appearance": appearance,
            # the training cameras' poses in the training frame fix the gauge (CameraRefinement.remove_gauge)
            "camera_opt": (CameraRefinement(len(self.data), self.device, weight=optim.camera_reg,
                                            poses=self.train_cameras.world_to_camera, train=self.train_idx,
                                            gauge_every=optim.camera_gauge_every,
                                            common_rotation=optim.camera_common_rotation,
                                            row_adam=optim.camera_row_adam, **self._camera_units())
                           if refine else None),
        }

    def _camera_units(self) -> dict[str, Any]:
        """The pose corrections' learning rate and units (optim.camera_units; camera_opt's docstring): "pixels"
        and "orbit" pass each training camera's focal length and the scene's depth in front of it (SfM points,
        else the point the cameras look at), in the training frame."""
        optim = self.cfg.optim
        if optim.camera_units == "twist":
            return {"lr": optim.camera_lr}
        if optim.camera_units not in ("pixels", "orbit"):
            from ..errors import Recon3dError

            raise Recon3dError(f"optim.camera_units must be twist, pixels or orbit, not {optim.camera_units!r}")
        cams = self.train_cameras.to("cpu")
        transform = WorldTransform.from_cameras(self.data.cameras[self.train_idx])
        points = None if self.data.points is None else transform.points_to_train(self.data.points.float().cpu())
        focus = transform.points_to_train(focus_point(self.data.cameras[self.train_idx])[None])[0]
        depth = pivot_depths(cams, points, focus)
        return {"lr": optim.camera_lr_pixels, "focal": (cams.fx.double() + cams.fy.double()) / 2, "depth": depth,
                "pivot": optim.camera_units == "orbit"}

    def _start(self) -> TrainState:
        transform = self._load_views()
        found = load_latest_checkpoint(self.ckpt_dir) if self.resume else None
        if found is not None:
            checkpoint, path = found
            state = state_from_dict(checkpoint, self.device, groups=self._new_groups())
            self.last_checkpoint = path
            if self.cfg.run.time_budget is None:  # --steps may have been changed for the resumed run
                state.total_steps = self.cfg.run.steps
            self._log(f"resuming {self.run_dir} from step {state.step} ({path.name})")
            return state
        state = self._fresh_state(transform)
        source = "structure-from-motion points" if state.init_kind == "points" else "random points"
        self._log(f"initialised {state.num_gaussians:,} Gaussians from {source}")
        return state

    # ------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        """Train (or resume), export, evaluate; returns the result in the input's world frame."""
        threads_before = torch.get_num_threads()
        if self.cfg.run.threads > 0:
            torch.set_num_threads(self.cfg.run.threads)
        try:
            self.state = self._start()
            self.state.clock.started = time.monotonic()
            self.last_checkpoint_time = time.monotonic()
            budget_end = None
            if self.cfg.run.time_budget is not None:
                # reserve time for export and evaluation of the held-out views after training
                spent_before = time.monotonic() - self.start_time  # loading data, SfM: part of the budget
                reserve = min(0.1 * self.cfg.run.time_budget * 60, 5.0 + 0.5 * len(self.test_idx))
                budget_end = self.cfg.run.time_budget * 60 - spent_before - reserve
            self._install_sigint()
            try:
                self._loop(budget_end)
            except Exception as exc:
                self._peer_failure(exc)
                raise
            finally:
                self._restore_sigint()
            if self.profile.enabled and self.profile.steps:
                print(self.profile.table(), file=sys.stderr, flush=True)
            if self.rank != 0:  # rank 0 writes the outputs; the others hold the same scene
                return TrainResult(self.method.export(self.state.params, self.state.transform), self.data.cameras,
                                   {}, self.run_dir)
            return self._finish()
        finally:
            if self.views is not None:
                self.views.close()
            torch.set_num_threads(threads_before)

    def _peer_failure(self, exc: BaseException) -> None:
        """A collective that failed because another process went away: one line (PeerLost) instead."""
        from .distributed import PeerLost, is_peer_failure

        if self.sync is None or isinstance(exc, PeerLost) or not is_peer_failure(exc):
            return
        step = self.state.step if self.state is not None else 0
        raise PeerLost(f"rank {self.rank} of {self.world_size}: another training process stopped at step {step} "
                       f"({str(exc).splitlines()[0][:120]}); {self._resume_hint()}") from None

    def _resume_hint(self) -> str:
        where = f"the last checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
        return f"{where}; continue with --resume (with any number of processes)"

    def _train_step(self) -> dict[str, float]:
        """One step: the next cameras (the following step's start loading meanwhile), then ``train_step``."""
        self.profile.start()
        size, rank, world = self.cfg.optim.batch_size, self.rank, self.world_size
        batch = next_batch(self.state, self.views, size, rank, world)
        if self.cfg.data.prefetch and self.views.wants_prefetch:
            self.views.prefetch(upcoming(self.state, self.views, size, rank, world))
        return train_step(self.state, batch, self.method, self.cfg, self.profile, sync=self.sync)

    def _loop(self, budget_end: float | None) -> None:
        cfg = self.cfg
        self.good = state_to_dict(self.state)
        if self.sync is not None:
            from .distributed import install_termination_line

            install_termination_line(self.sync, self._resume_hint)
        last_curve = self.state.clock.seconds()
        last_bar = 0.0
        # this process's CPU time over its steps (every thread): a loaded machine's wall clock says little
        self._cpu_from = (self.state.step, time.process_time())
        with self._progress() as progress:
            task = progress.add_task("training", total=self.state.total_steps, completed=self.state.step, info="")
            while self.state.step < self.state.total_steps:
                state = self.state
                over_budget = budget_end is not None and state.clock.seconds() >= budget_end
                if self.sync is not None:  # rank 0's clock and plan, anyone's Ctrl-C: every process stops together
                    self.interrupt, over_budget, state.total_steps = self.sync.control(
                        self.interrupt, over_budget, state.total_steps)
                    if state.step >= state.total_steps:
                        break
                if over_budget:
                    break
                if self.interrupt:
                    self._interrupted()
                while self.monitor.paused() and not self.interrupt:
                    t0 = time.monotonic()
                    time.sleep(0.1)
                    state.clock.paused += time.monotonic() - t0
                t0 = time.monotonic()
                try:
                    stats = self._train_step()
                except NonFinite as exc:
                    self._recover(str(exc))
                    continue
                except (RuntimeError, MemoryError) as exc:
                    if is_oom(exc):
                        n = state.num_gaussians
                        raise OutOfMemory(
                            f"out of memory at step {state.step} with {n:,} Gaussians: try --downscale 2 or a lower "
                            f"Gaussian cap (--max-gaussians {max(1000, n // 2)})"
                        ) from None
                    raise
                self.profile.start()
                dt = time.monotonic() - t0
                state.step_time_ema = dt if state.step_time_ema is None else 0.95 * state.step_time_ema + 0.05 * dt
                self.step_cost.add(state.num_gaussians, dt)
                if budget_end is not None and (state.step == 20 or state.step % 50 == 0):
                    self._plan_steps(budget_end)
                elif budget_end is not None and state.step >= state.total_steps:
                    # the last estimate (from earlier, often slower steps) ran out before the budget did:
                    # keep going while at least one more step fits, rather than leave the time unused
                    if budget_end - state.clock.seconds() > (state.step_time_ema or float("inf")):
                        self._plan_steps(budget_end)
                if stats.pop("camera_refinement_off", 0):
                    self._log(f"[yellow]camera refinement off: no gradient reached the camera corrections through the "
                              f"{cfg.run.backend} render backend[/]")
                n = state.num_gaussians
                metrics = {"loss": stats["loss"], "psnr": stats["psnr"], "num_gaussians": float(n),
                           "steps_per_second": 1.0 / max(state.step_time_ema, 1e-9), "step": float(state.step)}
                self.monitor.on_step(state.step, self._monitor_scene(), metrics)
                now = time.monotonic()
                if now - last_bar >= 0.25 or state.step >= state.total_steps:  # a few updates a second suffice
                    last_bar = now
                    progress.update(task, completed=state.step, total=state.total_steps, info=(
                        f"loss {stats['loss']:.4f}  PSNR {stats['psnr']:5.2f}  {n:,} Gaussians"))
                if state.step % 100 == 0:
                    self.good = state_to_dict(state)
                want_save = self.monitor.take_save_request()
                if (want_save or state.step % cfg.run.checkpoint_every == 0
                        or time.monotonic() - self.last_checkpoint_time > cfg.run.checkpoint_minutes * 60):
                    self.save_checkpoint()
                if self._curve_due(last_curve):
                    last_curve = state.clock.seconds()
                    self._curve_point()
                self.profile.mark("loop_bookkeeping")
                self.profile.end()
        self.save_checkpoint()

    def _plan_steps(self, budget_end: float) -> None:
        """Time budget: steps still to run = remaining time / recent time per step."""
        state = self.state
        if state.step_time_ema is None or state.step_time_ema <= 0:
            return
        remaining = budget_end - state.clock.seconds()
        state.total_steps = max(state.step + 1, state.step + int(remaining / state.step_time_ema))
        # the count the budget affords: the one at which the remaining time still runs the preset's planned
        # steps, with the time per step fitted as a fixed part plus a part per Gaussian (budget.py)
        steps_left = max(1, self.cfg.run.steps - state.step)
        self.method.set_budget(self.step_cost.affordable(max(1, state.num_gaussians), state.step_time_ema, remaining,
                                                         steps_left))

    # ------------------------------------------------------------------ faults
    def _recover(self, problem: str) -> None:
        """A NaN/Inf: restore the last good snapshot with lower learning rates, or give up after nan_retries."""
        state, optim = self.state, self.cfg.optim
        state.nan_events += 1
        if state.nan_events > optim.nan_retries or self.good is None:
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise TrainingDiverged(
                f"training diverged at step {state.step}: {problem}; restarted {state.nan_events - 1} time(s) with "
                f"lower learning rates without success{where}. Try a lower learning rate "
                f"(e.g. --set optim.lr_means={optim.lr_means / 4:g}) or another --seed"
            )
        state.optimizer.zero_grad()
        restored = state_from_dict(self.good, self.device, clock=state.clock,
                                   groups={"appearance": state.appearance, "camera_opt": state.camera_opt})
        restored.lr_factor = state.lr_factor * optim.nan_lr_factor
        restored.nan_events = state.nan_events
        self.state = restored
        self._log(f"[yellow]step {restored.step}: {problem}; restored the last good state and lowered the learning "
                  f"rates to ×{restored.lr_factor:g}[/]")

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint now (skipped, with a warning, if the parameters are not finite); rank 0 only."""
        if self.rank != 0:
            return None
        if not params_finite(self.state.params):
            self._log("[yellow]not checkpointing: parameters are not finite[/]")
            return self.last_checkpoint
        path = save_checkpoint(self.ckpt_dir, self.state.step, state_to_dict(self.state, self.cfg.to_dict()),
                               keep=self.cfg.run.keep_checkpoints)
        self.last_checkpoint = path
        self.last_checkpoint_time = time.monotonic()
        return path

    def _install_sigint(self) -> None:
        self.old_sigint_handler = None
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self.interrupt = True
            # a second Ctrl-C stops at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

        self.old_sigint_handler = signal.signal(signal.SIGINT, handler)

    def _restore_sigint(self) -> None:
        if self.old_sigint_handler is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, self.old_sigint_handler)

    def _interrupted(self) -> None:
        path = self.save_checkpoint()
        self.monitor.close()
        raise TrainingInterrupted(
            f"interrupted at step {self.state.step}; checkpoint saved to {path}; continue with --resume",
            self.state.step, path,
        )

    # ------------------------------------------------------------------ observers
    def _log(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def _monitor_scene(self) -> GaussianScene | None:
        if isinstance(self.monitor, NullMonitor):
            return None
        return self.method.export(self.state.params, self.state.transform)

    def _progress(self):
        from ..progress import Progress  # a bar on a terminal, a plain line every 10 s with the true steps/s elsewhere

        return Progress(enabled=not self.quiet and self.cfg.run.progress, unit="steps")

    # ------------------------------------------------------------------ evaluation and export
    def _mask(self, i: int) -> torch.Tensor | None:
        return self.views.view(i).mask

    def _view(self, i: int) -> tuple[dict[str, Any], torch.Tensor]:
        """The figures of held-out view ``i`` by the run's protocol, and the image a viewer shows."""
        state = self.state
        # one render over black gives the render over any colour: rgb + (1 − alpha)·colour
        out = self.method.render(state.params, self.train_cameras[i], background=torch.zeros(3, device=self.device),
                                 step=state.step, schedule_scale=schedule_scale(state, self.cfg))
        view = self.views.view(i)  # from the image store, as the training views (kept as uint8, not as floats)
        target_alpha = view.alpha[..., 0] if self.protocol == PROTOCOL_COMPOSITED and view.alpha is not None else None
        values, shown = measure_view(out.rgb[0], out.alpha[0], view.image, protocol=self.protocol,
                                     background=self.views.background, target_alpha=target_alpha, mask=view.mask)
        mask_path = self.data.mask_path(i) if hasattr(self.data, "mask_path") else None
        return ({"mask": str(mask_path)} if mask_path is not None else {}) | values, shown

    def _evaluate(self, indices: list[int], renders_dir: Path | None = None, max_renders: int = 0) -> dict[str, Any]:
        return evaluate_views(indices, self._view, self.data.image_paths, protocol=self.protocol,
                              renders_dir=renders_dir, max_renders=max_renders)

    def _aligned_evaluation(self, scene: GaussianScene, cameras: Cameras, per_view: list[dict]) -> dict[str, Any]:
        """``run.eval_align_poses``: each held-out view measured again after test-time pose alignment of its
        camera against the exported scene (world frame), into its ``per_view`` entry; their means."""
        from ..evaluation import aligned_means
        from .pose_align import aligned_view_figures, orbit_radius

        radius = orbit_radius(cameras[self.train_idx] if len(self.train_idx) > 1 else cameras)
        background = self.views.background.cpu()
        for entry, i in zip(per_view, self.test_idx):
            view = self.views.view(i)
            target_alpha = (view.alpha[..., 0] if self.protocol == PROTOCOL_COMPOSITED and view.alpha is not None
                            else None)
            entry["aligned_poses"] = aligned_view_figures(
                scene, cameras[i], view.image.cpu(), protocol=self.protocol, background=background, radius=radius,
                target_alpha=None if target_alpha is None else target_alpha.cpu(),
                mask=None if view.mask is None else view.mask.cpu(), backend=self.cfg.run.backend,
                antialiased=self.cfg.model.antialiased)
        return aligned_means(per_view)

    def _refined_cameras(self) -> Cameras:
        """The data's cameras in its world frame, with the learnt corrections applied to the training ones."""
        cams, refinement = self.data.cameras, self.state.camera_opt
        if refinement is None or not refinement.active:
            return cams
        if refinement.gauge_every > 0:
            refinement.remove_gauge()  # the last steps' common motion too: exactly the input cameras' frame
        # a correction acts in camera space, which the training frame scales by transform.scale
        corrected = refinement.corrected_world_to_camera(cams.world_to_camera, 1.0 / self.state.transform.scale)
        w2c = cams.world_to_camera.clone()
        w2c[self.train_idx] = corrected[self.train_idx].to(w2c.dtype)
        return Cameras(w2c, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height, cams.distortion)

    def _camera_report(self) -> dict[str, Any] | None:
        refinement = self.state.camera_opt
        if refinement is None:
            return None
        rot, trans = refinement.magnitudes()
        fixed = refinement.gauge_every > 0 and refinement.can_fix_gauge()
        return {"active": refinement.active, "units": refinement.parametrisation, "max_rotation_deg": rot,
                "max_translation": trans / self.state.transform.scale, "max_translation_relative": trans,
                "gauge_every": refinement.gauge_every if fixed else 0, "gauge_removed": dict(refinement.gauge_removed),
                "held_out_cameras": ("as given, not refined; the training corrections' common similarity is removed, "
                                     "so the scene stays in the given cameras' frame" if fixed else
                                     "as given, not refined; gauge not fixed (the scene may have moved with the "
                                     "training cameras)")}

    def _curve_due(self, last: float) -> bool:
        """Whether a PSNR-vs-time point is due (``run.curve_every_s`` seconds of training apart)."""
        every = self.cfg.run.curve_every_s
        return every > 0 and bool(self.test_idx) and self.state.clock.seconds() - last >= every

    def _curve_point(self) -> None:
        state = self.state
        views = self.test_idx[:: max(1, len(self.test_idx) // self.cfg.run.curve_views)]
        state.curve.append({"step": state.step, "seconds": state.clock.seconds(),
                            "wall_seconds": time.monotonic() - self.start_time,
                            "psnr": self._evaluate(views)["psnr"], "num_gaussians": state.num_gaussians})

    def _cpu_figures(self) -> dict[str, float]:
        """This process's CPU seconds over the steps it ran, and its steps per CPU second."""
        if not hasattr(self, "_cpu_from"):
            return {}
        first, cpu0 = self._cpu_from
        cpu = time.process_time() - cpu0
        return {"train_cpu_seconds": round(cpu, 3),
                "steps_per_cpu_second": round((self.state.step - first) / max(cpu, 1e-9), 3)}

    def _finish(self) -> TrainResult:
        from ..ply import save_ply
        from .rundir import data_masks, write_cameras_json

        cfg, data, state = self.cfg, self.data, self.state
        train_seconds = state.clock.seconds()
        cpu_figures = self._cpu_figures()  # before the export and the evaluation
        world_scene = self.method.export(state.params, state.transform)
        if not world_scene.is_finite():
            raise TrainingDiverged("the trained scene holds NaN/Inf values; nothing was written")
        save_ply(world_scene, self.run_dir / "scene.ply", antialiased=cfg.model.antialiased)
        cameras = self._refined_cameras()
        write_cameras_json(self.run_dir / "cameras.json", cameras, list(data.image_paths), list(data.split),
                           masks=data_masks(data))
        t0 = time.monotonic()
        evaluation = self._evaluate(self.test_idx, self.run_dir / "renders", cfg.run.eval_renders)
        if cfg.run.eval_align_poses and self.test_idx:
            evaluation["aligned_poses"] = self._aligned_evaluation(world_scene, cameras, evaluation["per_view"])
        eval_seconds = time.monotonic() - t0
        per_view = evaluation["per_view"]
        metrics = {
            "psnr": evaluation["psnr"],
            "ssim": evaluation["ssim"],
            "protocol": evaluation["protocol"],
            "protocol_note": evaluation["protocol_note"],
            "psnr_black": evaluation["psnr_black"],
            "psnr_white": evaluation["psnr_white"],
            "see_through": evaluation["see_through"],
            "psnr_nerfw": evaluation["psnr_nerfw"],
            "psnr_nerfw_black": evaluation["psnr_nerfw_black"],
            "psnr_nerfw_white": evaluation["psnr_nerfw_white"],
            "psnr_nerfw_grid": evaluation["psnr_nerfw_grid"],
            "masked": bool(per_view) and self._mask(self.test_idx[0]) is not None,
            "lpips": evaluation["lpips"],
            "lpips_note": evaluation["lpips_note"],
            "num_test_views": len(per_view),
            "num_train_views": len(self.train_idx),
            "steps": state.step,
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "total_seconds": round(time.monotonic() - self.start_time, 3),
            "steps_per_second": round(state.step / max(train_seconds, 1e-9), 3),
            **cpu_figures,
            "num_gaussians": len(world_scene),
            "peak_ram_mb": round(peak_ram_mb(), 1),
            "image_store": {"mode": self.views.store.mode, "budget_mb": round(self.views.store.budget / 2**20, 1),
                            "peak_ram_mb": round(self.views.store.peak_ram_bytes / 2**20, 1)},
            "batch_size": cfg.optim.batch_size,
            "processes": self.world_size,
            "backend": cfg.run.backend,
            "device": str(self.device),
            "strategy": cfg.strategy.kind,
            "method": self.method.name,
            "initialisation": state.init_kind,
            "initial_fill_points": state.init_fill,
            "appearance": appearance_name(state.appearance),
            "camera_refinement": self._camera_report(),
            **({"aligned_poses": evaluation["aligned_poses"]} if "aligned_poses" in evaluation else {}),
            "nan_events": state.nan_events,
            "image_size": [int(self.train_cameras.width[self.train_idx[0]]),
                           int(self.train_cameras.height[self.train_idx[0]])],
            "curve": state.curve,
            "per_view": per_view,
            "threads": torch.get_num_threads(),
            "pid": os.getpid(),
        }
        if self.profile.enabled and self.profile.steps:  # RECON3D_PROFILE=1: ms per phase of a step
            metrics["step_profile"] = {"steps": self.profile.steps, "threads": torch.get_num_threads(),
                                       "wall_ms": self.profile.summary(), "cpu_ms": self.profile.summary(cpu=True)}
        if not per_view:
            metrics["note"] = "no held-out views in this data set, so no PSNR/SSIM"
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        self.views.store.remove_cache()  # the decoded copy on disk (GBs for a large capture) served its purpose
        self.monitor.close()
        if metrics["psnr_black"] is not None:
            self._log(f"held-out PSNR over black {metrics['psnr_black']:.2f} dB, over white "
                      f"{metrics['psnr_white']:.2f} dB; see-through {100 * metrics['see_through']:.1f} % of pixels "
                      f"({self.protocol} protocol)")
        if metrics["psnr_nerfw"] is not None:
            self._log(f"held-out PSNR, NeRF-W protocol (appearance fitted on each image's left half, PSNR on "
                      f"its right half): {metrics['psnr_nerfw']:.2f} dB")
        # the one summary of the run (the CLI adds only where the result is)
        figures = (f"held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} over {len(per_view)} views; "
                   if metrics["psnr"] is not None else "")
        self._log(f"{figures}{len(world_scene):,} Gaussians after {state.step:,} steps in {train_seconds:.0f} s "
                  f"({metrics['steps_per_second']:.1f} steps/s)")
        return TrainResult(world_scene, cameras, metrics, self.run_dir, list(data.image_paths), list(data.split))
