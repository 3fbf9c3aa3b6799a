"""``SceneData`` (what every reader returns) and the assembly step all readers share.

Every reader turns its format into a list of ``Frame`` (image file, COLMAP-style camera at the image's
native size, OpenCV world-to-camera, optional split); ``assemble`` then applies ``--downscale`` and the
size cap, removes lens distortion into ``work_dir/undistorted/``, builds ``Cameras`` and the split.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..errors import InputError
from ..io_utils import atomic_open, atomic_write_text
from ..progress import Progress
from .colmap_io import ColmapCamera
from .images import DecodedView, decode_image, decode_image_u8, probe_image
from .messages import MAX_LISTED_NAMES, console, info, list_names  # noqa: F401 (the readers' names)
from .undistort import (
    make_pycolmap_camera,
    needs_undistortion,
    pinhole_intrinsics,
    remap,
    undistorted_intrinsics,
    undistortion_grid,
)


class DataWarning(UserWarning):
    """Something in the input was skipped or adjusted; the run goes on."""


def warn(message: str) -> None:
    """Issue one ``DataWarning`` (shown once per message by Python's warning filter)."""
    warnings.warn(message, DataWarning, stacklevel=3)


def progress() -> Progress:
    """The progress display every long data loop uses: a bar on a terminal, a plain line every few seconds in a
    log (``recon3d.progress``)."""
    return Progress(transient=True, unit="items")


def default_work_dir(path: Path) -> Path:
    """Cache folder for derived files (SfM model, undistorted images) when no run directory is given.

    Never inside the input itself, which may be read-only or shared.
    """
    base = Path(os.environ.get("RECON3D_CACHE", Path.home() / ".cache" / "recon3d"))
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return base / f"{path.resolve().name or 'root'}-{digest}"


@dataclass
class Frame:
    """One input view before assembly: its image, its camera at the image's native size, its pose."""

    image: Path
    camera: ColmapCamera
    world_to_camera: np.ndarray  # 4×4 OpenCV
    split: str | None = None  # "train" / "test" where the source says; None -> the every-Nth rule
    mask: Path | None = None  # white = keep; any resolution with the image's aspect ratio


@dataclass
class SceneData:
    """Cameras, image files, split and sparse points of one data set, in the input's own world frame or,
    where ``orientation`` is set, in the upright frame it maps the input frame to."""

    cameras: Cameras
    image_paths: list[Path]
    split: list[str]
    points: torch.Tensor | None
    point_colors: torch.Tensor | None
    source: str
    root: Path
    background: torch.Tensor | None
    orientation: object | None = None  # recon3d.data.orient.Orientation when the input frame was turned upright
    _exif: bool = field(default=False, repr=False)
    _composite: torch.Tensor | None = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    _alpha: dict = field(default_factory=dict, repr=False)
    _masks: list[Path | None] | None = field(default=None, repr=False)
    _mask_cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.image_paths)

    def train_indices(self) -> list[int]:
        """Indices of the training cameras."""
        return [i for i, s in enumerate(self.split) if s == "train"]

    def test_indices(self) -> list[int]:
        """Indices of the held-out cameras."""
        return [i for i, s in enumerate(self.split) if s == "test"]

    def load_image(self, index: int) -> torch.Tensor:
        """H×W×3 float32 in [0,1] at the camera's resolution; decoded once, then served from memory."""
        if index in self._cache:
            return self._cache[index]
        w, h = int(self.cameras.width[index]), int(self.cameras.height[index])
        bg = self.background if self.background is not None else self._composite
        rgb, alpha = decode_image(self.image_paths[index], exif=self._exif, size=(w, h), background=bg)
        self._cache[index] = rgb
        self._alpha[index] = alpha
        return rgb

    def load_alpha(self, index: int) -> torch.Tensor | None:
        """H×W alpha of an RGBA image (None for RGB), e.g. for training on random backgrounds."""
        self.load_image(index)
        return self._alpha[index]

    def decode_view(self, index: int) -> DecodedView:
        """View ``index`` decoded afresh and kept nowhere (colour before compositing, alpha, mask): for a
        caller that holds images its own way (the training image store), so a thousand never pile up here."""
        w, h = int(self.cameras.width[index]), int(self.cameras.height[index])
        rgb, alpha = decode_image(self.image_paths[index], exif=self._exif, size=(w, h), background=None)
        mask = None
        path = self.mask_path(index)
        if path is not None:
            from .masks import load_mask

            mask = load_mask(path, (w, h))
        bg = self.background if self.background is not None else self._composite
        return DecodedView(rgb, alpha, mask, None if alpha is None else bg)

    def decode_view_u8(self, index: int, alloc: Callable[[int], torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``decode_view``'s colour, alpha and mask as uint8 (``images.to_u8`` of its floats, 255 = keep),
        views of one block ``alloc(nbytes)``: 8-bit images at the camera's size are packed straight into it."""
        w, h = int(self.cameras.width[index]), int(self.cameras.height[index])
        path = self.mask_path(index)
        rgb, alpha, rest = decode_image_u8(self.image_paths[index], alloc, exif=self._exif, size=(w, h),
                                           extra_planes=path is not None)
        mask = None
        if path is not None:
            from .masks import load_mask_u8

            mask = load_mask_u8(path, (w, h), rest)
        return rgb, alpha, mask

    @property
    def has_masks(self) -> bool:
        """True when the data set carries per-image masks (``--masks`` or nerfstudio ``mask_path``)."""
        return self._masks is not None and any(m is not None for m in self._masks)

    def mask_path(self, index: int) -> Path | None:
        """The mask file of view ``index`` at its loading size (undistorted with the image), or None."""
        return None if self._masks is None else self._masks[index]

    def load_mask(self, index: int) -> torch.Tensor | None:
        """H×W float32 mask at the camera's resolution (1 = keep, 0 = ignore), or None when unmasked."""
        path = self.mask_path(index)
        if path is None:
            return None
        if index not in self._mask_cache:
            from .masks import load_mask

            w, h = int(self.cameras.width[index]), int(self.cameras.height[index])
            self._mask_cache[index] = load_mask(path, (w, h))
        return self._mask_cache[index]


def scale_factor(sizes: list[tuple[int, int]], downscale: int, max_image_size: int, where: Path) -> float:
    """One factor for the whole data set: 1/downscale, reduced further so the longest side fits the cap."""
    if isinstance(downscale, float) and downscale.is_integer():
        downscale = int(downscale)
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise InputError(where, f"downscale must be a whole number ≥ 1, got {downscale!r}")
    if max_image_size is not None and max_image_size < 16:
        raise InputError(where, f"max_image_size must be at least 16 pixels, got {max_image_size!r}")
    factor = 1.0 / downscale
    longest = max(max(w, h) for w, h in sizes) * factor
    if max_image_size and longest > max_image_size:
        factor *= max_image_size / longest
        w, h = max(sizes, key=lambda s: max(s))
        info(
            f"images are larger than max_image_size={max_image_size}: loading them at {factor:.3g}× "
            f"({w}×{h} -> {round(w * factor)}×{round(h * factor)}); pass max_image_size to change this"
        )
    return factor


def llff_split(n: int, test_every: int) -> list[str]:
    """Every ``test_every``-th view (index % test_every == 0) held out; 0 or less holds none out."""
    if test_every <= 0 or n < 2:
        return ["train"] * n
    return ["test" if i % test_every == 0 else "train" for i in range(n)]


def _undistorted_name(image: Path, root: Path) -> str:
    try:
        rel = image.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(image.name)
    return str(rel.with_suffix(".png"))


def assemble(
    frames: list[Frame],
    *,
    source: str,
    root: Path,
    points: np.ndarray | None,
    point_colors: np.ndarray | None,
    work_dir: Path | None,
    downscale: int,
    max_image_size: int,
    background: torch.Tensor,
    test_every: int,
    exif: bool,
    check_sizes: bool = True,
) -> SceneData:
    """Turn frames into ``SceneData``: sizes, undistortion, cameras, split."""
    if not frames:
        raise InputError(root, "no usable views")
    # Image files may have been resized after calibration (e.g. a downsampled copy): scale the camera.
    has_alpha = False
    for fr in frames:
        if fr.mask is not None:
            from .masks import check_mask

            check_mask(fr.mask, fr.camera.width, fr.camera.height, fr.image)
        if not check_sizes:
            continue
        info_ = probe_image(fr.image, exif=exif)
        has_alpha |= info_.has_alpha
        cam = fr.camera
        if (info_.width, info_.height) != (cam.width, cam.height):
            if abs(info_.width / cam.width - info_.height / cam.height) > 0.02:
                raise InputError(
                    fr.image,
                    f"image is {info_.width}×{info_.height} but its camera says {cam.width}×{cam.height} "
                    "(a different aspect ratio, so it is not a resized copy)",
                )
            pc = make_pycolmap_camera(cam, info_.width, info_.height)
            fr.camera = ColmapCamera(cam.camera_id, cam.model, info_.width, info_.height, np.asarray(pc.params))
    factor = scale_factor([(f.camera.width, f.camera.height) for f in frames], downscale, max_image_size, root)

    w2c, fx, fy, cx, cy, ws, hs, paths = [], [], [], [], [], [], [], []
    masks: list[Path | None] = [fr.mask for fr in frames]
    to_undistort: list[tuple[int, object, tuple, Path]] = []
    intrinsics_cache: dict[tuple, tuple] = {}
    for i, fr in enumerate(frames):
        cam = fr.camera
        w = max(1, round(cam.width * factor))
        h = max(1, round(cam.height * factor))
        if needs_undistortion(cam):
            if work_dir is None:
                work_dir = default_work_dir(root)
            key = (cam.model, tuple(cam.params.tolist()), cam.width, cam.height, w, h)
            pc = make_pycolmap_camera(cam, w, h)
            if key not in intrinsics_cache:
                intrinsics_cache[key] = undistorted_intrinsics(pc)
            k = intrinsics_cache[key]
            out = Path(work_dir) / "undistorted" / _undistorted_name(fr.image, root)
            to_undistort.append((i, pc, k, out))
            paths.append(out)
            if fr.mask is not None:
                masks[i] = out.with_name(out.stem + ".mask.png")
        else:
            f_x, f_y, c_x, c_y = pinhole_intrinsics(cam)
            sx, sy = w / cam.width, h / cam.height
            k = (f_x * sx, f_y * sy, c_x * sx, c_y * sy)
            paths.append(fr.image)
        fx.append(k[0])
        fy.append(k[1])
        cx.append(k[2])
        cy.append(k[3])
        ws.append(w)
        hs.append(h)
        m = np.asarray(fr.world_to_camera, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise InputError(fr.image, "camera pose is not a finite 4×4 matrix")
        w2c.append(m)

    composite = background
    if to_undistort:
        _undistort_all(frames, to_undistort, exif, composite, Path(work_dir))

    values = [torch.tensor(np.stack(w2c), dtype=torch.float32)] + [
        torch.tensor(v, dtype=torch.float32) for v in (fx, fy, cx, cy)
    ]
    for v, what in zip(values, ("pose", "fx", "fy", "cx", "cy")):
        ok = torch.isfinite(v.reshape(len(frames), -1)).all(1)
        if what in ("fx", "fy"):
            ok &= v > 0
        if not ok.all():
            bad = int(torch.nonzero(~ok)[0])
            raise InputError(frames[bad].image, f"camera {what} is not a usable 32-bit float (absurd or zero value)")
    try:
        cameras = Cameras(*values, torch.tensor(ws), torch.tensor(hs))
    except ValueError as e:  # a backstop: Cameras checks its own invariants
        raise InputError(root, f"cameras are unusable: {e}") from None
    if any(f.split is not None for f in frames):
        split = [f.split or "train" for f in frames]
    else:
        split = llff_split(len(frames), test_every)
    pts = None if points is None or len(points) == 0 else torch.as_tensor(points, dtype=torch.float32)
    if pts is not None and not torch.isfinite(pts).all():
        raise InputError(root, "sparse points are not finite in 32-bit floats (absurd coordinates)")
    cols = None
    if pts is not None:
        cols = (
            torch.as_tensor(point_colors, dtype=torch.float32).clamp(0, 1)
            if point_colors is not None
            else torch.full_like(pts, 0.5)
        )
    return SceneData(
        cameras=cameras,
        image_paths=paths,
        split=split,
        points=pts,
        point_colors=cols,
        source=source,
        root=root,
        background=background.clone() if has_alpha else None,
        _exif=exif if not to_undistort else False,
        _composite=background,
        _masks=masks if any(m is not None for m in masks) else None,
    )


def _undistort_all(frames: list[Frame], jobs: list, exif: bool, background: torch.Tensor, work_dir: Path) -> None:
    """Write undistorted copies (PNG) of the distorted views, reusing copies made with the same settings."""
    manifest_path = work_dir / "undistorted" / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if not isinstance(manifest, dict):
            manifest = {}
    except (OSError, ValueError):
        manifest = {}
    done = 0
    grids: dict[str, torch.Tensor] = {}
    with progress() as bar:
        task = bar.add_task("undistorting images", total=len(jobs))
        for i, pc, k, out in jobs:
            src = frames[i].image
            st = src.stat()
            key = json.dumps([str(src.resolve()), st.st_size, st.st_mtime_ns, pc.model_name, list(pc.params),
                              int(pc.width), int(pc.height), list(k), background.tolist(), exif])  # fmt: skip
            mask = frames[i].mask
            mask_out = out.with_name(out.stem + ".mask.png")
            if mask is not None:
                mst = mask.stat()
                key = json.dumps([key, str(mask.resolve()), mst.st_size, mst.st_mtime_ns])
            if manifest.get(str(out)) == key and out.is_file() and (mask is None or mask_out.is_file()):
                bar.advance(task)
                continue
            rgb, _ = decode_image(src, exif=exif, size=(int(pc.width), int(pc.height)), background=background)
            grid_key = json.dumps([pc.model_name, list(pc.params), int(pc.width), int(pc.height), list(k)])
            if grid_key not in grids:  # views sharing a camera share the (costly) map
                grids[grid_key] = undistortion_grid(pc, k)
            und = remap(rgb, grids[grid_key])
            _save_png(out, und)
            if mask is not None:  # the mask follows its image through the same map
                from .masks import load_mask, save_mask

                m = load_mask(mask, (int(pc.width), int(pc.height)))
                save_mask(mask_out, remap(m[..., None], grids[grid_key])[..., 0])
            manifest[str(out)] = key
            done += 1
            bar.advance(task)
    if done:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=0))
        info(f"undistorted {done} images into {manifest_path.parent}")


def _save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    arr = (image.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG", compress_level=1)
