"""An independent judge of generated scenes: it never calls the generator and builds its own references.

- Shape: the primitive whose canonical surface (built with trimesh, not with the composer) is nearest by
  Chamfer distance after centring and scaling both to unit RMS radius, minimised over yaw.
- Colour: the named colour nearest to the mean rendered colour (the object drawn alone by recon3d's
  reference rasterizer on black, so rendered RGB / alpha is the alpha-weighted mean colour of what the camera sees).
- Two objects: k-means (k = 2) on position and colour, each cluster judged as above, the relation read
  from the centroids (left = smaller x, in front = smaller y, on top = larger z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..scene import GaussianScene
from .data import COLOURS, parse_caption

JUDGED_SHAPES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "capsule")
_YAWS = np.deg2rad(np.arange(0.0, 90.0, 7.5))  # the square shapes repeat every 90°


def _normalise(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(0)
    rms = math.sqrt(float((centred**2).sum(1).mean()))
    return centred / max(rms, 1e-9)


@lru_cache(maxsize=1)
def canonical_surfaces(count: int = 2048) -> dict[str, np.ndarray]:
    """Canonical primitive surfaces (unit RMS radius) sampled from trimesh's own meshes."""
    import trimesh

    c = trimesh.creation
    meshes = {
        "sphere": c.icosphere(subdivisions=3, radius=0.5),
        "cube": c.box(extents=(0.8, 0.8, 0.8)),
        "cylinder": c.cylinder(radius=0.4, height=0.9, sections=48),
        "cone": c.cone(radius=0.5, height=1.0, sections=48),
        "torus": c.torus(major_radius=0.35, minor_radius=0.15),
        "pyramid": c.cone(radius=0.45 * math.sqrt(2), height=0.9, sections=4),
        "capsule": c.capsule(height=0.5, radius=0.25),
    }
    out = {}
    for name, mesh in meshes.items():
        pts, _ = trimesh.sample.sample_surface_even(mesh, count, seed=0)
        out[name] = _normalise(np.asarray(pts, dtype=np.float64))
    return out


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance between point sets."""
    from scipy.spatial import cKDTree

    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2


def classify_shape(points: np.ndarray) -> tuple[str, dict[str, float]]:
    """The nearest canonical primitive and the Chamfer distance to each."""
    pts = _normalise(np.asarray(points, dtype=np.float64))
    scores = {}
    for name, ref in canonical_surfaces().items():
        best = math.inf
        yaws = _YAWS if name in ("cube", "pyramid") else _YAWS[:1]
        for a in yaws:
            c, s = math.cos(a), math.sin(a)
            rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
            best = min(best, chamfer(pts, ref @ rot.T))
        scores[name] = best
    return min(scores, key=scores.get), scores


def mean_rendered_colour(scene: GaussianScene, size: int = 48) -> np.ndarray:
    """Alpha-weighted mean colour of the scene rendered from the front (−y) and from above-front."""
    from ..cameras import Cameras, look_at_world_to_camera
    from ..render import render

    means = scene.means.detach().float()
    centre = means.mean(0)
    radius = float((means - centre).norm(dim=1).max().clamp_min(0.05))
    eyes = [centre + torch.tensor([0.0, -3.0 * radius, 0.8 * radius]), centre + torch.tensor([0.0, -2.0 * radius, 2.5 * radius])]
    w2c = torch.stack([look_at_world_to_camera(e, centre, (0.0, 0.0, 1.0)) for e in eyes])
    cams = Cameras.from_fov(w2c, 0.8, size, size)
    # the dense reference rasterizer: the maths spec, no build step, cheap at 48×48 for a few thousand
    with torch.no_grad():
        out = render(scene, cams, background=(0.0, 0.0, 0.0), backend="reference")
    alpha = out.alpha.sum()
    if float(alpha) < 1e-6:
        return np.full(3, np.nan)
    return (out.rgb.sum(dim=(0, 1, 2)) / alpha).clamp(0, 1).numpy()


def nearest_colour(rgb: np.ndarray) -> str:
    """The named colour nearest (RGB distance) to ``rgb``."""
    if not np.all(np.isfinite(rgb)):
        return "none"
    names = list(COLOURS)
    d = [float(np.linalg.norm(np.asarray(COLOURS[n]) - rgb)) for n in names]
    return names[int(np.argmin(d))]


def kmeans2(features: np.ndarray, restarts: int = 8, iters: int = 30, seed: int = 0) -> np.ndarray:
    """Labels 0/1 of a two-cluster k-means (k-means++ seeding, best of ``restarts``)."""
    rng = np.random.default_rng(seed)
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        c0 = features[rng.integers(len(features))]
        d = ((features - c0) ** 2).sum(1)
        c1 = features[rng.choice(len(features), p=d / d.sum())] if d.sum() > 0 else c0
        centres = np.stack([c0, c1])
        for _ in range(iters):
            dist = ((features[:, None] - centres[None]) ** 2).sum(-1)
            labels = dist.argmin(1)
            new = np.stack([features[labels == k].mean(0) if (labels == k).any() else centres[k] for k in range(2)])
            if np.allclose(new, centres):
                break
            centres = new
        inertia = float(((features - centres[labels]) ** 2).sum())
        if inertia < best_inertia and 0 < labels.sum() < len(labels):
            best, best_inertia = labels, inertia
    return best if best is not None else np.zeros(len(features), dtype=int)


def relation_from_centroids(a: np.ndarray, b: np.ndarray) -> str:
    """The relation of object a to object b from their centroids along the dominant axis."""
    d = a - b
    axis = int(np.argmax(np.abs(d)))
    if axis == 0:
        return "to the left of" if d[0] < 0 else "to the right of"
    if axis == 1:
        return "in front of" if d[1] < 0 else "behind"
    return "on top of" if d[2] > 0 else "below"


def relation_matches(expected: str, found: str) -> bool:
    """``next to`` is any side-by-side placement; the others must match exactly."""
    if expected == "next to":
        return found in ("to the left of", "to the right of", "in front of", "behind")
    return expected == found


@dataclass
class ObjectVerdict:
    """What the judge saw of one object."""

    shape: str
    colour: str
    rgb: list[float]
    centroid: list[float]
    count: int


@dataclass
class Verdict:
    """The judge's findings for one scene and prompt."""

    prompt: str
    objects: list[ObjectVerdict]
    shape_ok: bool
    colour_ok: bool
    relation_ok: bool | None = None
    relation: str | None = None
    details: dict = field(default_factory=dict)

    @property
    def all_ok(self) -> bool:
        """Every object's shape and colour, and the relation when there is one."""
        return self.shape_ok and self.colour_ok and self.relation_ok is not False


