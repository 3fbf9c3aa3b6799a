"""The round-2 composer: grammar scenes (up to five objects, 13 relations) as Gaussians with a ground-truth layout.

World convention as in ``data.py``: Z up, objects rest on z = 0 (unless a relation lifts them), the default
camera stands on −y looking toward +y; *left* = smaller x, *in front* = smaller y, *on/above* = larger z.

Every object instance gets the same number of Gaussians (``per_object``), so a slot generator knows from
the number of objects alone how many Gaussians each slot holds. Instances are listed in *slot order*: the
order the caption first names their groups, then within a group left to right / bottom to top / around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .data import MeshSurface, _yaw, gaussians_from_surface
from .grammar import COLOUR_RGB, SIZE_SCALE, Scene, Thing
from .shapes import COMPOSITES, NATURAL_COLOURS, PRIMITIVES, composite_parts, primitive_parts


@dataclass
class Instance:
    """One object of a composed scene: its surface sample in world units and where it stands."""

    group: int
    shape: str
    colour: str | None
    size: str | None
    points: np.ndarray
    normals: np.ndarray
    rgb: np.ndarray
    sigma: np.ndarray

    @property
    def lo(self) -> np.ndarray:
        """Lower corner of the bounding box."""
        return self.points.min(0)

    @property
    def hi(self) -> np.ndarray:
        """Upper corner of the bounding box."""
        return self.points.max(0)

    def move(self, offset) -> None:
        """Translate the instance."""
        self.points = self.points + np.asarray(offset, dtype=np.float64)

    def layout(self) -> dict:
        """The ground-truth layout record of this object."""
        lo, hi = self.lo, self.hi
        colour = self.colour if self.colour is not None else NATURAL_COLOURS.get(self.shape, ("gray",))[0]
        return {
            "group": self.group, "shape": self.shape, "colour": colour, "size": self.size,
            "rgb": [float(x) for x in COLOUR_RGB[colour]],
            "centre": ((lo + hi) / 2).tolist(), "lo": lo.tolist(), "hi": hi.tolist(),
        }


def sample_instance(thing: Thing, group: int, count: int, rng: np.random.Generator,
                    meshes: dict[str, MeshSurface] | None = None) -> Instance:
    """``count`` surface samples of one object at its size, with a random yaw, resting on z = 0."""
    s = SIZE_SCALE[thing.size]
    if meshes and thing.shape in meshes:
        surfaces = [(meshes[thing.shape], thing.colour or "gray")]
    elif thing.shape in PRIMITIVES:
        surfaces = [(p, thing.colour or "gray") for p in primitive_parts(thing.shape)]
    elif thing.shape in COMPOSITES:
        natural = NATURAL_COLOURS[thing.shape]
        surfaces = [(p, (thing.colour or natural[0]) if p.part == 0 else natural[1]) for p in composite_parts(thing.shape)]
    else:
        raise ValueError(f"unknown shape {thing.shape!r}")
    areas = np.array([m.area for m, _ in surfaces]) * s * s
    counts = rng.multinomial(count, areas / areas.sum())
    pts, nrms, cols, sig = [], [], [], []
    for (surf, colour), k, area in zip(surfaces, counts, areas):
        if k == 0:
            continue
        if isinstance(surf, MeshSurface):
            idx = rng.choice(len(surf.points), size=k, replace=k > len(surf.points))
            p, nrm = surf.points[idx].astype(np.float64), surf.normals[idx].astype(np.float64)
        else:
            p, nrm = surf.sample(rng, k)
        pts.append(p * s)
        nrms.append(nrm)
        cols.append(np.broadcast_to(COLOUR_RGB[colour], (k, 3)))
        sig.append(np.full(k, 0.6 * math.sqrt(area / k)))  # σ from this part's sampling density
    angle = rng.uniform(0, 2 * math.pi)
    return Instance(group, thing.shape, thing.colour, thing.size, _yaw(np.concatenate(pts), angle),
                    _yaw(np.concatenate(nrms), angle), np.concatenate(cols), np.concatenate(sig))


class _Block:
    """A rigid set of instances (one group) that relations move as a whole."""

    def __init__(self, instances: list[Instance]):
        self.instances = instances

    @property
    def lo(self) -> np.ndarray:
        return np.min([i.lo for i in self.instances], 0)

    @property
    def hi(self) -> np.ndarray:
        return np.max([i.hi for i in self.instances], 0)

    @property
    def centre(self) -> np.ndarray:
        return (self.lo + self.hi) / 2

    def move(self, offset) -> None:
        for i in self.instances:
            i.move(offset)

    def radius(self) -> float:
        return float(np.linalg.norm((self.hi - self.lo)[:2]) / 2)


def _arrange(block: _Block, arrangement: str | None, rng: np.random.Generator) -> None:
    """Lay out a group's instances: a row along x (default), or a stack along z."""
    cursor = 0.0
    for k, inst in enumerate(block.instances):
        if arrangement == "stack":
            inst.move([-(inst.lo[0] + inst.hi[0]) / 2 + rng.uniform(-0.03, 0.03),
                       -(inst.lo[1] + inst.hi[1]) / 2 + rng.uniform(-0.03, 0.03), cursor - inst.lo[2]])
            cursor = float(inst.hi[2])
        else:
            jitter = 0.05 if arrangement == "row" else 0.15
            gap = rng.uniform(0.12, 0.3) if k else 0.0
            inst.move([cursor + gap - inst.lo[0], -(inst.lo[1] + inst.hi[1]) / 2 + rng.uniform(-jitter, jitter), -inst.lo[2]])
            cursor = float(inst.hi[0])


