"""The procedural captioned scene composer and the training-set builder (``recon3d generate-data``).

World convention of every generated scene: Z up, objects rest on z = 0, the default camera stands on −y
looking toward +y. *left of* = smaller x, *in front of* = smaller y, *on top of* = larger z. Unit objects
are about 1 across, ``small`` ≈ 0.5, ``large`` ≈ 1.5.

A scene is a float32 array N×14 of Gaussians, one row each (the generator's token layout):
position (3), log σ (3), quaternion w,x,y,z (4), opacity logit (1), colour RGB in [0, 1] (3).
Gaussians are sampled uniformly on the surfaces, flattened along the normal, sized by the local sampling
density (σ ∝ √(area / count) of their part) and coloured with light shading noise.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .shapes import COMPOSITES, NATURAL_COLOURS, PRIMITIVES, Part, composite_parts, primitive_parts

FEATURE_DIM = 14
FEATURE_SLICES = {
    "position": slice(0, 3),
    "log_scale": slice(3, 6),
    "quat": slice(6, 10),
    "opacity": slice(10, 11),
    "colour": slice(11, 14),
}

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (0.95, 0.9, 0.1),
    "green": (0.15, 0.65, 0.2),
    "blue": (0.1, 0.25, 0.9),
    "purple": (0.55, 0.15, 0.75),
    "pink": (1.0, 0.55, 0.75),
    "brown": (0.5, 0.3, 0.12),
    "black": (0.06, 0.06, 0.06),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.5, 0.5, 0.5),
    "cyan": (0.1, 0.85, 0.9),
}
# log σ is stored in the model's units at this many Gaussians per scene, whatever count a scene has:
# σ ∝ √(area / count), so log σ at count n is log σ_ref − ½·log(n / REFERENCE_COUNT)
REFERENCE_COUNT = 512
SIZES = {"small": 0.5, None: 1.0, "large": 1.5}
RELATIONS = ("on top of", "to the left of", "to the right of", "in front of", "behind", "next to")
SHAPES = PRIMITIVES + COMPOSITES
# one key light from the front-left-top, for the shading noise of the composer
_LIGHT = np.array([-0.3, -0.6, 0.75]) / np.linalg.norm([-0.3, -0.6, 0.75])


# ---------------------------------------------------------------- held-out concepts
@dataclass
class HeldOut:
    """(shape, colour) pairs no training scene may contain and prompts no training caption may equal."""

    pairs: set[tuple[str, str]] = field(default_factory=set)
    prompts: list[str] = field(default_factory=list)

    def allows(self, spec: SceneSpec) -> bool:
        """True when ``spec`` contains no held-out pair and its caption is no held-out prompt."""
        if any((o.shape, o.colour) in self.pairs for o in spec.objects):
            return False
        return normalise_prompt(spec.caption) not in {normalise_prompt(p) for p in self.prompts}

    @property
    def single_prompts(self) -> list[str]:
        """Held-out prompts naming one object."""
        return [p for p in self.prompts if parse_caption(p) is not None and len(parse_caption(p).objects) == 1]

    @property
    def pair_prompts(self) -> list[str]:
        """Held-out prompts naming two objects."""
        return [p for p in self.prompts if parse_caption(p) is not None and len(parse_caption(p).objects) == 2]


def default_heldout_path() -> Path:
    """``../shared/generation/heldout.txt`` beside the repository (where the project keeps it)."""
    return Path(__file__).resolve().parents[3] / "shared" / "generation" / "heldout.txt"


def load_heldout(path: str | Path | None = None) -> HeldOut:
    """Parse a held-out file: ``pair SHAPE COLOUR`` and ``prompt TEXT`` lines, ``#`` comments."""
    path = Path(path) if path is not None else default_heldout_path()
    if not path.is_file():
        raise InputError(path, "held-out concepts file not found")
    held = HeldOut()
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, rest = line.partition(" ")
        if key == "pair" and len(rest.split()) == 2:
            shape, colour = rest.split()
            held.pairs.add((shape, colour))
        elif key == "prompt" and rest.strip():
            held.prompts.append(rest.strip())
        else:
            raise InputError(path, f"line {number}: expected 'pair SHAPE COLOUR' or 'prompt TEXT', got {raw!r}")
    return held


