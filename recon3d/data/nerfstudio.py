"""nerfstudio / instant-ngp ``transforms.json`` and Blender/NeRF-synthetic ``transforms_{train,val,test}.json``.

Both store camera-to-world matrices in OpenGL axes (x right, y up, z back); we convert each to an
OpenCV world-to-camera on load. nerfstudio's ``applied_transform`` is the transform that was already
applied to the poses (e.g. from COLMAP's frame), so the points of ``ply_file_path``, which are still in
the original frame, get it applied to line up with the poses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..cameras import OPENGL_TO_OPENCV
from ..errors import InputError
from ..ply import load_point_cloud
from .colmap_io import ColmapCamera
from .images import probe_image
from .scene_data import Frame, list_names, warn

MAX_JSON_BYTES = 256 << 20
NERFSTUDIO_MODELS = ("OPENCV", "OPENCV_FISHEYE", "PINHOLE", "SIMPLE_PINHOLE")


def read_json(path: Path) -> dict:
    """Load a JSON object, with InputError for anything unreadable or not an object."""
    try:
        size = path.stat().st_size
    except OSError:
        raise InputError(path, "file does not exist") from None
    if size > MAX_JSON_BYTES:
        raise InputError(path, f"JSON file of {size} bytes is too large")
    try:
        text = path.read_bytes().decode("utf-8")
        meta = json.loads(text)
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text, so not JSON") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise InputError(path, "invalid JSON: nested too deeply") from None
    except OSError as e:
        raise InputError(path, f"cannot read file ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise InputError(path, f"expected a JSON object at the top level, found {type(meta).__name__}")
    return meta


def _number(path: Path, where: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(path, f"{where}: {key!r} must be a number, found {json.dumps(value)[:40]}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v):
        raise InputError(path, f"{where}: {key!r} is NaN or infinite")
    return v


def _matrix(path: Path, where: str, key: str, value, rows: tuple[int, ...] = (3, 4)) -> np.ndarray:
    if not isinstance(value, list) or len(value) not in rows:
        raise InputError(path, f"{where}: {key!r} must be a 4×4 (or 3×4) matrix")
    out = np.eye(4)
    for r, row in enumerate(value):
        if not isinstance(row, list) or len(row) != 4:
            raise InputError(path, f"{where}: {key!r} must be a 4×4 (or 3×4) matrix")
        for c, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(path, f"{where}: {key!r} holds a non-number {json.dumps(v)[:40]}")
            try:
                out[r, c] = float(v)
            except OverflowError:
                out[r, c] = math.inf
    out[3] = (0.0, 0.0, 0.0, 1.0)  # only the top 3×4 is meaningful (as in nerfstudio); keeps it invertible
    if not np.isfinite(out).all() or np.abs(out).max() > 1e15:
        raise InputError(path, f"{where}: {key!r} holds NaN or infinite values (or absurdly large ones)")
    det = float(np.linalg.det(out[:3, :3]))
    if not math.isfinite(det) or abs(det) < 1e-12 or abs(det) > 1e12:
        raise InputError(path, f"{where}: {key!r} has a singular or degenerate rotation part")
    return out


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world 4×4 -> OpenCV world-to-camera 4×4 (float64; rotations assumed orthonormal-ish)."""
    return np.linalg.inv(c2w @ OPENGL_TO_OPENCV.double().numpy())


def _resolve_image(base: Path, file_path) -> Path | None:
    p = base / file_path
    if p.is_file():
        return p
    if not p.suffix or p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
            q = p.with_name(p.name + ext)
            if q.is_file():
                return q
    return None


