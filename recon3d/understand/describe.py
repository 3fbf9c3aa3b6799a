"""``recon3d describe``: a caption for a scene, read off the encoders by small heads, checked by retrieval.

The scene encoder's and the image encoder's embeddings (both in the MiniLM caption space) feed small
structure heads trained with them (``model.StructureHeads``): what kind of scene it is (one object, a group
of one kind, two kinds related, more), each group's shape, count and colour (CIELAB, named by the nearest
of the grammar's 132 colours), and the relation. These make a grammar scene graph, written in the grammar's
plain wording (``a red cube on a blue sphere``).

How far a scene is from what the model knows, two measures, both set against held-out composed scenes
(``calibrate``; the thresholds are the lowest of 100 of them, less 0.02, kept in the weights' info):

- *familiarity*: the mean cosine of the scene encoder's embedding with its 5 nearest among 2,048 training
  scenes' embeddings (``weights/known_scenes.npz``);
- *agreement*: the cosine between the scene encoder's embedding and the image encoder's (three views). On a
  composed scene the two encoders agree; on a random cloud of Gaussians they do not (the measured ranges
  of both kinds are kept in the weights' info).

Below either threshold no caption is given, only how far the scene is from what the model knows.
Alternatives: the best single objects of a bank of every object the grammar names (13 shapes × 132
colours, embedded by MiniLM once and shipped in ``weights/caption_bank.npz``), nearest to the scene.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..scene import GaussianScene

BANK_FILE = Path(__file__).resolve().parent / "weights" / "caption_bank.npz"
KNOWN_FILE = Path(__file__).resolve().parent / "weights" / "known_scenes.npz"
NEIGHBOURS = 5
# below these a scene is not described; ``calibrate`` sets them from held-out composed scenes and keeps
# them in the weights' info (these defaults are only used by weights without that info)
DEFAULT_THRESHOLD = 0.75
DEFAULT_AGREEMENT = 0.3


@dataclass
class Description:
    """What ``describe`` says about a scene."""

    text: str  # the caption, or the sentence saying the scene is unfamiliar
    known: bool  # False: the scene is unlike what the model knows, and ``caption`` is None
    caption: str | None
    familiarity: float  # mean cosine of the scene's embedding with its nearest training scenes'
    threshold: float
    agreement: float = 1.0  # cosine of the scene encoder's and the image encoder's embeddings
    agreement_threshold: float = 0.0
    structure: dict | None = None  # the grammar scene graph of the caption (groups, relations)
    alternatives: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        """A JSON-able dict."""
        return {"text": self.text, "known": self.known, "caption": self.caption,
                "familiarity": round(self.familiarity, 4), "threshold": self.threshold,
                "agreement": round(self.agreement, 4), "agreement_threshold": self.agreement_threshold,
                "structure": self.structure,
                "alternatives": [[c, round(s, 4)] for c, s in self.alternatives]}


# ---------------------------------------------------------------- plain captions of grammar scenes
def _phrase(thing, definite: bool = False) -> str:
    from ..generation.grammar import COUNT_WORDS, plural

    noun = thing.shape if thing.count == 1 else plural(thing.shape)
    core = " ".join(w for w in (thing.colour, noun) if w)
    if definite:
        return f"the {core}"
    det = ("an" if core[0] in "aeiou" else "a") if thing.count == 1 else COUNT_WORDS[thing.count][0]
    return f"{det} {core}"


def plain_caption(scene) -> str:
    """The grammar's plain wording of a one-group or a two-group scene (first relation word of each relation)."""
    from ..generation.grammar import RELATION_WORDS

    g = scene.groups
    if not scene.relations:
        parts = [_phrase(t) for t in g]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    r = scene.relations[0]
    return f"{_phrase(g[r.subject])} {RELATION_WORDS[r.relation][0]} {_phrase(g[r.anchors[0]])}"


def bank_things() -> list:
    """Every single object the grammar can name: primitives in every colour, composites also in their natural colours."""
    from ..generation.grammar import COLOUR_NAMES, COMPOSITE_SHAPES, PRIMITIVE_SHAPES, Thing

    things = [Thing(s, c) for s in PRIMITIVE_SHAPES + COMPOSITE_SHAPES for c in COLOUR_NAMES]
    return things + [Thing(s, None) for s in COMPOSITE_SHAPES]