# ---------------------------------------------------------------- scene specs and captions
@dataclass
class ObjectSpec:
    """One object of a scene: its shape, colour (None = natural colours) and size word."""

    shape: str
    colour: str | None = None
    size: str | None = None

    def phrase(self) -> str:
        """``a small red cube``."""
        words = [w for w in (self.size, self.colour, _display_name(self.shape)) if w]
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words])


@dataclass
class SceneSpec:
    """A scene to compose: one or two objects and, for two, the relation of the first to the second."""

    objects: list[ObjectSpec]
    relation: str | None = None
    kind: str = "primitive"  # primitive / mesh / scan

    @property
    def caption(self) -> str:
        """The caption the composer pairs with this scene."""
        if len(self.objects) == 1:
            return self.objects[0].phrase()
        return f"{self.objects[0].phrase()} {self.relation} {self.objects[1].phrase()}"

    def to_json(self) -> dict:
        """A JSON-able dict."""
        return {
            "caption": self.caption,
            "kind": self.kind,
            "relation": self.relation,
            "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size} for o in self.objects],
        }

    @classmethod
    def from_json(cls, d: dict) -> SceneSpec:
        """Inverse of ``to_json``."""
        return cls([ObjectSpec(**o) for o in d["objects"]], d.get("relation"), d.get("kind", "primitive"))


def _display_name(shape: str) -> str:
    return shape.replace("-", " ").replace("_", " ")


def normalise_prompt(prompt: str) -> str:
    """Lower case, single spaces, no trailing punctuation."""
    return re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(".!?")


def parse_caption(prompt: str, extra_shapes: Iterable[str] = ()) -> SceneSpec | None:
    """Parse a prompt of the composer's grammar back into a spec (None when it does not fit)."""
    text = normalise_prompt(prompt)
    shapes = sorted([*SHAPES, *(_display_name(s) for s in extra_shapes)], key=len, reverse=True)
    obj = rf"(?:an? |the )?(?:(small|large) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(map(re.escape, shapes))})"
    m = re.fullmatch(obj, text)
    if m:
        return SceneSpec([ObjectSpec(m.group(3), m.group(2), m.group(1))])
    m = re.fullmatch(rf"{obj} ({'|'.join(RELATIONS)}) {obj}", text)
    if m:
        g = m.groups()
        return SceneSpec([ObjectSpec(g[2], g[1], g[0]), ObjectSpec(g[6], g[5], g[4])], g[3])
    return None


def sample_spec(rng: np.random.Generator, heldout: HeldOut, *, pair_probability: float = 0.55) -> SceneSpec:
    """Draw one random primitive/composite scene spec that the held-out set allows."""
    while True:
        if rng.random() < pair_probability:
            objs = [_random_object(rng, composite_p=0.15, size_p=0.3) for _ in range(2)]
            spec = SceneSpec(objs, RELATIONS[rng.integers(len(RELATIONS))])
        else:
            spec = SceneSpec([_random_object(rng, composite_p=0.3, size_p=0.5)])
        if heldout.allows(spec):
            return spec


def _random_object(rng: np.random.Generator, *, composite_p: float, size_p: float) -> ObjectSpec:
    colours = list(COLOURS)
    if rng.random() < composite_p:
        shape = COMPOSITES[rng.integers(len(COMPOSITES))]
        colour = None if rng.random() < 0.4 else colours[rng.integers(len(colours))]
    else:
        shape = PRIMITIVES[rng.integers(len(PRIMITIVES))]
        colour = colours[rng.integers(len(colours))]
    size = None
    if rng.random() < size_p:
        size = "small" if rng.random() < 0.5 else "large"
    return ObjectSpec(shape, colour, size)


