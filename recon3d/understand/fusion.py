"""How a scene's three unit parts (text, scene encoder, image encoder; all in the 384-d MiniLM caption space)
fuse into one vector, and how a query becomes one: the inner product of the two is the weighted mean cosine
of the query with the scene's parts, less a text query's hubness correction (below; ``recon3d.library.embed``
explains the layout). Here, below the library, so the encoders' validation (``validate.py``) scores exactly
as the index searches.

Hubness correction (CSLS, Lample et al. 2018, with a fixed bank of queries): in a large library a few scenes
sit close to many captions and win text queries meant for their neighbours. Each scene's vector carries one
more number, its *hubness*: the mean text-query score it gets from its ``HUB_K`` best-matching captions of
a fixed bank (``QUERY_BANK_FILE``: 1,024 training captions of composed scenes, MiniLM-embedded; no
validation or benchmark wording). A text query scores ``Σ w_k cos(q, part_k) - HUB_BETA · hubness``.
Chosen on the 2,048-scene validation set (``validate.py``, step-9,450 checkpoint): text->scene recall@1 in
our validation-only wording 0.712 -> 0.746 (@5 0.944 -> 0.952), in the training wording 0.760 -> 0.764. Image
queries are scored without it (no gain there, with a bank of 3,200 training views: 0.825 -> 0.824 at k=50,
β=0.25). A bank of single objects
(describe's caption bank) made text recall worse (0.68): the bank must look like the queries.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

PART_DIM = 384
TEXT_DIM = PART_DIM
PARTS = ("text", "scene", "image")
DIM = len(PARTS) * PART_DIM + 1  # the three parts, then the hubness
PART_WEIGHT = math.sqrt(1 / len(PARTS))
# how much each part of a scene counts for a query of each kind (text, scene, image), summing to 1: a
# text query reads all three; an image query leans on the image part (a view against views). Chosen on 300
# composed scenes of a validation seed (not the benchmark's), without text: text->scene recall@1 0.73 with
# equal scene/image weights, 0.74 at 4:3; image->scene 0.88 at 3:5, 0.91 at 1:7, 0.92 with the image alone
QUERY_WEIGHTS = {"text": (0.3, 0.4, 0.3), "image": (0.2, 0.1, 0.7)}
HUB_K = 50
HUB_BETA = 0.5
QUERY_BANK_FILE = Path(__file__).resolve().parent / "weights" / "query_bank.npz"
QUERY_BANK_SIZE = 1024
_BANK: dict[str, np.ndarray] = {}


def _text_query_rows(texts: np.ndarray) -> np.ndarray:
    """Text query vectors (N×DIM without the hubness column: N×3·PART_DIM) of unit text embeddings."""
    return np.concatenate([w * texts for w in QUERY_WEIGHTS["text"]], axis=1) / PART_WEIGHT


def query_bank() -> np.ndarray:
    """The bank's text query vectors (N×3·PART_DIM), loaded once."""
    if "rows" not in _BANK:
        if not QUERY_BANK_FILE.is_file():
            from ..errors import InputError

            raise InputError(QUERY_BANK_FILE, "the query bank is missing; build it with `python -m "
                             "recon3d.understand.fusion --build-bank`")
        with np.load(QUERY_BANK_FILE) as z:
            emb = z["emb"].astype(np.float64)
        _BANK["rows"] = _text_query_rows(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    return _BANK["rows"]


def hubness(parts: np.ndarray) -> np.ndarray:
    """Hubness of fused parts (N×3·PART_DIM, or one row): the mean of their HUB_K best text-query scores
    over the bank."""
    x = np.atleast_2d(parts).astype(np.float64)
    bank = query_bank()
    k = min(HUB_K, len(bank))
    out = np.empty(len(x))
    for a in range(0, len(x), 4096):  # bank × 4096 scores at a time (a library of 100k scenes fits in memory)
        scores = bank @ x[a:a + 4096].T
        out[a:a + 4096] = np.partition(scores, len(bank) - k, axis=0)[len(bank) - k:].mean(0)
    return out if np.ndim(parts) == 2 else out[0]


def fuse(text: np.ndarray | None, scene: np.ndarray | None = None, image: np.ndarray | None = None) -> np.ndarray:
    """A scene's vector from its unit parts (a missing part is zeros), its hubness last."""
    parts = [np.zeros(PART_DIM) if p is None else p for p in (text, scene, image)]
    v = PART_WEIGHT * np.concatenate(parts)
    return np.append(v, hubness(v)).astype(np.float32)


def fuse_many(text: np.ndarray, scene: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``fuse`` of N scenes at once (N×PART_DIM each, zero rows for missing parts)."""
    v = PART_WEIGHT * np.concatenate([text, scene, image], axis=1)
    return np.concatenate([v, hubness(v)[:, None]], axis=1).astype(np.float32)


def query_vector(text: np.ndarray | None, image: np.ndarray | None) -> np.ndarray:
    """A query's vector: inner product with a scene's vector = the weighted mean cosine over the scene's parts
    (the mean of the text's and the image's when both are given), less HUB_BETA times the scene's hubness
    for the text's share."""
    given = [(k, q, QUERY_WEIGHTS[k]) for k, q in (("text", text), ("image", image)) if q is not None]
    if not given:
        raise ValueError("a query needs text, an image or both")
    out = np.zeros(DIM)
    for kind, q, weights in given:
        out[:-1] += np.concatenate([w * q for w in weights]) / (PART_WEIGHT * len(given))
        if kind == "text":
            out[-1] -= HUB_BETA / len(given)
    return out.astype(np.float32)


def build_query_bank(data: Path = Path("runs/understand/data"), size: int = QUERY_BANK_SIZE,
                     path: Path = QUERY_BANK_FILE) -> None:
    """The bank: the first ``size`` captions (their MiniLM embeddings, float16) of the first training chunks."""
    from ..io_utils import atomic_open

    emb = []
    for p in sorted(Path(data).glob("chunk-*.npz")):
        with np.load(p) as z:
            emb.append(z["text"])
        if sum(len(e) for e in emb) >= size:
            break
    emb = np.concatenate(emb)[:size].astype(np.float16)
    if len(emb) < size:
        raise ValueError(f"only {len(emb)} captions under {data}")
    with atomic_open(path, "wb") as f:
        np.savez(f, emb=emb)
    _BANK.clear()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="the query bank of the hubness correction")
    ap.add_argument("--build-bank", action="store_true")
    ap.add_argument("--data", default="runs/understand/data")
    a = ap.parse_args()
    if a.build_bank:
        build_query_bank(Path(a.data))
        print(f"wrote {QUERY_BANK_FILE}")
