"""Test-time pose alignment of held-out cameras (the evaluation protocol of pose-refining methods).

A run that refines its training cameras (``--refine-cameras``) learns the scene in the frame of the poses it
ended with, and the held-out cameras come from the same imperfect source as the training ones: a held-out
camera's own pose error, and any motion of the whole frame that the training images cannot see (a rotation
shared by every camera is nearly invisible on an orbit), count against its PSNR though they say nothing
about the scene. BARF, NeRF-- and the papers since therefore optimise each held-out camera's pose against
the frozen trained scene before measuring ("test-time pose alignment"). ``align_camera`` does that: a few
dozen L-BFGS iterations (or Adam steps) on an SE(3) correction of the one camera, scene frozen, the
photometric loss (mean squared error: what PSNR measures) on the kept pixels, with the rasterizer's camera
gradients. The correction is in
pixel units (``camera_opt``'s ``pixels``): ω = u_ω / f and v = u_v · d / f (f the focal length, d the scene's
depth in front of the camera), so one step moves the image by about one learning rate in pixels whatever
the lens. The pose with the lowest loss seen is kept (the given pose among them), so alignment never makes
the loss worse.

It is a separate figure: the unaligned PSNR stays the headline, the aligned one is reported beside it with
the correction each view took (degrees, and its shift as a share of the cameras' orbit radius).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..cameras import Cameras
from ..metrics import PROTOCOL_COMPOSITED
from ..scene import GaussianScene

ALIGN_STEPS = 50  # renders (L-BFGS evaluations) per held-out view at most
ALIGN_LR_PIXELS = 0.5  # method "adam": first step size in pixels of image motion, decaying to 1 % of it
# the means reported of the corrections test-time pose alignment applied (``aligned_poses``)
@dataclass
class Alignment:
    """The aligned camera and the correction it took."""

    camera: Cameras
    correction: torch.Tensor  # 4×4 (camera frame): aligned world_to_camera = correction · given world_to_camera
    rotation_deg: float
    translation: float  # the camera centre's shift, world units
    loss_before: float
    loss_after: float
    steps: int  # renders it took


def photometric_loss(rgb_over_black: torch.Tensor, alpha: torch.Tensor, target: torch.Tensor, *, protocol: str,
                     background: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of a render against its image on the kept pixels: over the data's background for
    RGBA object data, else the mean of the errors over black and over white (the opaque protocol's two)."""
    a = alpha.reshape(*rgb_over_black.shape[:2], 1)
    t = target.to(rgb_over_black.device, rgb_over_black.dtype)
    colours = ([background.to(t)] if protocol == PROTOCOL_COMPOSITED
               else [torch.zeros(3, dtype=t.dtype, device=t.device), torch.ones(3, dtype=t.dtype, device=t.device)])
    m = None if mask is None else mask.reshape(*t.shape[:2], 1).to(t)
    total = 0.0
    for colour in colours:
        err = (rgb_over_black + (1 - a) * colour - t).square()
        total = total + (err.mean() if m is None else (err * m).sum() / (3 * m.sum()).clamp_min(1.0))
    return total / len(colours)


def scene_depth(camera: Cameras, means: torch.Tensor) -> float:
    """The median depth of the scene's Gaussians in front of ``camera`` and inside its image (the pivot of
    the pixel units); the median over those in front if none fall inside."""
    from .camera_opt import pivot_depths

    return float(pivot_depths(camera, means.detach())[0])


def _correction(u: torch.Tensor, focal: float, depth: float) -> torch.Tensor:
    from .camera_opt import twist_matrix

    return twist_matrix(torch.cat([u[:3] / focal, u[3:] * (depth / focal)]))


