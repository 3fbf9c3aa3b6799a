"""Image decoding for every reader: one function turns any JPEG/PNG into float32 H×W×3 in [0, 1].

What it handles: EXIF orientation (only where asked: COLMAP and nerfstudio poses were computed on the
raw pixels, a photo folder is read the way a photo viewer shows it), grayscale and palette images,
16-bit PNGs (scaled by 1/65535), RGBA (composited onto a stated background), resizing to the camera's
resolution with antialiasing, and every decoding failure turned into an ``InputError`` naming the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Orientations 5-8 rotate by 90°, so the displayed width and height swap.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageInfo:
    """What a header read tells about an image: displayed size and whether it carries alpha."""

    width: int
    height: int
    has_alpha: bool
    mode: str


def is_image_name(path: Path) -> bool:
    """True when the file name has a JPEG/PNG suffix (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info)


def probe_image(path: str | Path, *, exif: bool = True) -> ImageInfo:
    """Read an image header only (cheap): size after EXIF rotation, alpha, mode."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if exif:
                    orientation = im.getexif().get(0x0112, 1)
                    if orientation in _SWAPPING_ORIENTATIONS:
                        w, h = h, w
                return ImageInfo(int(w), int(h), _has_alpha(im), im.mode)
    except _DECODE_ERRORS as e:
        raise InputError(path, f"not a readable image ({type(e).__name__}: {e})") from None


def _to_float_array(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB float32 H×W×3 in [0,1] and alpha H×W (or None)."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale PNGs decode as I;16 (or I): full range is 0..65535.
        gray = np.asarray(im, dtype=np.float32) / 65535.0
        gray = np.clip(gray, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2), None
    if mode == "F":
        gray = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2), None
    if _has_alpha(im):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        return rgba[..., :3], rgba[..., 3]
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, None


def decode_image(
    path: str | Path,
    *,
    exif: bool = True,
    size: tuple[int, int] | None = None,
    background: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode ``path`` to (H×W×3 float32 in [0,1], H×W alpha or None), resized to ``size`` = (width, height).

    RGBA images are composited onto ``background`` (3,) when it is given; the alpha is returned either way.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if size is not None and im.format == "JPEG":
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when far larger than needed (huge photos);
                    # draft works on the stored orientation, so swap the request for rotated photos.
                    request = (max(1, int(size[0])), max(1, int(size[1])))
                    if exif and im.getexif().get(0x0112, 1) in _SWAPPING_ORIENTATIONS:
                        request = request[::-1]
                    im.draft(None, request)
                im.load()
                if exif:
                    im = ImageOps.exif_transpose(im)
                rgb, alpha = _to_float_array(im)
    except _DECODE_ERRORS as e:
        raise InputError(path, f"cannot decode image, truncated or corrupt ({type(e).__name__}: {e})") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(path, f"image has an unusable shape {rgb.shape}")
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb))
    alpha_t = None if alpha is None else torch.from_numpy(np.ascontiguousarray(alpha))
    if size is not None and (rgb_t.shape[1], rgb_t.shape[0]) != tuple(size):
        rgb_t = resize_image(rgb_t, size)
        if alpha_t is not None:
            alpha_t = resize_image(alpha_t[..., None], size)[..., 0]
    if alpha_t is not None and background is not None:
        rgb_t = composite(rgb_t, alpha_t, background)
    return rgb_t.contiguous(), alpha_t


def composite(rgb: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """H×W×3 ``rgb`` with H×W ``alpha`` over the colour ``background`` (3,): the one compositing formula, so
    an image kept as colour + alpha (the training image store) gives the very floats ``decode_image`` gives."""
    bg = background.to(rgb.dtype).view(1, 1, 3)
    return rgb * alpha[..., None] + bg * (1.0 - alpha[..., None])


@dataclass
class DecodedView:
    """One view as decoded, before compositing: colour, alpha (RGBA inputs) and mask, all at the camera's size."""

    rgb: torch.Tensor  # H×W×3 float32 in [0, 1], not composited
    alpha: torch.Tensor | None  # H×W float32, None for RGB images
    mask: torch.Tensor | None  # H×W float32 (1 = keep), None where the view has none
    background: torch.Tensor | None  # the colour ``alpha`` composites onto (None: RGB data)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize H×W×C float to ``size`` = (width, height), antialiased when shrinking."""
    w, h = int(size[0]), int(size[1])
    x = image.permute(2, 0, 1)[None]
    ih, iw = image.shape[0], image.shape[1]
    if iw % w == 0 and ih % h == 0 and iw // w == ih // h:
        # Whole-number downscale (--downscale N): exact N×N box average.
        out = F.avg_pool2d(x, kernel_size=ih // h)
    else:
        shrinking = w < iw or h < ih
        out = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrinking)
    return out[0].permute(1, 2, 0).clamp_(0.0, 1.0).contiguous()


def parse_background(background: str | tuple | list | torch.Tensor) -> torch.Tensor:
    """A background colour: 'white', 'black', 'gray', or 3 floats in [0,1] (or 3 ints in 0..255)."""
    names = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5)}
    if isinstance(background, str):
        key = background.strip().lower()
        if key in names:
            return torch.tensor(names[key], dtype=torch.float32)
        parts = key.replace(",", " ").split()
        if len(parts) == 3:
            try:
                return parse_background(tuple(float(p) for p in parts))
            except ValueError:
                pass
        raise InputError(None, f"unknown background {background!r}: use white, black, gray or three numbers R G B")
    try:
        t = torch.as_tensor(background, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise InputError(None, f"unknown background {background!r}: use white, black, gray or R G B") from None
    if t.numel() != 3 or not torch.isfinite(t).all():
        raise InputError(None, f"background must be three finite numbers, got {background!r}")
    if t.max() > 1.0:
        t = t / 255.0
    if t.min() < 0.0 or t.max() > 1.0:
        raise InputError(None, f"background values must lie in [0, 1] (or 0..255), got {background!r}")
    return t
