"""What the viewer shows: a scene plus, when known, its cameras, their images and sparse points.

``load_target`` accepts a run directory (``scene.ply`` + ``cameras.json`` [+ ``points.ply``]) or any 3DGS
``.ply`` and validates everything *before* a server starts, so a bad input is a one-line ``InputError``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recon3d.cameras import Cameras
from recon3d.errors import InputError
from recon3d.scene import GaussianScene

MAX_CAMERAS_JSON_BYTES = 64 << 20  # a cameras.json of a 100k-image run is ~40 MB; refuse anything far larger


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


def _finite_matrix(value, shape: tuple[int, int], path: Path, where: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"{where}: not a numeric matrix") from None
    if m.shape != shape:
        raise InputError(path, f"{where}: expected a {shape[0]}×{shape[1]} matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise InputError(path, f"{where}: holds NaN or infinite values")
    return m


def load_cameras_json(path: Path) -> tuple[Cameras, list[Path | None], list[str]]:
    """Read a run directory's ``cameras.json`` (the run-directory contract) into Cameras, image paths, splits."""
    if path.stat().st_size > MAX_CAMERAS_JSON_BYTES:
        raise InputError(path, f"larger than {MAX_CAMERAS_JSON_BYTES >> 20} MB, which no cameras.json is")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"invalid JSON ({exc})") from None
    if isinstance(entries, dict) and "cameras" in entries:
        entries = entries["cameras"]
    if not isinstance(entries, list) or not entries:
        raise InputError(path, "expected a non-empty list of cameras")
    w2cs, intr, sizes, images, splits = [], [], [], [], []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InputError(path, f"camera {i} is not an object")
        missing = [k for k in ("width", "height", "fx", "fy", "cx", "cy", "world_to_camera") if k not in e]
        if missing:
            raise InputError(path, f"camera {i} lacks {', '.join(missing)}")
        w2cs.append(_finite_matrix(e["world_to_camera"], (4, 4), path, f"camera {i} world_to_camera"))
        try:
            values = [float(e[k]) for k in ("fx", "fy", "cx", "cy")]
            w, h = int(e["width"]), int(e["height"])
        except (TypeError, ValueError):
            raise InputError(path, f"camera {i}: intrinsics and size must be numbers") from None
        if not all(math.isfinite(v) for v in values) or values[0] <= 0 or values[1] <= 0 or w <= 0 or h <= 0:
            raise InputError(path, f"camera {i}: focal lengths and size must be positive and finite")
        intr.append(values)
        sizes.append((w, h))
        image = e.get("image")
        if isinstance(image, str) and image:
            p = Path(image)
            images.append(p if p.is_absolute() else path.parent / p)
        else:
            images.append(None)
        splits.append(str(e.get("split", "train")))
    k = torch.tensor(intr, dtype=torch.float32)
    cams = Cameras(
        torch.from_numpy(np.stack(w2cs)).float(),
        k[:, 0],
        k[:, 1],
        k[:, 2],
        k[:, 3],
        torch.tensor([s[0] for s in sizes]),
        torch.tensor([s[1] for s in sizes]),
    )
    return cams, images, splits


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
    loaded = None
    try:  # the trainer's helper is the one source of truth for the run layout when it exists
        from recon3d.train.rundir import load_run
    except ImportError:
        load_run = None
    if load_run is not None and (run_dir / "cameras.json").exists():
        scene, cameras, image_paths, splits = load_run(run_dir)
        if not scene.is_finite():
            raise InputError(scene_path, "the scene holds NaN or infinite parameters")
        loaded = (scene, cameras, [Path(p) if p is not None else None for p in image_paths], list(splits))
    else:
        scene = load_scene_ply(scene_path)
        cameras, image_paths, splits = None, [], []
        if (run_dir / "cameras.json").exists():
            cameras, image_paths, splits = load_cameras_json(run_dir / "cameras.json")
        loaded = (scene, cameras, image_paths, splits)
    scene, cameras, image_paths, splits = loaded
    data = ViewerData(scene, str(run_dir), cameras, image_paths, splits, base_dir=run_dir)
    if (run_dir / "points.ply").exists():
        data.points, data.point_colors = load_points_ply(run_dir / "points.ply")
    return data


def load_target(target: str | Path) -> ViewerData:
    """Load a run directory or a 3DGS .ply for viewing; raises ``InputError`` with one line on bad input."""
    path = Path(target)
    if not path.exists():
        raise InputError(path, "no such file or directory (expected a run directory or a .ply file)")
    if path.is_dir():
        return load_run_dir(path)
    if path.suffix.lower() != ".ply":
        raise InputError(path, f"unsupported file type {path.suffix or '(none)'!r}; the viewer opens .ply files")
    return ViewerData(load_scene_ply(path), str(path), base_dir=path.parent)
