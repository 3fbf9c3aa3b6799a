"""What every render backend shares: the output type, the depth modes and the backend interface.

Backends import from here (never from ``recon3d.render``), and ``recon3d.render`` looks them up in the
registry of ``recon3d.backends``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from ..cameras import Cameras
    from ..scene import GaussianScene

DEPTH_MODES = ("expected", "median")
MAX_FEATURE_CHANNELS = 64


def check_depth_mode(depth: str) -> None:
    """Raise a one-line ValueError unless ``depth`` is one of DEPTH_MODES (every backend and caller uses this)."""
    if depth not in DEPTH_MODES:
        raise ValueError(f"unknown depth mode {depth!r}; choose one of {', '.join(DEPTH_MODES)}")


def expected_depth(accumulated_depth: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Normalise Σ wᵢzᵢ by the accumulated alpha (0 where nothing was drawn)."""
    return torch.where(alpha > 0, accumulated_depth / alpha.clamp_min(1e-10), torch.zeros_like(alpha))


@dataclass
class RenderOutput:
    """What ``render`` returns for C cameras of size H×W and N Gaussians."""

    rgb: torch.Tensor  # C×H×W×3
    alpha: torch.Tensor  # C×H×W×1, 1 − final transmittance
    depth: torch.Tensor  # C×H×W×1, view-space z: expected (0 where alpha = 0) or median (see ``render``)
    radii: torch.Tensor  # C×N int32 screen-space radius in pixels, 0 where culled
    means2d: torch.Tensor  # C×N×2 projected centres in pixels; its .grad drives densification
    features: torch.Tensor | None = None  # C×H×W×K composited feature channels, when ``render(features=…)``
    n_contrib: torch.Tensor | None = None  # C×H×W int32 Gaussians composited per pixel (kernels, when asked)

    @property
    def visible(self) -> torch.Tensor:
        """C×N bool: Gaussians that reached the image in each camera."""
        return self.radii > 0


@dataclass(frozen=True)
class RenderOptions:
    """Per-call options every backend receives (validated by ``recon3d.render``)."""

    depth: str = "expected"
    antialiased: bool = False
    features: torch.Tensor | None = None  # N×K, K ≤ MAX_FEATURE_CHANNELS, the scene's dtype and device


class RenderBackend(Protocol):
    """A rasterizer: ``recon3d.render`` validates the arguments, then calls ``render`` of the named backend."""

    name: str

    def available_for(self, device: torch.device) -> bool:
        """Whether ``auto`` may pick this backend for scenes on ``device``."""
        ...

    def render(
        self, scene: GaussianScene, cameras: Cameras, background: torch.Tensor, sh_degree: int, options: RenderOptions
    ) -> RenderOutput:
        """Render ``scene`` from ``cameras`` (C×3 ``background``, SH up to ``sh_degree``)."""
        ...
