"""One vector per scene: the text part (MiniLM) and the image part (thumbnails), fused so one index serves
text, image and combined queries.

Fusion. A scene's vector is ``[W·t, W·i]`` with ``t`` the unit MiniLM embedding of its texts and ``i`` the
unit image descriptor of its thumbnails, ``W = sqrt(1/2)``, so the vector has unit length. A query is
``[a·q_t, b·q_i]`` with the parts it has, scaled so that the inner product is the *mean cosine* over the
query's parts: a text query ranks by text cosine, an image query by image cosine, both by their mean.
A scene without text (no text part) or without thumbnails keeps zeros there.

The image part is a **stand-in**: the generator has no image encoder into the MiniLM space yet (its image
encoder makes tokens for its own slots, in its own width). Until one exists, thumbnails are described by
a fixed, untrained descriptor: a soft 6×6×6 RGB histogram of the foreground (square-rooted: Hellinger)
and the foreground silhouette, cropped to its box, at 8×8. It finds a scene from a photo of it by its
colours and rough outline; it knows no concepts. ``EMBEDDING_VERSION`` names it: an index built with
another version is re-embedded on the next ``recon3d index``. When a learned image (or scene) encoder
lands, it replaces ``image_descriptor`` (and joins the text part in the MiniLM space).
"""

from __future__ import annotations

import math

import numpy as np
import torch

TEXT_DIM = 384
HIST_BINS = 6
SIL_SIZE = 8
IMAGE_DIM = HIST_BINS**3 + SIL_SIZE**2
DIM = TEXT_DIM + IMAGE_DIM
PART_WEIGHT = math.sqrt(0.5)
SILHOUETTE_WEIGHT = 0.5  # of the image part: colour tells scenes apart better than an outline at 8×8
EMBEDDING_VERSION = f"minilm-text+rgbhist{HIST_BINS}-sil{SIL_SIZE}-v1"


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def colour_histogram(rgb: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Soft (trilinear) ``HIST_BINS``³ histogram of colours (P×3 in [0, 1]) with a weight per pixel, sum 1."""
    b = HIST_BINS
    x = np.clip(rgb, 0, 1) * (b - 1)
    lo = np.floor(x).astype(np.int64).clip(0, b - 2)
    f = x - lo
    hist = np.zeros(b**3)
    for dr in (0, 1):
        wr = f[:, 0] if dr else 1 - f[:, 0]
        for dg in (0, 1):
            wg = f[:, 1] if dg else 1 - f[:, 1]
            for db in (0, 1):
                wb = f[:, 2] if db else 1 - f[:, 2]
                idx = ((lo[:, 0] + dr) * b + lo[:, 1] + dg) * b + lo[:, 2] + db
                np.add.at(hist, idx, weight * wr * wg * wb)
    s = hist.sum()
    return hist / s if s > 0 else hist


def silhouette(mask: np.ndarray) -> np.ndarray:
    """The foreground (H×W weights in [0, 1]) cropped to its bounding box and area-resized to 8×8."""
    on = mask > 0.5
    if not on.any():
        return np.zeros(SIL_SIZE * SIL_SIZE)
    rows, cols = np.nonzero(on.any(1))[0], np.nonzero(on.any(0))[0]
    crop = torch.from_numpy(np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], dtype=np.float32))
    small = torch.nn.functional.adaptive_avg_pool2d(crop[None, None], SIL_SIZE)[0, 0]
    return small.flatten().numpy().astype(np.float64)


def image_descriptor(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The stand-in image part of one view: RGB H×W×3 in [0, 1], foreground weights H×W -> unit ``IMAGE_DIM``."""
    w = mask.reshape(-1).astype(np.float64)
    hist = np.sqrt(colour_histogram(rgb.reshape(-1, 3), w))
    sil = _unit(silhouette(mask))
    return _unit(np.concatenate([_unit(hist), SILHOUETTE_WEIGHT * sil]))


def views_descriptor(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The image part of a scene: the mean descriptor of its thumbnails (V×S×S×3, V×S×S), unit length."""
    return _unit(np.mean([image_descriptor(rgb[v], alpha[v]) for v in range(len(rgb))], axis=0))


def foreground_of_photo(rgb: np.ndarray) -> np.ndarray:
    """Foreground weights of a query image: pixels away from the border's median colour (its background)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(rgb - bg, axis=-1)
    return np.clip((dist - 0.04) / 0.08, 0, 1)  # a soft edge: JPEG noise on the background is not foreground


def query_image_descriptor(image: torch.Tensor, size: int = 128) -> np.ndarray:
    """The image part of an image query (H×W×3 float in [0, 1]): centre-cropped, resized to the thumbnails' size."""
    from ..generation.image import prepare_image

    x = prepare_image(image, size).permute(1, 2, 0).numpy().astype(np.float64)
    return image_descriptor(x, foreground_of_photo(x))


def text_vector(texts: list[tuple[str, float]], encoded: dict[str, np.ndarray]) -> np.ndarray:
    """The text part: the weighted mean of the texts' unit MiniLM embeddings, unit length (zeros without text)."""
    if not texts:
        return np.zeros(TEXT_DIM)
    return _unit(sum(w * encoded[t] for t, w in texts))


def fuse(text: np.ndarray | None, image: np.ndarray | None) -> np.ndarray:
    """A scene's vector from its unit text and image parts (a missing part is zeros)."""
    t = np.zeros(TEXT_DIM) if text is None else text
    i = np.zeros(IMAGE_DIM) if image is None else image
    return np.concatenate([PART_WEIGHT * t, PART_WEIGHT * i]).astype(np.float32)


def query_vector(text: np.ndarray | None, image: np.ndarray | None) -> np.ndarray:
    """A query's vector: inner product with a scene's vector = the mean cosine over the query's parts."""
    parts = (text is not None) + (image is not None)
    if parts == 0:
        raise ValueError("a query needs text, an image or both")
    a = 1.0 / (PART_WEIGHT * parts)
    t = np.zeros(TEXT_DIM) if text is None else a * text
    i = np.zeros(IMAGE_DIM) if image is None else a * image
    return np.concatenate([t, i]).astype(np.float32)


class TextEmbedder:
    """The project's MiniLM text encoder (``recon3d.generation.text``), returning unit numpy vectors."""

    def __init__(self, encoder=None):
        if encoder is None:
            from ..generation.text import get_encoder

            encoder = get_encoder()
        self.encoder = encoder

    def embed(self, texts: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Unit embeddings of distinct texts, by text."""
        unique = list(dict.fromkeys(texts))
        out: dict[str, np.ndarray] = {}
        for s in range(0, len(unique), batch_size):
            chunk = unique[s : s + batch_size]
            pooled = self.encoder.encode(chunk)[2].numpy().astype(np.float64)
            for t, v in zip(chunk, pooled):
                out[t] = _unit(v)
        return out
