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


# test-time augmentation of a query image: the image itself and its four one-pixel shifts (white coming in
# at the edge, as the training's shift augmentation), embeddings averaged. A photo is framed a little
# differently from the index's orbit views; on the validation set (512 scenes, step-5,200 weights) image->scene
# recall@1 went 0.932 -> 0.940 with it (python -m recon3d.understand.validate reports both)
QUERY_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shift_views(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """B×3×S×S views moved by (dy, dx) pixels (|d| <= 1), white coming in at the edge."""
    s = x.shape[-1]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=1.0)
    return padded[:, :, 1 + dy:1 + dy + s, 1 + dx:1 + dx + s]


@torch.no_grad()
def image_query_embeddings(model, x: torch.Tensor, shifts=QUERY_SHIFTS) -> torch.Tensor:
    """Query embeddings of B×3×S×S views: the unit mean over ``shifts`` of the image encoder's embeddings."""
    e = torch.stack([model.image(shift_views(x, dy, dx)) for dy, dx in shifts]).mean(0)
    return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def encode_image(image: torch.Tensor) -> np.ndarray:
    """A query image (H×W×3 float in [0, 1]): centre-cropped to a square and area-resized to the encoder's
    input, embedded with its one-pixel shifts (``QUERY_SHIFTS``)."""
    from ..generation.image import prepare_image

    x = prepare_image(image, IMAGE_SIZE)[None]
    return image_query_embeddings(load_encoders(), x)[0].double().numpy()