def _intrinsics(path: Path, meta: dict, frame: dict, where: str, image: Path, exif: bool) -> ColmapCamera:
    def get(key):
        return frame[key] if key in frame else meta.get(key)

    w, h = get("w"), get("h")
    if w is None or h is None:
        info_ = probe_image(image, exif=exif)
        w = info_.width if w is None else w
        h = info_.height if h is None else h
    w = _number(path, where, "w", w)
    h = _number(path, where, "h", h)
    if not (w >= 1 and h >= 1 and w == int(w) and h == int(h)):
        raise InputError(path, f"{where}: image size w={w:g} h={h:g} is not a positive whole number")
    w, h = int(w), int(h)
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None:
        angle = get("camera_angle_x")
        if angle is None:
            raise InputError(path, f"{where}: missing focal length: needs 'fl_x' or 'camera_angle_x'")
        angle = _number(path, where, "camera_angle_x", angle)
        if not 0 < angle < math.pi:
            raise InputError(path, f"{where}: camera_angle_x={angle:g} is not an angle in (0, π)")
        fx = 0.5 * w / math.tan(0.5 * angle)
    fx = _number(path, where, "fl_x", fx)
    if fy is None and get("camera_angle_y") is not None and get("fl_x") is None:
        angle_y = _number(path, where, "camera_angle_y", get("camera_angle_y"))
        fy = 0.5 * h / math.tan(0.5 * angle_y) if 0 < angle_y < math.pi else fx
    fy = fx if fy is None else _number(path, where, "fl_y", fy)
    if fx <= 0 or fy <= 0:
        raise InputError(path, f"{where}: focal lengths must be positive, got fl_x={fx:g} fl_y={fy:g}")
    cx = _number(path, where, "cx", get("cx")) if get("cx") is not None else w / 2.0
    cy = _number(path, where, "cy", get("cy")) if get("cy") is not None else h / 2.0
    dist = {
        k: _number(path, where, k, get(k)) if get(k) is not None else 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2")
    }
    model = get("camera_model")
    if model is None:
        model = "OPENCV_FISHEYE" if get("is_fisheye") is True else "OPENCV"
    if not isinstance(model, str) or model.upper() not in NERFSTUDIO_MODELS:
        raise InputError(
            path,
            f"{where}: unsupported camera_model {json.dumps(model)[:40]}; supported: {', '.join(NERFSTUDIO_MODELS)}",
        )
    model = model.upper()
    if model == "OPENCV_FISHEYE":
        params = [fx, fy, cx, cy, dist["k1"], dist["k2"], dist["k3"], dist["k4"]]
        return ColmapCamera(0, "OPENCV_FISHEYE", w, h, np.array(params))
    if model in ("PINHOLE", "SIMPLE_PINHOLE") or not any(dist.values()):
        return ColmapCamera(0, "PINHOLE", w, h, np.array([fx, fy, cx, cy]))
    if dist["k4"] != 0.0:
        # nerfstudio's OPENCV k4 is a polynomial term; COLMAP's FULL_OPENCV puts k4 in a denominator.
        raise InputError(path, f"{where}: k4 is only supported with camera_model OPENCV_FISHEYE")
    if dist["k3"] != 0.0:
        params = [fx, fy, cx, cy, dist["k1"], dist["k2"], dist["p1"], dist["p2"], dist["k3"], 0.0, 0.0, 0.0]
        return ColmapCamera(0, "FULL_OPENCV", w, h, np.array(params))
    return ColmapCamera(0, "OPENCV", w, h, np.array([fx, fy, cx, cy, dist["k1"], dist["k2"], dist["p1"], dist["p2"]]))


