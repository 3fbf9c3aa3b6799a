"""The training views: cameras in the training frame, and their images, masks and alphas served from an
``ImageStore`` as float32 on the device: resident floats when the training views fit the image cache as
float32 (small captures: decoded once at the start, as before), else uint8 bounded in RAM (or a decoded copy
on disk), decoded lazily and made float32 when a step uses them.

``prefetch(indices)`` prepares the next steps' views on a background thread (read or decode, uint8 ->
float32, to the device) while the current step renders; a view asked for before its prefetch finished is
waited for, one not prefetched is prepared on the spot. Either way the floats are the same.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cameras import Cameras
from ..data.image_store import GIB, Floats, ImageStore
from .config import TrainConfig
from .loss import background_color


@dataclass
class TrainViews:
    """The training cameras (training frame, on the device) and their images, served lazily from ``store``."""

    cameras: dict[int, Cameras]  # one camera per training index
    train_cameras: Cameras  # every camera of the data, training frame, on the device
    store: ImageStore  # every view's pixels as uint8 (training and held-out views)
    train_idx: list[int]
    background: torch.Tensor  # the colour RGBA inputs were composited on / RGB data renders over (device)
    random_background: bool  # a random colour per step (the targets are recomposited on it)
    device: torch.device
    _pending: dict[int, concurrent.futures.Future] = field(default_factory=dict, repr=False)
    _pool: concurrent.futures.ThreadPoolExecutor | None = field(default=None, repr=False)

    @classmethod
    def load(cls, data, train_cameras: Cameras, train_idx: list[int], cfg: TrainConfig,
             device: torch.device, cache_dir: Path | None = None) -> TrainViews:
        """The views of ``data``: the store is sized (and a capture that cannot be held refused) here; the
        training views are decoded now in float mode, else on first use (prefetched)."""
        if data.background is not None:
            background = torch.as_tensor(data.background, dtype=torch.float32).reshape(3)
        else:
            background = background_color(cfg.data.background)
        mode = cfg.data.background
        if mode == "auto":  # RGBA object data: its own colour; photos: a random one (see-through costs loss)
            mode = "white" if data.background is not None else "random"
        budget = None if cfg.data.image_cache_gb is None else int(cfg.data.image_cache_gb * GIB)
        store = ImageStore(data, list(range(len(data.image_paths))), budget_bytes=budget, mode=cfg.data.image_cache,
                           cache_dir=cache_dir, train_indices=list(train_idx))
        views = cls({i: train_cameras[i] for i in train_idx}, train_cameras, store, list(train_idx),
                    background.to(device), mode == "random", device)
        if store.mode == "float":  # as every run did before the store: decoded now, so no step waits for one
            for i in train_idx:
                store.floats(i, device)
        return views

    # ------------------------------------------------------------------ access
    def view(self, index: int) -> Floats:
        """View ``index`` as float32 on the device (prefetched or prepared now)."""
        future = self._pending.pop(index, None)
        if future is not None:
            return future.result()
        return self.store.floats(index, self.device)

    def prefetch(self, indices: list[int]) -> None:
        """Start preparing ``indices`` on the background thread (at most a few steps ahead)."""
        if not self.wants_prefetch:
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recon3d-prefetch")
        for i in indices:
            if i not in self._pending:
                self._pending[i] = self._pool.submit(self.store.floats, i, self.device)

    @property
    def wants_prefetch(self) -> bool:
        """False when the training views are resident as float32 (nothing to prepare ahead)."""
        return self.store.mode != "float"

    def close(self) -> None:
        """Stop the prefetch thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    @property
    def images(self) -> Mapping[int, torch.Tensor]:
        """Training images by index (H×W×3 float32, composited on ``background``), decoded when read."""
        return _Lazy(self, "image")

    @property
    def masks(self) -> Mapping[int, torch.Tensor | None]:
        """Training masks by index (H×W×1, 1 = keep; None where unmasked), decoded when read."""
        return _Lazy(self, "mask")


class _Lazy(Mapping):
    """A read-only mapping over the training indices whose values are one field of ``TrainViews.view``."""

    def __init__(self, views: TrainViews, what: str) -> None:
        self.views, self.what, self.keys_ = views, what, set(views.train_idx)

    def __getitem__(self, index: int):
        if index not in self.keys_:
            raise KeyError(index)
        return getattr(self.views.view(index), self.what)

    def __iter__(self) -> Iterator[int]:
        return iter(self.views.train_idx)

    def __len__(self) -> int:
        return len(self.views.train_idx)

    def __contains__(self, index: object) -> bool:
        return index in self.keys_


def load_mask(data, index: int, cameras: Cameras, device: torch.device) -> torch.Tensor | None:
    """H×W×1 mask of view ``index`` (1 = keep) where the data has one, else None."""
    mask = data.load_mask(index)
    if mask is None:
        return None
    return mask.float().to(device).reshape(int(cameras.height[index]), int(cameras.width[index]), 1)