def align_camera(render: Callable[[Cameras], tuple[torch.Tensor, torch.Tensor]], camera: Cameras,
                 target: torch.Tensor, *, protocol: str, background: torch.Tensor, depth: float,
                 mask: torch.Tensor | None = None, steps: int = ALIGN_STEPS, method: str = "lbfgs",
                 lr_pixels: float = ALIGN_LR_PIXELS) -> Alignment:
    """``camera`` (one camera) with its pose optimised so that ``render(camera)`` (-> rgb over black H×W×3,
    alpha H×W×1, differentiable in the camera's world_to_camera) best matches ``target`` on the kept pixels.

    ``depth``: the scene's distance in front of the camera (``scene_depth``), for the pixel units. ``method``
    ``lbfgs`` (the default: L-BFGS with a strong-Wolfe line search, at most ``steps`` renders) or ``adam``
    (``steps`` Adam steps, the step size decaying exponentially from ``lr_pixels`` to 1 % of it). L-BFGS because
    the pose's six directions are badly conditioned: a turn and a shift across the view move the image alike
    and only their difference (an orbit, seen through parallax) tells them apart, which Adam's
    per-coordinate steps crawl along (a 0.8° turn of a test scene: Adam left 0.33° after 100 steps and 0.085°
    after 300, L-BFGS 0.012° after 26 renders). The lowest-loss pose seen (the given one among them) is returned.
    """
    from .camera_opt import rigid_inverse

    if method not in ("lbfgs", "adam"):
        raise ValueError(f"align_camera: method must be 'lbfgs' or 'adam', got {method!r}")
    focal = float(camera.fx[0] + camera.fy[0]) / 2
    base = camera.world_to_camera[0].detach()
    u = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    seen = {"best": math.inf, "u": u.detach().clone(), "first": None, "renders": 0}

    def closure() -> torch.Tensor:
        with torch.enable_grad():
            u.grad = None
            w2c = (_correction(u, focal, depth) @ base.double()).to(base.dtype)
            cam = Cameras(w2c[None], camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height,
                          camera.distortion)
            rgb, alpha = render(cam)
            loss = photometric_loss(rgb, alpha, target, protocol=protocol, background=background, mask=mask)
            value = float(loss.detach())
            seen["renders"] += 1
            if seen["first"] is None:
                seen["first"] = value
            if value < seen["best"]:
                seen["best"], seen["u"] = value, u.detach().clone()
            # scaled: L-BFGS's tolerances are absolute, and an image's MSE is ~1e-3
            (loss.double() * 1e3).backward()
            return loss.detach().double() * 1e3

    if method == "lbfgs":
        opt = torch.optim.LBFGS([u], lr=1.0, max_iter=steps, max_eval=steps, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-12)
        opt.step(closure)
    else:
        from .appearance import SmallAdam

        adam = SmallAdam(u, lr_pixels, eps=1e-12)
        for k in range(steps):
            closure()
            adam.step(lr_pixels * 0.01 ** (k / max(steps - 1, 1)))
        closure()
    with torch.no_grad():
        correction = _correction(seen["u"], focal, depth)
        w2c = (correction @ base.double()).to(base.dtype)
        aligned = Cameras(w2c[None], camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height,
                          camera.distortion)
        cos = float(((correction[:3, :3].trace() - 1) / 2).clamp(-1.0, 1.0))
        centres = rigid_inverse(torch.stack([base.double(), w2c.double()]))[:, :3, 3]
    return Alignment(aligned, correction, math.degrees(math.acos(cos)), float((centres[1] - centres[0]).norm()),
                     seen["first"], seen["best"], seen["renders"])


def orbit_radius(cameras: Cameras) -> float:
    """The cameras' mean distance from their centroid (the unit of the reported shifts; 0 for one camera)."""
    centres = cameras.centers().double()
    return float((centres - centres.mean(0)).norm(dim=-1).mean()) if len(centres) > 1 else 0.0


def alignment_figures(alignment: Alignment, radius: float) -> dict[str, float | None]:
    """What ``per_view`` reports of an alignment."""
    return {"rotation_deg": alignment.rotation_deg, "translation": alignment.translation,
            "translation_orbit_fraction": alignment.translation / radius if radius > 0 else None,
            "loss_before": alignment.loss_before, "loss_after": alignment.loss_after, "steps": alignment.steps}


def aligned_view_figures(scene: GaussianScene, camera: Cameras, target: torch.Tensor, *, protocol: str,
                         background: torch.Tensor, radius: float, target_alpha: torch.Tensor | None = None,
                         mask: torch.Tensor | None = None, backend: str = "auto", antialiased: bool = False,
                         steps: int | None = None) -> dict[str, Any]:
    """One held-out view's figures (``measure_view``) after test-time pose alignment of ``camera`` against the
    frozen ``scene``, and the correction it took (``alignment_figures``; shifts as a share of ``radius``)."""
    from ..evaluation import measure_view
    from ..render import render

    def draw(cam: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        out = render(scene, cam, background=torch.zeros(3, device=scene.means.device), backend=backend,
                     antialiased=antialiased)
        return out.rgb[0], out.alpha[0]

    found = align_camera(draw, camera, target, protocol=protocol, background=background,
                         depth=scene_depth(camera, scene.means), mask=mask,
                         steps=ALIGN_STEPS if steps is None else steps)
    with torch.no_grad():
        rgb, alpha = draw(found.camera)
    values, _ = measure_view(rgb, alpha, target, protocol=protocol, background=background,
                             target_alpha=target_alpha, mask=mask)
    return values | alignment_figures(found, radius)
