"""Image decoding for every reader: one function turns any JPEG/PNG into float32 H×W×3 in [0, 1].

What it handles: EXIF orientation (only where asked: COLMAP and nerfstudio poses were computed on the
raw pixels, a photo folder is read the way a photo viewer shows it), grayscale and palette images,
16-bit PNGs (scaled by 1/65535), RGBA (composited onto a stated background), resizing to the camera's
resolution with antialiasing, and every decoding failure turned into an ``InputError`` naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
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


def _load(im: Image.Image, *, exif: bool, size: tuple[int, int] | None) -> Image.Image:
    """``im`` (just opened) decoded, at reduced scale where a JPEG is far larger than ``size``, EXIF-rotated."""
    if size is not None and im.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when far larger than needed (huge photos);
        # draft works on the stored orientation, so swap the request for rotated photos.
        request = (max(1, int(size[0])), max(1, int(size[1])))
        if exif and im.getexif().get(0x0112, 1) in _SWAPPING_ORIENTATIONS:
            request = request[::-1]
        im.draft(None, request)
    im.load()
    if exif:  # in place: an upright image is not copied (the pixels are the same either way)
        ImageOps.exif_transpose(im, in_place=True)
    return im


def _finish_floats(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, size: tuple[int, int] | None,
                   background: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoded float arrays checked, resized to ``size`` and composited (``decode_image``'s tail)."""
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
                rgb, alpha = _to_float_array(_load(im, exif=exif, size=size))
    except _DECODE_ERRORS as e:
        raise InputError(path, f"cannot decode image, truncated or corrupt ({type(e).__name__}: {e})") from None
    return _finish_floats(path, rgb, alpha, size, background)


def to_u8(x: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] as uint8: x·255 rounded (half to even), clamped (the training image store's rounding)."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).contiguous()


# Modes whose 8-bit channels ``_to_float_array`` reads through convert("RGB") / convert("RGBA") and divides by
# 255: the bytes of the same conversion, before that division, are exactly what ``to_u8`` makes of its floats
# (v/255·255 rounds back to v in float32 for every byte v). 16-bit and float modes ("I;16", "I", "F") are not
# among them: they take the float path.
_EIGHT_BIT_MODES = {"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA"}


def _pack_into(im: Image.Image, rawmode: str, out: torch.Tensor) -> None:
    """The pixels of ``im`` as ``rawmode`` bytes (Pillow's raw packer, as ``tobytes`` uses) written into the flat
    uint8 ``out``: in chunks of rows, without ``tobytes``' one large temporary (7.9 ms -> 3.1 ms per 1600×1200
    RGB view, the destination's page faults included)."""
    dst = memoryview(out.numpy())
    encoder = getattr(Image, "_getencoder", None)
    if encoder is None:  # a Pillow without it: the public way, one temporary more
        data = im.tobytes("raw", rawmode)
        dst[: len(data)] = data
        return
    e = encoder(im.mode, "raw", rawmode)
    try:
        e.setimage(im.im, (0, 0, *im.size))
        chunk = max(1, len(dst) // max(1, im.size[1])) * 64  # 64 rows: the chunk stays in the cache
        at = 0
        while True:
            _, errcode, data = e.encode(chunk)
            dst[at:at + len(data)] = data
            at += len(data)
            if errcode:
                break
    finally:
        e.cleanup()
    if errcode < 0 or at != len(dst):
        raise ValueError(f"raw packer error {errcode} ({at} of {len(dst)} bytes)")


def decode_image_u8(
    path: str | Path,
    alloc: Callable[[int], torch.Tensor],
    *,
    exif: bool = True,
    size: tuple[int, int] | None = None,
    extra_planes: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Decode ``path`` to uint8, the very bytes ``to_u8`` makes of ``decode_image``'s floats (not composited).

    Returns (H×W×3 colour, H×W alpha or None, ``extra_planes``×H×W bytes left for the caller), all views of
    one flat block ``alloc(nbytes)`` (e.g. a mapping of the caller's). An 8-bit image at ``size`` is packed
    straight into the block (no float round trip, no further copy); a resized image or a 16-bit / float one
    goes through ``decode_image``'s own floats and ``to_u8``, so the bytes agree in every case.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file does not exist")
    floats = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = _load(im, exif=exif, size=size)
                w, h = im.size
                if (im.mode not in _EIGHT_BIT_MODES or w == 0 or h == 0
                        or (size is not None and (w, h) != (int(size[0]), int(size[1])))):
                    floats = _to_float_array(im)
                else:
                    has_alpha = _has_alpha(im)
                    if has_alpha and im.mode != "RGBA":
                        im = im.convert("RGBA")
                    elif not has_alpha and im.mode != "RGB":
                        im = im.convert("RGB")
                    block = alloc(h * w * (3 + has_alpha + extra_planes))
                    _pack_into(im, "RGB", block[: h * w * 3])
                    if has_alpha:
                        _pack_into(im, "A", block[h * w * 3: h * w * 4])
    except _DECODE_ERRORS as e:
        raise InputError(path, f"cannot decode image, truncated or corrupt ({type(e).__name__}: {e})") from None
    if floats is not None:
        rgb_f, alpha_f = _finish_floats(path, *floats, size, None)
        h, w = rgb_f.shape[0], rgb_f.shape[1]
        has_alpha = alpha_f is not None
        block = alloc(h * w * (3 + has_alpha + extra_planes))
        block[: h * w * 3].view(h, w, 3).copy_(to_u8(rgb_f))
        if has_alpha:
            block[h * w * 3: h * w * 4].view(h, w).copy_(to_u8(alpha_f))
    rgb = block[: h * w * 3].view(h, w, 3)
    alpha = block[h * w * 3: h * w * 4].view(h, w) if has_alpha else None
    return rgb, alpha, block[h * w * (3 + has_alpha):]


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
