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
    z_up: bool = False  # the world frame is known to be upright (+Z up): an oriented run, or a generated scene
    antialiased: bool = False  # render in the anti-aliased mode (the PLY's header says the scene needs it)


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


def load_points_ply(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Sparse points (and colours in [0,1] when stored) from a point-cloud .ply."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"]
        pts = np.stack([np.asarray(v[k], dtype=np.float32) for k in ("x", "y", "z")], axis=1)
        names = v.data.dtype.names or ()
        colors = None
        if all(c in names for c in ("red", "green", "blue")):
            raw = np.stack([np.asarray(v[c], dtype=np.float32) for c in ("red", "green", "blue")], axis=1)
            colors = raw / 255.0 if raw.max(initial=0) > 1.0 else raw
    except Exception as exc:  # plyfile raises many types on a broken file
        raise InputError(path, f"not a readable point cloud ({type(exc).__name__}: {exc})") from None
    keep = np.isfinite(pts).all(axis=1)
    return pts[keep], (colors[keep] if colors is not None else None)


def load_run_dir(run_dir: Path) -> ViewerData:
    """A run directory written by ``recon3d reconstruct``."""
    scene_path = run_dir / "scene.ply"
    if not scene_path.exists():
        ckpts = run_dir / "checkpoints"
        hint = " (training has not finished yet: only checkpoints/ exists)" if ckpts.is_dir() else ""
        raise InputError(run_dir, f"no scene.ply in this directory{hint}; expected a run directory or a .ply file")
    if (run_dir / "cameras.json").exists():
        # the trainer's reader is the one source of truth for the run layout (and validates cameras.json)
        from recon3d.train.rundir import load_run

        scene, cameras, image_paths, splits = load_run(run_dir)
        if not scene.is_finite():
            raise InputError(scene_path, "the scene holds NaN or infinite parameters")
        image_paths, splits = [Path(p) if p is not None else None for p in image_paths], list(splits)
    else:  # a folder with just a scene.ply
        scene, cameras, image_paths, splits = load_scene_ply(scene_path), None, [], []
    from recon3d.data.orient import ORIENTATION_FILE, load_orientation

    orientation = load_orientation(run_dir / ORIENTATION_FILE)
    data = ViewerData(scene, str(run_dir), cameras, image_paths, splits, base_dir=run_dir,
                      z_up=orientation is not None)  # fmt: skip
    data.antialiased = _ply_antialiased(scene_path)
    if (run_dir / "points.ply").exists():
        data.points, data.point_colors = load_points_ply(run_dir / "points.ply")
    else:
        sparse = load_sfm_points(run_dir)
        if sparse is not None:
            pts, cols = sparse
            data.points = orientation.apply_points(pts).astype(np.float32) if orientation is not None else pts
            data.point_colors = cols
    return data


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
    from recon3d.ply import ply_antialiased

    return path.is_file() and path.suffix.lower() == ".ply" and ply_antialiased(path)
