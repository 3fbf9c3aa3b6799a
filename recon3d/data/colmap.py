"""COLMAP project reader: ``images/`` + a sparse model in ``sparse/0/``, ``sparse/`` (or a given folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .colmap_io import find_model_files, read_model
from .scene_data import Frame, list_names, warn


def find_model_dir(root: Path) -> Path | None:
    """The sparse model folder of a COLMAP project: sparse/0, sparse, or the root itself."""
    for cand in (root / "sparse" / "0", root / "sparse", root):
        if cand.is_dir() and find_model_files(cand) is not None:
            return cand
    sparse = root / "sparse"
    if sparse.is_dir():
        models = sorted(p for p in sparse.iterdir() if p.is_dir() and find_model_files(p) is not None)
        if models:
            return models[0]
    return None


def colmap_frames(
    root: Path, *, images_dir: Path | None = None, model_dir: Path | None = None, ext: str | None = None
) -> tuple[list[Frame], np.ndarray | None, np.ndarray | None]:
    """Frames (sorted by image name) and sparse points with colours in [0,1] of a COLMAP project."""
    if model_dir is None:
        model_dir = find_model_dir(root)
        if model_dir is None:
            sparse = root / "sparse"
            if sparse.is_dir():
                raise InputError(
                    sparse, "empty sparse/ folder: no cameras.bin/.txt and images.bin/.txt in it or in sparse/0"
                )
            raise InputError(root, "not a COLMAP project: no sparse/0 or sparse/ with cameras.bin/.txt")
    model = read_model(model_dir, ext)
    if images_dir is None:
        images_dir = root / "images"
    if not images_dir.is_dir():
        raise InputError(images_dir, "the COLMAP project has no images/ folder")
    frames: list[Frame] = []
    missing: list[str] = []
    for img in sorted(model.images.values(), key=lambda im: im.name):
        path = images_dir / img.name
        if not path.is_file():
            missing.append(img.name)
            continue
        frames.append(Frame(path, model.cameras[img.camera_id], img.world_to_camera()))
    if not frames:
        raise InputError(images_dir, f"none of the {len(model.images)} images of the model exist in this folder")
    if missing:
        warn(
            f"{images_dir}: {len(missing)} of {len(model.images)} registered images are missing and skipped: {list_names(missing)}"
        )
    pts = cols = None
    if model.points is not None and len(model.points.xyz):
        pts = model.points.xyz
        cols = model.points.rgb.astype(np.float32) / 255.0
    return frames, pts, cols
