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


# ---------------------------------------------------------------- more wordings and views (third session)
# Our own paraphrases of the object phrase and the sentence around it, beyond the grammar's training
# templates. The grammar's held-out wordings (``HELDOUT_OBJECT_TEMPLATES``, ``HELDOUT_WRAPPERS``: the
# benchmark's) are never used; two of ours (``VAL_ONLY_*``) are kept out of training too and measure, on
# the validation set, how well the encoders reach a wording they never saw.
PARA_TEMPLATES = {
    "with_colour": "{size} {noun} with the colour {colour}",
    "tinted": "{size} {noun} tinted {colour}",
    "comma": "{size} {noun}, {colour}",
    "coloured_after": "{size} {noun} coloured {colour}",
    "hued": "{size} {colour} hued {noun}",
    "of_colour": "{size} {noun} of {colour} colour",  # validation only
}
PARA_WRAPPERS = {
    "generate": "generate {}",
    "create": "create {}",
    "view": "a view of {}",
    "here": "here is {}",
    "like": "i would like {}",
    "background": "{} on a white background",
    "look": "look at {}",
    "need": "i need {}",
    "illustration": "an illustration of {}",  # validation only
}
VAL_ONLY_TEMPLATES = ("of_colour",)
VAL_ONLY_WRAPPERS = ("illustration",)
MORE_CAPTIONS = 4
MORE_VIEWS = 3


def _para_phrase(thing, template: str, rng: np.random.Generator, definite: bool) -> str:
    """A noun phrase in one of the grammar's training templates or ours (determiner and arrangement as the
    grammar words them)."""
    from ..generation.grammar import COUNT_WORDS, RELATION_WORDS, object_phrase, plural

    if template not in PARA_TEMPLATES or thing.colour is None:
        return object_phrase(thing, template if template not in PARA_TEMPLATES else "plain", rng, definite)
    noun = thing.noun if thing.count == 1 else plural(thing.noun)
    core = " ".join(PARA_TEMPLATES[template].format(size=thing.size or "", noun=noun, colour=thing.colour).split())
    if definite:
        det = "the" if thing.count == 1 else f"the {COUNT_WORDS[thing.count][0]}"
    elif thing.count == 1:
        det = ("an" if core[0] in "aeiou" else "a") if rng.random() < 0.75 else ("one" if rng.random() < 0.5 else "a single")
    else:
        words = COUNT_WORDS[thing.count]
        det = words[rng.integers(len(words))]
    phrase = f"{det} {core}"
    if thing.arrangement:
        words = RELATION_WORDS[thing.arrangement]
        phrase = f"{phrase} {words[rng.integers(len(words))]}"
    return phrase


