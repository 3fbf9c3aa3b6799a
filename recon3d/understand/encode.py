"""The trained encoders applied: a scene, its thumbnails, or a query image -> a unit 384-d vector in the
MiniLM caption space (comparable with ``TextEmbedder``'s caption embeddings)."""

from __future__ import annotations

import numpy as np
import torch

from ..scene import GaussianScene
from .features import scene_features
from .model import IMAGE_SIZE, load_encoders


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


@torch.no_grad()
def encode_scene(scene: GaussianScene) -> np.ndarray:
    """The scene encoder's unit embedding of a scene (float64, 384)."""
    x = torch.from_numpy(scene_features(scene))[None]
    return load_encoders().scene(x)[0].double().numpy()


def _small(views: torch.Tensor) -> torch.Tensor:
    """V×S×S×3 in [0, 1] -> V×3×32×32 (area resize: the encoder's input)."""
    x = views.permute(0, 3, 1, 2).float()
    if x.shape[-1] == IMAGE_SIZE and x.shape[-2] == IMAGE_SIZE:
        return x
    return torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")


@torch.no_grad()
def encode_views(views: torch.Tensor | np.ndarray) -> np.ndarray:
    """The image part of a scene: the mean of its views' unit embeddings (V×S×S×3 in [0, 1]), unit length."""
    views = torch.as_tensor(np.asarray(views, dtype=np.float32))
    emb = load_encoders().image(_small(views)).double().numpy()
    return _unit(emb.mean(0))


@torch.no_grad()
def encode_image(image: torch.Tensor) -> np.ndarray:
    """A query image (H×W×3 float in [0, 1]): centre-cropped to a square and area-resized to the encoder's input."""
    from ..generation.image import prepare_image

    x = prepare_image(image, IMAGE_SIZE)[None]
    return load_encoders().image(x)[0].double().numpy()
