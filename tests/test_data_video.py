"""Video input: frame choice, blur rejection, bad videos, and (slow) an orbit that registers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from recon3d.cli import main
from recon3d.data import detect_kind, load_dataset
from recon3d.data.video import (
    drop_blurry,
    extract_frames,
    sharpness,
    window_plan,
)
from recon3d.errors import InputError

W, H = 96, 64


def _texture(seed: int, w: int, h: int) -> np.ndarray:
    """A random, blocky colour texture (sharp edges at every scale SIFT and the focus measure see)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, 0), 4, 1)[:h, :w]


def _box_blur(img: np.ndarray, k: int) -> np.ndarray:
    """Box blur of radius k (a strong, known blur)."""
    out = img.astype(np.float32)
    for axis in (0, 1):
        acc = np.zeros_like(out)
        for d in range(-k, k + 1):
            acc += np.roll(out, d, axis=axis)
        out = acc / (2 * k + 1)
    return out.round().astype(np.uint8)


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, quality=9, codec="libx264",
                                         macro_block_size=2, ffmpeg_log_level="error")  # fmt: skip
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def _pan_frames(n: int, blurred: set[int] = frozenset(), seed: int = 0) -> list[np.ndarray]:
    """Frames panning over one big texture, 2 px per frame; those in ``blurred`` strongly blurred."""
    big = _texture(seed, W + 2 * n, H)
    frames = []
    for i in range(n):
        f = np.ascontiguousarray(big[:, 2 * i : 2 * i + W])
        frames.append(_box_blur(f, 3) if i in blurred else f)
    return frames


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    """3 s at 10 fps, 96×64: every 3rd frame of each window of 3 is sharp, the other two blurred."""
    blurred = {i for i in range(30) if i % 3 != 1}
    path = tmp_path / "clip.mp4"
    _write_video(path, _pan_frames(30, blurred))
    return path


def test_sharpness_orders_blur():
    """The focus measure drops monotonically as a known blur grows (independent of the image)."""
    img = _texture(3, 320, 240)
    scores = [sharpness(img)] + [sharpness(_box_blur(img, k)) for k in (1, 2, 4)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] < 0.2 * scores[0]


def test_drop_blurry_flags_only_the_outlier():
    scores = [100.0, 95, 110, 20, 105, 98, 102]
    assert drop_blurry(scores) == [True, True, True, False, True, True, True]
    assert drop_blurry([50.0] * 5) == [True] * 5


def test_window_plan_is_even():
    plan = window_plan(1200, 200)
    assert len(set(plan)) == 200 and plan == sorted(plan)
    counts = np.bincount(plan)
    assert counts.min() == counts.max() == 6
    assert window_plan(5, 10) == [0, 1, 2, 3, 4]


def test_tiny_video_frames_chosen_and_blur_rejected(tiny_video: Path, tmp_path: Path):
    out, summary = extract_frames(tiny_video, tmp_path / "frames", frames=10)
    chosen = summary["chosen"]
    assert summary["decoded"] == 30
    assert len(chosen) == 10
    indices = [int(n.rsplit("_", 1)[1].split(".")[0]) for n in chosen]
    # one frame per window of 3, and in each the sharp one (index 3k+1), never a blurred neighbour
    assert indices == [3 * k + 1 for k in range(10)]
    assert sorted(p.name for p in out.iterdir()) == chosen
    from PIL import Image

    with Image.open(out / chosen[0]) as im:
        assert im.size == (W, H)
    # re-running with the same settings reuses the frames (same files, untouched)
    mtime = (out / chosen[0]).stat().st_mtime_ns
    _, again = extract_frames(tiny_video, tmp_path / "frames", frames=10)
    assert again["chosen"] == chosen and (out / chosen[0]).stat().st_mtime_ns == mtime


def test_fps_option_sets_the_count(tiny_video: Path, tmp_path: Path):
    _, summary = extract_frames(tiny_video, tmp_path / "frames", fps=2.0)
    assert len(summary["chosen"]) == 6  # 3 s × 2 per second


def test_a_blurred_window_is_dropped(tmp_path: Path):
    """When every frame of a window is blurred, its best frame is still far below its neighbours: dropped."""
    frames = _pan_frames(30, blurred=set(range(12, 15)), seed=1)
    path = tmp_path / "shaky.mp4"
    _write_video(path, frames)
    _, summary = extract_frames(path, tmp_path / "frames", frames=10)
    dropped = [int(n.rsplit("_", 1)[1].split(".")[0]) for n in summary["dropped_blurry"]]
    assert len(dropped) == 1 and 12 <= dropped[0] <= 14
    assert len(summary["chosen"]) == 9