def all_single_specs(heldout: HeldOut) -> list[SceneSpec]:
    """Every single-object primitive/composite spec the held-out set allows."""
    specs = []
    for shape in SHAPES:
        colours = list(COLOURS) + ([None] if shape in COMPOSITES else [])
        for colour in colours:
            for size in SIZES:
                spec = SceneSpec([ObjectSpec(shape, colour, size)])
                if heldout.allows(spec):
                    specs.append(spec)
    return specs


# ---------------------------------------------------------------- meshes and reconstructed scenes
MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf", ".off", ".stl")


@dataclass
class MeshSurface:
    """A mesh normalised to the world convention (1 across, resting on z = 0), as a dense surface sample."""

    name: str
    points: np.ndarray
    normals: np.ndarray
    area: float


def load_mesh_folder(folder: str | Path, samples: int = 8192, seed: int = 0) -> list[MeshSurface]:
    """Every mesh in ``folder`` (OBJ/PLY/GLB/…), named by its file name, sampled densely once."""
    import trimesh

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "mesh folder not found")
    out = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in MESH_SUFFIXES:
            continue
        try:
            mesh = trimesh.load(path, force="mesh", process=False)
        except Exception as exc:  # a broken file is named, not a traceback
            raise InputError(path, f"could not read mesh: {exc}") from exc
        if len(getattr(mesh, "faces", [])) == 0:
            raise InputError(path, "mesh has no faces")
        lo, hi = mesh.bounds
        scale = 1.0 / max(float(np.max(hi - lo)), 1e-9)
        pts, face_idx = trimesh.sample.sample_surface(mesh, samples, seed=seed)
        nrm = np.asarray(mesh.face_normals[face_idx], dtype=np.float64)
        pts = (np.asarray(pts) - [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]) * scale
        name = re.sub(r"[^a-z ]", " ", path.stem.lower().replace("-", " ").replace("_", " ")).strip()
        name = re.sub(r"\s+", " ", name)
        out.append(MeshSurface(name, pts.astype(np.float32), nrm.astype(np.float32), float(mesh.area) * scale**2))
    return out


