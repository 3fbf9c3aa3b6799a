"""The run directory: what ``recon3d reconstruct PATH -o RUN_DIR`` writes (``recon3d.load_run`` reads it back).

RUN_DIR/
  config.yaml      the resolved training config
  scene.ply        the trained scene, in the world frame of the input poses (standard 3DGS PLY)
  cameras.json     every camera: image, split, width, height, fx, fy, cx, cy, world_to_camera (4×4 OpenCV),
                   mask (when the data has one)
  metrics.json     PSNR/SSIM on the held-out views, steps, time, Gaussians, peak RAM
  renders/         the held-out views as rendered (PNG), beside nothing else
  checkpoints/     ckpt_<step>.pt, written atomically, loaded with torch.load(weights_only=True)
  sfm/             the COLMAP model when the input was a photo folder (written by recon3d.data)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..cameras import Cameras
from ..errors import InputError
from ..io_utils import atomic_write_text

# Files whose presence means a directory holds a run (a bare sfm/ cache does not count).
RUN_MARKERS = ("config.yaml", "scene.ply", "cameras.json", "metrics.json", "checkpoints")
RUN_OUTPUTS = RUN_MARKERS + ("renders",)


def holds_run(run_dir: Path) -> bool:
    """True when ``run_dir`` already holds (part of) a reconstruction run."""
    return any((Path(run_dir) / name).exists() for name in RUN_MARKERS)


def prepare_run_dir(run_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Create ``run_dir``; refuse one holding another run unless ``resume`` or ``overwrite``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(run_dir, "the output path exists and is not a directory")
    if holds_run(run_dir) and not resume:
        if not overwrite:
            raise InputError(
                run_dir, "already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
        for name in RUN_OUTPUTS:  # sfm/ stays: it is a cache of the input's structure from motion
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if resume and not (run_dir / "config.yaml").is_file():
        raise InputError(run_dir, "--resume given but there is no run to resume here (no config.yaml)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def holds_reusable_output(run_dir: Path) -> bool:
    """True when ``run_dir`` holds something a later run resumes from or reuses: a scene, a checkpoint or a
    structure-from-motion model (the costly part of a photo or video input)."""
    run_dir = Path(run_dir)
    return ((run_dir / "scene.ply").is_file() or any((run_dir / "checkpoints").glob("*.pt"))
            or any((run_dir / "sfm").glob("sparse/*/images.*")))


_REPLACED = ".recon3d-replaced"  # where --overwrite parks the previous run until the new one has output


@contextlib.contextmanager
def run_dir_guard(run_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Iterator[None]:
    """Undo a failed run's traces in ``run_dir`` unless it produced something reusable.

    A run that fails before writing anything worth keeping (a missing input, a bad video, a kernel build
    failure, Ctrl-C during SfM) leaves no folder behind, nor any parent folder it created; a folder that
    existed before is left as it was: what the run added goes, and with ``overwrite`` the previous run's
    outputs (parked aside, not deleted, until the run ends) come back. A run that got as far as an SfM model,
    a checkpoint or a scene keeps its folder, so ``--resume`` or a re-run reuses it.
    """
    run_dir = Path(run_dir)
    created = run_dir
    while not created.parent.exists() and created.parent != created:
        created = created.parent  # the outermost folder this run will create
    existed = run_dir.exists()
    before = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    parked = run_dir / _REPLACED
    if overwrite and not resume and run_dir.is_dir() and holds_run(run_dir) and not parked.exists():
        parked.mkdir()
        for name in RUN_OUTPUTS:
            if (run_dir / name).exists():
                (run_dir / name).rename(parked / name)
    try:
        yield
    except BaseException:
        if run_dir.is_dir() and not holds_reusable_output(run_dir):
            _roll_back(run_dir, before, parked)
            if not existed:
                with contextlib.suppress(OSError):
                    shutil.rmtree(created)
        raise
    finally:
        if parked.is_dir():  # success, or a failed run kept for its output: the old run stays replaced
            shutil.rmtree(parked, ignore_errors=True)


def _roll_back(run_dir: Path, before: set[str], parked: Path) -> None:
    restored = {p.name for p in parked.iterdir()} if parked.is_dir() else set()
    for entry in run_dir.iterdir():
        if entry != parked and (entry.name not in before or entry.name in restored):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for name in restored:
        (parked / name).rename(run_dir / name)


_F = TypeVar("_F", bound=Callable[..., Any])


def guards_run_dir(func: _F) -> _F:
    """Decorate a function taking ``out_dir`` (``overwrite``, ``resume``) so that it runs under :func:`run_dir_guard`."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        args_ = bound.arguments
        with run_dir_guard(args_["out_dir"], overwrite=bool(args_.get("overwrite")), resume=bool(args_.get("resume"))):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _image_reference(image: Path, base: Path | None) -> str:
    """Images inside the run directory are written relative to it (the run can move), others absolute."""
    image = Path(image).resolve()
    if base is not None:
        try:
            return str(image.relative_to(Path(base).resolve()))
        except ValueError:
            pass
    return str(image)