def frames_from_transforms(path: Path, meta: dict, *, split: str | None = None) -> tuple[list[Frame], list[str]]:
    """Frames of one transforms file (sorted by file name) and the names of frames whose image is missing."""
    frames_meta = meta.get("frames")
    if not isinstance(frames_meta, list):
        raise InputError(path, "missing key 'frames' (a list of {file_path, transform_matrix})")
    if not frames_meta:
        raise InputError(path, "'frames' is empty")
    base = path.parent
    frames: list[Frame] = []
    missing: list[str] = []
    for i, fr in enumerate(frames_meta):
        where = f"frames[{i}]"
        if not isinstance(fr, dict):
            raise InputError(path, f"{where} is not an object")
        fp = fr.get("file_path")
        if not isinstance(fp, str) or not fp or "\0" in fp:
            raise InputError(path, f"{where}: missing or invalid key 'file_path'")
        if "transform_matrix" not in fr:
            raise InputError(path, f"{where}: missing key 'transform_matrix'")
        c2w = _matrix(path, where, "transform_matrix", fr["transform_matrix"])
        try:
            image = _resolve_image(base, fp)
        except (OSError, ValueError):
            image = None
        if image is None:
            missing.append(fp)
            continue
        camera = _intrinsics(path, meta, fr, where, image, exif=False)
        mask = None
        if fr.get("mask_path") is not None:  # nerfstudio: white = keep, relative to the transforms file
            mp = fr["mask_path"]
            if not isinstance(mp, str) or not mp or "\0" in mp:
                raise InputError(path, f"{where}: 'mask_path' must be a file name")
            mask = base / mp
            if not mask.is_file():
                raise InputError(path, f"{where}: mask_path {mp!r} does not exist")
        frames.append(Frame(image, camera, opengl_c2w_to_opencv_w2c(c2w), split, mask))
    frames.sort(key=lambda f: str(f.image))
    return frames, missing


def nerfstudio_frames(path: Path) -> tuple[list[Frame], np.ndarray | None, np.ndarray | None]:
    """Frames and optional sparse points of a nerfstudio / instant-ngp ``transforms.json``."""
    meta = read_json(path)
    frames, missing = frames_from_transforms(path, meta)
    n_total = len(meta["frames"])
    if not frames:
        raise InputError(path, f"none of the {n_total} frames' images exist")
    if missing:
        warn(
            f"{path}: {len(missing)} of {n_total} frames point at missing images and are skipped: {list_names(missing)}"
        )
    # nerfstudio's own explicit split, when the file carries one.
    test_names = meta.get("test_filenames") or meta.get("val_filenames")
    if isinstance(test_names, list) and all(isinstance(n, str) for n in test_names):
        try:
            wanted = {(path.parent / n).resolve() for n in test_names}
        except (OSError, ValueError, RuntimeError):
            raise InputError(path, "'test_filenames' holds an invalid file name") from None
        for f in frames:
            f.split = "test" if f.image.resolve() in wanted else "train"
    points = colors = None
    ply = meta.get("ply_file_path")
    if ply is not None:
        if not isinstance(ply, str) or not ply:
            raise InputError(path, "'ply_file_path' must be a file name")
        points, colors = load_point_cloud(path.parent / ply)  # nerfstudio's sparse_pc.ply
        if "applied_transform" in meta:
            t = _matrix(path, "top level", "applied_transform", meta["applied_transform"])
            points = points @ t[:3, :3].T + t[:3, 3]
    return frames, points, colors


def blender_frames(root: Path) -> list[Frame]:
    """Frames of a Blender/NeRF-synthetic folder: train from transforms_train.json, test from val (or test)."""
    frames: list[Frame] = []
    train = root / "transforms_train.json"
    test = next((p for p in (root / "transforms_val.json", root / "transforms_test.json") if p.is_file()), None)
    for path, split in ((train, "train"), (test, "test")):
        if path is None:
            continue
        meta = read_json(path)
        if "camera_angle_x" not in meta and "fl_x" not in meta:
            raise InputError(path, "missing key 'camera_angle_x'")
        fr, missing = frames_from_transforms(path, meta, split=split)
        if not fr and split == "train":
            raise InputError(path, f"none of the {len(meta['frames'])} frames' images exist")
        if missing:
            warn(
                f"{path}: {len(missing)} of {len(meta['frames'])} frames point at missing images and are skipped: {list_names(missing)}"
            )
        frames.extend(fr)
    return frames
