"""Rasterizer constants, read from the one place they are written: ``cuda/include/recon3d/constants.h``."""

from __future__ import annotations

import re
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def kernel_source_dir() -> Path:
    """Return the folder holding the kernel sources (``cuda/``), installed or in a checkout."""
    for candidate in (_PACKAGE_DIR / "_cuda", _PACKAGE_DIR.parent / "cuda"):
        if (candidate / "include" / "recon3d" / "constants.h").is_file():
            return candidate
    raise FileNotFoundError(
        f"recon3d kernel sources not found next to {_PACKAGE_DIR} (looked for _cuda/ and ../cuda/)"
    )


def _parse_constants(header: Path) -> dict[str, float]:
    pattern = re.compile(r"constexpr\s+(int|float|double)\s+k(\w+)\s*=\s*([-+0-9.eE]+)f?\s*;")
    values: dict[str, float] = {}
    for kind, name, literal in pattern.findall(header.read_text()):
        values[name] = int(literal) if kind == "int" else float(literal.rstrip("f"))
    return values


_C = _parse_constants(kernel_source_dir() / "include" / "recon3d" / "constants.h")

TILE_SIZE: int = int(_C["TileSize"])
ALPHA_MAX: float = _C["AlphaMax"]
ALPHA_MIN: float = _C["AlphaMin"]
TRANSMITTANCE_MIN: float = _C["TransmittanceMin"]
LOW_PASS: float = _C["LowPass"]
NEAR_PLANE: float = _C["NearPlane"]
FAR_PLANE: float = _C["FarPlane"]
FRUSTUM_CLAMP: float = _C["FrustumClamp"]
SH_C0: float = _C["SH_C0"]
MEDIAN_TRANSMITTANCE: float = _C["MedianTransmittance"]
