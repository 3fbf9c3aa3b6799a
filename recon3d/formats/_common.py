"""Helpers the compressed-format readers and writers share: axis flips, bounded reads, numpy ⇄ scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..scene import GaussianScene, sh_degree_from_rest

# Sign of each higher-order SH basis function (3DGS order, degrees 1–3) under x → −x, y → −y, z → −z:
# the parity of its polynomial in x, y and z. Row i is (px, py, pz) for basis function i + 1.
_SH_PARITY = np.array(
    [
        (0, 1, 0), (0, 0, 1), (1, 0, 0),  # degree 1: y, z, x
        (1, 1, 0), (0, 1, 1), (0, 0, 0), (1, 0, 1), (0, 0, 0),  # degree 2: xy, yz, 3z²−1, xz, x²−y²
        (0, 1, 0), (1, 1, 1), (0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 0, 1), (1, 0, 0),  # degree 3
    ],
    dtype=np.int64,
)  # fmt: skip

# Opacity bytes 0 and 255 (or u16 extremes) have no finite logit: read them just inside the range.
OPACITY_EPS = 0.25 / 255.0


def flip_axes(
    arrays: dict[str, np.ndarray], signs: tuple[int, int, int], in_place: bool = False
) -> dict[str, np.ndarray]:
    """Apply the axis flip ``diag(signs)`` (a proper rotation: two of the three signs are −1) to raw arrays.

    3DGS PLY scenes use OpenCV axes (x right, y down, z forward: "RDF"); SPZ stores y up, z back ("RUB")
    and glTF y up, z front ("LUF"). Each of these is a 180° rotation of the others, so positions flip
    sign on two axes, a quaternion's vector part flips the same two components, and each SH coefficient
    takes the sign of its basis function's parity. ``in_place`` reuses the given arrays (a reader's own).
    """
    s = np.asarray(signs, dtype=np.float32)
    if round(float(np.prod(s))) != 1:
        raise ValueError("flip_axes takes a rotation (an even number of flipped axes)")
    out = dict(arrays)
    means = arrays["means"] if in_place else arrays["means"].copy()
    quats = arrays["quats"] if in_place else arrays["quats"].copy()
    shn = arrays["shN"] if in_place else arrays["shN"].copy()
    for axis in np.flatnonzero(s < 0):
        means[:, axis] *= -1
        quats[:, 1 + axis] *= -1
    k = shn.shape[1]
    if k:
        parity = _SH_PARITY[:k]
        sign = np.prod(np.where(parity == 1, s[None, :], 1.0), axis=1)
        for coefficient in np.flatnonzero(sign < 0):
            shn[:, coefficient] *= -1
    out.update(means=means, quats=quats, shN=shn)
    return out


RDF_TO_RUB = (1, -1, -1)  # OpenCV (3DGS PLY) ⇄ SPZ's y-up, z-back frame
RDF_TO_LUF = (-1, -1, 1)  # OpenCV (3DGS PLY) ⇄ glTF's y-up, z-front frame


def scene_arrays(scene: GaussianScene) -> dict[str, np.ndarray]:
    """The scene's raw parameters as float32 numpy arrays on the CPU; refuses NaN or infinite values."""
    s = scene.detach().to("cpu", torch.float32)
    if not s.is_finite():
        raise ValueError("refusing to encode a scene that holds NaN or infinite parameters")
    return {name: t.numpy() for name, t in s.as_dict().items()}


def arrays_scene(path: Path, arrays: dict[str, np.ndarray], check_finite: bool = True) -> GaussianScene:
    """Build a GaussianScene from decoded arrays, refusing non-finite values with one line naming ``path``."""
    n = arrays["means"].shape[0]
    for name, arr in arrays.items() if check_finite else ():
        if arr.size and not np.isfinite(arr).all():
            bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
            raise InputError(path, f"{int(bad.sum())} of {n} Gaussians decode to NaN or infinite {name}")
    sh_degree_from_rest(arrays["shN"].shape[1])
    return GaussianScene(**{k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()})


def read_file_bytes(path: str | Path, max_bytes: int | None = None) -> bytes:
    """Read a whole file, with one-line errors for a missing or unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file")
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise InputError(path, f"is {size} bytes, more than the {max_bytes} this reader accepts")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read the file ({exc.strerror or exc})") from None


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function in float32."""
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float32)))).astype(np.float32)


def logit(p: np.ndarray, eps: float = OPACITY_EPS) -> np.ndarray:
    """Inverse sigmoid with ``p`` clamped to [eps, 1 − eps] so that 0 and 1 stay finite."""
    p = np.clip(p.astype(np.float32), eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype(np.float32)


def normalized_quats(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z); a zero quaternion becomes the identity."""
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    out = np.where(norm > 0, quats / np.maximum(norm, 1e-30), np.array([1, 0, 0, 0], dtype=np.float32))
    return out.astype(np.float32)


def morton_order(means: np.ndarray) -> np.ndarray:
    """Indices sorting points along a 3-D Morton (Z-order) curve of 10 bits per axis, for locality."""
    n = means.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lo = means.min(axis=0)
    extent = np.maximum(means.max(axis=0) - lo, 1e-12)
    q = np.clip(((means - lo) / extent * 1023.0).astype(np.int64), 0, 1023)

    def spread(v: np.ndarray) -> np.ndarray:
        v = (v | (v << 16)) & 0x030000FF
        v = (v | (v << 8)) & 0x0300F00F
        v = (v | (v << 4)) & 0x030C30C3
        return (v | (v << 2)) & 0x09249249

    code = spread(q[:, 0]) | (spread(q[:, 1]) << 1) | (spread(q[:, 2]) << 2)
    return np.argsort(code, kind="stable")
