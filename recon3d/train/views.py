"""The training views: cameras in the training frame and their images and masks, decoded once onto the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cameras import Cameras
from .config import TrainConfig
from .loss import background_color


@dataclass
class TrainViews:
    """The training cameras (training frame, on the device) and their images, decoded once."""

    cameras: dict[int, Cameras]  # one camera per training index
    train_cameras: Cameras  # every camera of the data, training frame, on the device
    images: dict[int, torch.Tensor]  # H×W×3 on the device, composited on ``background``
    alphas: dict[int, torch.Tensor]  # H×W×1 of RGBA images, only when training on random backgrounds
    train_idx: list[int]
    background: torch.Tensor  # the colour RGBA inputs were composited on / RGB data renders over (device)
    random_background: bool  # a random colour per step (the targets are recomposited on it)
    masks: dict[int, torch.Tensor | None]  # H×W×1 (1 = keep) per training index, None where unmasked

    @classmethod
    def load(cls, data, train_cameras: Cameras, train_idx: list[int], cfg: TrainConfig,
             device: torch.device) -> TrainViews:
        """Decode the training images of ``data`` onto ``device``."""
        if data.background is not None:
            background = torch.as_tensor(data.background, dtype=torch.float32).reshape(3)
        else:
            background = background_color(cfg.data.background)
        mode = cfg.data.background
        if mode == "auto":  # RGBA object data: its own colour; photos: a random one (see-through costs loss)
            mode = "white" if data.background is not None else "random"
        random_background = mode == "random"
        images, alphas, masks = {}, {}, {}
        for i in train_idx:
            images[i] = data.load_image(i).to(device)
            masks[i] = load_mask(data, i, train_cameras, device)
            if random_background:
                alpha = data.load_alpha(i)
                if alpha is not None:
                    alphas[i] = alpha.to(device).reshape(*images[i].shape[:2], 1)
        return cls({i: train_cameras[i] for i in train_idx}, train_cameras, images, alphas, list(train_idx),
                   background.to(device), random_background, masks)


def load_mask(data, index: int, cameras: Cameras, device: torch.device) -> torch.Tensor | None:
    """H×W×1 mask of view ``index`` (1 = keep) where the data has one, else None."""
    mask = data.load_mask(index)
    if mask is None:
        return None
    return mask.float().to(device).reshape(int(cameras.height[index]), int(cameras.width[index]), 1)
