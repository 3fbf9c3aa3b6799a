"""``python -m recon3d.build_kernels``: build (or find cached) the CPU kernels and the training ops now.

A module of its own, above the two builds (``native`` stays below them, with no import of either), and because ``python -m recon3d.native`` would run ``native`` a second time: the package's
own imports (render → backends) load it before runpy executes it, and Python warns about exactly that.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import BuildError


def main() -> int:
    """``python -m recon3d.build_kernels``: build (or find cached) the CPU kernels and the training ops now."""
    start = time.monotonic()
    try:
        from .backends.kernels import load_kernels

        kernels = load_kernels()
    except BuildError as exc:
        print(f"recon3d: {exc}", file=sys.stderr)
        return 2
    from .train import cpu_ops

    ops = "ready" if cpu_ops.fused_available() else "unavailable (the PyTorch formulas run instead)"
    print(f"recon3d kernels ready in {Path(kernels.__file__).parent} ({time.monotonic() - start:.0f} s); "
          f"training ops {ops}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
