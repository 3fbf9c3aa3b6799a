"""An independent judge of generated scenes: it never calls the generator and builds its own references.

- Shape: the primitive whose canonical surface (built with trimesh, not with the composer) is nearest by
  Chamfer distance after centring and scaling both to unit RMS radius, minimised over yaw.
- Colour: the CIE76 distance ΔE between the mean rendered colour (the object drawn alone by recon3d's
  reference rasterizer on black, so rendered RGB / alpha is the alpha-weighted mean colour of what the
  camera sees) and the named colour's real RGB; right when ΔE ≤ ``COLOUR_TOLERANCE`` (about the median
  spacing of the 130 names of the palette). The nearest name is reported too.
- Two objects: k-means (k = 2) on position and colour, each cluster judged as above, the relation read
  from the centroids (left = smaller x, in front = smaller y, on top = larger z).
- Grammar scenes (``judge_scene``, up to five objects): k-means with k = the expected number of objects,
  clusters matched to the expected objects (Hungarian, on shape and colour), every relation read from
  group centroids; the count from connected components of the Gaussians (``count_objects``); the
  silhouette IoU of two scenes after centring (``silhouette_iou``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..scene import GaussianScene
from .data import parse_caption
from .grammar import COLOUR_RGB, delta_e

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


COLOUR_TOLERANCE = 12.0  # ΔE*ab; the palette's median nearest-neighbour distance is 11.3, shading costs ~5


def nearest_colour(rgb: np.ndarray) -> str:
    """The palette's colour name nearest (ΔE in CIELAB) to ``rgb``."""
    if not np.all(np.isfinite(rgb)):
        return "none"
    names = list(COLOUR_RGB)
    d = delta_e(np.asarray([COLOUR_RGB[n] for n in names]), np.asarray(rgb, dtype=np.float64)[None])
    return names[int(np.argmin(d))]


def colour_matches(rgb, name: str | None) -> bool:
    """True when ``rgb`` is within ``COLOUR_TOLERANCE`` (ΔE) of the named colour's real RGB."""
    if name is None:
        return True
    rgb = np.asarray(rgb, dtype=np.float64)
    return bool(np.all(np.isfinite(rgb)) and float(delta_e(rgb, np.asarray(COLOUR_RGB[name]))) <= COLOUR_TOLERANCE)


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
        return Verdict(prompt, [obj], obj.shape == want.shape, colour_matches(obj.rgb, want.colour))
    from ..scene import sh0_to_rgb

    pos = scene.means.detach().double().numpy()
    rgb = sh0_to_rgb(scene.sh0[:, 0]).clamp(0, 1).detach().double().numpy()
    labels = kmeans2(np.concatenate([pos, 1.0 * rgb], 1))
    parts = [_subset(scene, torch.from_numpy(labels == k)) for k in range(2)]
    objs = [_judge_object(p) if len(p) >= 4 else ObjectVerdict("none", "none", [math.nan] * 3, [math.nan] * 3, len(p)) for p in parts]
    want = spec.objects

    def score(order):
        return sum((objs[o].shape == w.shape) + colour_matches(objs[o].rgb, w.colour) for o, w in zip(order, want))

    order = max([(0, 1), (1, 0)], key=score)
    a, b = objs[order[0]], objs[order[1]]
    relation = relation_from_centroids(np.array(a.centroid), np.array(b.centroid))
    shape_ok = a.shape == want[0].shape and b.shape == want[1].shape
    colour_ok = colour_matches(a.rgb, want[0].colour) and colour_matches(b.rgb, want[1].colour)
    return Verdict(prompt, [a, b], shape_ok, colour_ok, relation_matches(spec.relation, relation), relation)


