"""What an export reads: a run directory (``scene.ply`` + ``cameras.json``), a ``.ply`` or a ``.splat``.

A run directory is read with ``recon3d.load_run``; a folder holding only a
``scene.ply`` (a generated scene, say) exports without cameras, and the mesh export then places its
own views around the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cameras import Cameras
from ..errors import InputError
from ..scene import GaussianScene


@dataclass
class ExportSource:
    """A scene to export, with the cameras it was trained from when the source has them."""

    scene: GaussianScene
    cameras: Cameras | None = None
    image_paths: list[Path] | None = None
    splits: list[str] | None = None
    root: Path | None = None  # the run directory, when the source is one
    label: str = "scene"


def load_source(source: str | Path | GaussianScene | ExportSource) -> ExportSource:
    """Open what an export reads: a GaussianScene, a run directory, a SOG folder or any splat file (by content)."""
    if isinstance(source, ExportSource):
        return source
    if isinstance(source, GaussianScene):
        return ExportSource(scene=source)
    path = Path(source)
    if path.is_dir() and (path / "meta.json").is_file() and not (path / "scene.ply").is_file():
        from ..formats.sog import load_sog

        return ExportSource(scene=load_sog(path), label=str(path))
    if path.is_dir():
        if not (path / "scene.ply").is_file():
            if (path / "nerf.pt").is_file():
                raise InputError(path, "is a NeRF run (nerf.pt) without a distilled scene.ply; distilling a field into "
                                 "splats is not implemented yet, so it exports to no splat format or mesh")
            raise InputError(path, "not a run directory: it holds no scene.ply")
        from ..run import load_run

        run = load_run(path)
        if run.cameras is None:
            return ExportSource(scene=run.scene, root=path, label=str(path / "scene.ply"))
        return ExportSource(run.scene, run.cameras, list(run.image_paths), list(run.splits), root=path,
                            label=str(path / "scene.ply"))
    if not path.exists():
        raise InputError(path, "no such file or directory (expected a run directory or a splat file)")
    from ..formats import load_scene

    return ExportSource(scene=load_scene(path), label=str(path))
