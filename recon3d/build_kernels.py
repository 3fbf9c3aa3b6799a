"""``python -m recon3d.build_kernels``: build (or find cached) the CPU kernels and the training ops now.

A module of its own because ``python -m recon3d.native`` would run ``native`` a second time: the package's
own imports (render → backends) load it before runpy executes it, and Python warns about exactly that.
"""

from __future__ import annotations

from .native import main

if __name__ == "__main__":
    raise SystemExit(main())
