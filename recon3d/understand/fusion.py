"""How a scene's three unit parts (text, scene encoder, image encoder; all in the 384-d MiniLM caption space)
fuse into one vector, and how a query becomes one: the inner product of the two is the weighted mean cosine
of the query with the scene's parts (``recon3d.library.embed`` explains the layout). Here, below the library,
so the encoders' validation (``validate.py``) scores exactly as the index searches.
"""

from __future__ import annotations

import math

import numpy as np

PART_DIM = 384
TEXT_DIM = PART_DIM
PARTS = ("text", "scene", "image")
DIM = len(PARTS) * PART_DIM
PART_WEIGHT = math.sqrt(1 / len(PARTS))
# how much each part of a scene counts for a query of each kind (text, scene, image), summing to 1: a
# text query reads all three; an image query leans on the image part (a view against views). Chosen on 300
# composed scenes of a validation seed (not the benchmark's), without text: text->scene recall@1 0.73 with
# equal scene/image weights, 0.74 at 4:3; image->scene 0.88 at 3:5, 0.91 at 1:7, 0.92 with the image alone
QUERY_WEIGHTS = {"text": (0.3, 0.4, 0.3), "image": (0.2, 0.1, 0.7)}


def fuse(text: np.ndarray | None, scene: np.ndarray | None = None, image: np.ndarray | None = None) -> np.ndarray:
    """A scene's vector from its unit parts (a missing part is zeros)."""
    parts = [np.zeros(PART_DIM) if p is None else p for p in (text, scene, image)]
    return (PART_WEIGHT * np.concatenate(parts)).astype(np.float32)


def query_vector(text: np.ndarray | None, image: np.ndarray | None) -> np.ndarray:
    """A query's vector: inner product with a scene's vector = the weighted mean cosine over the scene's parts
    (the mean of the text's and the image's when both are given)."""
    given = [(q, QUERY_WEIGHTS[k]) for k, q in (("text", text), ("image", image)) if q is not None]
    if not given:
        raise ValueError("a query needs text, an image or both")
    out = np.zeros(DIM)
    for q, weights in given:
        out += np.concatenate([w * q for w in weights]) / (PART_WEIGHT * len(given))
    return out.astype(np.float32)
