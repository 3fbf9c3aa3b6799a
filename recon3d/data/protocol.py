"""``SceneDataProtocol``: what training, the viewer and export read from a data set, whoever made it.

``SceneData`` (every reader's result) and ``recon3d.train.synthetic.SyntheticSceneData`` (images held in
memory) both implement it, so consumers call its members directly instead of probing with ``getattr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..cameras import Cameras
from .images import DecodedView


@runtime_checkable
class SceneDataProtocol(Protocol):
    """Cameras (OpenCV, the input's world frame), image files, train/test split and optional sparse points."""

    cameras: Cameras
    image_paths: list[Path]
    split: list[str]  # "train" or "test" per camera
    points: torch.Tensor | None  # N×3 structure-from-motion points, if the data has them
    point_colors: torch.Tensor | None  # N×3 in [0, 1]
    root: Path
    background: torch.Tensor | None  # the colour RGBA images were composited on (None: RGB data)

    def train_indices(self) -> list[int]:
        """Indices of the training cameras."""
        ...

    def test_indices(self) -> list[int]:
        """Indices of the held-out cameras."""
        ...

    def load_image(self, index: int) -> torch.Tensor:
        """H×W×3 float32 in [0, 1] at the camera's size."""
        ...

    def load_alpha(self, index: int) -> torch.Tensor | None:
        """H×W alpha of an RGBA image, None for RGB."""
        ...

    def load_mask(self, index: int) -> torch.Tensor | None:
        """H×W mask (1 = keep, 0 = ignore) at the camera's size, None when the view has none."""
        ...

    def decode_view(self, index: int) -> DecodedView:
        """Colour (not composited), alpha and mask of view ``index``, decoded afresh and not kept."""
        ...