def para_caption(spec, rng: np.random.Generator, validation: bool = False) -> str:
    """A caption of a scene graph in a wording drawn from the grammar's training templates and wrappers and
    ours (``validation``: only our validation-only ones)."""
    from ..generation.grammar import (
        HELDOUT_OBJECT_TEMPLATES,
        HELDOUT_WRAPPERS,
        OBJECT_TEMPLATES,
        RELATION_WORDS,
        WRAPPERS,
    )

    if validation:
        templates, wrappers = list(VAL_ONLY_TEMPLATES), [PARA_WRAPPERS[w] for w in VAL_ONLY_WRAPPERS]
    else:
        templates = [t for t in OBJECT_TEMPLATES if t not in HELDOUT_OBJECT_TEMPLATES]
        templates += [t for t in PARA_TEMPLATES if t not in VAL_ONLY_TEMPLATES]
        wrappers = [w for k, w in WRAPPERS.items() if k not in HELDOUT_WRAPPERS]
        wrappers += [w for k, w in PARA_WRAPPERS.items() if k not in VAL_ONLY_WRAPPERS]
    template = templates[rng.integers(len(templates))]
    wrapper = wrappers[rng.integers(len(wrappers))]
    named: list[int] = []

    def phrase(i: int) -> str:
        definite = i in named
        if not definite:
            named.append(i)
        return _para_phrase(spec.groups[i], template, rng, definite)

    clauses = []
    if not spec.relations:
        parts = [phrase(i) for i in range(len(spec.groups))]
        clauses.append(parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
    for r in spec.relations:
        words = RELATION_WORDS[r.relation]
        rel = words[rng.integers(len(words))]
        subj = phrase(r.subject)
        if r.relation == "between" and len(r.anchors) > 1:
            obj = f"{phrase(r.anchors[0])} and {phrase(r.anchors[1])}"
        else:
            obj = phrase(r.anchors[0])
        clauses.append(f"{subj} {rel} {obj}")
    text = " and ".join(clauses) if len(clauses) < 3 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return " ".join(wrapper.format(text).split())


def more_path(chunk_path: Path) -> Path:
    """Where a chunk's paraphrase captions live (beside it)."""
    return chunk_path.with_name(chunk_path.name.replace("chunk-", "more-", 1))


def views_path(chunk_path: Path) -> Path:
    """Where a chunk's extra views live (beside it)."""
    return chunk_path.with_name(chunk_path.name.replace("chunk-", "views-", 1))


def build_paraphrases(chunk_path: Path, encoder, captions: int = MORE_CAPTIONS) -> None:
    """``captions`` paraphrase captions (with shape synonyms) of every scene of a chunk, from its scene
    graphs, and their MiniLM embeddings; written atomically."""
    import copy

    from ..generation.grammar import SHAPE_WORDS, Scene
    from ..io_utils import atomic_open

    _, seed, chunk = chunk_path.stem.split("-")
    specs = np.load(chunk_path)["specs"]
    caps = []
    for k, js in enumerate(specs):
        base = Scene.from_json(json.loads(str(js)))
        for j in range(captions):
            rng = np.random.default_rng([int(seed), int(chunk), k, 3000 + j])
            spec = copy.deepcopy(base)
            for g in spec.groups:
                words = SHAPE_WORDS[g.shape]
                word = g.shape if rng.random() < 0.5 else words[rng.integers(len(words))]
                g.word = None if word == g.shape else word
            caps.append(para_caption(spec, rng))
    emb = encoder.encode(caps)[2].numpy().astype(np.float16).reshape(len(specs), captions, -1)
    with atomic_open(more_path(chunk_path), "wb") as f:
        np.savez(f, text=emb, captions=np.array(caps).reshape(len(specs), captions))


def build_views(chunk_path: Path, rules, views: int = MORE_VIEWS) -> None:
    """``views`` more views from random viewpoints of every scene of a chunk (each scene composed again
    from its seeds, exactly as ``build_chunk`` composed it); written atomically."""
    from ..io_utils import atomic_open

    _, seed, chunk = chunk_path.stem.split("-")
    n = len(np.load(chunk_path)["counts"])
    imgs = []
    for k in range(n):
        rng = np.random.default_rng([int(seed), int(chunk), k])
        _, scene, _ = compose_example(rng, rules)
        r2 = np.random.default_rng([int(seed), int(chunk), k, 4000])
        imgs.append(np.stack([render_random_view(scene, r2) for _ in range(views)]))
    with atomic_open(views_path(chunk_path), "wb") as f:
        np.savez(f, views=np.stack(imgs))


def build_all_more(folder: Path, seed: int = 0) -> None:
    """For every chunk built: the paraphrases (which draw from the training templates too) and the extra
    views (the scenes composed again); done files are skipped, so a rerun resumes."""
    from ..generation.grammar import training_rules
    from ..generation.text import get_encoder

    rules, encoder = training_rules(), get_encoder()
    paths = sorted(Path(folder).glob(f"chunk-{seed}-*.npz"))
    # the chunks with one caption per scene first: the wordings spread over more scenes sooner
    paths = [p for p in paths if not captions_path(p).is_file()] + [p for p in paths if captions_path(p).is_file()]
    for n, p in enumerate(paths):
        t0 = time.time()
        if not more_path(p).is_file():
            build_paraphrases(p, encoder)
        if not views_path(p).is_file():
            build_views(p, rules)
        print(f"{n + 1}/{len(paths)} {p.name}: {time.time() - t0:.1f} s", flush=True)


def load_chunks(folder: Path, cache: dict | None = None) -> dict[str, np.ndarray]:
    """Every chunk in ``folder`` concatenated (rows, counts, text, views, captions, specs), with ``alt``
    (N×EXTRA_CAPTIONS×384 extra caption embeddings) and ``alt_n`` (how many a scene has: 0 or all), and
    ``more_text`` / ``more_n`` (paraphrases: 0 or all) and ``more_views`` / ``views_n`` (extra views).
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
    more_text, more_n, more_views, views_n = [], [], [], []
    for p, part in zip(paths, parts):
        n, q, w = len(part["counts"]), more_path(p), views_path(p)
        has_q, has_w = q.is_file(), w.is_file()
        more_text.append(read(q)["text"] if has_q else np.zeros((n, MORE_CAPTIONS, out["text"].shape[1]), np.float16))
        more_n.append(np.full(n, MORE_CAPTIONS if has_q else 0))
        more_views.append(read(w)["views"] if has_w else np.zeros((n, MORE_VIEWS) + out["views"].shape[1:], np.uint8))
        views_n.append(np.full(n, MORE_VIEWS if has_w else 0))
    out["more_text"], out["more_n"] = np.concatenate(more_text), np.concatenate(more_n)
    out["more_views"], out["views_n"] = np.concatenate(more_views), np.concatenate(views_n)
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
    ap.add_argument("--more", action="store_true", help="extra captions, paraphrases and views for every chunk built")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.more:
        build_all_more(Path(a.out), a.seed)
    elif a.extra:
        build_more(Path(a.out), a.chunks, a.seed)
    else:
        build(Path(a.out), a.chunks, a.seed)
