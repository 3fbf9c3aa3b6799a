"""One vector per scene, three parts in the one 384-d MiniLM caption space, fused so one index serves
text, image and combined queries.

The parts (each a unit vector, zeros when missing):

- ``t``, text: the MiniLM embedding of what is written about the scene (prompt, description, names);
- ``s``, scene: the scene encoder's embedding of its Gaussians (``recon3d.understand``: a set transformer
  trained contrastively against the composer's captions);
- ``i``, image: the image encoder's embedding of its thumbnails (the mean over the views), trained with it.

A scene's vector is ``[W·t, W·s, W·i, h]`` with ``W = sqrt(1/3)`` and ``h`` its hubness (how well it
matches the captions of a fixed bank: ``recon3d.understand.fusion``). A query ``q`` (a MiniLM text
embedding or an image-encoder embedding, both in the same space) becomes ``[w_t·q, w_s·q, w_i·q] / W``
followed by ``-β`` (a text query; 0 for an image) so that its inner product with a scene is the *weighted mean
cosine* of ``q`` with the scene's parts, ``Σ w_k cos(q, part_k)`` (weights summing to 1,
``QUERY_WEIGHTS``), less ``β·h`` for a text query (``HUB_BETA``). A text and an image together: the mean
of the two. ``EMBEDDING_VERSION`` names the encoders' weights: an
index built with others is re-embedded on the next ``recon3d index``.
"""

from __future__ import annotations

import numpy as np
import torch

# the fusion maths lives with the encoders (recon3d.understand.fusion), so their validation can use it without
# importing the library; the names stay importable from here
from ..understand.fusion import DIM, PART_DIM, PART_WEIGHT, PARTS, QUERY_WEIGHTS, TEXT_DIM, fuse, query_vector  # noqa: F401


def _version() -> str:
    from ..understand.model import weights_version

    return f"minilm+understand-{weights_version()}-v3"  # v3: the hubness column


EMBEDDING_VERSION = _version()


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def views_embedding(rgb: torch.Tensor) -> np.ndarray:
    """The image part of a scene from its thumbnails (V×S×S×3 in [0, 1]): unit mean of the views' embeddings."""
    from ..understand.encode import encode_views

    return encode_views(rgb)


def scene_embedding(scene) -> np.ndarray:
    """The scene part: the scene encoder's unit embedding of its Gaussians."""
    from ..understand.encode import encode_scene

    return encode_scene(scene)


def query_image_embedding(image: torch.Tensor) -> np.ndarray:
    """The image-encoder embedding of an image query (H×W×3 float in [0, 1]), unit length."""
    from ..understand.encode import encode_image

    return _unit(encode_image(image))


def text_vector(texts: list[tuple[str, float]], encoded: dict[str, np.ndarray]) -> np.ndarray:
    """The text part: the weighted mean of the texts' unit MiniLM embeddings, unit length (zeros without text)."""
    if not texts:
        return np.zeros(TEXT_DIM)
    return _unit(sum(w * encoded[t] for t, w in texts))


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
