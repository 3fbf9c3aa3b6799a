"""Per-image masks (white = keep, black = ignore): matching a mask folder to images, checking, decoding.

Masks come from ``--masks DIR`` (one image per photo, matched by file stem: ``a.jpg`` <- ``a.png``,
``a.jpg``, or COLMAP's ``a.jpg.png``) or from nerfstudio's per-frame ``mask_path``. A mask may be stored
at any resolution with its image's aspect ratio (it is resized with the image); grayscale, RGB or
RGBA (where the alpha channel varies, it is the mask). Values are thresholded at one half, so JPEG-saved
masks (as the statue's) come out clean.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .images import _DECODE_ERRORS, is_image_name, resize_image, to_u8
from .messages import info, list_names

ASPECT_TOLERANCE = 0.01  # a mask is a resized copy of its image's size when the aspect ratios agree this well


def mask_files(mask_dir: Path) -> list[Path]:
    """JPEG/PNG files of a mask folder (sorted); InputError when it is missing or holds none."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise InputError(mask_dir, "mask folder does not exist" if not mask_dir.exists() else "masks must be a folder")
    files = sorted(p for p in mask_dir.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_name(p))
    if not files:
        raise InputError(mask_dir, "no mask images (PNG/JPEG) in this folder")
    return files


def find_masks(mask_dir: Path, images: list[Path]) -> list[Path]:
    """The mask of each image from ``mask_dir``, matched by file stem; InputError naming what does not match."""
    files = mask_files(mask_dir)
    by_key: dict[str, Path] = {}
    for p in files:  # sorted, so a.jpg wins over a.png deterministically when both exist
        by_key.setdefault(p.stem, p)  # "a.png" -> "a"; COLMAP's "a.jpg.png" -> "a.jpg"
    found, missing = [], []
    for img in images:
        m = by_key.get(img.name) or by_key.get(img.stem)
        if m is None:
            missing.append(img.name)
        found.append(m)
    if missing:
        raise InputError(
            mask_dir,
            f"no mask for {len(missing)} of {len(images)} images (masks are matched by file stem, "
            f"'photo.jpg' <- 'photo.png'): {list_names(missing)}",
        )
    unused = len(files) - len({m for m in found})
    if unused:
        info(f"{mask_dir}: {unused} mask file(s) match no image and are ignored")
    return found


def check_mask(mask: Path, width: int, height: int, image: Path | str) -> None:
    """InputError unless ``mask`` is readable and has the aspect ratio of its ``width``×``height`` image."""
    try:
        with Image.open(mask) as im:
            mw, mh = im.size
    except _DECODE_ERRORS as e:
        raise InputError(mask, f"not a readable mask image ({type(e).__name__}: {e})") from None
    if (mw, mh) != (width, height) and abs(mw / mh - width / height) > ASPECT_TOLERANCE * width / height:
        raise InputError(
            mask, f"mask is {mw}×{mh} but its image {Path(image).name} is {width}×{height} (a different aspect ratio)"
        )


def _mask_array(path: Path) -> np.ndarray:
    """The mask file's values as stored (0..255: uint8 for 8-bit files, float32 for 16-bit ones)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    alpha = np.asarray(im.convert("RGBA"))[..., 3]
                    return alpha if alpha.min() < 255 else np.asarray(im.convert("L"))
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    return (np.asarray(im, dtype=np.float32) / 257.0).clip(0, 255)
                return np.asarray(im.convert("L"))
    except _DECODE_ERRORS as e:
        raise InputError(path, f"cannot decode mask, truncated or corrupt ({type(e).__name__}: {e})") from None


def _mask_floats(arr: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    m = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / 255.0)[..., None]
    if (m.shape[1], m.shape[0]) != tuple(size):
        m = resize_image(m, size)
    return (m[..., 0] >= 0.5).float()


def load_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """H×W float32 mask at ``size`` = (width, height): 1 = keep, 0 = ignore."""
    return _mask_floats(_mask_array(path), size)


def load_mask_u8(path: Path, size: tuple[int, int], out: torch.Tensor) -> torch.Tensor:
    """``load_mask`` as uint8 (255 = keep, 0 = ignore) written into ``out`` (H×W bytes), viewed H×W.

    An 8-bit mask at ``size`` is thresholded as bytes (v/255 ≥ 0.5 exactly when v ≥ 128); any other goes
    through ``load_mask``'s floats."""
    w, h = int(size[0]), int(size[1])
    arr = _mask_array(path)
    dst = out.view(h, w)
    if arr.dtype == np.uint8 and arr.shape == (h, w):
        np.multiply(arr >= 128, np.uint8(255), out=dst.numpy())
    else:
        dst.copy_(to_u8(_mask_floats(arr, size)))
    return dst


def save_mask(path: Path, mask: torch.Tensor) -> None:
    """Write an H×W {0,1} mask as an 8-bit PNG (255 = keep), atomically."""
    from ..io_utils import atomic_open

    arr = ((mask >= 0.5).numpy().astype(np.uint8)) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")
