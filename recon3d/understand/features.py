"""What the scene encoder sees of a scene: a fixed number of its visible Gaussians, each as a feature row.

A row is the Gaussian's position relative to the scene's frame (centre of its visible Gaussians' box,
divided by their 98th-percentile radius, as the generator's views frame a scene), its mean log scale in
the same units, minus the scene's median (a scene of 50k Gaussians has smaller ones than the
training scenes of a few hundred: only the relative size says something), its colour (SH DC), its opacity, and the frame's log radius (so *big* and *small* are
not lost by the normalisation). The set has no order and gets no positional encoding: the rows are a
random subset (seeded, so the same scene always gives the same rows at indexing time).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..scene import GaussianScene, sh0_to_rgb

NUM_POINTS = 128
FEATURES = 9


def scene_frame_np(means: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (box centre) and radius (98th-percentile distance, at least 0.1) of points."""
    lo, hi = means.min(0), means.max(0)
    centre = (lo + hi) / 2
    radius = float(max(np.quantile(np.linalg.norm(means - centre, axis=1), 0.98), 0.1)) if len(means) > 1 else 0.5
    return centre, radius


def visible_rows(scene: GaussianScene, with_index: bool = False):
    """Raw rows (M×8: position, mean log scale, RGB, opacity) of the scene's finite, visible Gaussians (and,
    with ``with_index``, their indices in the scene)."""
    means = scene.means.detach().float()
    opac = torch.sigmoid(scene.opacities.detach().float())
    rgb = sh0_to_rgb(scene.sh0[:, 0].detach().float()).clamp(0, 1)
    logs = scene.scales.detach().float().mean(1)
    keep = torch.isfinite(means).all(1) & torch.isfinite(rgb).all(1) & torch.isfinite(logs) & (opac > 0.05)
    rows = torch.cat([means, logs[:, None], rgb, opac[:, None]], 1)[keep]
    rows = rows.numpy().astype(np.float64)
    return (rows, np.flatnonzero(keep.numpy())) if with_index else rows


def normalise_rows(rows: np.ndarray) -> np.ndarray:
    """Raw rows -> encoder features (M×FEATURES) in the scene's own frame."""
    centre, radius = scene_frame_np(rows[:, :3])
    out = np.empty((len(rows), FEATURES), dtype=np.float32)
    out[:, :3] = (rows[:, :3] - centre) / radius
    out[:, 3] = rows[:, 3] - float(np.median(rows[:, 3]))
    out[:, 4:7] = rows[:, 4:7]
    out[:, 7] = rows[:, 7]
    out[:, 8] = math.log(radius)
    return out


def subsample(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows drawn without replacement (with replacement when there are fewer)."""
    idx = rng.choice(len(rows), size=count, replace=len(rows) < count)
    return rows[idx]


def scene_features(scene: GaussianScene, count: int = NUM_POINTS, seed: int = 0) -> np.ndarray:
    """The encoder's input for one scene: ``count``×FEATURES (deterministic for a given seed)."""
    rows = visible_rows(scene)
    if len(rows) == 0:
        raise ValueError("the scene has no visible Gaussians")
    rng = np.random.default_rng(seed)
    # normalise on all visible Gaussians (a stable frame), then subsample
    return subsample(normalise_rows(rows), count, rng)