def build_bank(path: Path = BANK_FILE, batch: int = 64) -> None:
    """Embed every bank caption with MiniLM and save them (float16) with their texts."""
    from ..generation.text import get_encoder
    from ..io_utils import atomic_open

    things = bank_things()
    texts = [_phrase(t) for t in things]
    enc = get_encoder()
    emb = np.concatenate([enc.encode(texts[s : s + batch])[2].numpy() for s in range(0, len(texts), batch)])
    with atomic_open(path, "wb") as f:
        np.savez(f, texts=np.array(texts), shapes=np.array([t.shape for t in things]),
                 colours=np.array([t.colour or "" for t in things]), emb=emb.astype(np.float16))


_BANK: dict = {}


def load_bank(path: Path = BANK_FILE) -> dict:
    """The shipped caption bank (texts, shapes, colours, unit embeddings as float32)."""
    if "bank" not in _BANK:
        if not path.is_file():
            raise InputError(path, "the caption bank is missing; build it with `python -m recon3d.understand.describe "
                             "--build-bank`")
        d = np.load(path)
        emb = d["emb"].astype(np.float64)
        _BANK["bank"] = {"texts": list(d["texts"]), "shapes": list(d["shapes"]), "colours": list(d["colours"]),
                         "emb": emb / np.linalg.norm(emb, axis=1, keepdims=True)}
    return _BANK["bank"]


# ---------------------------------------------------------------- the scene side
def scene_embeddings(scene: GaussianScene) -> tuple[np.ndarray, np.ndarray]:
    """The scene encoder's embedding and the image encoder's (unit mean over three 32² orbit views)."""
    import torch

    from ..generation.views import render_view, scene_frame
    from .encode import encode_scene, encode_views

    centre, radius = scene_frame(scene)
    views = torch.stack([render_view(scene, 32, 2 * math.pi * k / 3, 0.35, centre=centre, radius=radius)[0]
                         for k in range(3)])
    return encode_scene(scene), encode_views(views)


_LAB: dict = {}


def nearest_colour_lab(lab: np.ndarray) -> str:
    """The grammar's colour name nearest to a CIELAB colour."""
    from ..generation.grammar import COLOUR_NAMES, COLOUR_RGB, srgb_to_lab

    if "table" not in _LAB:
        _LAB["table"] = srgb_to_lab(np.asarray([COLOUR_RGB[n] for n in COLOUR_NAMES]))
    return COLOUR_NAMES[int(np.argmin(np.linalg.norm(_LAB["table"] - lab[None], axis=1)))]


def structure_from_heads(s: np.ndarray, v: np.ndarray, relations: list | None = None) -> tuple[str, object]:
    """The heads' reading of a scene: its kind and a grammar Scene (None for ``other``). ``relations``, when
    given, receives every relation the head knows, most probable first."""
    import torch

    from ..generation.grammar import COMPOSITE_SHAPES, PRIMITIVE_SHAPES, Relation, Scene, Thing
    from .model import FAMILIES, HEAD_RELATIONS, load_encoders

    shapes = PRIMITIVE_SHAPES + COMPOSITE_SHAPES
    with torch.no_grad():
        pred = load_encoders().heads(torch.from_numpy(s).float()[None], torch.from_numpy(v).float()[None])
    family = FAMILIES[int(pred["family"][0].argmax())]
    if relations is not None:
        relations.extend(HEAD_RELATIONS[int(i)] for i in pred["relation"][0].argsort(descending=True))

    def thing(j: int) -> Thing:
        shape = shapes[int(pred["shape"][0, j].argmax())]
        count = int(pred["count"][0, j].argmax()) + 1
        return Thing(shape, nearest_colour_lab(pred["colour"][0, j].double().numpy() * 100.0), None, count)

    if family == "single":
        t = thing(0)
        t.count = 1
        return family, Scene([t])
    if family == "group":
        t = thing(0)
        t.count = max(2, t.count)
        return family, Scene([t])
    if family == "pair":
        a, b = thing(0), thing(1)
        return family, Scene([a, b], [Relation(0, HEAD_RELATIONS[int(pred["relation"][0].argmax())], (1,))])
    return family, None