# ---------------------------------------------------------------- grammar scenes (round 2)
def kmeans(features: np.ndarray, k: int, restarts: int = 8, iters: int = 40, seed: int = 0) -> np.ndarray:
    """Labels 0..k-1 of a k-means (k-means++ seeding, best of ``restarts``)."""
    if k <= 1 or len(features) <= k:
        return np.zeros(len(features), dtype=int) if k <= 1 else np.arange(len(features)) % k
    rng = np.random.default_rng(seed)
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        centres = [features[rng.integers(len(features))]]
        for _ in range(k - 1):
            d = np.min(((features[:, None] - np.stack(centres)[None]) ** 2).sum(-1), 1)
            centres.append(features[rng.choice(len(features), p=d / d.sum())] if d.sum() > 0 else centres[0])
        centres = np.stack(centres)
        for _ in range(iters):
            labels = ((features[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
            new = np.stack([features[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
            if np.allclose(new, centres):
                break
            centres = new
        inertia = float(((features - centres[labels]) ** 2).sum())
        if inertia < best_inertia and len(np.unique(labels)) == k:
            best, best_inertia = labels, inertia
    return best if best is not None else np.zeros(len(features), dtype=int)


def _visible(scene: GaussianScene) -> GaussianScene:
    finite = torch.isfinite(scene.means).all(1) & torch.isfinite(scene.sh0[:, 0]).all(1)
    return _subset(scene, finite & (torch.sigmoid(scene.opacities) > 0.05))


def count_objects(scene: GaussianScene, min_share: float = 0.25) -> int:
    """Separate objects: connected components of the Gaussians linked within their local sampling spacing.

    Components smaller than ``min_share`` of the largest are stray Gaussians, not objects. Touching
    objects (a stack, one on another) count as one: the count benchmark uses scenes that stand apart.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pts = _visible(scene).means.detach().double().numpy()
    if len(pts) < 8:
        return 0
    tree = cKDTree(pts)
    # the 90th percentile of the 4th-neighbour distance links a surface sampled at ≥ 1k Gaussians per
    # object and stays below the composer's smallest gap (0.12) between objects
    link = float(np.percentile(tree.query(pts, k=5)[0][:, 4], 90))
    pairs = tree.query_pairs(max(link, 1e-6), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pts), len(pts)))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    return int((sizes >= min_share * sizes.max()).sum())


def relation_holds(relation: str, subject: np.ndarray, anchors: list[np.ndarray]) -> bool:
    """Whether centroids satisfy a grammar relation. ``subject``: k×3 centroids of the subject group;
    ``anchors``: centroids (m×3) of each anchor group."""
    s = subject.mean(0)
    a = np.concatenate(anchors).mean(0) if anchors else None
    if relation in ("row", "stack"):
        if len(subject) < 2:
            return False
        spread = subject.max(0) - subject.min(0)
        if relation == "stack":
            return bool(spread[2] > 1.5 * max(spread[0], spread[1]))
        return bool(spread[2] < 0.5 * max(spread[0], spread[1]))
    assert a is not None
    d = s - a
    horizontal = float(np.hypot(d[0], d[1]))
    if relation in ("on", "above"):
        return bool(d[2] > 0 and d[2] > horizontal)
    if relation == "under":
        return bool(d[2] < 0 and -d[2] > horizontal)
    if relation == "left":
        return bool(d[0] < 0 and abs(d[0]) >= max(abs(d[1]), abs(d[2])))
    if relation == "right":
        return bool(d[0] > 0 and abs(d[0]) >= max(abs(d[1]), abs(d[2])))
    if relation == "front":
        return bool(d[1] < 0 and abs(d[1]) >= max(abs(d[0]), abs(d[2])))
    if relation == "behind":
        return bool(d[1] > 0 and abs(d[1]) >= max(abs(d[0]), abs(d[2])))
    if relation in ("beside", "near"):
        return bool(horizontal > abs(d[2]))
    if relation == "between":
        ends = np.concatenate(anchors)
        if len(ends) < 2:
            return False
        p, q = ends[0], ends[-1]
        t = float(np.dot(s - p, q - p) / max(np.dot(q - p, q - p), 1e-9))
        off = float(np.linalg.norm(s - (p + t * (q - p))))
        return bool(0.2 < t < 0.8 and off < 0.35 * np.linalg.norm(q - p))
    if relation == "around":
        if len(subject) < 2:
            return False
        ring = float(np.linalg.norm(subject[:, :2] - s[:2], axis=1).mean())
        return bool(np.linalg.norm(a[:2] - s[:2]) < 0.5 * ring)
    raise ValueError(f"unknown relation {relation!r}")


@dataclass
class SceneVerdict:
    """The judge's findings for a grammar scene: per-object shape/colour, relations, all right."""

    objects: list[ObjectVerdict]
    shapes_ok: bool
    colours_ok: bool
    relations_ok: bool
    counted: int
    details: dict = field(default_factory=dict)

    @property
    def all_ok(self) -> bool:
        """Every object's shape and colour, and every relation."""
        return self.shapes_ok and self.colours_ok and self.relations_ok


def judge_scene(scene: GaussianScene, spec, colour_weight: float = 1.0) -> SceneVerdict:
    """Judge ``scene`` against a grammar ``Scene`` (``grammar.Scene``): objects, colours, relations.

    Composite objects (table, tree, …) are judged on position only (the shape judge knows primitives).
    """
    from scipy.optimize import linear_sum_assignment

    from ..scene import sh0_to_rgb

    want = [(gi, g) for gi, g in enumerate(spec.groups) for _ in range(g.count)]
    scene = _visible(scene)
    counted = count_objects(scene) if len(scene) >= 8 else 0
    if len(scene) < 8 * len(want):
        none = [ObjectVerdict("none", "none", [math.nan] * 3, [math.nan] * 3, 0) for _ in want]
        return SceneVerdict(none, False, False, False, counted)
    pos = scene.means.detach().double().numpy()
    rgb = sh0_to_rgb(scene.sh0[:, 0]).clamp(0, 1).detach().double().numpy()
    labels = kmeans(np.concatenate([pos, colour_weight * rgb], 1), len(want))
    objs = []
    for k in range(len(want)):
        part = _subset(scene, torch.from_numpy(labels == k))
        if len(part) >= 8:
            objs.append(_judge_object(part))
        else:
            objs.append(ObjectVerdict("none", "none", [math.nan] * 3, [math.nan] * 3, len(part)))

    def ok(o: ObjectVerdict, g) -> tuple[bool, bool]:
        shape_ok = g.shape not in JUDGED_SHAPES or o.shape == g.shape
        colour_ok = g.shape not in JUDGED_SHAPES or colour_matches(o.rgb, g.colour)
        return shape_ok, colour_ok

    cost = np.array([[-sum(ok(o, g)) for o in objs] for _, g in want], dtype=float)
    rows, cols = linear_sum_assignment(cost)
    matched = [objs[c] for c in cols[np.argsort(rows)]]
    checks = [ok(o, g) for o, (_, g) in zip(matched, want)]
    centroids: dict[int, list] = {}
    for o, (gi, _) in zip(matched, want):
        centroids.setdefault(gi, []).append(o.centroid)
    cent = {gi: np.array(c, dtype=float) for gi, c in centroids.items()}
    rel_ok = []
    for gi, g in enumerate(spec.groups):
        if g.arrangement:
            rel_ok.append(relation_holds(g.arrangement, cent[gi], []))
    for r in spec.relations:
        rel_ok.append(relation_holds(r.relation, cent[r.subject], [cent[a] for a in r.anchors]))
    return SceneVerdict(matched, all(c[0] for c in checks), all(c[1] for c in checks), all(rel_ok), counted,
                        {"relations": rel_ok})


def silhouette_iou(generated: GaussianScene, reference: GaussianScene, size: int = 64, elevation: float = 0.35) -> float:
    """IoU of the front-view silhouettes (alpha > 0.5) of two scenes, each centred on itself, same scale."""
    from .views import render_view, scene_frame

    c_ref, radius = scene_frame(reference)
    c_gen, _ = scene_frame(generated)
    _, a = render_view(generated, size, 0.0, elevation, centre=c_gen, radius=radius)
    _, b = render_view(reference, size, 0.0, elevation, centre=c_ref, radius=radius)
    ma, mb = a > 0.5, b > 0.5
    union = float((ma | mb).sum())
    return float((ma & mb).sum()) / union if union else 0.0
