"""recon3d: photos to 3D Gaussian-splat scenes, a browser viewer, and text-to-scene generation."""

from __future__ import annotations

from .cameras import Cameras
from .errors import InputError, Recon3dError
from .ply import load_ply, save_ply
from .render import RenderOutput, render
from .scene import GaussianScene

__version__ = "0.1.0"

__all__ = [
    "Cameras",
    "GaussianScene",
    "InputError",
    "Recon3dError",
    "RenderOutput",
    "load_ply",
    "render",
    "save_ply",
    "__version__",
]


def __getattr__(name: str):
    # Heavier entry points load on first use so `import recon3d` stays fast.
    if name in ("load_run", "Run"):
        from . import run

        return getattr(run, name)
    if name == "reconstruct":
        from .api import reconstruct

        return reconstruct
    if name == "generate":
        from .generation.api import generate

        return generate
    if name in ("load_scene", "save_scene"):
        from . import formats

        return getattr(formats, name)
    if name in ("search", "index_library"):
        from . import library

        return getattr(library, name)
    if name == "describe":
        from .understand.describe import describe

        return describe
    if name == "export":
        from .exporters import export

        return export
    raise AttributeError(f"module 'recon3d' has no attribute {name!r}")
