"""Write cameras (a run's, or a structure-from-motion result's) as a nerfstudio data folder.

Output: ``transforms.json`` in nerfstudio's own layout (``camera_model``, intrinsics ``fl_x fl_y cx cy
w h`` shared at the top or per frame when cameras differ, ``frames[{file_path, transform_matrix}]``
with camera-to-world in OpenGL axes (x right, y up, z back), ``applied_transform``, ``ply_file_path``,
and ``train_filenames``/``val_filenames``/``test_filenames`` from the split) plus ``sparse_pc.ply``,
a coloured point cloud in the same world frame, which splatfacto uses to initialise.

The world frame is kept as it is: ``applied_transform`` is the identity, so reading the file back
(nerfstudio, or recon3d's own loader) gives exactly the cameras that were written. Both conventions
put pixel centres at +0.5, so ``cx``/``cy`` carry over unchanged. Cameras are pinhole (images are
undistorted before training), written as ``OPENCV`` with zero distortion.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from ..cameras import OPENGL_TO_OPENCV, Cameras
from ..errors import InputError
from ..io_utils import atomic_write_text
from .points import gaussian_centers, write_point_cloud

IDENTITY_3X4 = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


def opencv_world_to_camera_to_opengl_camera_to_world(world_to_camera: torch.Tensor) -> torch.Tensor:
    """OpenCV world-to-camera (…×4×4) to OpenGL camera-to-world, in float64 (the inverse of the loader's conversion)."""
    w2c = torch.as_tensor(world_to_camera, dtype=torch.float64)
    return torch.linalg.inv(w2c) @ torch.linalg.inv(OPENGL_TO_OPENCV.to(torch.float64))


def _intrinsics(cameras: Cameras, i: int) -> dict[str, float | int]:
    return {
        "fl_x": float(cameras.fx[i]),
        "fl_y": float(cameras.fy[i]),
        "cx": float(cameras.cx[i]),
        "cy": float(cameras.cy[i]),
        "w": int(cameras.width[i]),
        "h": int(cameras.height[i]),
    }


def nerfstudio_transforms(
    cameras: Cameras,
    file_paths: list[str],
    *,
    splits: list[str] | None = None,
    ply_file_path: str | None = "sparse_pc.ply",
    mask_paths: list[str | None] | None = None,
) -> dict:
    """The ``transforms.json`` dictionary for ``cameras`` with images at ``file_paths`` (relative to the folder)."""
    if len(file_paths) != len(cameras):
        raise ValueError(f"{len(cameras)} cameras but {len(file_paths)} image paths")
    c2w = opencv_world_to_camera_to_opengl_camera_to_world(cameras.world_to_camera)
    per_camera = [_intrinsics(cameras, i) for i in range(len(cameras))]
    shared = all(p == per_camera[0] for p in per_camera)
    meta: dict = {"camera_model": "OPENCV"}
    if shared:
        meta.update(per_camera[0])
    meta.update({"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    frames = []
    for i, file_path in enumerate(file_paths):
        frame: dict = {"file_path": file_path, "transform_matrix": c2w[i].tolist()}
        if not shared:
            frame.update(per_camera[i])
        if mask_paths is not None and mask_paths[i] is not None:
            frame["mask_path"] = mask_paths[i]  # nerfstudio's key: white = keep, relative to the folder
        frames.append(frame)
    meta["frames"] = frames
    meta["applied_transform"] = IDENTITY_3X4
    if ply_file_path is not None:
        meta["ply_file_path"] = ply_file_path
    if splits is not None:
        train = [p for p, s in zip(file_paths, splits) if s == "train"]
        test = [p for p, s in zip(file_paths, splits) if s != "train"]
        if train and test:
            # nerfstudio looks up "<split>_filenames" for the split it evaluates on (val or test).
            meta["train_filenames"] = train
            meta["val_filenames"] = test
            meta["test_filenames"] = test
    return meta


def _file_paths(image_paths: list[Path], out_dir: Path, copy_images: bool, folder: str = "images") -> list[str]:
    """Paths relative to ``out_dir`` (copies in ``out_dir/folder`` with ``copy_images``)."""
    if not copy_images:
        # nerfstudio joins file_path onto the data folder; a relative path keeps the folder movable with its images.
        result = []
        for p in image_paths:
            p = Path(p).resolve()
            try:
                result.append(Path(os.path.relpath(p, out_dir.resolve())).as_posix())
            except ValueError:  # another drive on Windows
                result.append(p.as_posix())
        return result
    images_dir = out_dir / folder
    images_dir.mkdir(parents=True, exist_ok=True)
    result, used = [], set()
    for i, p in enumerate(image_paths):
        p = Path(p)
        if not p.is_file():
            raise InputError(p, f"{folder.rstrip('s')} not found, so it cannot be copied (export without copy_images "
                                "instead)")
        name = p.name if p.name not in used else f"{i:05d}_{p.name}"
        used.add(name)
        shutil.copy2(p, images_dir / name)
        result.append(f"{folder}/{name}")
    return result


def write_nerfstudio(
    out_dir: str | Path,
    cameras: Cameras,
    image_paths: list[Path] | list[str],
    *,
    splits: list[str] | None = None,
    points: np.ndarray | torch.Tensor | None = None,
    point_colors: np.ndarray | torch.Tensor | None = None,
    copy_images: bool = False,
    mask_paths: list[Path | None] | None = None,
) -> Path:
    """Write ``transforms.json`` (+ ``sparse_pc.ply`` when points are given) into ``out_dir``; returns the json path.
    Cameras with a mask get nerfstudio's ``mask_path`` (copied into ``masks/`` with ``copy_images``)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "the nerfstudio export writes a folder, and this path is a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    cameras = cameras.to("cpu")
    if cameras.distortion is not None and bool((cameras.distortion != 0).any()):
        raise ValueError("write_nerfstudio takes undistorted pinhole cameras; drop Cameras.distortion first")
    missing = [Path(p) for p in image_paths if not Path(p).is_file()]
    if missing and not copy_images:
        print(
            f"warning: {len(missing)} of {len(image_paths)} images do not exist (first: {missing[0]}); "
            "transforms.json names them all the same",
            file=sys.stderr,
        )
    file_paths = _file_paths([Path(p) for p in image_paths], out_dir, copy_images)
    ply_name = None
    if points is not None:
        ply_name = "sparse_pc.ply"
        write_point_cloud(out_dir / ply_name, points, point_colors)
    masks_rel = None
    if mask_paths is not None and any(m is not None for m in mask_paths):
        present = [(i, Path(m)) for i, m in enumerate(mask_paths) if m is not None]
        rel = _file_paths([m for _, m in present], out_dir, copy_images, folder="masks")
        masks_rel = [None] * len(mask_paths)
        for (i, _), r in zip(present, rel):
            masks_rel[i] = r
    meta = nerfstudio_transforms(cameras, file_paths, splits=splits, ply_file_path=ply_name, mask_paths=masks_rel)
    path = out_dir / "transforms.json"
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    return path


def write_nerfstudio_from_scene_data(data, out_dir: str | Path, *, copy_images: bool = False) -> Path:
    """Write a loaded dataset (``recon3d.data.SceneData``: SfM cameras and sparse points) as nerfstudio data."""
    return write_nerfstudio(
        out_dir,
        data.cameras,
        list(data.image_paths),
        splits=list(data.split),
        points=data.points,
        point_colors=data.point_colors,
        copy_images=copy_images,
    )


def _find_colmap_model(sfm_dir: Path) -> Path | None:
    candidates = [
        sfm_dir,
        *sorted(p.parent for p in sfm_dir.rglob("points3D.bin")),
        *sorted(p.parent for p in sfm_dir.rglob("points3D.txt")),
    ]
    for c in candidates:
        if (c / "points3D.bin").is_file() or (c / "points3D.txt").is_file():
            return c
    return None


def run_sparse_points(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The sparse SfM points of a run: ``points.ply`` if it has one, else its ``sfm/`` COLMAP model; None if neither."""
    from ..ply import read_ply_vertices

    points_ply = run_dir / "points.ply"
    if points_ply.is_file():
        v = read_ply_vertices(points_ply)
        if not all(k in v for k in "xyz"):
            raise InputError(points_ply, "point cloud lacks x, y or z")
        xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
        if all(k in v for k in ("red", "green", "blue")):
            rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1)
            rgb = rgb.astype(np.uint8) if rgb.dtype == np.uint8 or rgb.max(initial=0) > 1.0 else rgb.astype(np.float32)
        else:
            rgb = None
        keep = np.isfinite(xyz).all(axis=1)
        return xyz[keep], (rgb[keep] if rgb is not None else None)
    sfm_dir = run_dir / "sfm"
    if sfm_dir.is_dir():
        model = _find_colmap_model(sfm_dir)
        if model is not None:
            import pycolmap

            try:
                rec = pycolmap.Reconstruction(str(model))
            except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError on bad models
                raise InputError(model, f"cannot read the COLMAP model ({exc})") from None
            pts = list(rec.points3D.values())
            xyz = np.array([p.xyz for p in pts], dtype=np.float32).reshape(-1, 3)
            rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)
            return xyz, rgb
    return None


def export_nerfstudio(source, out_dir: str | Path, *, copy_images: bool = False, min_opacity: float = 0.0) -> Path:
    """Write a run's cameras (and its sparse points, else the Gaussian centres) as nerfstudio data."""
    from .source import load_source

    src = load_source(source)
    if src.cameras is None or src.image_paths is None:
        raise InputError(
            src.root or src.label,
            "the nerfstudio export needs the training cameras: pass a run directory (scene.ply + cameras.json)",
        )
    sparse = run_sparse_points(src.root) if src.root is not None else None
    masks = None
    if src.root is not None:
        from ..run import camera_masks

        by_camera = camera_masks(src.root)
        masks = [by_camera.get(i) for i in range(len(src.cameras))] if by_camera else None
    if sparse is None:
        points, colors = gaussian_centers(src.scene, min_opacity)
    else:
        points, colors = sparse
    return write_nerfstudio(
        out_dir,
        src.cameras,
        src.image_paths,
        splits=src.splits,
        points=points,
        point_colors=colors,
        copy_images=copy_images,
        mask_paths=masks,
    )