def _place(subject: _Block, anchor: _Block, relation: str, rng: np.random.Generator) -> None:
    """Move ``subject`` (or, for ``under``, the anchor) so that the relation holds."""
    gap = rng.uniform(0.12, 0.3)
    j = rng.uniform(-0.06, 0.06, size=2)
    s_lo, s_hi, a_lo, a_hi = subject.lo, subject.hi, anchor.lo, anchor.hi
    sc, ac = subject.centre, anchor.centre
    if relation == "beside":
        relation = "left" if rng.random() < 0.5 else "right"
    if relation in ("on", "above"):
        lift = 0.0 if relation == "on" else rng.uniform(0.25, 0.5)
        subject.move([ac[0] - sc[0] + j[0], ac[1] - sc[1] + j[1], a_hi[2] + lift - s_lo[2]])
    elif relation == "under":
        subject.move([ac[0] - sc[0] + j[0], ac[1] - sc[1] + j[1], -s_lo[2]])
        anchor.move([0.0, 0.0, subject.hi[2] + rng.uniform(0.25, 0.5) - a_lo[2]])
    elif relation == "left":
        subject.move([a_lo[0] - gap - s_hi[0], ac[1] - sc[1] + j[1], -s_lo[2]])
    elif relation == "right":
        subject.move([a_hi[0] + gap - s_lo[0], ac[1] - sc[1] + j[1], -s_lo[2]])
    elif relation == "front":
        subject.move([ac[0] - sc[0] + j[0], a_lo[1] - gap - s_hi[1], -s_lo[2]])
    elif relation == "behind":
        subject.move([ac[0] - sc[0] + j[0], a_hi[1] + gap - s_lo[1], -s_lo[2]])
    elif relation == "near":
        angle = rng.uniform(0, 2 * math.pi)
        dist = anchor.radius() + subject.radius() + rng.uniform(0.1, 0.35)
        target = ac[:2] + dist * np.array([math.cos(angle), math.sin(angle)])
        subject.move([target[0] - sc[0], target[1] - sc[1], -s_lo[2]])
    elif relation == "around":
        n = len(subject.instances)
        r_inst = max(float(np.linalg.norm((i.hi - i.lo)[:2]) / 2) for i in subject.instances)
        ring = max(anchor.radius() + r_inst + rng.uniform(0.1, 0.25), r_inst / math.sin(math.pi / n) + 0.05)
        phase = rng.uniform(0, 2 * math.pi)
        for k, inst in enumerate(subject.instances):
            a = phase + 2 * math.pi * k / n
            c = (inst.lo + inst.hi) / 2
            inst.move([ac[0] + ring * math.cos(a) - c[0], ac[1] + ring * math.sin(a) - c[1], -inst.lo[2]])
    else:
        raise ValueError(f"unknown relation {relation!r}")


def compose_instances(scene: Scene, per_object: int, rng: np.random.Generator, order: list[int] | None = None,
                      meshes: dict[str, MeshSurface] | None = None) -> list[Instance]:
    """Sample and lay out every object of ``scene``; returns the instances in slot order."""
    blocks = []
    for gi, thing in enumerate(scene.groups):
        block = _Block([sample_instance(thing, gi, per_object, rng, meshes) for _ in range(thing.count)])
        _arrange(block, thing.arrangement, rng)
        blocks.append(block)
    placed: set[int] = set()
    if not scene.relations and len(blocks) > 1:  # a list: side by side in a random order
        perm = rng.permutation(len(blocks))
        for prev, cur in zip(perm[:-1], perm[1:]):
            _place(blocks[cur], blocks[prev], "right", rng)
    for rel in scene.relations:
        subject = blocks[rel.subject]
        if rel.relation == "between":
            if len(rel.anchors) == 1:  # two objects of one group, one on each side
                left, right = (_Block([i]) for i in blocks[rel.anchors[0]].instances[:2])
            else:
                left, right = blocks[rel.anchors[0]], blocks[rel.anchors[1]]
            _place(left, subject, "left", rng)
            _place(right, subject, "right", rng)
            placed |= {rel.subject, *rel.anchors}
            continue
        _place(subject, blocks[rel.anchors[0]], rel.relation, rng)
        placed |= {rel.subject, *rel.anchors}
    instances = [i for b in blocks for i in b.instances]
    pts = np.concatenate([i.points for i in instances])
    lo, hi = pts.min(0), pts.max(0)
    shift = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, 0.0]) + np.append(rng.uniform(-0.05, 0.05, 2), 0.0)
    for i in instances:
        i.move(shift)
    order = order if order is not None else list(range(len(scene.groups)))
    rank = {g: k for k, g in enumerate(order)}
    return sorted(instances, key=lambda i: rank.get(i.group, len(order)))  # stable: within-group order kept


def compose_grammar(scene: Scene, per_object: int, rng: np.random.Generator, order: list[int] | None = None,
                    meshes: dict[str, MeshSurface] | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Features (N×14, N = objects × ``per_object``), slot labels (N,) and the ground-truth layout."""
    instances = compose_instances(scene, per_object, rng, order, meshes)
    feats, slots = [], []
    for k, inst in enumerate(instances):
        feats.append(gaussians_from_surface(inst.points, inst.normals, inst.rgb, inst.sigma, rng))
        slots.append(np.full(len(inst.points), k))
    return np.concatenate(feats), np.concatenate(slots), [i.layout() for i in instances]


def compose_grammar_scene(scene: Scene, per_object: int = 1024, seed: int = 0):
    """A ground-truth GaussianScene for a grammar scene (and its layout)."""
    from .data import features_to_scene

    feats, _, layout = compose_grammar(scene, per_object, np.random.default_rng(seed))
    return features_to_scene(torch.from_numpy(feats)), layout
