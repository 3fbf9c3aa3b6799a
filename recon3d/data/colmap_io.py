"""Bounded parsers for COLMAP sparse models (``cameras``, ``images``, ``points3D`` in ``.bin`` or ``.txt``).

Written here rather than borrowed from pycolmap so that a corrupt or hostile file gives an
``InputError`` naming it: every count read from a binary file is checked against the bytes left
before anything is allocated, and every value is checked to be finite.

Binary layout (little-endian, as COLMAP writes it):
- cameras.bin: u64 count; per camera i32 id, i32 model id, u64 width, u64 height, f64 × params.
- images.bin: u64 count; per image u32 id, f64 qw qx qy qz, f64 tx ty tz, u32 camera id, name bytes
  ending in NUL, u64 num points2D, then (f64 x, f64 y, i64 point3D id) per point.
- points3D.bin: u64 count; per point u64 id, f64 x y z, u8 r g b, f64 error, u64 track length,
  then (i32 image id, i32 point2D index) per track element.
The pose (q, t) is camera-from-world in OpenCV axes, exactly recon3d's ``world_to_camera``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..rotations import quaternion_to_rotation, rotation_to_quaternion  # noqa: F401  (re-exported)

# COLMAP's camera models: name -> (model id, parameter names). The ids are those of COLMAP's binary format.
CAMERA_MODELS: dict[str, tuple[int, tuple[str, ...]]] = {
    "SIMPLE_PINHOLE": (0, ("f", "cx", "cy")),
    "PINHOLE": (1, ("fx", "fy", "cx", "cy")),
    "SIMPLE_RADIAL": (2, ("f", "cx", "cy", "k")),
    "RADIAL": (3, ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": (4, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    "OPENCV_FISHEYE": (5, ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4")),
    "FULL_OPENCV": (6, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
    "FOV": (7, ("fx", "fy", "cx", "cy", "omega")),
    "SIMPLE_RADIAL_FISHEYE": (8, ("f", "cx", "cy", "k")),
    "RADIAL_FISHEYE": (9, ("f", "cx", "cy", "k1", "k2")),
    "THIN_PRISM_FISHEYE": (10, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1")),
    "RAD_TAN_THIN_PRISM_FISHEYE": (
        11,
        ("fx", "fy", "cx", "cy", "k0", "k1", "k2", "k3", "k4", "k5", "p0", "p1", "s0", "s1", "s2", "s3"),
    ),
    "SIMPLE_DIVISION": (12, ("f", "cx", "cy", "k")),
    "DIVISION": (13, ("fx", "fy", "cx", "cy", "k")),
    "SIMPLE_FISHEYE": (14, ("f", "cx", "cy")),
    "FISHEYE": (15, ("fx", "fy", "cx", "cy")),
    "EUCM": (16, ("fx", "fy", "cx", "cy", "alpha", "beta")),
}
MODEL_BY_ID = {mid: name for name, (mid, _) in CAMERA_MODELS.items()}
# Models whose images need no undistortion (pinhole projection as they stand).
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
MAX_IMAGE_SIDE = 1 << 16
MAX_NAME_BYTES = 4096
MAX_TEXT_BYTES = 1 << 31  # a text model larger than 2 GiB is not something we try to read


def supported_models_text() -> str:
    """The supported camera models, for error messages."""
    return ", ".join(CAMERA_MODELS)


@dataclass
class ColmapCamera:
    """One COLMAP camera: model name, image size and the model's parameters."""

    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64


@dataclass
class ColmapImage:
    """One registered image: camera-from-world rotation (w,x,y,z quaternion) and translation."""

    image_id: int
    qvec: np.ndarray  # 4, float64, w first, normalised
    tvec: np.ndarray  # 3, float64
    camera_id: int
    name: str
    num_points2d: int

    def world_to_camera(self) -> np.ndarray:
        """4×4 OpenCV world-to-camera matrix."""
        m = np.eye(4)
        m[:3, :3] = quaternion_to_rotation(self.qvec)
        m[:3, 3] = self.tvec
        return m


@dataclass
class ColmapPoints:
    """Sparse points: P×3 positions, P×3 uint8 colours, P reprojection errors."""

    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray


