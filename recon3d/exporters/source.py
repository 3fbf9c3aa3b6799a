"""What an export reads: a run directory (``scene.ply`` + ``cameras.json``), a ``.ply`` or a ``.splat``.

A run directory is read with the trainer's ``recon3d.train.rundir.load_run``; a folder holding only a
``scene.ply`` (a generated scene, say) exports without cameras, and the mesh export then places its
own views around the scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..cameras import Cameras
from ..errors import InputError
from ..ply import load_ply
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


def _locate_images(run_dir: Path, image_paths: list[Path]) -> list[Path]:
    """Find images that cameras.json names relative to the working directory of the training run.

    ``load_run`` resolves relative names against the run directory; a run started as ``recon3d
    reconstruct data/x -o runs/y`` records ``data/x/...`` relative to where it was started, which is
    usually the current directory again.
    """
    try:
        records = json.loads((run_dir / "cameras.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return image_paths
    if not isinstance(records, list) or len(records) != len(image_paths):
        return image_paths
    located = []
    for found, record in zip(image_paths, records):
        raw = record.get("image") if isinstance(record, dict) else None
        if not found.is_file() and isinstance(raw, str) and not Path(raw).is_absolute() and Path(raw).is_file():
            found = Path(raw).resolve()
        located.append(found)
    return located


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
        scene_path = path / "scene.ply"
        if not scene_path.is_file():
            raise InputError(path, "not a run directory: it holds no scene.ply")
        if not (path / "cameras.json").is_file():
            return ExportSource(scene=load_ply(scene_path), root=path, label=str(scene_path))
        from ..train.rundir import load_run

        scene, cameras, image_paths, splits = load_run(path)
        image_paths = _locate_images(path, [Path(p) for p in image_paths])
        return ExportSource(
            scene, cameras, [Path(p) for p in image_paths], list(splits), root=path, label=str(scene_path)
        )
    if not path.exists():
        raise InputError(path, "no such file or directory (expected a run directory or a splat file)")
    from ..formats import load_scene

    return ExportSource(scene=load_scene(path), label=str(path))
