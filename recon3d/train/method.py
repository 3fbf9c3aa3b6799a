"""Reconstruction methods: what a method supplies to the trainer, and Gaussian splats as the first one.

A method owns its parameters' shape and meaning; the trainer owns time, data and faults. ``train_step``
(``step.py``) calls a method in this order each step::

    out = method.render(params, camera, background=..., step=..., schedule_scale=...)
    method.before_backward(state, out, camera)         # ask for the gradients densification reads
    loss = image loss + method.regulariser(params);  loss.backward()
    lr_means = method.set_learning_rates(state)         # schedules of this step
    state.optimizer.step(...)
    method.after_backward(state, out, camera, scale)   # densify / prune (edits parameter rows)
    method.after_optimizer(state, lr_means)             # e.g. MCMC position noise

and the loop calls ``init_params`` once (a fresh run), ``render`` to evaluate, and ``export`` to write the
result in the input's world frame. A NeRF implements the same members (its densification hooks do nothing).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import torch

from ..cameras import Cameras
from ..data.protocol import SceneDataProtocol
from ..render import RenderOutput, render
from ..scene import GaussianScene, num_sh_rest, rgb_to_sh0
from .camera_opt import CameraRefinement
from .config import TrainConfig
from .frame import WorldTransform, focus_point
from .init import frustum_points
from .optim import exponential_lr
from .state import TrainState
from .strategy import DefaultStrategy, MCMCStrategy, Strategy
from .views import TrainViews

# the training frame puts the farthest camera at distance 1; 3DGS sizes its thresholds by 1.1× that
SCENE_SCALE = 1.1


class Method(Protocol):
    """What a reconstruction method supplies (parameters, rendering, densification hooks, export)."""

    name: str

    def init_params(self, data: SceneDataProtocol, views: TrainViews, transform: WorldTransform,
                    generator: torch.Generator, device: torch.device) -> tuple[dict[str, torch.Tensor], str, int]:
        """Initial parameters (training frame, requiring grad), how they were made (points | random) and how
        many points were added on the cameras' rays."""
        ...

    def learning_rates(self) -> dict[str, float]:
        """Base learning rate of each parameter."""
        ...

    def new_strategy_state(self, num_rows: int) -> dict[str, torch.Tensor]:
        """Fresh densification accumulators."""
        ...

    def render(self, params: dict[str, torch.Tensor], cameras, *, background: torch.Tensor, step: int,
               schedule_scale: float, correction: tuple[CameraRefinement, int | list[int]] | None = None) -> RenderOutput:
        """Render the parameters from ``cameras`` (training frame) as they are at ``step``; ``correction``:
        apply pose correction ``index`` of a ``CameraRefinement`` to the (single) camera, differentiably."""
        ...

    def regulariser(self, params: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """Terms added to the image loss."""
        ...

    def before_backward(self, state: TrainState, out: RenderOutput, cameras) -> None:
        """Before the backward pass."""
        ...

    def set_learning_rates(self, state: TrainState, schedule_scale: float) -> float:
        """Set this step's learning rates on ``state.optimizer``; returns the position rate."""
        ...

    def after_backward(self, state: TrainState, out: RenderOutput, cameras, schedule_scale: float) -> dict[str, int]:
        """After the optimiser step: densify and prune; returns counts of what it did."""
        ...

    def after_optimizer(self, state: TrainState, lr_means: float) -> None:
        """Last thing in a step (MCMC noise)."""
        ...

    def export(self, params: dict[str, torch.Tensor], transform: WorldTransform) -> GaussianScene:
        """The result in the input's world frame."""
        ...

    def set_budget(self, count: int) -> None:
        """The number of primitives the rest of a time budget affords (a method may stop growing there)."""
        ...


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


def params_to_scene(params: dict[str, torch.Tensor]) -> GaussianScene:
    """The Gaussian parameters as a scene (no copy: gradients flow through it)."""
    return GaussianScene(params["means"], params["scales"], params["quats"], params["opacities"], params["sh0"],
                         params["shN"])


class GaussianSplats:
    """3D Gaussian splatting (Kerbl et al. 2023): a ``GaussianScene``'s fields are the parameters."""

    name = "gaussians"

    def __init__(self, cfg: TrainConfig, opaque: bool = False) -> None:
        self.cfg = cfg
        self.backend = cfg.run.backend
        self.scene_scale = SCENE_SCALE
        self.opaque = opaque  # photos / video (content in every pixel), not RGBA object data
        # every backend now differentiates the camera (reference by autograd, cpu/cuda by hand, gsplat its own):
        # the corrected camera is rendered directly, which is exact (the view direction of the SH colour too);
        # camera_opt.apply_to_scene, the same image and gradient from the scene moved the other way, stays as
        # the route for a backend without camera gradients
        self.camera_path = "camera"
        # the configured strategy with what only a run knows (the scene's extent; its generator, see _bound)
        strategy = cfg.strategy
        if isinstance(strategy, DefaultStrategy):
            strategy = dataclasses.replace(strategy, scene_scale=self.scene_scale)
        if isinstance(strategy, MCMCStrategy) and not opaque:
            # the early-growth schedule is for photo captures; RGBA object data keeps the 5 % recipe it is tuned on
            strategy = dataclasses.replace(strategy, reach_cap_at=0.0)
        self.strategy: Strategy = strategy

    def set_sync(self, sync) -> None:
        """Data-parallel training: the default strategy sums its statistics over the processes."""
        if isinstance(self.strategy, DefaultStrategy):
            self.strategy = dataclasses.replace(self.strategy, reduce=sync.sum)

    # ------------------------------------------------------------------ parameters
    def init_params(self, data: SceneDataProtocol, views: TrainViews, transform: WorldTransform,
                    generator: torch.Generator, device: torch.device) -> tuple[dict[str, torch.Tensor], str, int]:
        """From the structure-from-motion points (for photos filled up on the cameras' rays), else random
        points in a cube before the cameras."""
        train_idx = views.train_idx
        model = self.cfg.model
        points = data.points
        use_points = points is not None and len(points) > 0 and model.init != "random"
        if model.init == "points" and not use_points:
            from ..errors import Recon3dError

            raise Recon3dError(f"{data.root}: init=points but the data has no structure-from-motion points")
        if use_points:
            pts = transform.points_to_train(points.float().cpu())
            colors = data.point_colors.float().cpu() if data.point_colors is not None else torch.full_like(pts, 0.5)
        else:
            cams = data.cameras[train_idx]
            focus = transform.points_to_train(focus_point(cams)[None])[0]
            dist = (transform.points_to_train(cams.centers()) - focus).norm(dim=-1).median()
            half = model.init_extent * float(dist)
            pts = focus + (torch.rand(model.init_num_random, 3, generator=generator) * 2 - 1) * half
            colors = torch.rand(model.init_num_random, 3, generator=generator)
        opacity = torch.full((pts.shape[0],), float(model.init_opacity))
        fill_to, filled = min(model.init_fill, self.strategy.cap), 0
        if use_points and self.opaque and len(pts) < fill_to:
            # SfM leaves textureless walls, sky and far background of a photo without points, and growth from
            # a few thousand points cannot reach them: add points along the cameras' rays at the depths SfM saw
            fill, fill_colors = frustum_points(views.train_cameras.to("cpu"), train_idx, views.images, pts,
                                              fill_to - len(pts), generator, masks=views.masks)
            if len(fill):
                pts = torch.cat([pts, fill])
                colors = torch.cat([colors, fill_colors])
                # faint, so a point at a wrong depth hides little and dies (MCMC relocates it) if unneeded
                opacity = torch.cat([opacity, torch.full((len(fill),), min(float(model.init_opacity), 0.1))])
                filled = len(fill)
        n = pts.shape[0]
        log_scale = knn_log_scale(pts) + math.log(model.init_scale_factor)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        params = {
            "means": pts.float(),
            "scales": log_scale[:, None].repeat(1, 3),
            "quats": quats,
            "opacities": torch.logit(opacity.clamp(1e-4, 1 - 1e-4)),
            "sh0": rgb_to_sh0(colors.clamp(0, 1))[:, None, :],
            "shN": torch.zeros(n, num_sh_rest(model.sh_degree), 3),
        }
        params = {k: v.to(device).contiguous().requires_grad_(True) for k, v in params.items()}
        return params, "points" if use_points else "random", filled

    def learning_rates(self) -> dict[str, float]:
        """The configured rates; the position rate in units of the scene's extent."""
        optim = self.cfg.optim
        return {"means": optim.lr_means * self.scene_scale, "scales": optim.lr_scales, "quats": optim.lr_quats,
                "opacities": optim.lr_opacities, "sh0": optim.lr_sh0, "shN": optim.lr_shN}

    def new_strategy_state(self, num_rows: int) -> dict[str, torch.Tensor]:
        """The strategy's fresh accumulators."""
        return self.strategy.initialize_state(num_rows)

    # ------------------------------------------------------------------ rendering
    def sh_degree_at(self, step: int, schedule_scale: float) -> int:
        """The SH degree rendered at ``step``: one more every ``model.sh_degree_every`` (scaled) steps."""
        every = max(1, int(round(self.cfg.model.sh_degree_every * schedule_scale)))
        return min(self.cfg.model.sh_degree, step // every)

    def render(self, params: dict[str, torch.Tensor], cameras, *, background: torch.Tensor, step: int,
               schedule_scale: float, correction: tuple[CameraRefinement, int | list[int]] | None = None) -> RenderOutput:
        """``recon3d.render`` of the parameters at this step's SH degree (with a camera's pose correction)."""
        scene = params_to_scene(params)
        if correction is not None:
            refinement, index = correction
            if isinstance(index, list):  # a batch of cameras: each corrected by its own twist
                w2c = refinement.matrices(index, dtype=cameras.world_to_camera.dtype) @ cameras.world_to_camera
                cameras = Cameras(w2c, cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height,
                                  cameras.distortion)
            elif self.camera_path == "camera":
                cameras = refinement.apply(cameras, index)
            else:
                scene = refinement.apply_to_scene(scene, cameras, index)
        sh_degree = min(self.sh_degree_at(step, schedule_scale), scene.sh_degree)
        return render(scene, cameras, background=background, sh_degree=sh_degree, backend=self.backend,
                      antialiased=self.cfg.model.antialiased)

    def regulariser(self, params: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """The strategy's loss terms (MCMC's opacity and scale L1)."""
        return self.strategy.loss_terms(params)

    # ------------------------------------------------------------------ densification hooks
    def _bound(self, state: TrainState) -> Strategy:
        # the strategy draws its samples from the run's device generator, which a restore replaces
        if getattr(self.strategy, "seed_generator", None) is not state.rng_device:
            self.strategy = dataclasses.replace(self.strategy, seed_generator=state.rng_device)
        return self.strategy

    @staticmethod
    def _info(out: RenderOutput, cameras) -> dict:
        return {"means2d": out.means2d, "radii": out.radii, "width": int(cameras.width[0]),
                "height": int(cameras.height[0])}

    def before_backward(self, state: TrainState, out: RenderOutput, cameras) -> None:
        """Keep the gradient of the projected centres (the default strategy's growth signal)."""
        self._bound(state).step_pre_backward(state.optimizer, state.strategy_state, state.step, self._info(out, cameras))

    def set_learning_rates(self, state: TrainState, schedule_scale: float) -> float:
        """Decay the position rate over the planned steps; mark the SH columns this step can change."""
        optim = self.cfg.optim
        lr_means = exponential_lr(state.step, state.total_steps, optim.lr_means * self.scene_scale,
                                  optim.lr_means_final * self.scene_scale)
        state.optimizer.lrs["means"] = lr_means
        # the backends give exact zero gradients to the SH coefficients above the degree rendered, so Adam
        # may skip those whose moments are still zero (the same result; shN is 3/4 of the parameters)
        sh_degree = min(self.sh_degree_at(state.step, schedule_scale), self.cfg.model.sh_degree)
        state.optimizer.used_columns["shN"] = 3 * num_sh_rest(sh_degree)
        return lr_means

    def after_backward(self, state: TrainState, out: RenderOutput, cameras, schedule_scale: float) -> dict[str, int]:
        """The strategy's refinement (clone/split/prune or relocate/add)."""
        return self._bound(state).step_post_backward(state.optimizer, state.strategy_state, state.step,
                                                     self._info(out, cameras), schedule_scale=schedule_scale)

    def after_optimizer(self, state: TrainState, lr_means: float) -> None:
        """The strategy's position noise (MCMC), scaled by this step's position rate."""
        self._bound(state).step_post_optimizer(state.optimizer, state.strategy_state, state.step,
                                               lr_means * state.lr_factor, generator=state.rng_device)

    # ------------------------------------------------------------------ export
    def export(self, params: dict[str, torch.Tensor], transform: WorldTransform) -> GaussianScene:
        """The scene in the input's world frame (detached)."""
        return transform.scene_to_world(params_to_scene(params))

    def set_budget(self, count: int) -> None:
        """MCMC growth that reaches its cap on schedule aims at the count the budget affords instead."""
        if isinstance(self.strategy, MCMCStrategy) and self.strategy.reach_cap_at > 0:
            self.strategy.budget_cap = count


# The method registry: ``--method NAME`` (``run.method``; its names are ``config.METHODS``, validated with the
# rest of the config) -> the trainer that runs it, as "module:class", imported only when chosen. A method's
# trainer takes (data, config, run_dir, *, resume, monitor, start_time, quiet) and its ``run()`` returns a
# ``TrainResult``. Gaussian splats run through ``Trainer`` with ``GaussianSplats``; the NeRF trainer lives in
# ``recon3d.nerf``, which builds on this package, so it is named here and not imported (an import would
# close a train <-> nerf package cycle).
METHOD_TRAINERS: dict[str, str] = {
    "gaussians": "recon3d.train.trainer:Trainer",
    "nerf": "recon3d.nerf.trainer:NerfTrainer",
}


def trainer_class(name: str) -> type:
    """The trainer class of method ``name``; InputError listing the methods for an unknown name."""
    import importlib

    from ..errors import InputError

    if name not in METHOD_TRAINERS:
        raise InputError(None, f"--method {name!r} is not a reconstruction method; choose one of "
                         f"{', '.join(METHOD_TRAINERS)}")
    module, _, cls = METHOD_TRAINERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
