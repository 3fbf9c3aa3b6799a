"""Distillation of a trained field into a ``GaussianScene`` (``recon3d export RUN --format ply`` on a NeRF run).

Two stages:

1. **Seeding on the surface.** Rays through a jittered grid of pixels of every training camera go through the
   field (marcher, densities, colours, compositing). Each ray whose opacity passes ``min_opacity`` gives one
   point: where its accumulated weight first reaches half its opacity (the median-depth surface point, which
   a hazy field still places on its surface), coloured by the ray's composited colour ÷ its opacity, with a
   size from the pixel footprint there (ray length × pixel spacing ÷ focal length). Points from many cameras
   of the same spot merge in a voxel grid of the field's unit cube (a contracted scene's shell coarsens with
   distance there too), which also bounds the count.
2. **A short splat fine-tune** against renders of the field from the training cameras (the splat pieces:
   ``recon3d.render``, ``GaussianAdam``, the L1 + SSIM image loss), each step over a random background so the
   splats learn the field's alpha too. It stops at ``seconds`` or ``steps``, whichever comes first.

Everything happens in the run's training frame; the scene goes back to the world frame at the end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..cameras import Cameras
from ..errors import Recon3dError
from ..scene import GaussianScene
from . import kernels
from .field import camera_rays, march_samples

DISTILL_FILE = "distill.json"
SIZE_FACTOR = 0.6


@dataclass
class DistillOptions:
    """Seeding and fine-tune settings (``recon3d export --distill-*``)."""

    seed_rays: int = 200_000  # rays shot for seeding, over all the training cameras
    min_opacity: float = 0.5  # a ray seeds a Gaussian only if the field is at least this opaque along it
    voxels: int = 256  # the merge grid over the field's unit cube (per side)
    max_gaussians: int = 300_000  # the merge grid coarsens until the seeds fit
    sh_degree: int = 3
    steps: int = 3000  # fine-tune steps at most
    seconds: float = 120.0  # fine-tune wall-clock budget (0: no fine-tune)
    image_scale: float = 1.0  # the fine-tune's views: the training cameras resized by this
    views: int = 0  # training views fitted (spread evenly); 0: as many as ``render_share`` of the budget renders
    render_share: float = 0.5  # with views=0: the share of ``seconds`` spent on the field's renders of the views
    ssim_weight: float = 0.2
    seed: int = 0

    def check(self) -> None:
        """A one-line Recon3dError for a setting out of range."""
        if self.seed_rays < 1 or self.voxels < 2 or self.max_gaussians < 1 or self.steps < 0:
            raise Recon3dError("distillation: seed_rays, voxels, max_gaussians must be positive and steps >= 0")
        if not 0.0 < self.min_opacity < 1.0:
            raise Recon3dError(f"distillation: min_opacity must lie in (0, 1), not {self.min_opacity}")
        if not 0.0 < self.image_scale <= 1.0:
            raise Recon3dError(f"distillation: image_scale must lie in (0, 1], not {self.image_scale}")
        if self.seconds < 0 or not 0 <= self.sh_degree <= 3:
            raise Recon3dError("distillation: seconds must be >= 0 and sh_degree 0..3")
        if self.views < 0 or not 0.0 < self.render_share <= 1.0:
            raise Recon3dError("distillation: views must be >= 0 and render_share in (0, 1]")


@torch.no_grad()
def trace_rays(model, origins: torch.Tensor, dirs: torch.Tensor, *, chunk: int = 1 << 14,
               max_samples: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(colour over black R×3, opacity R, median-surface distance R) of training-frame rays through the field.

    The median distance is where the ray's accumulated weight first reaches half its opacity (0 where the
    ray hits nothing)."""
    rgbs, alphas, medians = [], [], []
    for i in range(0, len(origins), chunk):
        o, d = origins[i:i + chunk], dirs[i:i + chunk]
        start, t, dt, u = march_samples(model.bounds, model.grid, o, d, max_samples)
        n = len(o)
        if len(t) == 0:
            rgbs.append(torch.zeros(n, 3))
            alphas.append(torch.zeros(n))
            medians.append(torch.zeros(n))
            continue
        ray = torch.repeat_interleave(torch.arange(n), start[1:] - start[:-1])
        sigma, color = model.field(u, d[ray])
        rgb, opacity, _, w = kernels.composite(sigma.float(), color.float(), t, dt, start)
        cum = torch.cumsum(w.double(), 0)
        before = torch.cat([torch.zeros(1, dtype=cum.dtype), cum])[start[:-1]]
        cum_ray = cum - before[ray]
        reached = cum_ray >= 0.5 * opacity.double()[ray]
        first = torch.where(reached, torch.arange(len(t)), torch.full((len(t),), len(t)))
        idx = torch.full((n,), len(t), dtype=torch.int64).scatter_reduce(0, ray, first, "amin")
        hit = idx < len(t)
        median = torch.zeros(n)
        median[hit] = t[idx[hit]]
        rgbs.append(rgb.float())
        alphas.append(opacity.float())
        medians.append(median)
    return torch.cat(rgbs), torch.cat(alphas), torch.cat(medians)


