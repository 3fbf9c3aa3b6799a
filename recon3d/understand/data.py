"""The encoders' training data, built from the generator's composer: scenes, captions, views.

Each chunk of scenes (one ``.npz`` under the data folder) holds, per scene: up to ``MAX_ROWS`` encoder
feature rows of its Gaussians, one training caption (the grammar's training templates and wrappers; the
held-out ones are never used here) with its MiniLM embedding, one 32² view from a random viewpoint, and
the scene graph (JSON). Chunks are written atomically and skipped when present, so an interrupted build
resumes. Scene seeds are ``[seed, chunk, k]``: the benchmark draws from other seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .features import normalise_rows, subsample, visible_rows

MAX_ROWS = 256
PER_OBJECT = 128
VIEW_SIZE = 32
CHUNK = 32


def compose_example(rng: np.random.Generator, rules, per_object: int = PER_OBJECT, kind: str | None = None):
    """One random grammar scene: (Scene, GaussianScene, caption text)."""
    from ..generation.composer import compose_grammar
    from ..generation.data import features_to_scene
    from ..generation.grammar import caption, random_scene

    spec = random_scene(rng, rules, kind)
    cap = caption(spec, rng, rules)
    feats, _, _ = compose_grammar(spec, per_object, rng, order=cap.order)
    return spec, features_to_scene(torch.from_numpy(feats)), cap.text


def render_random_view(scene, rng: np.random.Generator, size: int = VIEW_SIZE) -> np.ndarray:
    """A view (size×size×3 uint8, over white) from a random viewpoint (azimuth any, elevation 10°-50°)."""
    from ..generation.views import random_view, render_view

    az, el = random_view(rng)
    rgb, _ = render_view(scene, size, az, el)
    return (rgb.numpy() * 255).round().astype(np.uint8)


def scene_rows(scene, rng: np.random.Generator) -> np.ndarray:
    """Up to MAX_ROWS normalised feature rows (float16)."""
    rows = normalise_rows(visible_rows(scene))
    if len(rows) > MAX_ROWS:
        rows = subsample(rows, MAX_ROWS, rng)
    return rows.astype(np.float16)


def build_chunk(path: Path, seed: int, chunk: int, encoder, rules) -> None:
    """Compose, render and caption ``CHUNK`` scenes; write them to ``path`` atomically."""
    from ..io_utils import atomic_open

    rows, counts, caps, views, specs = [], [], [], [], []
    for k in range(CHUNK):
        rng = np.random.default_rng([seed, chunk, k])
        spec, scene, text = compose_example(rng, rules)
        r = scene_rows(scene, rng)
        rows.append(np.pad(r, ((0, MAX_ROWS - len(r)), (0, 0))))
        counts.append(len(r))
        caps.append(text)
        views.append(render_random_view(scene, rng))
        specs.append(json.dumps(spec.to_json()))
    emb = encoder.encode(caps)[2].numpy().astype(np.float16)
    with atomic_open(path, "wb") as f:
        np.savez(f, rows=np.stack(rows), counts=np.array(counts), text=emb, views=np.stack(views),
                 captions=np.array(caps), specs=np.array(specs))


def build(folder: Path, chunks: int, seed: int = 0, progress: bool = True) -> None:
    """Build (or finish building) ``chunks`` chunks in ``folder``."""
    from ..generation.grammar import training_rules
    from ..generation.text import get_encoder

    folder.mkdir(parents=True, exist_ok=True)
    rules, encoder = training_rules(), None
    for c in range(chunks):
        path = folder / f"chunk-{seed}-{c:05d}.npz"
        if path.is_file():
            continue
        encoder = encoder or get_encoder()
        t0 = time.time()
        build_chunk(path, seed, c, encoder, rules)
        if progress:
            print(f"chunk {c + 1}/{chunks}: {time.time() - t0:.1f} s", flush=True)


def load_chunks(folder: Path) -> dict[str, np.ndarray]:
    """Every chunk in ``folder`` concatenated (rows, counts, text, views, captions, specs)."""
    parts = [np.load(p) for p in sorted(Path(folder).glob("chunk-*.npz"))]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0].files}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build the scene/image encoder training data")
    ap.add_argument("--out", default="runs/understand/data")
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    build(Path(a.out), a.chunks, a.seed)