def load_scan_folder(folder: str | Path) -> list[tuple[str, np.ndarray]]:
    """A folder of reconstructed scenes with ``captions.jsonl`` ({"file": …, "caption": …} per line).

    Each scene becomes N×14 Gaussian features normalised to the world convention.
    """
    from ..ply import load_ply
    from ..scene import sh0_to_rgb

    folder = Path(folder)
    index = folder / "captions.jsonl"
    if not index.is_file():
        raise InputError(index, "missing: a scan folder needs captions.jsonl with {'file', 'caption'} lines")
    out = []
    for number, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            file, caption = entry["file"], entry["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(index, f"line {number}: expected {{'file': ..., 'caption': ...}} ({exc})") from exc
        scene = load_ply(folder / file)
        rgb = sh0_to_rgb(scene.sh0[:, 0]).clamp(0, 1)
        feats = torch.cat([scene.means, scene.scales, scene.quats, scene.opacities[:, None], rgb], 1).numpy()
        lo, hi = np.quantile(feats[:, :3], 0.01, 0), np.quantile(feats[:, :3], 0.99, 0)
        scale = 1.0 / max(float(np.max(hi - lo)), 1e-9)
        feats[:, :3] = (feats[:, :3] - [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]) * scale
        feats[:, 3:6] += math.log(scale)
        out.append((caption, feats.astype(np.float32)))
    return out


# ---------------------------------------------------------------- composing Gaussians
def quat_from_z_to(normals: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z; w ≥ 0) of the shortest rotation taking +z to each normal."""
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    q = np.stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], np.zeros(len(n))], -1)
    flipped = q[:, 0] < 1e-6  # normal ≈ −z: any half turn about a horizontal axis
    q[flipped] = [0.0, 1.0, 0.0, 0.0]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _yaw(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return points @ r.T


def _object_surfaces(obj: ObjectSpec, meshes: dict[str, MeshSurface]) -> list[tuple[Part | MeshSurface, str]]:
    """The parts of one object with the colour name each takes."""
    if obj.shape in meshes:
        return [(meshes[obj.shape], obj.colour or "gray")]
    if obj.shape in PRIMITIVES:
        return [(p, obj.colour or "gray") for p in primitive_parts(obj.shape)]
    natural = NATURAL_COLOURS[obj.shape]
    parts = composite_parts(obj.shape)
    return [(p, (obj.colour or natural[0]) if p.part == 0 else natural[1]) for p in parts]


def _sample_object(
    obj: ObjectSpec, count: int, rng: np.random.Generator, meshes: dict[str, MeshSurface]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points, normals, base colours and σ (tangent) of ``count`` Gaussians on one object at its size."""
    s = SIZES[obj.size]
    surfaces = _object_surfaces(obj, meshes)
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
        cols.append(np.broadcast_to(COLOURS[colour], (k, 3)))
        # σ from the local sampling density of this part: k points spread over `area`
        sig.append(np.full(k, 0.6 * math.sqrt(area / k)))
    return np.concatenate(pts), np.concatenate(nrms), np.concatenate(cols), np.concatenate(sig)


def _footprint(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points.min(0), points.max(0)


def compose(
    spec: SceneSpec,
    num_gaussians: int,
    rng: np.random.Generator,
    meshes: dict[str, MeshSurface] | None = None,
    counts: Sequence[int] | None = None,
) -> np.ndarray:
    """Compose ``spec`` into ``num_gaussians`` Gaussian features (N×14, float32) in world coordinates.

    The first object's Gaussians come first. ``counts`` fixes how many each object gets (default: one
    object takes all; two share by surface area).
    """
    meshes = meshes or {}
    n_obj = len(spec.objects)
    if counts is not None:
        if len(counts) != n_obj or sum(counts) != num_gaussians:
            raise ValueError(f"counts {list(counts)} do not split {num_gaussians} Gaussians over {n_obj} objects")
        counts = list(counts)
    elif n_obj == 1:
        counts = [num_gaussians]
    else:
        # split by surface area so the two objects share one sampling density
        areas = []
        for o in spec.objects:
            a = sum(m.area for m, _ in _object_surfaces(o, meshes)) * SIZES[o.size] ** 2
            areas.append(a)
        first = int(round(num_gaussians * areas[0] / sum(areas)))
        first = min(max(first, num_gaussians // 8), num_gaussians - num_gaussians // 8)
        counts = [first, num_gaussians - first]
    objects = []
    for obj, count in zip(spec.objects, counts):
        p, nrm, col, sig = _sample_object(obj, count, rng, meshes)
        angle = rng.uniform(0, 2 * math.pi)
        objects.append([_yaw(p, angle), _yaw(nrm, angle), col, sig])
    if n_obj == 2:
        a, b = objects[0][0], objects[1][0]
        alo, ahi = _footprint(a)
        blo, bhi = _footprint(b)
        gap = rng.uniform(0.1, 0.3)
        jitter = rng.uniform(-0.08, 0.08, size=2)
        offset = np.zeros(3)
        rel = spec.relation
        if rel == "next to":
            rel = "to the left of" if rng.random() < 0.5 else "to the right of"
        if rel == "on top of":
            offset[:2] = jitter
            offset[2] = bhi[2] - alo[2]  # resting on the top of the other object
        elif rel == "to the left of":
            offset[0] = blo[0] - ahi[0] - gap
            offset[1] = jitter[1]
        elif rel == "to the right of":
            offset[0] = bhi[0] - alo[0] + gap
            offset[1] = jitter[1]
        elif rel == "in front of":
            offset[1] = blo[1] - ahi[1] - gap
            offset[0] = jitter[0]
        elif rel == "behind":
            offset[1] = bhi[1] - alo[1] + gap
            offset[0] = jitter[0]
        else:
            raise ValueError(f"unknown relation {spec.relation!r}")
        objects[0][0] = a + offset
    pts = np.concatenate([o[0] for o in objects])
    nrm = np.concatenate([o[1] for o in objects])
    col = np.concatenate([o[2] for o in objects])
    sig = np.concatenate([o[3] for o in objects])
    lo, hi = pts.min(0), pts.max(0)
    centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 0.0])
    pts = pts - centre + np.append(rng.uniform(-0.05, 0.05, size=2), 0.0)
    return gaussians_from_surface(pts, nrm, col, sig, rng)


def gaussians_from_surface(
    points: np.ndarray, normals: np.ndarray, colours: np.ndarray, sigma: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Flat Gaussians on a sampled surface: σ along the normal is a tenth of the tangent σ."""
    n = len(points)
    log_scale = np.stack([np.log(sigma), np.log(sigma), np.log(0.1 * sigma)], -1)
    quat = quat_from_z_to(normals)
    opacity = rng.uniform(0.85, 0.97, size=n)
    logit = np.log(opacity / (1 - opacity))
    unit_n = normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    shade = 0.88 + 0.12 * np.clip(unit_n @ _LIGHT, 0, 1)
    rgb = np.clip(colours * shade[:, None] + rng.normal(0, 0.02, size=(n, 3)), 0, 1)
    return np.concatenate([points, log_scale, quat, logit[:, None], rgb], 1).astype(np.float32)


def to_reference_density(features: torch.Tensor, count: int) -> torch.Tensor:
    """Shift log σ of scenes with ``count`` Gaussians to the reference count (the model's units)."""
    out = features.clone()
    out[..., 3:6] += 0.5 * math.log(count / REFERENCE_COUNT)
    return out


def from_reference_density(features: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of ``to_reference_density``."""
    out = features.clone()
    out[..., 3:6] -= 0.5 * math.log(count / REFERENCE_COUNT)
    return out


def features_to_scene(features: torch.Tensor):
    """N×14 features -> GaussianScene (raw 3DGS parameters, SH DC from the colour)."""
    from ..scene import GaussianScene, rgb_to_sh0

    f = features.detach().float()
    quat = f[:, 6:10]
    quat = torch.where(quat.norm(dim=1, keepdim=True) < 1e-6, torch.tensor([1.0, 0, 0, 0]), quat)
    return GaussianScene(
        means=f[:, 0:3].contiguous(),
        scales=f[:, 3:6].contiguous(),
        quats=quat.contiguous(),
        opacities=f[:, 10].contiguous(),
        sh0=rgb_to_sh0(f[:, 11:14].clamp(0, 1))[:, None, :].contiguous(),
    )


def compose_scene(spec: SceneSpec | str, num_gaussians: int = 1024, seed: int = 0):
    """Convenience: a ground-truth GaussianScene for a spec or a caption of the composer's grammar."""
    if isinstance(spec, str):
        parsed = parse_caption(spec)
        if parsed is None:
            raise ValueError(f"{spec!r} does not fit the composer's grammar")
        spec = parsed
    return features_to_scene(torch.from_numpy(compose(spec, num_gaussians, np.random.default_rng(seed))))


# ---------------------------------------------------------------- the training set on disk
@dataclass
class GeneratorDataset:
    """Captions with cached text embeddings plus what the composer needs to draw fresh scenes of them."""

    specs: list[SceneSpec]
    tokens: torch.Tensor  # K×T×D (float16)
    mask: torch.Tensor  # K×T bool
    pooled: torch.Tensor  # K×D
    meshes: dict[str, MeshSurface]
    scans: list[tuple[str, np.ndarray]]
    scan_rows: list[int]  # caption row of each scan
    mean: torch.Tensor
    std: torch.Tensor
    weights: np.ndarray  # sampling probability of each caption row
    info: dict
    captions: list[str] = field(default_factory=list)  # the caption of each row (scans: their own)

    def sample(self, batch: int, num_gaussians: int, rng: np.random.Generator, with_slots: bool = False):
        """A batch: features B×N×14 (world units), caption rows B (and slots B×N when ``with_slots``).

        With slots, a two-object scene gives each object half the Gaussians (first object = slot 0), so a
        sampler knows the split from the prompt alone; one object puts all of them in slot 0.
        """
        rows = rng.choice(len(self.specs), size=batch, p=self.weights)
        feats, slots = [], []
        scan_by_row = {r: i for i, r in enumerate(self.scan_rows)}
        for r in rows:
            counts = [num_gaussians]
            if r in scan_by_row:
                f = self.scans[scan_by_row[r]][1]
                idx = rng.choice(len(f), size=num_gaussians, replace=len(f) < num_gaussians)
                feats.append(f[idx])
            else:
                spec = self.specs[r]
                if with_slots and len(spec.objects) == 2:
                    counts = [num_gaussians // 2, num_gaussians - num_gaussians // 2]
                feats.append(compose(spec, num_gaussians, rng, self.meshes, counts if with_slots else None))
            slots.append(np.repeat(np.arange(len(counts)), counts))
        out = torch.from_numpy(np.stack(feats)), torch.from_numpy(rows)
        if with_slots:
            return *out, torch.from_numpy(np.stack(slots)).long()
        return out


def build_dataset(
    out_dir: str | Path,
    *,
    num_pairs: int = 12000,
    seed: int = 0,
    heldout: HeldOut | None = None,
    mesh_dir: str | Path | None = None,
    scan_dirs: Sequence[str | Path] = (),
    encoder=None,
    stats_scenes: int = 256,
    num_gaussians: int = REFERENCE_COUNT,
    progress: bool = True,
) -> Path:
    """Build the captioned training set in ``out_dir`` (specs.jsonl, embeddings.pt, meshes.npz, info.json)."""
    from ..io_utils import atomic_open, atomic_write_text
    from .text import MiniLMEncoder

    out_dir = Path(out_dir)
    heldout = heldout if heldout is not None else load_heldout()
    rng = np.random.default_rng(seed)
    specs = all_single_specs(heldout)
    seen = {s.caption for s in specs}
    pairs: list[SceneSpec] = []
    attempts = 0
    while len(pairs) < num_pairs and attempts < num_pairs * 50:
        attempts += 1
        spec = sample_spec(rng, heldout, pair_probability=1.0)
        if spec.caption not in seen:
            seen.add(spec.caption)
            pairs.append(spec)
    specs += pairs
    meshes = load_mesh_folder(mesh_dir) if mesh_dir else []
    mesh_specs = []
    for m in meshes:
        for colour in [None, *COLOURS]:
            spec = SceneSpec([ObjectSpec(m.name, colour)], kind="mesh")
            if heldout.allows(spec):
                mesh_specs.append(spec)
    specs += mesh_specs
    scans = []
    for d in scan_dirs:
        scans += load_scan_folder(d)
    scan_rows = list(range(len(specs), len(specs) + len(scans)))
    captions = [s.caption for s in specs] + [c for c, _ in scans]
    specs += [SceneSpec([ObjectSpec("scan")], kind="scan") for _ in scans]
    for spec in specs:  # the builder's own guarantee, whatever the sampler above does
        if spec.kind != "scan" and not heldout.allows(spec):
            raise AssertionError(f"held-out concept leaked into the training set: {spec.caption}")
    held_norm = {normalise_prompt(p) for p in heldout.prompts}
    if any(normalise_prompt(c) in held_norm for c in captions):
        raise InputError(None, "a scan caption equals a held-out prompt; remove it from captions.jsonl")
    encoder = encoder or MiniLMEncoder()
    tokens, mask, pooled = encoder.encode_batched(captions, progress=progress)
    # statistics of the features for the model's normalisation
    sample_rng = np.random.default_rng(seed + 1)
    stat_specs = [specs[i] for i in sample_rng.choice(len(specs) - len(scans), stats_scenes)]
    feats = np.concatenate([compose(s, num_gaussians, sample_rng, {m.name: m for m in meshes}) for s in stat_specs])
    mean, std = feats.mean(0), feats.std(0).clip(0.02)  # the quaternion z is always 0
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_dir / "embeddings.pt", "wb") as f:
        torch.save({"tokens": tokens.half(), "mask": mask, "pooled": pooled.half()}, f)
    with atomic_open(out_dir / "meshes.npz", "wb") as f:
        np.savez_compressed(
            f,
            **{f"points_{i}": m.points for i, m in enumerate(meshes)},
            **{f"normals_{i}": m.normals for i, m in enumerate(meshes)},
        )
    with atomic_open(out_dir / "scans.npz", "wb") as f:
        np.savez_compressed(f, **{f"scan_{i}": s for i, (_, s) in enumerate(scans)})
    lines = [json.dumps(s.to_json() | {"caption": c}) for s, c in zip(specs, captions)]
    atomic_write_text(out_dir / "specs.jsonl", "\n".join(lines) + "\n")
    info = {
        "num_captions": len(specs),
        "num_single": len(specs) - len(pairs) - len(mesh_specs) - len(scans),
        "num_pairs": len(pairs),
        "num_mesh": len(mesh_specs),
        "num_scans": len(scans),
        "meshes": [{"name": m.name, "area": m.area} for m in meshes],
        "scan_rows": scan_rows,
        "heldout_pairs": sorted(map(list, heldout.pairs)),
        "heldout_prompts": heldout.prompts,
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
        "encoder": encoder.name,
        "seed": seed,
    }
    atomic_write_text(out_dir / "info.json", json.dumps(info, indent=1))
    return out_dir


def load_dataset(data_dir: str | Path, mix: dict[str, float] | None = None) -> GeneratorDataset:
    """Load a built training set; ``mix`` gives the share of single / pair / mesh / scan draws."""
    data_dir = Path(data_dir)
    for name in ("info.json", "specs.jsonl", "embeddings.pt"):
        if not (data_dir / name).is_file():
            raise InputError(data_dir / name, "missing; build the set with `recon3d generate-data`")
    info = json.loads((data_dir / "info.json").read_text())
    rows = [json.loads(line) for line in (data_dir / "specs.jsonl").read_text().splitlines()]
    specs = [SceneSpec.from_json(r) for r in rows]
    emb = torch.load(data_dir / "embeddings.pt", weights_only=True)
    mesh_npz = np.load(data_dir / "meshes.npz")
    meshes = {
        m["name"]: MeshSurface(m["name"], mesh_npz[f"points_{i}"], mesh_npz[f"normals_{i}"], m["area"])
        for i, m in enumerate(info["meshes"])
    }
    scan_npz = np.load(data_dir / "scans.npz")
    scan_rows = info["scan_rows"]
    scans = [(specs[r].caption, scan_npz[f"scan_{i}"]) for i, r in enumerate(scan_rows)]
    mix = mix or {"single": 0.4, "pair": 0.55, "mesh": 0.03, "scan": 0.02}
    kinds = np.array(
        ["scan" if s.kind == "scan" else "mesh" if s.kind == "mesh" else "pair" if len(s.objects) == 2 else "single" for s in specs]
    )
    present = {k: float(mix.get(k, 0.0)) for k in set(kinds.tolist())}
    total = sum(present.values()) or 1.0
    weights = np.zeros(len(specs))
    for k, share in present.items():
        sel = kinds == k
        weights[sel] = share / total / sel.sum()
    weights /= weights.sum()
    return GeneratorDataset(
        specs=specs,
        tokens=emb["tokens"],
        mask=emb["mask"],
        pooled=emb["pooled"],
        meshes=meshes,
        scans=scans,
        scan_rows=scan_rows,
        mean=torch.tensor(info["feature_mean"], dtype=torch.float32),
        std=torch.tensor(info["feature_std"], dtype=torch.float32),
        weights=weights,
        info=info,
        captions=[r["caption"] for r in rows],
    )