def _subset(scene: GaussianScene, keep: torch.Tensor) -> GaussianScene:
    return GaussianScene(
        means=scene.means[keep], scales=scene.scales[keep], quats=scene.quats[keep],
        opacities=scene.opacities[keep], sh0=scene.sh0[keep], shN=scene.shN[keep],
    )


def _judge_object(scene: GaussianScene) -> ObjectVerdict:
    pts = scene.means.detach().double().numpy()
    shape, _ = classify_shape(pts)
    rgb = mean_rendered_colour(scene)
    return ObjectVerdict(shape, nearest_colour(rgb), [float(x) for x in rgb], pts.mean(0).tolist(), len(pts))


def judge(scene: GaussianScene, prompt: str) -> Verdict:
    """Judge ``scene`` against a prompt of the composer's grammar (one or two primitives)."""
    spec = parse_caption(prompt)
    if spec is None:
        raise ValueError(f"the judge reads prompts of the composer's grammar only, not {prompt!r}")
    finite = torch.isfinite(scene.means).all(1) & torch.isfinite(scene.sh0[:, 0]).all(1)
    visible = finite & (torch.sigmoid(scene.opacities) > 0.05)
    scene = _subset(scene, visible)
    if len(scene) < 8:
        empty = ObjectVerdict("none", "none", [math.nan] * 3, [math.nan] * 3, len(scene))
        return Verdict(prompt, [empty], False, False, False if len(spec.objects) == 2 else None)
    if len(spec.objects) == 1:
        obj = _judge_object(scene)
        want = spec.objects[0]
        return Verdict(prompt, [obj], obj.shape == want.shape, obj.colour == want.colour)
    from ..scene import sh0_to_rgb

    pos = scene.means.detach().double().numpy()
    rgb = sh0_to_rgb(scene.sh0[:, 0]).clamp(0, 1).detach().double().numpy()
    labels = kmeans2(np.concatenate([pos, 1.0 * rgb], 1))
    parts = [_subset(scene, torch.from_numpy(labels == k)) for k in range(2)]
    objs = [_judge_object(p) if len(p) >= 4 else ObjectVerdict("none", "none", [math.nan] * 3, [math.nan] * 3, len(p)) for p in parts]
    want = spec.objects

    def score(order):
        return sum((objs[o].shape == w.shape) + (objs[o].colour == w.colour) for o, w in zip(order, want))

    order = max([(0, 1), (1, 0)], key=score)
    a, b = objs[order[0]], objs[order[1]]
    relation = relation_from_centroids(np.array(a.centroid), np.array(b.centroid))
    shape_ok = a.shape == want[0].shape and b.shape == want[1].shape
    colour_ok = a.colour == want[0].colour and b.colour == want[1].colour
    return Verdict(prompt, [a, b], shape_ok, colour_ok, relation_matches(spec.relation, relation), relation)