# relations whose truth two group centroids decide (``around`` needs each object's centre: left to the head)
MEASURABLE_RELATIONS = ("on", "above", "under", "beside", "near", "left", "right", "front", "behind")
SHADE_DE = 10.0  # ΔE*ab within which a Gaussian counts as a colour seen under the composer's shading


def measure_structure(scene: GaussianScene, structure, relations: list[str]):
    """The heads' scene graph checked against the scene's own Gaussians (in place; returns it).

    Colours: the visible Gaussians are split into the graph's groups by their colour (k-means in CIELAB,
    started from the heads' colours; a composite's second-part colour, e.g. a tree's brown trunk, set aside
    first), and each group is named by the nearest grammar colour to the median of its brighter half (the
    lit side: shading only darkens). The heads regress a colour from a 384-d embedding, which lands on a
    neighbour of the true colour; the Gaussians carry the colour itself. Relation (two groups of clearly
    different colours): the most probable relation of the head that holds between the two groups' centroids
    (``judge.relation_holds``, the grammar's meaning of the words, in the scene's axes: z up, x right, y
    away); when none holds, the head's own choice stays."""
    import torch

    from ..generation.grammar import COLOUR_RGB, delta_e, srgb_to_lab
    from ..generation.judge import relation_holds
    from ..generation.shapes import NATURAL_COLOURS
    from .features import visible_rows

    rows, index = visible_rows(scene, with_index=True)
    if len(rows) < 8 or not structure.groups:
        return structure
    all_pos = rows[:, :3]
    pos, rgb = rows[:, :3], np.clip(rows[:, 4:7], 0, 1)
    lab = srgb_to_lab(rgb)
    groups = structure.groups
    centres = np.stack([srgb_to_lab(np.asarray(COLOUR_RGB[g.colour], float)) for g in groups])
    keep = np.ones(len(rows), bool)
    for g in groups:  # a composite's other part: not the colour the caption names
        if g.shape in NATURAL_COLOURS:
            second = srgb_to_lab(np.asarray(COLOUR_RGB[NATURAL_COLOURS[g.shape][1]], float))
            near = np.linalg.norm(lab - second, axis=1) < SHADE_DE
            if np.linalg.norm(centres - second, axis=1).min() > 2 * SHADE_DE and (keep & ~near).sum() >= 0.3 * len(rows):
                keep &= ~near
    lab, pos = lab[keep], pos[keep]
    assign = np.zeros(len(lab), int)
    for _ in range(5):  # k-means from the heads' colours
        assign = np.linalg.norm(lab[:, None] - centres[None], axis=2).argmin(1)
        for j in range(len(groups)):
            if (assign == j).any():
                centres[j] = lab[assign == j].mean(0)
    measured = []
    for j, g in enumerate(groups):
        mine = lab[assign == j]
        if len(mine) < 4:
            measured.append(None)
            continue
        lit = mine[mine[:, 0] >= np.median(mine[:, 0])]
        colour = nearest_colour_lab(np.median(lit, axis=0))
        g.colour = colour
        measured.append(colour)
    apart = (float(delta_e(np.asarray(COLOUR_RGB[measured[0]], float), np.asarray(COLOUR_RGB[measured[1]], float)))
             if len(groups) == 2 and all(measured) else 0.0)
    if apart > 2 * SHADE_DE:
        # two groups of clearly different colours: each one's shape and count read by the same encoders and
        # heads from that group's Gaussians alone (a set-aside second part goes with the nearer group), since
        # one embedding of two objects blurs their shapes
        cent = np.stack([pos[assign == j].mean(0) for j in range(2)])
        owner = np.full(len(rows), -1)
        owner[keep] = assign
        owner[~keep] = np.linalg.norm(all_pos[~keep][:, None] - cent[None], axis=2).argmin(1)
        for j, g in enumerate(groups):
            part = index[owner == j]
            if len(part) < 8:
                continue
            sub = scene[torch.from_numpy(part)]
            kind, sub_graph = structure_from_heads(*scene_embeddings(sub))
            if kind in ("single", "group") and sub_graph is not None:
                g.shape, g.count, g.word = sub_graph.groups[0].shape, sub_graph.groups[0].count, None
    if len(groups) == 2 and structure.relations and all(measured):
        r = structure.relations[0]
        if apart > 2 * SHADE_DE and r.relation in MEASURABLE_RELATIONS:
            cent = {j: pos[assign == j].mean(0)[None] for j in range(2)}
            for name in relations:
                if name in MEASURABLE_RELATIONS and relation_holds(name, cent[r.subject], [cent[a] for a in r.anchors]):
                    r.relation = name
                    break
    return structure