def cameras_to_json(
    cameras: Cameras, image_paths: list[Path], splits: list[str], base: Path | None = None,
    masks: list[Path | None] | None = None,
) -> list[dict]:
    """The cameras.json records for every camera; image (and mask) paths relative to ``base`` when inside it,
    else absolute. A camera with a mask gets a ``mask`` entry, so every split is judged on its kept pixels."""
    records = []
    for i in range(len(cameras)):
        extra = {"mask": _image_reference(masks[i], base)} if masks is not None and masks[i] is not None else {}
        records.append({
            "image": _image_reference(image_paths[i], base),
            "split": splits[i],
            "width": int(cameras.width[i]),
            "height": int(cameras.height[i]),
            "fx": float(cameras.fx[i]),
            "fy": float(cameras.fy[i]),
            "cx": float(cameras.cx[i]),
            "cy": float(cameras.cy[i]),
            "world_to_camera": cameras.world_to_camera[i].double().tolist(),
            **extra,
        })
    return records


def data_masks(data) -> list[Path | None] | None:
    """Each camera's mask file of a data set (None where it has none), or None when the data has no masks."""
    if not hasattr(data, "mask_path"):
        return None
    masks = [data.mask_path(i) for i in range(len(data.cameras))]
    return masks if any(m is not None for m in masks) else None


def write_cameras_json(path: str | Path, cameras: Cameras, image_paths: list[Path], splits: list[str],
                       masks: list[Path | None] | None = None) -> None:
    """Write cameras.json atomically."""
    records = cameras_to_json(cameras, image_paths, splits, base=Path(path).parent, masks=masks)
    atomic_write_text(path, json.dumps(records, indent=1) + "\n")


def read_cameras_json(path: str | Path) -> tuple[Cameras, list[Path], list[str]]:
    """Read cameras.json back: (cameras, image paths, splits)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no such file (is this a recon3d run directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"invalid JSON: {exc}") from None
    if not isinstance(records, list) or not records:
        raise InputError(path, "expected a non-empty list of cameras")
    w2c, values, images, splits = [], {k: [] for k in ("fx", "fy", "cx", "cy", "width", "height")}, [], []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(path, f"camera {i} is not an object")
        missing = [k for k in ("image", "split", "world_to_camera", *values) if k not in rec]
        if missing:
            raise InputError(path, f"camera {i} lacks {', '.join(missing)}")
        try:
            m = torch.tensor(rec["world_to_camera"], dtype=torch.float32)
            nums = {k: float(rec[k]) for k in values}
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"camera {i}: {exc}") from None
        if m.shape != (4, 4) or not torch.isfinite(m).all() or not all(math.isfinite(v) for v in nums.values()):
            raise InputError(path, f"camera {i}: world_to_camera must be a finite 4×4 matrix and intrinsics finite")
        if nums["fx"] <= 0 or nums["fy"] <= 0 or nums["width"] < 1 or nums["height"] < 1:
            raise InputError(path, f"camera {i}: focal lengths and image size must be positive")
        w2c.append(m)
        for k in values:
            values[k].append(nums[k])
        image = Path(rec["image"])
        if not image.is_absolute():
            image = (path.parent / image).resolve()
        images.append(image)
        splits.append(str(rec["split"]))
    cameras = Cameras(
        torch.stack(w2c),
        torch.tensor(values["fx"]), torch.tensor(values["fy"]), torch.tensor(values["cx"]), torch.tensor(values["cy"]),
        torch.tensor(values["width"]).long(), torch.tensor(values["height"]).long(),
    )
    return cameras, images, splits
