"""recon3d.generate: text-to-scene generation (text encoder, composer, set flow transformer, sampling).

``recon3d.generate(prompt, ...)`` is the product entry point (``recon3d/generate/api.py``). Because this
subpackage has the same name, importing it would shadow that function on the ``recon3d`` package; the
package module is therefore callable and forwards to ``api.generate``, so both spellings work.
"""

from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """Same as ``recon3d.generate.api.generate``."""
        from .api import generate

        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