@dataclass
class ColmapModel:
    """A whole sparse model as read from disk."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: ColmapPoints | None
    path: Path


# ---------------------------------------------------------------------------------------------- checks
def _check_camera(path: Path, where: str, cam_id: int, model: str, width: int, height: int, params) -> ColmapCamera:
    if model not in CAMERA_MODELS:
        raise InputError(path, f"{where}: unsupported camera model {model!r}; supported: {supported_models_text()}")
    expected = len(CAMERA_MODELS[model][1])
    if len(params) != expected:
        raise InputError(path, f"{where}: camera model {model} needs {expected} parameters, found {len(params)}")
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
        raise InputError(path, f"{where}: camera {cam_id} has an impossible image size {width}×{height}")
    p = np.asarray(params, dtype=np.float64)
    if not np.isfinite(p).all():
        raise InputError(path, f"{where}: camera {cam_id} has NaN or infinite parameters")
    n_focal = 1 if CAMERA_MODELS[model][1][0] == "f" else 2
    if (p[:n_focal] <= 0).any():
        raise InputError(path, f"{where}: camera {cam_id} has a non-positive focal length {p[:n_focal].tolist()}")
    return ColmapCamera(int(cam_id), model, int(width), int(height), p)


def _check_pose(path: Path, where: str, qvec, tvec) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(qvec, dtype=np.float64)
    t = np.asarray(tvec, dtype=np.float64)
    if not (np.isfinite(q).all() and np.isfinite(t).all()):
        raise InputError(path, f"{where}: pose holds NaN or infinite values")
    n = float(np.linalg.norm(q))
    if not (1e-6 < n < 1e6):
        raise InputError(path, f"{where}: rotation quaternion has norm {n:g}, not a rotation")
    if float(np.abs(t).max()) > 1e12:
        raise InputError(path, f"{where}: translation {t.tolist()} is absurdly large")
    return q / n, t


# ---------------------------------------------------------------------------------------------- binary
class _BinaryReader:
    """Reads little-endian values from a byte string, refusing to read past its end."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise InputError(path, f"cannot read file ({e.strerror or e})") from None
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise InputError(self.path, f"file is truncated at byte {self.pos} of {len(self.data)}")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def count(self, what: str, min_item_bytes: int) -> int:
        (n,) = self.read("Q")
        if n * min_item_bytes > self.remaining():
            raise InputError(
                self.path,
                f"header claims {n} {what}, more than the {self.remaining()} remaining bytes can hold (corrupt file)",
            )
        return int(n)

    def skip(self, nbytes: int) -> None:
        if nbytes < 0 or self.pos + nbytes > len(self.data):
            raise InputError(self.path, f"file is truncated at byte {self.pos} of {len(self.data)}")
        self.pos += nbytes

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos, self.pos + MAX_NAME_BYTES + 1)
        if end < 0:
            raise InputError(self.path, f"image name at byte {self.pos} is not terminated (corrupt file)")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(self.path, f"image name at byte {self.pos} is not UTF-8 (corrupt file)") from None

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise InputError(self.path, f"{len(self.data) - self.pos} unexpected bytes after the last record")


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    """Parse cameras.bin."""
    r = _BinaryReader(path)
    n = r.count("cameras", 24)
    cameras: dict[int, ColmapCamera] = {}
    for i in range(n):
        cam_id, model_id, width, height = r.read("IiQQ")
        if model_id not in MODEL_BY_ID:
            raise InputError(
                path,
                f"camera {cam_id}: unsupported camera model id {model_id}; supported: {supported_models_text()}",
            )
        model = MODEL_BY_ID[model_id]
        params = r.read("d" * len(CAMERA_MODELS[model][1]))
        cam = _check_camera(path, f"camera #{i}", cam_id, model, width, height, params)
        if cam.camera_id in cameras:
            raise InputError(path, f"camera id {cam.camera_id} appears twice")
        cameras[cam.camera_id] = cam
    r.finish()
    return cameras


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    """Parse images.bin (2D observations are skipped, only counted)."""
    r = _BinaryReader(path)
    n = r.count("images", 4 + 56 + 4 + 1 + 8)
    images: dict[int, ColmapImage] = {}
    for _ in range(n):
        (image_id,) = r.read("I")
        qt = r.read("7d")
        (camera_id,) = r.read("I")
        name = r.cstring()
        n2d = r.count(f"2D points of image {name!r}", 24)
        r.skip(24 * n2d)
        q, t = _check_pose(path, f"image {name!r}", qt[:4], qt[4:])
        if image_id in images:
            raise InputError(path, f"image id {image_id} appears twice")
        images[image_id] = ColmapImage(int(image_id), q, t, int(camera_id), name, n2d)
    r.finish()
    return images


def read_points_binary(path: Path) -> ColmapPoints:
    """Parse points3D.bin (tracks are skipped)."""
    r = _BinaryReader(path)
    n = r.count("points", 8 + 24 + 3 + 8 + 8)
    ids = np.empty(n, dtype=np.uint64)
    xyz = np.empty((n, 3), dtype=np.float64)
    rgb = np.empty((n, 3), dtype=np.uint8)
    err = np.empty(n, dtype=np.float64)
    for i in range(n):
        vals = r.read("Q3d3Bd")
        ids[i], xyz[i], rgb[i], err[i] = vals[0], vals[1:4], vals[4:7], vals[7]
        track = r.count("track elements", 8)
        r.skip(8 * track)
    r.finish()
    return _check_points(path, ids, xyz, rgb, err)


