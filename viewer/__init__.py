"""The recon3d viewer (viser): ``recon3d view TARGET`` and the live training view.

``view(target_or_scene, host=None, port=8080)`` serves a run directory, a .ply or a GaussianScene until
Ctrl-C; ``ViewerApp`` is the server object; ``recon3d.viewer.training.TrainingViewer`` implements the
trainer's TrainingMonitor protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recon3d.scene import GaussianScene

    from .app import ViewerApp

__all__ = ["ViewerApp", "open_viewer", "view"]


def open_viewer(target: str | Path | GaussianScene, *, host: str | None = None, port: int = 8080,
                backend: str = "auto", max_resolution: int = 1024) -> ViewerApp:
    """Validate ``target`` (run dir, .ply or GaussianScene), start the server and return it (non-blocking)."""
    from recon3d.scene import GaussianScene

    from .app import ViewerApp
    from .source import ViewerData, load_target

    if isinstance(target, GaussianScene):
        data = ViewerData(target.detach().to("cpu"), "in-memory scene")
    else:
        data = load_target(target)
    return ViewerApp(data, host=host, port=port, backend=backend, max_resolution=max_resolution)


def view(target: str | Path | GaussianScene, *, host: str | None = None, port: int = 8080,
         backend: str = "auto") -> None:
    """Serve ``target`` in the browser viewer until Ctrl-C (prints the URL, opens nothing)."""
    app = open_viewer(target, host=host, port=port, backend=backend)
    print(f"recon3d viewer: {app.url}  (Ctrl-C to stop)", flush=True)
    app.serve_forever()


def __getattr__(name: str):
    if name == "ViewerApp":
        from .app import ViewerApp

        return ViewerApp
    raise AttributeError(f"module 'recon3d.viewer' has no attribute {name!r}")
