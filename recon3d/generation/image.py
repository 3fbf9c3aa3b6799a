"""Image prompts: reading and checking them, and the small image encoder the generator trains with the rest.

An image prompt is a path (PNG/JPEG/… that Pillow reads) or an array (H×W, H×W×3 or H×W×4; uint8, or
float in [0, 1]). Bad inputs fail with one line naming them: a missing, empty, unreadable or huge file, an
array of the wrong shape, empty, or not finite. RGBA composites onto white (the composer's background).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError, Recon3dError

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_SIZE = 64  # what the encoder sees


class ImagePromptError(Recon3dError, ValueError):
    """An image prompt that is not an image, is empty, or is too large."""


def load_image_prompt(image) -> torch.Tensor:
    """An image prompt as float32 H×W×3 in [0, 1] (RGBA over white); one-line errors for bad input."""
    if isinstance(image, (str, Path)):
        return _load_file(Path(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ImagePromptError(f"the image prompt must be a file path or an array, got {type(image).__name__}")
    return _from_array(image, "the image array")


def _load_file(path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(path, "image not found")
    size = path.stat().st_size
    if size == 0:
        raise InputError(path, "the image file is empty")
    if size > MAX_IMAGE_BYTES:
        raise InputError(path, f"the image file is too large ({size / 2**20:.0f} MiB; at most {MAX_IMAGE_BYTES // 2**20} MiB)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise InputError(path, f"the image is too large ({w}×{h} pixels; at most {MAX_IMAGE_PIXELS:,})")
            if w == 0 or h == 0:
                raise InputError(path, "the image is empty (0 pixels)")
            im.load()
            arr = np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P", "PA") else im.convert("RGB"))
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"not a readable image ({type(exc).__name__}: {exc})") from exc
    return _from_array(arr, str(path))


def _from_array(arr: np.ndarray, name: str) -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[..., None].repeat(3, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImagePromptError(f"{name}: expected H×W, H×W×3 or H×W×4, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImagePromptError(f"{name}: the image is empty (shape {tuple(arr.shape)})")
    if arr.shape[0] * arr.shape[1] > MAX_IMAGE_PIXELS:
        raise ImagePromptError(f"{name}: the image is too large ({arr.shape[1]}×{arr.shape[0]} pixels; at most {MAX_IMAGE_PIXELS:,})")
    if arr.shape[-1] == 1:
        arr = arr.repeat(3, -1)
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise ImagePromptError(f"{name}: the image has NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise ImagePromptError(f"{name}: float images must lie in [0, 1] (found {x.min():.3g} to {x.max():.3g})")
    else:
        raise ImagePromptError(f"{name}: unsupported pixel type {arr.dtype}")
    if x.shape[-1] == 4:
        a = x[..., 3:]
        x = x[..., :3] * a + (1 - a)
    return torch.from_numpy(np.ascontiguousarray(x))


def prepare_image(image: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """H×W×3 in [0, 1] -> 3×size×size: centre-crop to a square, then area-resize."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = image[top : top + s, left : left + s].permute(2, 0, 1)[None].float()
    return torch.nn.functional.interpolate(x, size=(size, size), mode="area" if s >= size else "bilinear")[0]


class ImageEncoder(nn.Module):
    """A small CNN: 3×64×64 -> an 8×8 grid of ``width``-d tokens (with a learned position per cell).

    Trained with the generator (the composer renders the training views); its tokens join the text
    tokens that the object slots cross-attend to.
    """

    def __init__(self, width: int, size: int = IMAGE_SIZE):
        super().__init__()
        c = max(16, width // 4)
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GELU(),
            nn.Conv2d(2 * c, width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(width, width, 3, 1, 1),
        )
        cells = (size // 8) ** 2
        self.pos = nn.Parameter(torch.randn(cells, width) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] -> B×(H/8·W/8)×width tokens."""
        x = self.net(images * 2 - 1)
        return x.flatten(2).transpose(1, 2) + self.pos
