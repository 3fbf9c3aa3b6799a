"""The round-2 training set: a bank of grammar scenes with captions and their cached MiniLM token embeddings.

Scenes and captions are drawn once (``build_bank``, seeded, held-out pairs/templates/combos excluded); every
training step composes fresh Gaussians of them (new yaw, layout jitter, surface samples) and, for image
conditioning, renders a random view. Files in the bank folder: ``bank.jsonl`` (scene, caption, slot order),
``tokens.pt`` (float16 token embeddings per caption, unpadded) and ``info.json`` (feature statistics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .composer import compose_grammar
from .data import REFERENCE_COUNT, features_to_scene, load_heldout, normalise_prompt, to_reference_density
from .grammar import COLOUR_NAMES, COMPOSITE_SHAPES, PRIMITIVE_SHAPES, Scene, caption, random_scene, training_rules

# how often a training batch holds 1, 2, 3, 4, 5 objects (the first run's mix; ``data.object_mix`` overrides)
OBJECT_MIX = (0.3, 0.3, 0.2, 0.1, 0.1)
# the slot-attribute targets (model.attributes): shape class, then colour, centre and extent of each object
ATTRIBUTE_SHAPES = PRIMITIVE_SHAPES + COMPOSITE_SHAPES
ATTRIBUTE_VALUES = 9
ATTRIBUTE_DIM = len(ATTRIBUTE_SHAPES) + ATTRIBUTE_VALUES
# with colour classes (model.attributes = ATTRIBUTE_DIM_COLOURS): shape logits, colour-name logits, values
ATTRIBUTE_COLOURS = COLOUR_NAMES
ATTRIBUTE_DIM_COLOURS = len(ATTRIBUTE_SHAPES) + len(ATTRIBUTE_COLOURS) + ATTRIBUTE_VALUES


def attribute_colours(layout: list[dict]) -> np.ndarray:
    """Per object of a composed scene (slot order): the index of its colour name (natural colours included)."""
    return np.array([ATTRIBUTE_COLOURS.index(o["colour"]) for o in layout])


def attribute_targets(layout: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per object of a composed scene (slot order): shape class, and colour (RGB·2−1), centre and extent
    (world units / 1.5), the values the attribute head reads off each slot state."""
    shape = np.array([ATTRIBUTE_SHAPES.index(o["shape"]) for o in layout])
    values = np.array([[*(np.asarray(o["rgb"]) * 2 - 1), *(np.asarray(o["centre"]) / 1.5),
                        *((np.asarray(o["hi"]) - np.asarray(o["lo"])) / 1.5)] for o in layout], dtype=np.float32)
    return shape, values


@dataclass
class Bank:
    """Scenes, captions, slot orders and token embeddings of the training set."""

    scenes: list[Scene]
    captions: list[str]
    orders: list[list[int]]
    tokens: list[torch.Tensor]
    mean: torch.Tensor
    std: torch.Tensor
    info: dict

    def rows_with(self, n: int) -> np.ndarray:
        """Rows whose scene holds ``n`` objects."""
        if not hasattr(self, "_by_count"):
            counts = np.array([s.num_objects for s in self.scenes])
            self._by_count = {k: np.nonzero(counts == k)[0] for k in range(1, 6)}
        return self._by_count.get(n, np.zeros(0, dtype=int))

    def sample(self, batch: int, per_object: int, rng: np.random.Generator, image_share: float = 0.0,
               image_size: int = 64, object_mix: tuple[float, ...] | None = None) -> dict:
        """A batch of one object count: features B×N×14 (model units), slots, tokens, images, switches, and
        the slot-attribute targets (``attr_shape`` B×n, ``attr_values`` B×n×9, ``attr_colour`` B×n)."""
        mix = tuple(object_mix) if object_mix else OBJECT_MIX
        counts = [k for k in range(1, 6) if len(self.rows_with(k))]
        p = np.array([mix[k - 1] for k in counts])
        n = int(rng.choice(counts, p=p / p.sum()))
        rows = rng.choice(self.rows_with(n), size=batch)
        feats, slots, images, shapes, values, colours = [], [], [], [], [], []
        mode = rng.random(batch)
        use_image = mode < image_share
        use_text = ~(mode < image_share * 0.6)  # 60 % of image samples are image-only
        for r, want_image in zip(rows, use_image):
            f, s, layout = compose_grammar(self.scenes[r], per_object, rng, self.orders[r])
            feats.append(f)
            slots.append(s)
            a_shape, a_values = attribute_targets(layout)
            shapes.append(a_shape)
            values.append(a_values)
            colours.append(attribute_colours(layout))
            if image_share > 0:
                images.append(render_training_view(f, rng, image_size) if want_image else torch.zeros(3, image_size, image_size))
        x = to_reference_density(torch.from_numpy(np.stack(feats)), per_object)
        tok = [self.tokens[r] for r in rows]
        t = max(len(v) for v in tok)
        tokens = torch.zeros(batch, t, tok[0].shape[-1])
        mask = torch.zeros(batch, t, dtype=torch.bool)
        for i, v in enumerate(tok):
            tokens[i, : len(v)] = v.float()
            mask[i, : len(v)] = True
        return {
            "x": (x - self.mean) / self.std,
            "slots": torch.from_numpy(np.stack(slots)).long(),
            "num_objects": torch.full((batch,), n, dtype=torch.long),
            "text_tokens": tokens,
            "text_mask": mask,
            "images": torch.stack(images) if images else None,
            "use_text": torch.from_numpy(use_text) if image_share > 0 else None,
            "use_image": torch.from_numpy(use_image) if image_share > 0 else None,
            "attr_shape": torch.from_numpy(np.stack(shapes)).long(),
            "attr_values": torch.from_numpy(np.stack(values)),
            "attr_colour": torch.from_numpy(np.stack(colours)).long(),
            "rows": rows,
        }


