"""A video (or a folder of videos) -> sharp, well-spread frames -> the photo-folder SfM path, matched in order.

Decoding uses imageio-ffmpeg, already a recon3d dependency: its wheels ship a static ffmpeg build (every
container and codec ffmpeg reads: MP4/MOV/MKV/WebM/AVI with H.264, HEVC, VP9, AV1, …) and it streams raw
frames through a pipe, so a long video never sits in memory. PyAV would add a second copy of ffmpeg for
no gain here: we only read frames in order.

Frame choice, in one decoding pass: the video's frames are cut into ``N`` consecutive windows of equal
length (``N`` = ``--frames``, or duration × ``--fps``); in each window the sharpest frame (variance of the
Laplacian of its grey image, the standard focus measure) is kept. A kept frame still far blurrier than
the kept frames around it (a whole window of motion blur) is dropped. The frames go to
``work_dir/video/frames/`` and through ``photos.run_sfm`` with sequential matching (each frame with its
next neighbours) plus loop-closure pairs: frames far apart in time that look alike by a global descriptor
we compute from their SIFT features (COLMAP's vocabulary-tree loop detection needs a tree file we cannot
download), and the first and last frames, which meet again when the video is an orbit (``data/pairs.py``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io_utils import atomic_open, atomic_write_text
from .scene_data import info, list_names, progress, warn

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
DEFAULT_FRAMES = 150  # SfM cost on a CPU grows with the frame count (each is matched with its next 8)
MIN_FRAMES = 3
BLUR_RATIO = 0.35  # a kept frame sharper than this share of its neighbours' median is kept
BLUR_NEIGHBOURS = 5  # kept frames on each side that set the local sharpness level
SHARPNESS_SIZE = 640  # the focus measure runs on the grey frame shrunk to at most this longest side
FRAMES_VERSION = 1
ADVICE = "the frames overlap too little: try more frames (--frames 300) or a higher --fps"


def is_video_name(path: Path) -> bool:
    """True when the file name has a video suffix (case-insensitive)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def scan_videos(path: Path) -> list[Path]:
    """The video itself, or the videos of a folder (sorted); InputError when there are none."""
    if path.is_file():
        if not is_video_name(path):
            raise InputError(path, f"not a video file (expected {', '.join(VIDEO_SUFFIXES)})")
        return [path]
    videos = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and is_video_name(p))
    if not videos:
        raise InputError(path, f"no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
    return videos


@dataclass
class VideoInfo:
    """What ffmpeg says about a video before decoding it."""

    width: int
    height: int
    fps: float
    duration: float

    @property
    def num_frames(self) -> int:
        """Frame count estimated from duration × rate (exact for constant-rate video)."""
        return max(1, int(round(self.duration * self.fps)))


def _ffmpeg_reason(exc: Exception) -> str:
    """The telling line of an ffmpeg failure (its stderr ends with the reason; the banner is noise)."""
    text = str(exc)
    if "Input #0" in text and "Video:" not in text:
        return "no video stream (an audio-only file?)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    reason = re.sub(r"^Error opening input files?:?\s*", "", reason)
    if "moov atom not found" in text:
        reason += " (moov atom not found: the file is truncated or not finished writing)"
    return reason[:200]


def open_video(path: Path):
    """(VideoInfo, frame generator of H×W×3 uint8 bytes) for ``path``; InputError naming it when unreadable."""
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration, ValueError) as e:
        raise InputError(path, f"cannot decode video: {_ffmpeg_reason(e)}") from None
    size = meta.get("size") or (0, 0)
    fps = float(meta.get("fps") or 0.0)
    duration = float(meta.get("duration") or 0.0)
    if not (size[0] > 0 and size[1] > 0):
        gen.close()
        raise InputError(path, "no video stream (an audio-only file?)")
    if not (math.isfinite(fps) and fps > 0):
        fps = 30.0
    if not (math.isfinite(duration) and duration > 0):
        duration = float("nan")
    return VideoInfo(int(size[0]), int(size[1]), fps, duration), gen


def count_frames(path: Path) -> int:
    """Exact frame count by decoding (only when the container does not state a duration)."""
    import imageio_ffmpeg

    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(path, f"cannot decode video: {_ffmpeg_reason(e)}") from None


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (higher = sharper), on a copy shrunk to ``SHARPNESS_SIZE``."""
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    step = max(1, int(math.ceil(max(grey.shape) / SHARPNESS_SIZE)))
    if step > 1:  # box-shrink: sensor noise averages out, edges stay (a fair measure across resolutions)
        h, w = (grey.shape[0] // step) * step, (grey.shape[1] // step) * step
        grey = grey[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())


def drop_blurry(scores: list[float], ratio: float = BLUR_RATIO, neighbours: int = BLUR_NEIGHBOURS) -> list[bool]:
    """Keep flags: a frame is dropped when its sharpness is under ``ratio`` × the median of its neighbours'."""
    s = np.asarray(scores, dtype=np.float64)
    keep = []
    for i in range(len(s)):
        around = np.concatenate([s[max(0, i - neighbours) : i], s[i + 1 : i + 1 + neighbours]])
        keep.append(bool(len(around) == 0 or s[i] >= ratio * float(np.median(around))))
    return keep