def seed_gaussians(model, cameras: Cameras, options: DistillOptions) -> tuple[GaussianScene, dict[str, Any]]:
    """Gaussians on the field's surface, training frame (``cameras`` in the training frame too)."""
    gen = torch.Generator().manual_seed(options.seed)
    pixels_total = float((cameras.width.double() * cameras.height.double()).sum())
    stride = max(1.0, math.sqrt(pixels_total / options.seed_rays))
    points, colors, footprints = [], [], []
    rays = 0
    for i in range(len(cameras)):
        w, h = int(cameras.width[i]), int(cameras.height[i])
        nx, ny = max(1, int(w / stride)), max(1, int(h / stride))
        gx = (torch.arange(nx).float() + torch.rand(nx, generator=gen)) * (w / nx)
        gy = (torch.arange(ny).float() + torch.rand(ny, generator=gen)) * (h / ny)
        ys, xs = torch.meshgrid(gy, gx, indexing="ij")
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).floor().clamp(min=0)
        pix[:, 0].clamp_(max=w - 1)
        pix[:, 1].clamp_(max=h - 1)
        origins, dirs = camera_rays(cameras, i, pix.long())
        rgb, alpha, median = trace_rays(model, origins, dirs)
        rays += len(pix)
        keep = (alpha >= options.min_opacity) & (median > 0)
        if not bool(keep.any()):
            continue
        points.append(origins[keep] + dirs[keep] * median[keep, None])
        colors.append((rgb[keep] / alpha[keep, None]).clamp(0, 1))
        focal = 0.5 * float(cameras.fx[i] + cameras.fy[i])
        footprints.append(median[keep] * (w / nx) / focal)
    if not points:
        raise Recon3dError(f"distillation found no surface: none of {rays:,} rays from the training cameras is at "
                           f"least {options.min_opacity:g} opaque in the field (is the run trained?)")
    pts, cols, fps = torch.cat(points), torch.cat(colors), torch.cat(footprints)
    seeds = len(pts)
    # merge the points that fall in one voxel of the unit cube (the same surface seen from several cameras)
    unit = model.bounds.to_unit(pts).clamp(0, 1 - 1e-6)
    res = options.voxels
    while True:
        cell = (unit * res).long()
        key = (cell[:, 2] * res + cell[:, 1]) * res + cell[:, 0]
        uniq, inverse = torch.unique(key, return_inverse=True)
        if len(uniq) <= options.max_gaussians or res <= 2:
            break
        # a surface's voxel count goes with the square of the resolution
        res = max(2, int(res / math.sqrt(len(uniq) / options.max_gaussians) * 0.98))
    m = len(uniq)
    count = torch.zeros(m).index_add_(0, inverse, torch.ones(len(pts)))

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(m, *x.shape[1:]).index_add_(0, inverse, x) / count.reshape(-1, *[1] * (x.ndim - 1))

    means, rgb, fp = mean(pts), mean(cols), mean(fps)
    # size: the distance to the nearest seeds (3DGS's initialisation: the RMS distance of the three nearest),
    # at most the pixel footprint (seeds far apart on a surface seen by few rays stay pixel-sized)
    from scipy.spatial import cKDTree

    k = min(4, m)
    if k > 1:
        d, _ = cKDTree(means.double().numpy()).query(means.double().numpy(), k=k)
        knn = torch.from_numpy(d[:, 1:]).float().pow(2).mean(1).sqrt()
        sigma = torch.minimum(SIZE_FACTOR * knn, fp).clamp_min(1e-7)
    else:
        sigma = fp.clamp_min(1e-7)
    scene = GaussianScene.from_points(means, rgb, scale=sigma, opacity=0.8, sh_degree=options.sh_degree)
    return scene, {"seed_rays": rays, "seed_points": seeds, "merge_voxels": res, "seeded": m}


def _field_targets(model, cameras: Cameras):
    """A lazy cache of the field's renders (rgb over black, alpha) of each training camera."""
    from .field import render_camera

    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in cache:
            rgb, alpha, _ = render_camera(model.field, model.bounds, model.grid, cameras, i)
            cache[i] = (rgb.clamp(0, 1), alpha.clamp(0, 1))
        return cache[i]

    return get


