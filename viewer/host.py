"""What a panel of the viewer needs from the app that hosts it (a Protocol, so panels never import the app).

The app (``viewer/app.py``) builds its panels; a panel reading ``ViewerApp`` back for its type hints made an
import cycle (app → panel → app) that only ``TYPE_CHECKING`` hid.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from recon3d.cameras import Cameras
from recon3d.scene import GaussianScene


class PanelHost(Protocol):
    """The viewer app as its panels see it."""

    server: Any  # the viser server
    data: Any  # the ViewerData shown
    _extent: float  # the diagonal of the scene's robust bounds

    def set_scene(self, scene: GaussianScene, *, source: str | None = None) -> None:
        """Show a new scene in place of the current one."""

    def show_other_scene(self, scene: GaussianScene, *, source: str | None = None) -> None:
        """Show a different scene (its own framing; the old scene's cameras and points hidden)."""

    def render_image(self, cameras: Cameras) -> np.ndarray:
        """Render one camera with recon3d in the current output mode; H×W×3 float32 in [0,1]."""