_KNOWN: dict = {}


def load_known(path: Path = KNOWN_FILE) -> np.ndarray:
    """The training scenes' embeddings (unit rows, float32) that familiarity is measured against."""
    if "emb" not in _KNOWN:
        if not path.is_file():
            raise InputError(path, "the known-scenes file is missing; make it with `python -m recon3d.understand.describe "
                             "--calibrate`")
        _KNOWN["emb"] = np.load(path)["emb"].astype(np.float32)
    return _KNOWN["emb"]


def familiarity_of(s: np.ndarray) -> float:
    """Mean cosine of a scene embedding with its NEIGHBOURS nearest training scenes."""
    sims = load_known() @ s.astype(np.float32)
    return float(np.sort(sims)[-NEIGHBOURS:].mean())


def describe_embeddings(s: np.ndarray, v: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                        agreement_threshold: float = DEFAULT_AGREEMENT, scene: GaussianScene | None = None) -> Description:
    """The description of a scene from its scene-encoder and image-encoder embeddings; with ``scene``, the
    colours and the relation are checked against its Gaussians (``measure_structure``)."""
    from ..generation.grammar import Scene, Thing

    q = s + v
    q = q / np.linalg.norm(q)
    bank = load_bank()
    sims = bank["emb"] @ q
    order = np.argsort(-sims)
    alts = [(bank["texts"][i], float(sims[i])) for i in order[:3]]
    familiarity, agreement = familiarity_of(s), float(s @ v)
    if familiarity < threshold or agreement < agreement_threshold:
        why = []
        if familiarity < threshold:
            why.append(f"familiarity {familiarity:.2f}, composed scenes ≥ {threshold:.2f}")
        if agreement < agreement_threshold:
            why.append(f"its Gaussians and its views read differently: agreement {agreement:.2f}, composed scenes "
                       f"≥ {agreement_threshold:.2f}")
        text = f"this scene is unlike the composed scenes the model knows ({'; '.join(why)}), so it is not described"
        return Description(text, False, None, familiarity, threshold, agreement, agreement_threshold, None, alts)
    ranked: list[str] = []
    family, structure = structure_from_heads(s, v, ranked)
    if structure is not None and scene is not None:
        structure = measure_structure(scene, structure, ranked)
    if structure is None:  # three or more kinds of objects: name the best three the bank finds
        top, seen = [], set()
        for i in order:
            key = (bank["shapes"][i], bank["colours"][i] or None)
            if key[0] not in seen:
                seen.add(key[0])
                top.append(Thing(*key))
            if len(top) == 3:
                break
        structure = Scene(top)
    text = plain_caption(structure)
    return Description(text, True, text, familiarity, threshold, agreement, agreement_threshold, structure.to_json(),
                       alts)


def thresholds() -> tuple[float, float]:
    """(familiarity, agreement) thresholds of the shipped weights."""
    from .model import load_encoders

    info = getattr(load_encoders(), "info", {}) or {}
    return float(info.get("describe_threshold", DEFAULT_THRESHOLD)), float(info.get("agreement_threshold", DEFAULT_AGREEMENT))


def load_scene_arg(target: str | Path) -> tuple[Path, GaussianScene]:
    """A scene file (.ply, .splat, .spz, .sog) or a run directory (its scene.ply); one-line errors."""
    from ..formats import load_scene

    path = Path(target).expanduser()
    if not path.exists():
        raise InputError(path, "no such scene file or run directory")
    if path.is_dir():
        inner = path / "scene.ply"
        if not inner.is_file():
            raise InputError(path, "not a run directory (no scene.ply inside); give a scene file or a run directory")
        path = inner
    scene = load_scene(path)
    if len(scene) == 0:
        raise InputError(path, "holds no Gaussians")
    return path, scene


