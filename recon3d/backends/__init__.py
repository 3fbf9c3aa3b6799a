"""Render backends: ``reference`` (dense PyTorch oracle), ``cpu`` and ``cuda`` (our kernels), ``gsplat``.

Each is an object (``RenderBackend`` in ``base.py``) in the ``REGISTRY`` below; ``recon3d.render`` looks
backends up by name. Importing a backend module builds nothing and imports no optional package: the
kernels build, and gsplat is imported, on first render.
"""

from __future__ import annotations

from .base import RenderBackend, RenderOptions, RenderOutput
from .gsplat_backend import GSPLAT
from .kernels import CPU, CUDA
from .reference import REFERENCE

REGISTRY: dict[str, RenderBackend] = {}


def register_backend(backend: RenderBackend) -> None:
    """Add ``backend`` under its name (a later registration replaces an earlier one of the same name)."""
    REGISTRY[backend.name] = backend


for _backend in (REFERENCE, CPU, CUDA, GSPLAT):
    register_backend(_backend)

__all__ = ["REGISTRY", "RenderBackend", "RenderOptions", "RenderOutput", "register_backend"]
