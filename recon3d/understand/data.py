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
EXTRA_CAPTIONS = 4


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


def extra_captions(spec_json: str, seed: int, chunk: int, k: int, rules, count: int = EXTRA_CAPTIONS) -> list[str]:
    """``count`` more training captions of one chunk scene: other templates, wrappers and shape synonyms
    (wording only: the scene is the same; the held-out templates and wrappers stay out, as ``rules`` says)."""
    import copy

    from ..generation.grammar import SHAPE_WORDS, Scene, caption

    base = Scene.from_json(json.loads(str(spec_json)))
    out = []
    for j in range(count):
        rng = np.random.default_rng([seed, chunk, k, 1000 + j])
        spec = copy.deepcopy(base)
        for g in spec.groups:
            words = SHAPE_WORDS[g.shape]
            word = g.shape if rng.random() < 0.5 else words[rng.integers(len(words))]
            g.word = None if word == g.shape else word
        out.append(caption(spec, rng, rules).text)
    return out


def captions_path(chunk_path: Path) -> Path:
    """Where a chunk's extra captions live (beside it)."""
    return chunk_path.with_name(chunk_path.name.replace("chunk-", "captions-", 1))


def build_captions(chunk_path: Path, encoder, rules, count: int = EXTRA_CAPTIONS) -> None:
    """Write ``count`` extra captions (and their MiniLM embeddings) for every scene of a chunk, atomically."""
    from ..io_utils import atomic_open

    _, seed, chunk = chunk_path.stem.split("-")
    specs = np.load(chunk_path)["specs"]
    caps = [c for k, js in enumerate(specs) for c in extra_captions(js, int(seed), int(chunk), k, rules, count)]
    emb = encoder.encode(caps)[2].numpy().astype(np.float16).reshape(len(specs), count, -1)
    with atomic_open(captions_path(chunk_path), "wb") as f:
        np.savez(f, text=emb, captions=np.array(caps).reshape(len(specs), count))


def build_more(folder: Path, chunks: int, seed: int = 0, count: int = EXTRA_CAPTIONS) -> None:
    """Extra captions for the chunks already built, then more chunks (each with its extra captions)."""
    from ..generation.grammar import training_rules
    from ..generation.text import get_encoder

    rules, encoder = training_rules(), get_encoder()
    for p in sorted(Path(folder).glob(f"chunk-{seed}-*.npz")):
        if not captions_path(p).is_file():
            build_captions(p, encoder, rules, count)
    print(f"extra captions: {len(list(Path(folder).glob('captions-*.npz')))} chunks", flush=True)
    for c in range(chunks):
        path = folder / f"chunk-{seed}-{c:05d}.npz"
        if path.is_file() and captions_path(path).is_file():
            continue
        t0 = time.time()
        if not path.is_file():
            build_chunk(path, seed, c, encoder, rules)
        build_captions(path, encoder, rules, count)
        print(f"chunk {c + 1}/{chunks}: {time.time() - t0:.1f} s", flush=True)


def load_chunks(folder: Path, cache: dict | None = None) -> dict[str, np.ndarray]:
    """Every chunk in ``folder`` concatenated (rows, counts, text, views, captions, specs), with ``alt``
    (N×EXTRA_CAPTIONS×384 extra caption embeddings) and ``alt_n`` (how many a scene has: 0 or all).
    ``cache`` (a dict kept by the caller) holds the files read before, so a reload reads only new files."""
    cache = {} if cache is None else cache

    def read(p: Path) -> dict[str, np.ndarray]:
        if p not in cache:
            with np.load(p) as z:
                cache[p] = {k: z[k] for k in z.files}
        return cache[p]

    paths = sorted(Path(folder).glob("chunk-*.npz"))
    parts = [read(p) for p in paths]
    if not parts:
        return {}
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    alt, alt_n = [], []
    for p, part in zip(paths, parts):
        n, q = len(part["counts"]), captions_path(p)
        if q.is_file():
            alt.append(read(q)["text"])
            alt_n.append(np.full(n, EXTRA_CAPTIONS))
        else:
            alt.append(np.zeros((n, EXTRA_CAPTIONS, out["text"].shape[1]), np.float16))
            alt_n.append(np.zeros(n, np.int64))
    out["alt"], out["alt_n"] = np.concatenate(alt), np.concatenate(alt_n)
    out["chunk_of"] = np.concatenate([np.full(len(part["counts"]), i) for i, part in enumerate(parts)])
    out["chunk_names"] = np.array([p.name for p in paths])
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build the scene/image encoder training data")
    ap.add_argument("--out", default="runs/understand/data")
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", action="store_true", help="extra captions for the chunks built, then more chunks with theirs")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.extra:
        build_more(Path(a.out), a.chunks, a.seed)
    else:
        build(Path(a.out), a.chunks, a.seed)