def describe(scene: GaussianScene | str | Path) -> Description:
    """A caption for ``scene`` (a GaussianScene, a scene file or a run directory), or why it is not described."""
    from .features import visible_rows

    if not isinstance(scene, GaussianScene):
        path, scene = load_scene_arg(scene)
    else:
        path = None
    if len(visible_rows(scene)) == 0:
        raise InputError(path or "the scene", "has no visible Gaussians (all transparent or not finite)")
    s, v = scene_embeddings(scene)
    return describe_embeddings(s, v, *thresholds(), scene=scene)


def random_cloud(n: int, seed: int) -> GaussianScene:
    """Gaussians strewn through a box with random colours, sizes and opacities: nothing the composer makes."""
    import torch

    from ..scene import rgb_to_sh0

    g = torch.Generator().manual_seed(seed)
    return GaussianScene(means=torch.rand(n, 3, generator=g) * 4 - 2, scales=torch.rand(n, 3, generator=g) * 2 - 5,
                         quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
                         opacities=torch.randn(n, generator=g), sh0=rgb_to_sh0(torch.rand(n, 1, 3, generator=g)))


def build_known(data: Path, scenes: int = 2048, path: Path = KNOWN_FILE) -> None:
    """Embed the first ``scenes`` training scenes with the scene encoder and save them (float16)."""
    import torch

    from ..io_utils import atomic_open
    from .data import load_chunks
    from .model import load_encoders
    from .train import batch_rows

    d = load_chunks(data)
    n = min(scenes, len(d["counts"]))
    with torch.no_grad():
        emb = torch.cat([load_encoders().scene(batch_rows(d["rows"], d["counts"], np.arange(s, min(s + 256, n)),
                                                           np.random.default_rng(s)))
                         for s in range(0, n, 256)]).numpy()
    with atomic_open(path, "wb") as f:
        np.savez(f, emb=emb.astype(np.float16))
    _KNOWN.clear()


def calibrate(data: Path = Path("runs/understand/data"), scenes: int = 100, clouds: int = 10, seed: int = 4243) -> dict:
    """The known-scenes file, then familiarity and agreement of composed scenes of unseen seeds and of random
    clouds; thresholds (the lowest of the composed scenes less 0.02) written into the weights' info."""
    import torch

    from ..generation.composer import compose_grammar
    from ..generation.data import features_to_scene
    from ..generation.grammar import random_scene, validation_rules
    from .model import update_info

    build_known(data)
    known = []
    for k in range(scenes):
        rng = np.random.default_rng([seed, k])
        feats, _, _ = compose_grammar(random_scene(rng, validation_rules()), 128, rng)
        s, v = scene_embeddings(features_to_scene(torch.from_numpy(feats)))
        known.append((familiarity_of(s), float(s @ v)))
    far = []
    for c in range(clouds):
        s, v = scene_embeddings(random_cloud(4000, c))
        far.append((familiarity_of(s), float(s @ v)))
    known, far = np.array(known), np.array(far)
    t = known.min(0) - 0.02
    stats = {"describe_threshold": round(float(t[0]), 3), "agreement_threshold": round(float(t[1]), 3)}
    for name, arr in (("composed", known), ("random_clouds", far)):
        stats[f"calibration_{name}"] = {"n": len(arr), "familiarity_min_median_max": [round(float(x), 3) for x in (
            arr[:, 0].min(), np.median(arr[:, 0]), arr[:, 0].max())], "agreement_min_median_max": [round(float(x), 3) for x in (
            arr[:, 1].min(), np.median(arr[:, 1]), arr[:, 1].max())]}
    update_info(stats)
    return stats


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="describe's caption bank and familiarity threshold")
    ap.add_argument("--build-bank", action="store_true")
    ap.add_argument("--calibrate", action="store_true", help="set the familiarity threshold in the shipped weights")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if a.build_bank:
        build_bank()
        print(json.dumps({"bank": str(BANK_FILE), "captions": len(bank_things())}))
    if a.calibrate:
        print(json.dumps(calibrate()))