def test_folder_of_videos(tmp_path: Path):
    folder = tmp_path / "clips"
    folder.mkdir()
    _write_video(folder / "a.mp4", _pan_frames(20, seed=2))
    _write_video(folder / "b.mkv", _pan_frames(10, seed=3))
    (folder / "notes.txt").write_text("not a video")
    assert detect_kind(folder) == "video"
    _, summary = extract_frames(folder, tmp_path / "frames", frames=9)
    names = summary["chosen"]
    assert sum(n.startswith("a_") for n in names) == 6 and sum(n.startswith("b_") for n in names) == 3


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".webm", ".avi"])
def test_containers_are_detected(tmp_path: Path, suffix: str):
    p = tmp_path / f"clip{suffix}"
    p.write_bytes(b"")
    assert detect_kind(p) == "video"


def test_corrupt_video_is_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(InputError) as e:
        load_dataset(bad, work_dir=tmp_path / "run")
    assert e.value.path == bad and "cannot decode video" in e.value.problem
    rc = main(["reconstruct", str(bad), "-o", str(tmp_path / "run2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: cannot decode video")


def test_truncated_video_is_one_line(tiny_video: Path, tmp_path: Path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(tiny_video.read_bytes()[: tiny_video.stat().st_size // 2])
    with pytest.raises(InputError, match="cannot decode video.*truncated"):
        extract_frames(cut, tmp_path / "frames")


def _ffmpeg(*args: str) -> None:
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", *args], check=True)


def test_audio_only_file_is_one_line(tmp_path: Path):
    audio = tmp_path / "voice.mp4"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "1", "-c:a", "aac", str(audio))
    with pytest.raises(InputError, match=r"voice.mp4: cannot decode video: no video stream \(an audio-only file\?\)"):
        extract_frames(audio, tmp_path / "frames")


def test_video_damaged_midway_keeps_the_frames_before(tmp_path: Path):
    """A Matroska file cut at 80 %: the frames before the cut are used, with one warning naming the file."""
    mp4, mkv = tmp_path / "a.mp4", tmp_path / "a.mkv"
    _write_video(mp4, _pan_frames(40, seed=5))
    _ffmpeg("-i", str(mp4), "-c", "copy", str(mkv))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: mkv.stat().st_size * 8 // 10])
    with pytest.warns(UserWarning, match=r"cut.mkv: decoding stopped after \d+ of about 40 frames"):
        _, summary = extract_frames(cut, tmp_path / "frames", frames=20)
    decoded = summary["decoded"]
    assert 3 <= decoded < 40 and len(summary["chosen"]) == (decoded + 1) // 2  # windows of 2 up to the cut
    assert all(int(n.rsplit("_", 1)[1][:6]) < summary["decoded"] for n in summary["chosen"])


def test_folder_with_one_corrupt_video_skips_it(tmp_path: Path):
    folder = tmp_path / "clips"
    folder.mkdir()
    _write_video(folder / "good.mp4", _pan_frames(12, seed=4))
    (folder / "bad.mov").write_bytes(b"\0" * 1000)
    with pytest.warns(UserWarning, match=r"1 video\(s\) could not be decoded.*bad.mov"):
        _, summary = extract_frames(folder, tmp_path / "frames", frames=6)
    assert len(summary["chosen"]) == 6


def test_bad_frame_options(tiny_video: Path, tmp_path: Path):
    with pytest.raises(InputError, match="--frames must be at least 3"):
        extract_frames(tiny_video, tmp_path / "f", frames=2)
    rc = main(["reconstruct", str(tiny_video), "-o", str(tmp_path / "run"), "--fps", "-1"])
    assert rc == 2


def test_masks_refused_for_video(tiny_video: Path, tmp_path: Path):
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match="not with video"):
        load_dataset(tiny_video, work_dir=tmp_path / "run", masks=tmp_path / "m")


@pytest.mark.slow
def test_orbit_video_registers(tmp_path: Path):
    """A short rendered orbit of the garden (6 s, 15 fps, 320×180) -> ≥ 95 % of the 45 chosen frames registered."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    video = tmp_path / "orbit.mp4"
    subprocess.run([sys.executable, str(root / "examples" / "make_garden.py"), "--video", str(video),
                    "--seconds", "6", "--fps", "15", "--size", "320x180"], check=True, capture_output=True)  # fmt: skip
    data = load_dataset(video, work_dir=tmp_path / "run", video_frames=45)
    manifest = json.loads((tmp_path / "run" / "sfm" / "manifest.json").read_text())
    registered, chosen = manifest["registered"]
    assert chosen == 45 and registered >= math.ceil(0.95 * chosen)
    assert len(data) == registered and data.source == "video"
    # the recovered path is an orbit: camera centres on a circle, about as far from their centre
    w2c = data.cameras.world_to_camera.double()
    centres = -(w2c[:, :3, :3].transpose(1, 2) @ w2c[:, :3, 3:])[..., 0]
    mid = centres.mean(0)
    radii = (centres - mid).norm(dim=1)
    assert float(radii.std() / radii.mean()) < 0.15
