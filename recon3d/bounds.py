"""Where a scene is: robust bounds that ignore far floaters, and a camera that frames them.

``scene_bounds`` takes the Gaussians that are opaque enough to be seen, finds the box between low and high
percentiles of their centres, extends it on each side through the tail of centres for as long as they
continue without a wide gap (so the top of a wall or the rim of a ground stays in), widens it by a small
margin, and returns the true extent (centres ± 2σ) of the Gaussians inside. A clean scene (a generated
object, the shipped example) keeps its full extent and is never cropped, while far floaters, which lie beyond
a gap, no longer set the bounds.

The viewer's first camera, ``recon3d render`` without a camera, the floater benchmark and
``recon3d export --clean`` all use these bounds, so what one calls "the scene" the others do too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .cameras import Cameras, look_at_world_to_camera
from .scene import GaussianScene

MIN_OPACITY = 0.05  # Gaussians fainter than this hardly show; they do not set the bounds
CORE_PERCENTILES = (2.0, 98.0)
GAP = 0.02  # a tail continues while consecutive centres lie closer than this share of the core's size
MAX_EXTENSION = 0.5  # … and at most this many core sizes beyond it (a wall top needs 0.3 on the garden)
CORE_MARGIN = 0.1  # the extended box widened by this share of the core's size on each side
SIGMA_EXTENT = 2.0  # a Gaussian reaches this many standard deviations
SAMPLE = 200_000  # percentiles from at most this many Gaussians (a fixed-seed sample)


def _opaque(scene: GaussianScene) -> torch.Tensor:
    """Indices of the Gaussians that count for the bounds (all of them when too few are opaque)."""
    with torch.no_grad():
        alpha = torch.sigmoid(scene.opacities.detach().float().reshape(-1))
    idx = torch.nonzero(alpha >= MIN_OPACITY).reshape(-1)
    return idx if len(idx) >= min(10, len(alpha)) else torch.arange(len(alpha))


def _walk_tail(tail: np.ndarray, size: float) -> float:
    """How far the sorted ``tail`` (distances beyond the core's edge, nearest first) continues
    without a gap wider than ``GAP`` × ``size``, capped at ``MAX_EXTENSION`` × ``size``."""
    if len(tail) == 0:
        return 0.0
    gaps = np.diff(np.r_[0.0, tail])
    big = np.nonzero(gaps > GAP * size)[0]
    reach = tail[big[0] - 1] if len(big) and big[0] > 0 else (0.0 if len(big) else tail[-1])
    return float(min(reach, MAX_EXTENSION * size))


def core_box(scene: GaussianScene) -> tuple[np.ndarray, np.ndarray]:
    """The box of the opaque Gaussians' centres that the scene occupies: the 2–98 % percentile box, extended
    on each side through the tail as long as the centres continue without a wide gap (a wall's top, the far
    edge of a ground), then widened by a small margin; far floaters lie beyond a gap and stay outside."""
    means = scene.means.detach().float().cpu()
    if len(means) == 0:
        return np.full(3, -1.0), np.full(3, 1.0)
    idx = _opaque(scene)
    pts = means[idx]
    if len(pts) > SAMPLE:
        g = torch.Generator().manual_seed(0)
        pts = pts[torch.randperm(len(pts), generator=g)[:SAMPLE]]
    pts = pts.double().numpy()
    lo, hi = np.percentile(pts, CORE_PERCENTILES, axis=0)
    size = np.maximum(hi - lo, 1e-6 * max(1.0, float(np.abs(pts).max())))
    out_lo, out_hi = lo.copy(), hi.copy()
    for ax in range(3):
        v = np.sort(pts[:, ax])
        out_hi[ax] = hi[ax] + _walk_tail(v[v > hi[ax]] - hi[ax], size[ax])
        out_lo[ax] = lo[ax] - _walk_tail((lo[ax] - v[v < lo[ax]])[::-1], size[ax])
    return out_lo - CORE_MARGIN * size, out_hi + CORE_MARGIN * size


def scene_bounds(scene: GaussianScene) -> tuple[np.ndarray, np.ndarray]:
    """Robust (lo, hi) corners of the scene: the extent (centres ± 2σ) of the opaque Gaussians inside the
    widened percentile core; (−1, 1)³ for an empty scene."""
    if len(scene) == 0:
        return np.full(3, -1.0), np.full(3, 1.0)
    core_lo, core_hi = core_box(scene)
    means = scene.means.detach().double().cpu().numpy()
    idx = _opaque(scene).numpy()
    m = means[idx]
    inside = ((m >= core_lo) & (m <= core_hi)).all(1)
    if not inside.any():
        return core_lo, core_hi
    sigma = np.exp(scene.scales.detach().double().cpu().numpy()[idx][inside]).max(1, keepdims=True)
    reach = np.minimum(SIGMA_EXTENT * sigma, 0.25 * (core_hi - core_lo).max())  # a huge splat must not blow up the box
    return (m[inside] - reach).min(0), (m[inside] + reach).max(0)


def outside_bounds(scene: GaussianScene, lo: Sequence[float], hi: Sequence[float]) -> torch.Tensor:
    """N bool: Gaussians whose centre lies outside the box [lo, hi]."""
    means = scene.means.detach().float().cpu()
    lo_t = torch.as_tensor(np.asarray(lo), dtype=torch.float32)
    hi_t = torch.as_tensor(np.asarray(hi), dtype=torch.float32)
    return ~((means >= lo_t) & (means <= hi_t)).all(dim=1)


def framing_distance(lo: np.ndarray, hi: np.ndarray, fov_x: float, fov_y: float) -> float:
    """Distance from the box centre at which a camera with these fields of view sees the whole box
    (its bounding sphere fits the narrower field of view)."""
    radius = 0.5 * float(np.linalg.norm(np.asarray(hi) - np.asarray(lo)))
    half = 0.5 * min(fov_x, fov_y)
    return max(radius, 1e-6) / math.sin(half)


DEFAULT_DIRECTION = np.array([0.55, -0.65, 0.5])  # an elevated three-quarter view, for Z-up scenes
MIN_ELEVATION_DEG = 30.0  # the framing view looks down on the scene at least this steeply


def framing_pose(lo: np.ndarray, hi: np.ndarray, *, direction: Sequence[float] | None = None,
                 up: Sequence[float] = (0.0, 0.0, 1.0), fov_x: float = 0.8, fov_y: float = 0.8,
                 min_elevation_deg: float = MIN_ELEVATION_DEG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(eye, target, up) of a camera that sees the whole box [lo, hi] from ``direction`` (from the box
    towards the eye; default an elevated three-quarter view), raised to at least ``min_elevation_deg``
    above the horizon."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    target = 0.5 * (lo + hi)
    d = np.asarray(DEFAULT_DIRECTION if direction is None else direction, dtype=np.float64)
    up_v = np.asarray(up, dtype=np.float64)
    up_v = up_v / max(np.linalg.norm(up_v), 1e-12)
    if np.linalg.norm(d) < 1e-9:
        d = DEFAULT_DIRECTION.copy()
    d = d / np.linalg.norm(d)
    elevation = math.asin(float(np.clip(d @ up_v, -1.0, 1.0)))
    if elevation < math.radians(min_elevation_deg):
        # photos are taken near eye level; from that low, a framed-whole scene hides behind its own near side
        # (a garden's wall, a room's walls): look down on it instead, from the same side
        level = d - (d @ up_v) * up_v
        if np.linalg.norm(level) > 1e-9:
            el = math.radians(min_elevation_deg)
            d = math.cos(el) * level / np.linalg.norm(level) + math.sin(el) * up_v
    if abs(float(d @ up_v)) > 0.98:  # straight above/below: tip it so "up" stays defined
        side = np.cross(up_v, [1.0, 0.0, 0.0]) if abs(up_v[0]) < 0.9 else np.cross(up_v, [0.0, 1.0, 0.0])
        d = d + 0.3 * side / np.linalg.norm(side)
        d /= np.linalg.norm(d)
    eye = target + d * framing_distance(lo, hi, fov_x, fov_y)
    return eye, target, up_v


def framing_cameras(scene: GaussianScene, width: int, height: int, *, cameras: Cameras | None = None,
                    splits: Sequence[str] | None = None, fov_x: float | None = None,
                    up: Sequence[float] | None = None) -> Cameras:  # fmt: skip
    """One camera that shows the whole (robust) scene: from the first training camera's side with that
    camera's field of view (and the cameras' mean up unless ``up`` is given) when ``cameras`` are given,
    else the default elevated view, Z up."""
    lo, hi = scene_bounds(scene)
    direction, cam_up = None, (0.0, 0.0, 1.0)
    if cameras is not None and len(cameras) > 0:
        idx = [i for i, s in enumerate(splits or []) if s == "train"] or [0]
        i = idx[0]
        c2w = cameras.camera_to_world()[i].double().cpu().numpy()
        direction = c2w[:3, 3] - 0.5 * (lo + hi)
        cam_up = camera_up(cameras)
        if fov_x is None:
            fov_x = 2 * math.atan(0.5 * float(cameras.width[i]) / float(cameras.fx[i]))
    fov_x = 0.8 if fov_x is None else fov_x
    fov_y = 2 * math.atan(math.tan(fov_x / 2) * height / width)
    eye, target, up_v = framing_pose(lo, hi, direction=direction, up=cam_up if up is None else up, fov_x=fov_x, fov_y=fov_y)
    w2c = look_at_world_to_camera(eye.tolist(), target.tolist(), up_v.tolist())
    return Cameras.from_fov(w2c, fov_x, width, height)


def camera_up(cameras: Cameras) -> np.ndarray:
    """The world's likely up from a set of cameras: the mean of their up vectors (OpenCV −y), unit length."""
    w2c = cameras.world_to_camera.double().cpu().numpy()
    up = -w2c[:, 1, :3].mean(0)
    n = float(np.linalg.norm(up))
    return up / n if n > 1e-6 and math.isfinite(n) else np.array([0.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------------------- floaters
DEFAULT_MIN_VIEWS = 2  # --clean: a Gaussian that fewer training views see is not constrained by the photos
CLEAN_MARGIN = 1.0  # --clean drops what lies beyond the robust bounds widened by this many times their size


def views_seeing(scene: GaussianScene, cameras: Cameras, *, chunk: int = 200_000) -> torch.Tensor:
    """N int: how many of ``cameras`` have each Gaussian's centre in front of them and inside their image."""
    means = scene.means.detach().float().cpu()
    w2c = cameras.world_to_camera.float().cpu()
    counts = torch.zeros(len(means), dtype=torch.int32)
    for start in range(0, len(means), chunk):
        m = means[start : start + chunk]
        cam = torch.einsum("cij,nj->cni", w2c[:, :3, :3], m) + w2c[:, None, :3, 3]
        z = cam[..., 2]
        zs = z.clamp_min(1e-9)
        u = cameras.fx.float()[:, None] * cam[..., 0] / zs + cameras.cx.float()[:, None]
        v = cameras.fy.float()[:, None] * cam[..., 1] / zs + cameras.cy.float()[:, None]
        seen = (z > 1e-6) & (u >= 0) & (v >= 0) & (u <= cameras.width.float()[:, None]) & (v <= cameras.height.float()[:, None])
        counts[start : start + chunk] = seen.sum(0).int()
    return counts


def clean_mask(scene: GaussianScene, cameras: Cameras | None = None, *, min_views: int = DEFAULT_MIN_VIEWS,
               margin: float = CLEAN_MARGIN) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """N bool of the Gaussians ``export --clean`` keeps, and what it dropped: far floaters (outside the robust
    bounds widened by ``margin`` times their size on each side: a background just beyond the bounds,
    which the photos show, stays) and, when training cameras are known, those fewer than ``min_views`` of
    them see (the haze hanging in front of one or two cameras)."""
    lo, hi = scene_bounds(scene)
    pad = margin * (hi - lo)
    outside = outside_bounds(scene, lo - pad, hi + pad)
    few = torch.zeros_like(outside)
    if cameras is not None and len(cameras) > 0 and min_views > 0:
        few = views_seeing(scene, cameras) < min_views
    keep = ~(outside | few)
    stats = {
        "bounds": [lo.tolist(), hi.tolist()],
        "clean_box": [(lo - pad).tolist(), (hi + pad).tolist()],
        "outside_bounds": int(outside.sum()),
        "seen_by_too_few_views": int((few & ~outside).sum()),
        "min_views": int(min_views) if cameras is not None else None,
        "kept": int(keep.sum()),
        "total": len(scene),
    }
    return keep, stats