def spread(n: int, k: int) -> list[int]:
    """``k`` of ``range(n)`` spread evenly, the first included (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return sorted({round(j * n / k) for j in range(k)})


def fine_tune(scene: GaussianScene, model, cameras: Cameras, options: DistillOptions, *,
              progress: bool = True, targets=None) -> tuple[GaussianScene, dict[str, Any]]:
    """The splats fitted to the field's renders from ``cameras`` (training frame) within the budget;
    ``targets(i)`` -> (rgb over black, alpha) of camera ``i`` at the fine-tune's size replaces the renders made
    on the way (benchmarks/nerf.py distill-ab reuses one set of renders across variants)."""
    from ..progress import Progress
    from ..render import render
    from ..train.loss import image_loss
    from ..train.method import SCENE_SCALE
    from ..train.optim import GaussianAdam

    if options.seconds <= 0 or options.steps == 0:
        return scene, {"steps": 0, "fit_seconds": 0.0}
    cams = cameras.scaled(options.image_scale) if options.image_scale != 1.0 else cameras
    t0 = time.monotonic()
    views = list(range(len(cams)))
    if targets is None:
        targets = _field_targets(model, cams)
        # on a CPU a field render of a full-size view costs seconds: fitting fewer views at full size, many steps
        # each, beats drawing a new view (a new render) every step (lego: 10 views at 400^2 26.9 dB held-out,
        # 25 views at 200^2 24.0, benchmarks/results/nerf_distill_ab.json)
        k = options.views
        if k == 0:
            targets(0)
            per_view = max(time.monotonic() - t0, 1e-3)
            k = max(1, int(options.render_share * options.seconds / per_view))
        views = spread(len(cams), k)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in scene.as_dict().items()}
    lrs = {"means": 1.6e-4 * SCENE_SCALE, "scales": 5e-3, "quats": 1e-3, "opacities": 0.05, "sh0": 2.5e-3,
           "shN": 2.5e-3 / 20}
    opt = GaussianAdam(params, lrs)
    gen = torch.Generator().manual_seed(options.seed + 1)
    order: list[int] = []
    losses: list[float] = []
    step = 0
    with Progress(enabled=progress, unit="steps") as bar:
        task = bar.add_task("distilling (splat fine-tune)", total=options.steps, info="")
        while step < options.steps and time.monotonic() - t0 < options.seconds:
            if not order:
                order = [views[j] for j in torch.randperm(len(views), generator=gen).tolist()]
            i = order.pop()
            rgb, alpha = targets(i)
            bg = torch.rand(3, generator=gen)
            target = rgb + (1 - alpha) * bg
            current = GaussianScene(**params)
            # the means' rate decays to a tenth over the steps (the fine-tune starts near the surface)
            opt.lrs["means"] = lrs["means"] * 0.1 ** (step / max(options.steps, 1))
            out = render(current, cams[i], background=bg)
            loss = image_loss(out.rgb[0], target, options.ssim_weight)
            for p in params.values():
                p.grad = None
            loss.backward()
            opt.step()
            with torch.no_grad():
                losses.append(float(((out.rgb[0] - target) ** 2).mean()))
            step += 1
            bar.update(task, completed=step, info=f"fit PSNR {-10 * math.log10(max(losses[-1], 1e-10)):5.2f}")
    fit = sum(losses[-20:]) / max(1, len(losses[-20:]))
    tuned = GaussianScene(**{k: v.detach() for k, v in params.items()})
    keep = tuned.activated_opacities() > 1 / 255  # what the fine-tune turned transparent draws nothing
    return tuned[keep], {"steps": step, "fit_seconds": round(time.monotonic() - t0, 3), "fit_views": len(views),
                         "fit_psnr_last20": round(-10 * math.log10(max(fit, 1e-10)), 3),
                         "pruned_transparent": int((~keep).sum())}


def distill(model, cameras: Cameras, options: DistillOptions | None = None, *, progress: bool = True,
            tune_views: list[int] | None = None, targets=None) -> tuple[GaussianScene, dict[str, Any]]:
    """A ``NerfModel`` and world-frame training ``cameras`` -> a world-frame ``GaussianScene`` and its stats.
    Seeds from all ``cameras``; the fine-tune uses ``cameras[tune_views]`` (all by default) and ``targets``
    (see ``fine_tune``)."""
    options = options or DistillOptions()
    options.check()
    cams = model.transform.cameras_to_train(cameras.to("cpu"))
    t0 = time.monotonic()
    scene, stats = seed_gaussians(model, cams, options)
    stats["seed_seconds"] = round(time.monotonic() - t0, 3)
    tune = cams if tune_views is None else cams[tune_views]
    scene, fit = fine_tune(scene, model, tune, options, progress=progress, targets=targets)
    stats.update(fit)
    stats["gaussians"] = len(scene)
    return model.transform.scene_to_world(scene), stats

