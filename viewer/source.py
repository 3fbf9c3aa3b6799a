"""What the viewer shows: a scene plus, when known, its cameras, their images and sparse points.

``load_target`` accepts a run directory (``scene.ply`` + ``cameras.json`` [+ ``points.ply`` or the
structure-from-motion model ``sfm/sparse/0``, brought into the run's frame by ``orientation.json``]) or any
splat file ``recon3d.formats.load_scene`` reads (PLY, compressed PLY, SPZ, SOG, glTF, .splat) and validates
everything *before* a server starts, so a bad input is a one-line ``InputError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon3d.cameras import Cameras
from recon3d.errors import InputError
from recon3d.scene import GaussianScene


@dataclass
class ViewerData:
    """Everything the viewer draws; cameras/images/points are optional."""

    scene: GaussianScene
    source: str  # shown in the info panel: the file or run the scene came from
    cameras: Cameras | None = None
    image_paths: list[Path | None] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    points: np.ndarray | None = None  # P×3
    point_colors: np.ndarray | None = None  # P×3 in [0,1]
    base_dir: Path | None = None  # where camera-path videos go by default
    antialiased: bool = False  # render in the anti-aliased mode (the PLY's header says the scene needs it)
    nerf: object | None = None  # a NeRF run's field (recon3d.nerf.trainer.NerfModel), drawn on the server
    z_up: bool = False  # the world frame is known to be upright (+Z up): an oriented run, or a generated scene


def load_scene_ply(path: Path) -> GaussianScene:
    """Load a 3DGS .ply and refuse non-finite parameters (a NaN splat would blank the browser's sort)."""
    from recon3d.ply import load_ply

    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory without scene.ply (expected a run directory or a .ply file)")
    scene = load_ply(path)
    if not scene.is_finite():
        raise InputError(path, "the scene holds NaN or infinite parameters")
    return scene


def load_run_dir(run_dir: Path) -> ViewerData:
    """A run directory written by ``recon3d reconstruct`` (``recon3d.load_run`` reads it)."""
    from recon3d.run import load_run

    if not (run_dir / "scene.ply").exists() and (run_dir / "nerf.pt").is_file():
        return _nerf_run_dir(run_dir)
    if not (run_dir / "scene.ply").exists():
        ckpts = run_dir / "checkpoints"
        hint = " (training has not finished yet: only checkpoints/ exists)" if ckpts.is_dir() else ""
        raise InputError(run_dir, f"no scene.ply in this directory{hint}; expected a run directory or a .ply file")
    run = load_run(run_dir)
    if not run.scene.is_finite():
        raise InputError(run_dir / "scene.ply", "the scene holds NaN or infinite parameters")
    orientation = run.orientation
    data = ViewerData(run.scene, str(run_dir), run.cameras, list(run.image_paths), list(run.splits), base_dir=run_dir,
                      z_up=orientation is not None)  # fmt: skip
    data.antialiased = _ply_antialiased(run_dir / "scene.ply")
    data.nerf = run.nerf  # a distilled NeRF run: its splats in the browser, its field on the server
    if run.points is not None:
        data.points = run.points.astype(np.float32)
        data.point_colors = run.point_colors.astype(np.float32) if run.point_colors is not None else None
    else:
        sparse = load_sfm_points(run_dir)
        if sparse is not None:
            pts, cols = sparse
            data.points = orientation.apply_points(pts).astype(np.float32) if orientation is not None else pts
            data.point_colors = cols
    return data


def _nerf_run_dir(run_dir: Path) -> ViewerData:
    """A NeRF run not distilled into splats: no Gaussians, its field rendered on the server."""
    from recon3d.run import load_run

    run = load_run(run_dir)
    return ViewerData(GaussianScene.empty(), str(run_dir), run.cameras, list(run.image_paths), list(run.splits),
                      base_dir=run_dir, z_up=run.orientation is not None, nerf=run.nerf)


def load_sfm_points(run_dir: Path) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The sparse points of the run's structure-from-motion model (``sfm/sparse/0``), in the SfM frame; None
    when the run has none. A broken model is an ``InputError`` naming it."""
    from recon3d.data.colmap_io import find_model_files, read_model

    model_dir = run_dir / "sfm" / "sparse" / "0"
    if not model_dir.is_dir() or find_model_files(model_dir) is None:
        return None
    model = read_model(model_dir)
    if model.points is None or len(model.points.xyz) == 0:
        return None
    pts = np.asarray(model.points.xyz, dtype=np.float32)
    cols = np.asarray(model.points.rgb, dtype=np.float32) / 255.0
    keep = np.isfinite(pts).all(axis=1)
    return pts[keep], cols[keep]


def load_target(target: str | Path) -> ViewerData:
    """Load a run directory or a splat file (or SOG folder) for viewing; bad input is a one-line ``InputError``."""
    path = Path(target)
    if not path.exists():
        raise InputError(path, "no such file or directory (expected a run directory or a .ply file)")
    if path.is_dir() and (path / "meta.json").is_file() and not (path / "scene.ply").exists():
        from recon3d.formats.sog import load_sog  # a SOG folder: meta.json beside its WebP images

        return ViewerData(load_sog(path), str(path), base_dir=path)
    if path.is_dir():
        return load_run_dir(path)
    from recon3d.formats import detect_format, load_scene

    try:
        detect_format(path)  # by content: PLY, compressed PLY, SPZ, SOG, glTF/GLB, .splat
    except InputError:
        raise InputError(
            path, f"unsupported file type {path.suffix or '(none)'!r}; the viewer opens .ply, .spz, .sog, .glb and .splat"
        ) from None
    return ViewerData(load_scene(path), str(path), base_dir=path.parent, antialiased=_ply_antialiased(path))


def _ply_antialiased(path: Path) -> bool:
    from recon3d.formats import file_antialiased  # the PLY's comment or an SPZ header's flag

    return path.is_file() and file_antialiased(path)
