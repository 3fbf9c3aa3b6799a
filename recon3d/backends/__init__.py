"""Render backends: ``reference`` (dense PyTorch oracle), ``cpu`` and ``cuda`` (our kernels), ``gsplat``."""