def render_training_view(features: np.ndarray, rng: np.random.Generator, size: int = 64) -> torch.Tensor:
    """A random view (3×size×size, white background) of composed features, as an image prompt."""
    from .views import random_view, render_view

    azimuth, elevation = random_view(rng)
    rgb, _ = render_view(features_to_scene(torch.from_numpy(features)), size, azimuth, elevation)
    return rgb.permute(2, 0, 1).contiguous()


def build_bank(out_dir: str | Path, *, num_scenes: int = 6000, seed: int = 0, heldout=None, encoder=None,
               stats_scenes: int = 128, progress: bool = True, kind_weights=None, wide: bool = False,
               base: str | Path | None = None) -> Path:
    """Draw ``num_scenes`` training scenes with captions, encode the captions, write the bank.

    ``kind_weights``: the scene kinds' mix (``grammar.random_scene``); ``wide``: the wider caption forms;
    ``base``: a bank folder whose scenes, captions, token embeddings and feature statistics this one keeps,
    adding ``num_scenes`` new scenes (a fine-tune sees what it learned and the units it learned them in)."""
    from ..io_utils import atomic_open, atomic_write_text
    from .text import get_encoder

    out_dir = Path(out_dir)
    heldout = heldout if heldout is not None else load_heldout()
    rules = training_rules(heldout)
    rng = np.random.default_rng(seed)
    scenes, caps, orders, seen = [], [], [], set()
    old = load_bank(base) if base is not None else None
    if old is not None:
        seen = {normalise_prompt(c) for c in old.captions}
    attempts = 0
    while len(scenes) < num_scenes and attempts < num_scenes * 20:
        attempts += 1
        scene = random_scene(rng, rules, weights=kind_weights)
        cap = caption(scene, rng, rules, wide=wide)
        key = normalise_prompt(cap.text)
        if key in seen or key in rules.prompts:
            continue
        seen.add(key)
        scenes.append(scene)
        caps.append(cap.text)
        orders.append(cap.order)
    encoder = encoder or get_encoder()
    tokens: list[torch.Tensor] = []
    from ..progress import track

    for s in track(range(0, len(caps), 64), description="encoding captions", disable=not progress, unit="batches"):
        t, m, _ = encoder.encode(caps[s : s + 64])
        tokens += [t[i, m[i]].half() for i in range(len(t))]
    new_scenes = len(scenes)
    if old is not None:
        if old.info["encoder"] != encoder.name:
            raise InputError(Path(base), f"its captions were encoded by {old.info['encoder']}, not {encoder.name}")
        scenes, caps, orders, tokens = old.scenes + scenes, old.captions + caps, old.orders + orders, old.tokens + tokens
    stat_rng = np.random.default_rng(seed + 1)
    feats = []
    for r in stat_rng.choice(len(scenes), size=min(stats_scenes, len(scenes)), replace=False):
        f, _, _ = compose_grammar(scenes[r], REFERENCE_COUNT // 4, stat_rng, orders[r])
        feats.append(to_reference_density(torch.from_numpy(f), REFERENCE_COUNT // 4).numpy())
    allf = np.concatenate(feats)
    mean, std = allf.mean(0), allf.std(0).clip(0.02)
    if old is not None:
        mean, std = old.mean.numpy(), old.std.numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_dir / "tokens.pt", "wb") as f:
        torch.save(tokens, f)
    lines = [json.dumps({"scene": s.to_json(), "caption": c, "order": o}) for s, c, o in zip(scenes, caps, orders)]
    atomic_write_text(out_dir / "bank.jsonl", "\n".join(lines) + "\n")
    info = {
        "num_scenes": len(scenes), "seed": seed, "encoder": encoder.name, "wide": wide,
        "kind_weights": None if kind_weights is None else list(kind_weights), "base": None if base is None else str(base),
        "new_scenes": new_scenes,
        "feature_mean": mean.tolist(), "feature_std": std.tolist(),
        "heldout_pairs": sorted(map(list, rules.pairs)), "heldout_count_relations": sorted(map(list, rules.count_relations)),
        "heldout_templates": list(rules.object_templates), "heldout_wrappers": list(rules.wrappers),
    }
    atomic_write_text(out_dir / "info.json", json.dumps(info, indent=1))
    return out_dir


def load_bank(data_dir: str | Path) -> Bank:
    """Load a bank written by ``build_bank``."""
    data_dir = Path(data_dir)
    for name in ("info.json", "bank.jsonl", "tokens.pt"):
        if not (data_dir / name).is_file():
            raise InputError(data_dir / name, "missing; the bank is built on the first `recon3d train-generator` run")
    info = json.loads((data_dir / "info.json").read_text())
    rows = [json.loads(line) for line in (data_dir / "bank.jsonl").read_text().splitlines() if line.strip()]
    tokens = torch.load(data_dir / "tokens.pt", weights_only=True)
    if len(tokens) != len(rows):
        raise InputError(data_dir / "tokens.pt", f"{len(tokens)} token sets for {len(rows)} captions; rebuild the bank")
    return Bank([Scene.from_json(r["scene"]) for r in rows], [r["caption"] for r in rows], [r["order"] for r in rows],
                tokens, torch.tensor(info["feature_mean"], dtype=torch.float32),
                torch.tensor(info["feature_std"], dtype=torch.float32), info)