def _check_points(path: Path, ids: np.ndarray, xyz: np.ndarray, rgb: np.ndarray, err: np.ndarray) -> ColmapPoints:
    if not np.isfinite(xyz).all():
        raise InputError(path, "points hold NaN or infinite coordinates")
    order = np.argsort(ids, kind="stable")  # .bin and .txt list points in different orders; ids agree
    return ColmapPoints(xyz[order], rgb[order], err[order])


# ---------------------------------------------------------------------------------------------- text
def _text_lines(path: Path) -> list[str]:
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise InputError(path, f"text model of {size} bytes is too large to read")
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 text file (corrupt or binary)") from None
    except OSError as e:
        raise InputError(path, f"cannot read file ({e.strerror or e})") from None


def _num(path: Path, line_no: int, token: str, kind=float):
    try:
        v = kind(token)
    except (ValueError, OverflowError):
        raise InputError(path, f"line {line_no}: {token[:40]!r} is not a valid number") from None
    if kind is int and not (-(1 << 63) <= v < (1 << 64)):
        raise InputError(path, f"line {line_no}: integer {token[:40]} is out of range")
    return v


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    """Parse cameras.txt: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`` per line."""
    cameras: dict[int, ColmapCamera] = {}
    for line_no, line in enumerate(_text_lines(path), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) < 4:
            raise InputError(
                path, f"line {line_no}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..., got {line[:60]!r}"
            )
        cam_id = _num(path, line_no, words[0], int)
        width = _num(path, line_no, words[2], int)
        height = _num(path, line_no, words[3], int)
        params = [_num(path, line_no, w) for w in words[4:]]
        cam = _check_camera(path, f"line {line_no}", cam_id, words[1], width, height, params)
        if cam.camera_id in cameras:
            raise InputError(path, f"line {line_no}: camera id {cam.camera_id} appears twice")
        cameras[cam.camera_id] = cam
    return cameras


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    """Parse images.txt: a pose line ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then a 2D-points line."""
    images: dict[int, ColmapImage] = {}
    lines = _text_lines(path)
    i = 0
    while i < len(lines):
        line_no, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) < 10:
            raise InputError(
                path, f"line {line_no}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {line[:60]!r}"
            )
        image_id = _num(path, line_no, words[0], int)
        qt = [_num(path, line_no, w) for w in words[1:8]]
        camera_id = _num(path, line_no, words[8], int)
        name = " ".join(words[9:])  # tolerate spaces in names, which COLMAP itself would split
        points_line = lines[i] if i < len(lines) else ""
        i += 1
        tokens = points_line.split()
        if len(tokens) % 3 != 0:
            raise InputError(path, f"line {line_no + 1}: 2D points must come in triples X Y POINT3D_ID")
        q, t = _check_pose(path, f"line {line_no}", qt[:4], qt[4:])
        if image_id in images:
            raise InputError(path, f"line {line_no}: image id {image_id} appears twice")
        images[image_id] = ColmapImage(int(image_id), q, t, int(camera_id), name, len(tokens) // 3)
    return images


def read_points_text(path: Path) -> ColmapPoints:
    """Parse points3D.txt: ``POINT3D_ID X Y Z R G B ERROR TRACK...`` per line."""
    ids, xyz, rgb, err = [], [], [], []
    for line_no, line in enumerate(_text_lines(path), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) < 8:
            raise InputError(path, f"line {line_no}: expected POINT3D_ID X Y Z R G B ERROR TRACK..., got {line[:60]!r}")
        point_id = _num(path, line_no, words[0], int)
        if point_id < 0:
            raise InputError(path, f"line {line_no}: negative point id {point_id}")
        ids.append(point_id)
        xyz.append([_num(path, line_no, w) for w in words[1:4]])
        color = [_num(path, line_no, w, int) for w in words[4:7]]
        if any(not 0 <= c <= 255 for c in color):
            raise InputError(path, f"line {line_no}: colour {color} is outside 0..255")
        rgb.append(color)
        err.append(_num(path, line_no, words[7]))
    return _check_points(
        path,
        np.asarray(ids, dtype=np.uint64),
        np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
        np.asarray(rgb, dtype=np.uint8).reshape(-1, 3),
        np.asarray(err, dtype=np.float64).reshape(-1),
    )


# ---------------------------------------------------------------------------------------------- model
def find_model_files(model_dir: Path) -> tuple[str, Path, Path, Path | None] | None:
    """(extension, cameras, images, points3D or None) of the model in ``model_dir``; ``.bin`` preferred."""
    for ext in (".bin", ".txt"):
        cams, imgs, pts = (model_dir / f"{stem}{ext}" for stem in ("cameras", "images", "points3D"))
        if cams.is_file() and imgs.is_file():
            return ext, cams, imgs, pts if pts.is_file() else None
    return None


def read_model(model_dir: str | Path, ext: str | None = None) -> ColmapModel:
    """Read a COLMAP sparse model folder (``.bin`` preferred, or the ``ext`` asked for) and cross-check it."""
    model_dir = Path(model_dir)
    if ext is not None:
        cams, imgs, pts = (model_dir / f"{stem}{ext}" for stem in ("cameras", "images", "points3D"))
        if not cams.is_file() or not imgs.is_file():
            raise InputError(model_dir, f"no cameras{ext} and images{ext} in this folder")
        files = (ext, cams, imgs, pts if pts.is_file() else None)
    else:
        files = find_model_files(model_dir)
        if files is None:
            raise InputError(model_dir, "no COLMAP model here (needs cameras.bin + images.bin or the .txt pair)")
    ext, cams_path, imgs_path, pts_path = files
    binary = ext == ".bin"
    cameras = (read_cameras_binary if binary else read_cameras_text)(cams_path)
    images = (read_images_binary if binary else read_images_text)(imgs_path)
    points = None
    if pts_path is not None:
        points = (read_points_binary if binary else read_points_text)(pts_path)
    if not cameras:
        raise InputError(cams_path, "the model has no cameras")
    if not images:
        raise InputError(imgs_path, "the model has no registered images")
    names = set()
    for img in images.values():
        if img.camera_id not in cameras:
            raise InputError(imgs_path, f"image {img.name!r} refers to camera {img.camera_id}, which is not defined")
        if not img.name or img.name in names:
            raise InputError(imgs_path, f"image name {img.name!r} is empty or appears twice")
        names.add(img.name)
    return ColmapModel(cameras, images, points, model_dir)


# ---------------------------------------------------------------------------------------------- writers
def write_model_text(model: ColmapModel, out_dir: Path) -> None:
    """Write a model as cameras.txt / images.txt / points3D.txt (used by tests and tools)."""
    from ..io_utils import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list: CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    for c in model.cameras.values():
        lines.append(
            " ".join([str(c.camera_id), c.model, str(c.width), str(c.height)] + [repr(float(p)) for p in c.params])
        )
    atomic_write_text(out_dir / "cameras.txt", "\n".join(lines) + "\n")
    lines = ["# Image list: IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME / POINTS2D[] as (X, Y, POINT3D_ID)"]
    for im in model.images.values():
        vals = [repr(float(v)) for v in (*im.qvec, *im.tvec)]
        lines.append(" ".join([str(im.image_id), *vals, str(im.camera_id), im.name]))
        lines.append("")
    atomic_write_text(out_dir / "images.txt", "\n".join(lines) + "\n")
    lines = ["# 3D point list: POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]"]
    if model.points is not None:
        for i, (p, c, e) in enumerate(zip(model.points.xyz, model.points.rgb, model.points.error)):
            lines.append(
                " ".join([str(i + 1), *(repr(float(v)) for v in p), *(str(int(v)) for v in c), repr(float(e))])
            )
    atomic_write_text(out_dir / "points3D.txt", "\n".join(lines) + "\n")


def write_model_binary(model: ColmapModel, out_dir: Path) -> None:
    """Write a model as cameras.bin / images.bin / points3D.bin (no 2D observations or tracks)."""
    from ..io_utils import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = bytearray(struct.pack("<Q", len(model.cameras)))
    for c in model.cameras.values():
        buf += struct.pack("<IiQQ", c.camera_id, CAMERA_MODELS[c.model][0], c.width, c.height)
        buf += struct.pack("<" + "d" * len(c.params), *c.params)
    atomic_write_bytes(out_dir / "cameras.bin", bytes(buf))
    buf = bytearray(struct.pack("<Q", len(model.images)))
    for im in model.images.values():
        buf += struct.pack("<I7dI", im.image_id, *im.qvec, *im.tvec, im.camera_id)
        buf += im.name.encode("utf-8") + b"\0" + struct.pack("<Q", 0)
    atomic_write_bytes(out_dir / "images.bin", bytes(buf))
    pts = model.points
    n = 0 if pts is None else len(pts.xyz)
    buf = bytearray(struct.pack("<Q", n))
    for i in range(n):
        buf += struct.pack("<Q3d3BdQ", i + 1, *pts.xyz[i], *pts.rgb[i], pts.error[i], 0)
    atomic_write_bytes(out_dir / "points3D.bin", bytes(buf))
