"""antimatter15's ``.splat``: 32 bytes per Gaussian, read by his WebGL viewer and most web splat viewers.

Per splat, little-endian: position 3×f32, linear scale (σ, not log) 3×f32, colour RGBA 4×u8 (RGB the
view-independent SH DC colour, A the opacity), rotation 4×u8 (the unit quaternion w, x, y, z mapped
from [−1, 1] to [0, 255] as ``q·128 + 128``). Splats are sorted by σx·σy·σz·opacity, largest first,
the order the web viewers expect so that a partly downloaded file already shows the big shapes.
The format keeps no higher-order SH, and colour, opacity and rotation are quantised to 8 bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io_utils import atomic_write_bytes
from ..scene import GaussianScene, rgb_to_sh0

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
assert SPLAT_DTYPE.itemsize == 32

# Opacity bytes 0 and 255 have no finite logit: read them a quarter step inside the range, so that
# writing the scene again gives the same bytes.
_ALPHA_EPS = 0.25 / 255.0
# A σ that underflowed to 0 in float32 is read as this (log σ ≈ −69, i.e. invisible).
_MIN_SCALE = 1e-30


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def splat_bytes(scene: GaussianScene) -> bytes:
    """The ``.splat`` encoding of ``scene`` (see the module docstring)."""
    s = scene.detach().to("cpu", torch.float32)
    if not s.is_finite():
        raise ValueError("refusing to encode a scene that holds NaN or infinite parameters")
    scales = s.activated_scales().numpy()
    opacity = s.activated_opacities().numpy()
    records = np.zeros(len(s), dtype=SPLAT_DTYPE)
    records["position"] = s.means.numpy()
    records["scale"] = scales
    records["rgba"][:, :3] = _to_u8(s.base_colors().numpy() * 255.0)
    records["rgba"][:, 3] = _to_u8(opacity * 255.0)
    records["rotation"] = _to_u8(s.normalized_quats().numpy() * 128.0 + 128.0)
    # Sort on the log of the key: the product of three σ can overflow float32.
    key = s.scales.double().sum(dim=1).numpy() + np.log(np.maximum(opacity.astype(np.float64), 1e-300))
    order = np.argsort(-key, kind="stable")
    return records[order].tobytes()


def save_splat(scene: GaussianScene, path: str | Path) -> Path:
    """Write ``scene`` as an antimatter15 ``.splat`` file, atomically; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, splat_bytes(scene))
    return path


def load_splat(path: str | Path) -> GaussianScene:
    """Read a ``.splat`` file into a GaussianScene (SH degree 0)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file")
    size = path.stat().st_size
    if size % SPLAT_DTYPE.itemsize != 0:
        raise InputError(
            path, f"not a .splat file: its size ({size} bytes) is not a multiple of {SPLAT_DTYPE.itemsize} bytes"
        )
    try:
        records = np.fromfile(path, dtype=SPLAT_DTYPE)
    except OSError as exc:
        raise InputError(path, f"cannot read the file ({exc.strerror or exc})") from None
    position = records["position"].astype(np.float32)
    scale = records["scale"].astype(np.float32)
    bad = ~(np.isfinite(position).all(axis=1) & np.isfinite(scale).all(axis=1))
    if bad.any():
        raise InputError(path, f"{int(bad.sum())} of {len(records)} splats have NaN or infinite positions or scales")
    if (scale < 0).any():
        raise InputError(path, f"{int((scale < 0).any(axis=1).sum())} splats have negative scales")
    rgba = records["rgba"].astype(np.float32) / 255.0
    alpha = np.clip(rgba[:, 3], _ALPHA_EPS, 1.0 - _ALPHA_EPS)
    quats = (records["rotation"].astype(np.float32) - 128.0) / 128.0
    return GaussianScene(
        means=torch.from_numpy(position.copy()),
        scales=torch.from_numpy(np.log(np.maximum(scale, _MIN_SCALE))),
        quats=torch.from_numpy(quats),
        opacities=torch.from_numpy(np.log(alpha / (1.0 - alpha))),
        sh0=rgb_to_sh0(torch.from_numpy(rgba[:, :3]))[:, None, :],
    )