def window_plan(num_frames: int, target: int) -> list[int]:
    """Window index of each frame: ``target`` equal, consecutive windows over ``num_frames`` frames."""
    target = max(1, min(target, num_frames))
    return [min(target - 1, i * target // num_frames) for i in range(num_frames)]


def _frame_name(prefix: str, index: int) -> str:
    return f"{prefix}_{index:06d}.jpg"


def _prefixes(videos: list[Path]) -> list[str]:
    """A file-name prefix per video: its stem, made unique and safe."""
    out: list[str] = []
    for v in videos:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", v.stem) or "video"
        name, k = base, 1
        while name in out:
            k += 1
            name = f"{base}_{k}"
        out.append(name)
    return out


def _save_jpeg(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(rgb).save(f, format="JPEG", quality=95)


def extract_frames(path: Path, out_dir: Path, *, frames: int = 0, fps: float = 0.0) -> tuple[Path, dict]:
    """Choose and write sharp, well-spread frames of a video (or a folder of videos) into ``out_dir``.

    ``frames``: how many to keep in all (0: ``DEFAULT_FRAMES``, or what ``fps`` asks); ``fps``: frames per
    second of video instead. Returns the folder and a summary; a re-run with the same input reuses it.
    """
    if frames < 0 or (frames and frames < MIN_FRAMES):
        raise InputError(path, f"--frames must be at least {MIN_FRAMES}, got {frames}")
    if not (fps >= 0 and math.isfinite(fps)):
        raise InputError(path, f"--fps must be a positive number, got {fps}")
    videos = scan_videos(path)
    stamp = [[str(v.resolve()), v.stat().st_size, v.stat().st_mtime_ns] for v in videos]
    key = {"version": FRAMES_VERSION, "videos": stamp, "frames": frames, "fps": fps}
    manifest_path = out_dir.parent / (out_dir.name + ".json")  # beside the frames: the SfM scan skips nothing
    try:
        old = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and {k: old.get(k) for k in key} == key and old.get("chosen"):
        if all((out_dir / n).is_file() for n in old["chosen"]):
            info(f"reusing {len(old['chosen'])} video frames in {out_dir}")
            return out_dir, old

    opened, bad = [], []
    for v in videos:
        try:
            vi, gen = open_video(v)
        except InputError as e:
            if len(videos) == 1:
                raise
            bad.append(f"{v.name} ({e.problem})")
            continue
        gen.close()
        if not math.isfinite(vi.duration):
            vi.duration = count_frames(v) / vi.fps
        opened.append((v, vi))
    if bad:
        warn(f"{path}: {len(bad)} video(s) could not be decoded and are skipped: {list_names(bad)}")
    if not opened:
        raise InputError(path, f"none of the {len(videos)} videos could be decoded")
    total = sum(vi.num_frames for _, vi in opened)
    if fps > 0:
        want = {v: max(1, int(round(vi.duration * fps))) for v, vi in opened}
    else:
        n = frames or DEFAULT_FRAMES
        want = {v: max(1, int(round(n * vi.num_frames / total))) for v, vi in opened}

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    chosen: list[str] = []
    scores: list[float] = []
    decoded_total = 0
    prefixes = dict(zip((v for v, _ in opened), _prefixes([v for v, _ in opened])))
    with progress() as bar:
        task = bar.add_task("decoding video, choosing sharp frames", total=total)
        for v, vi in opened:
            picks, decoded = _choose_in_video(v, vi, want[v], bar, task)
            decoded_total += decoded
            if len(picks) < want[v] and decoded < vi.num_frames * 0.9:
                warn(f"{v}: decoding stopped after {decoded} of about {vi.num_frames} frames; using those")
            for index, score, rgb in picks:
                name = _frame_name(prefixes[v], index)
                _save_jpeg(out_dir / name, rgb)
                chosen.append(name)
                scores.append(score)
    if not chosen:
        raise InputError(path, "no decodable frames in the video")
    keep = drop_blurry(scores)
    dropped = [n for n, k in zip(chosen, keep) if not k]
    for n in dropped:
        (out_dir / n).unlink()
    chosen = [n for n, k in zip(chosen, keep) if k]
    if len(chosen) < MIN_FRAMES:
        raise InputError(path, f"only {len(chosen)} usable frame(s); structure-from-motion needs at least {MIN_FRAMES}")
    summary = {
        **key,
        "decoded": decoded_total,
        "chosen": chosen,
        "dropped_blurry": dropped,
        "size": [opened[0][1].width, opened[0][1].height],
        "video_fps": opened[0][1].fps,
    }
    atomic_write_text(manifest_path, json.dumps(summary, indent=1))
    info(
        f"{path}: kept {len(chosen)} sharp frames of {decoded_total} decoded"
        + (f" ({len(dropped)} blurry dropped)" if dropped else "")
        + f" into {out_dir}"
    )
    return out_dir, summary


def _choose_in_video(video: Path, vi: VideoInfo, target: int, bar, task) -> tuple[list, int]:
    """The sharpest frame of each of ``target`` windows: [(frame index, sharpness, rgb)], frames decoded."""
    _, gen = open_video(video)
    plan_len = vi.num_frames
    frame_bytes = vi.width * vi.height * 3
    picks: list[tuple[int, float, np.ndarray]] = []
    best: tuple[int, float, np.ndarray] | None = None
    current = 0
    decoded = 0
    try:
        for raw in gen:
            if len(raw) != frame_bytes:
                break
            i = decoded
            decoded += 1
            bar.advance(task)
            # frames past the estimated count (a variable-rate file) fall in the last window
            window = min(target - 1, i * target // plan_len)
            if window != current and best is not None:
                picks.append(best)
                best = None
            current = window
            rgb = np.frombuffer(raw, dtype=np.uint8).reshape(vi.height, vi.width, 3)
            s = sharpness(rgb)
            if best is None or s > best[1]:
                best = (i, s, rgb.copy())
    except (OSError, RuntimeError) as e:  # a file damaged midway: keep the frames decoded so far
        warn(f"{video}: decoding failed after {decoded} frames ({_ffmpeg_reason(e)}); using those")
    finally:
        gen.close()
    if best is not None:
        picks.append(best)
    return picks, decoded
