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


def is_nerf_run(path: str | Path) -> bool:
    """Whether ``path`` is a NeRF run directory (``nerf.pt``), distilled or not."""
    return Path(path).is_dir() and (Path(path) / "nerf.pt").is_file()


def load_source(source: str | Path | GaussianScene | ExportSource, *, distill=None,
                redistill: bool = False) -> ExportSource:
    """Open what an export reads: a GaussianScene, a run directory, a SOG folder or any splat file (by content).

    A NeRF run without ``scene.ply`` (or with ``redistill``) is distilled into one first
    (``recon3d.nerf.distill``; ``distill``: its ``DistillOptions``)."""
    if isinstance(source, ExportSource):
        return source
    if isinstance(source, GaussianScene):
        return ExportSource(scene=source)
    path = Path(source)
    if path.is_dir() and (path / "meta.json").is_file() and not (path / "scene.ply").is_file():
        from ..formats.sog import load_sog

        return ExportSource(scene=load_sog(path), label=str(path))
    if path.is_dir():
        if is_nerf_run(path) and (redistill or not (path / "scene.ply").is_file()):
            from .nerf_distill import distill_run

            print(f"distilling the NeRF run {path} into Gaussian splats (written to {path / 'scene.ply'})", flush=True)
            distill_run(path, distill)
        if not (path / "scene.ply").is_file():
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
