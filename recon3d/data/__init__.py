"""recon3d.data: every input kind -> ``SceneData`` (OpenCV cameras, image files, split, sparse points).

``load_dataset(path)`` detects the kind: ``transforms_train.json`` -> Blender/NeRF-synthetic;
``transforms.json`` -> nerfstudio / instant-ngp; ``sparse/0`` or ``sparse/`` with a COLMAP model ->
COLMAP project; a folder of JPEG/PNG (or a folder whose ``images/`` holds them) -> structure-from-motion
with pycolmap into ``work_dir/sfm``; a video file (or a folder of videos) -> chosen frames, then the same
SfM with sequential matching (``data/video.py``).

World frame: photo folders and video are turned upright, centred and scaled (``recon3d.data.orient``:
+Z up, the scene at the origin, metric-ish units) and the transform is saved as
``work_dir/orientation.json``; COLMAP, nerfstudio and Blender inputs keep their own frame unless
``orient="up"``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .images import decode_image, parse_background, probe_image
from .protocol import SceneDataProtocol
from .scene_data import DataWarning, SceneData, assemble, default_work_dir

__all__ = ["SceneData", "SceneDataProtocol", "load_dataset", "detect_kind", "DataWarning", "decode_image", "probe_image"]


def detect_kind(path: str | Path) -> str:
    """'blender', 'nerfstudio', 'colmap', 'photos' or 'video' for ``path`` (InputError when it is none of them)."""
    from .colmap import find_model_dir
    from .images import is_image_name
    from .video import VIDEO_SUFFIXES, is_video_name

    path = Path(path)
    if path.is_file():
        if is_video_name(path):
            return "video"
        if path.name == "transforms_train.json":
            return "blender"
        if path.suffix.lower() == ".json":
            return "nerfstudio"
        raise InputError(
            path,
            "expected a folder (photos, COLMAP project, Blender or nerfstudio data), a transforms.json "
            f"or a video ({', '.join(VIDEO_SUFFIXES)})",
        )
    if not path.is_dir():
        raise InputError(path, "no such file or folder")
    if (path / "transforms_train.json").is_file():
        return "blender"
    if (path / "transforms.json").is_file():
        return "nerfstudio"
    if find_model_dir(path) is not None:
        return "colmap"
    if (path / "sparse").is_dir():
        return "colmap"  # an empty or broken sparse/ folder: the COLMAP reader says what is wrong
    try:
        entries = list(path.iterdir())
    except OSError as e:
        raise InputError(path, f"cannot list folder ({e.strerror or e})") from None
    if any(p.is_file() and is_image_name(p) for p in entries):
        return "photos"
    if (path / "images").is_dir():
        return "photos"
    if any(p.is_file() and is_video_name(p) for p in entries):
        return "video"
    others = sum(1 for p in entries if p.is_file() and not p.name.startswith("."))
    raise InputError(
        path,
        f"no JPEG/PNG images found ({others} other file(s)); expected photos, videos, a COLMAP project, "
        "transforms.json or transforms_train.json",
    )


def load_dataset(
    path: str | Path,
    *,
    work_dir: Path | None = None,
    downscale: int = 1,
    max_image_size: int = 1600,
    background: str | tuple = "white",
    test_every: int = 8,
    masks: str | Path | None = None,
    video_frames: int = 0,
    video_fps: float = 0.0,
    orient: str = "auto",
    sfm_deterministic: bool = True,
) -> SceneData:
    """Load any supported input as ``SceneData`` (see the module docstring for the detection rules).

    ``masks``: a folder of masks by image file stem (white = keep). ``video_frames`` / ``video_fps``: how
    many frames a video gives (0: the default count) or how many per second of video. ``orient``: ``auto``
    (upright frame for photo folders and video, the input's own frame otherwise), ``up`` (always upright) or
    ``none`` (always the input's frame). ``sfm_deterministic``: a photo folder's SfM maps on one thread, so the
    same photos give the same model on every run (False: every core).
    """
    from .colmap import colmap_frames
    from .nerfstudio import blender_frames, nerfstudio_frames
    from .orient import resolve_orient

    path = Path(path)
    kind = detect_kind(path)
    upright = resolve_orient(orient, kind)
    bg = parse_background(background)
    work = Path(work_dir) if work_dir is not None else None
    common = dict(work_dir=work, max_image_size=max_image_size, background=bg, test_every=test_every)
    mask_dir = Path(masks) if masks is not None else None
    if kind == "blender":
        root = path if path.is_dir() else path.parent
        frames = _with_masks(blender_frames(root), mask_dir)
        orientation, _ = _orient(frames, None, upright, work)
        data = assemble(frames, source="blender", root=root, points=None, point_colors=None,
                        downscale=downscale, exif=False, **common)  # fmt: skip
        data.orientation = orientation
        return data
    if kind == "nerfstudio":
        json_path = path if path.is_file() else path / "transforms.json"
        frames, pts, cols = nerfstudio_frames(json_path)
        frames = _with_masks(frames, mask_dir)
        orientation, pts = _orient(frames, pts, upright, work)
        data = assemble(frames, source="nerfstudio", root=path, points=pts, point_colors=cols,
                        downscale=downscale, exif=False, **common)  # fmt: skip
        data.orientation = orientation
        return data
    if kind == "colmap":
        frames, pts, cols = colmap_frames(path)
        frames = _with_masks(frames, mask_dir)
        orientation, pts = _orient(frames, pts, upright, work)
        # COLMAP computed its poses on the stored pixels, without EXIF rotation.
        data = assemble(frames, source="colmap", root=path, points=pts, point_colors=cols,
                        downscale=downscale, exif=False, **common)  # fmt: skip
        data.orientation = orientation
        return data
    from .photos import run_sfm, scan_photo_folder

    sfm_options: dict = {"mask_dir": mask_dir, "deterministic": sfm_deterministic}
    if kind == "video":
        from .video import ADVICE, extract_frames

        if mask_dir is not None:
            raise InputError(mask_dir, "--masks works with photo folders and data sets, not with video")
        if work is None:
            work = default_work_dir(path)
            common["work_dir"] = work
        folder, _ = extract_frames(path, work / "video" / "frames", frames=video_frames, fps=video_fps)
        sfm_options = {"sequential": True, "advice": ADVICE}
    else:
        folder = path
        if not scan_photo_folder(path)[0] and (path / "images").is_dir():
            folder = path / "images"
    if work is None:
        work = default_work_dir(folder)
        common["work_dir"] = work
    try:
        sfm_dir, had_alpha = run_sfm(
            folder, work, downscale=downscale, max_image_size=max_image_size, background=bg, **sfm_options
        )
    except InputError as e:
        if kind == "video" and e.path == folder:  # name the video, not our frames folder
            raise InputError(path, e.problem.replace("images", "frames")) from None
        raise
    frames, pts, cols = colmap_frames(sfm_dir)
    if mask_dir is not None:  # the masks prepared with the images (same names, same size)
        for fr in frames:
            fr.mask = sfm_dir / "masks" / (fr.image.name + ".png")
    orientation, pts = _orient(frames, pts, upright, work)
    # The prepared copies are already rotated, composited and at the loading size.
    data = assemble(frames, source=kind, root=path, points=pts, point_colors=cols,
                    downscale=1, exif=False, **common)  # fmt: skip
    data.orientation = orientation
    if had_alpha:
        data.background = bg.clone()
    return data


def _with_masks(frames: list, mask_dir: Path | None) -> list:
    """Attach ``--masks`` (by image file stem) to the frames of a data set; they replace its own mask_path."""
    if mask_dir is not None:
        from .masks import find_masks

        for fr, mask in zip(frames, find_masks(mask_dir, [fr.image for fr in frames])):
            fr.mask = mask
    return frames


def _orient(frames: list, points, upright: bool, work_dir: Path | None):
    """Turn ``frames`` (in place) and ``points`` into the upright frame when asked; save or clear
    ``work_dir/orientation.json`` so that the run always says which frame it is in."""
    import numpy as np

    from .orient import ORIENTATION_FILE, compute_orientation, save_orientation

    record = None if work_dir is None else Path(work_dir) / ORIENTATION_FILE
    if not upright:
        if record is not None and record.is_file():
            record.unlink()  # a stale record from an earlier run would claim a transform that is not applied
        return None, points
    orientation = compute_orientation(np.stack([f.world_to_camera for f in frames]), points)
    for f in frames:
        f.world_to_camera = orientation.apply_world_to_camera(f.world_to_camera)
    if points is not None and len(points):
        points = orientation.apply_points(np.asarray(points, dtype=np.float64))
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        save_orientation(record, orientation)
    return orientation, points
