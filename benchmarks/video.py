"""Video benchmark: a rendered 40 s, 30 fps, 960×540 orbit of the garden -> ``recon3d reconstruct garden.mp4``.

    .venv/bin/python benchmarks/video.py            # make the video if absent, reconstruct with --time-budget 10
    .venv/bin/python benchmarks/video.py sfm --frames 500   # SfM alone on 500 chosen frames (issue 21's case)
    .venv/bin/python benchmarks/video.py sfm --frames 150 --compare   # older vs current SfM settings, same frames

Reports the share of chosen frames registered (target ≥ 95 %), held-out PSNR rendered over black and over
white (target ≥ 25 dB for the worse, 10 minutes with SfM included), SfM time per stage (wall-clock and CPU
seconds: on a shared machine the CPU seconds are the figure that does not depend on the load), the pairs
matched, frames chosen, and the recovered cameras against the true ones the renderer wrote
(``garden.mp4.json``), after a similarity alignment. Results: ``benchmarks/results/video.json``
(``video_sfm_N.json``, ``video_sfm_N_compare.json``), with ``uptime`` at start and end: the machine is
shared. The video is a benchmark input the project makes (``examples/make_garden.py --video``; ~40 min of
one core at 960×540), kept in ``~/.cache/recon3d/bench/`` by default, never shipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path(os.environ.get("RECON3D_CACHE", Path.home() / ".cache" / "recon3d")) / "bench"
VIDEO = CACHE / "garden_40s_960x540.mp4"
ORBIT_RADIUS = 3.3  # examples/make_garden.py: mean orbit radius (world units)


def machine() -> dict:
    """Where and under what load the figures were taken."""
    return {
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def make_video(path: Path) -> float:
    """Render the benchmark video if absent; returns the seconds it took (0 when it existed)."""
    if path.is_file() and Path(str(path) + ".json").is_file():
        return 0.0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_garden.py"), "--video", str(path),
                    "--seconds", "40", "--fps", "30", "--size", "960x540"], check=True)  # fmt: skip
    return time.perf_counter() - t0


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: scale, rotation, translation mapping points ``src`` onto ``dst`` (least squares)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(u @ vt))
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / a.var(0).sum())
    return scale, rot, mu_d - scale * rot @ mu_s


def camera_errors(names: list[str], world_to_camera: np.ndarray, truth_json: Path) -> dict:
    """Recovered vs true cameras (frame index from the name) after a similarity alignment of the centres."""
    meta = json.loads(truth_json.read_text())
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    true_c2w = [np.asarray(f["transform_matrix"]) @ flip for f in meta["frames"]]  # OpenGL -> OpenCV
    idx = [int(Path(n).stem.rsplit("_", 1)[1]) for n in names]
    est_c2w = np.linalg.inv(world_to_camera)
    gt = np.stack([true_c2w[i] for i in idx])
    s, rot, t = _similarity(est_c2w[:, :3, 3], gt[:, :3, 3])
    centres = (s * (rot @ est_c2w[:, :3, 3].T)).T + t
    pos_err = np.linalg.norm(centres - gt[:, :3, 3], axis=1) / ORBIT_RADIUS * 100
    rot_err = []
    for e, g in zip(est_c2w, gt):
        r = g[:3, :3].T @ (rot @ e[:3, :3])
        rot_err.append(math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    return {
        "frames_compared": len(idx),
        "position_error_pct_of_radius": {"median": float(np.median(pos_err)), "max": float(pos_err.max())},
        "rotation_error_deg": {"median": float(np.median(rot_err)), "max": float(np.max(rot_err))},
    }


def heldout_over_backgrounds(run_dir: Path) -> dict:
    """PSNR of the held-out frames over black and over white and the see-through share, from the run's
    own evaluation (metrics.json: the neutral appearance, rendered over each background)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    return {
        "views": m["num_test_views"],
        "psnr_over_black": m["psnr_black"],
        "psnr_over_white": m["psnr_white"],
        "psnr_worse": min(m["psnr_black"], m["psnr_white"]),
        "see_through_share": m["see_through"],
        "psnr_nerfw": m.get("psnr_nerfw"),
    }


def run_benchmark(args: argparse.Namespace) -> dict:
    """Reconstruct the video with a time budget and gather every figure."""
    result: dict = {"benchmark": "video", "machine_at_start": machine()}
    result["video_render_seconds"] = round(make_video(args.video), 1)
    run_dir = args.out / "garden_video"
    if run_dir.exists():  # --overwrite keeps a matching sfm/ (SfM reused): the figure must include the SfM
        shutil.rmtree(run_dir)
    cmd = [str(ROOT / ".venv" / "bin" / "recon3d"), "reconstruct", str(args.video), "-o", str(run_dir),
           "--time-budget", str(args.minutes), "--overwrite"]  # fmt: skip
    if args.frames:
        cmd += ["--frames", str(args.frames)]
    result["command"] = " ".join(["recon3d", *cmd[1:]])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(proc.stdout[-2000:], proc.stderr[-3000:], sep="\n")
    if proc.returncode != 0:
        result["error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr else f"exit {proc.returncode}"
        return result
    frames = json.loads((run_dir / "video" / "frames.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result.update(frames_decoded=frames["decoded"], frames_dropped_blurry=len(frames["dropped_blurry"]))
    result.update(_sfm_figures(run_dir / "sfm", args.video))
    result["training"] = {
        k: metrics.get(k)
        for k in ("psnr", "ssim", "steps", "num_gaussians", "total_seconds", "train_seconds", "num_test_views")
    }  # fmt: skip
    result["heldout"] = heldout_over_backgrounds(run_dir)
    # The target is 10 minutes with SfM included. --time-budget counts from the command's start (frame choice
    # and SfM included); the command's wall time is checked as well.
    result["targets"] = {"registered_share >= 0.95": result["registered_share"] >= 0.95,
                         "psnr_worse >= 25": result["heldout"]["psnr_worse"] >= 25.0,
                         "wall_seconds <= 600 (SfM included)": result["wall_seconds"] <= 600.0}  # fmt: skip
    return result


def _sfm_figures(sfm_dir: Path, video: Path) -> dict:
    """Registered share, per-stage seconds, pairs and camera error vs truth of one SfM run's manifest/model."""
    from recon3d.data.colmap import colmap_frames

    manifest = json.loads((sfm_dir / "manifest.json").read_text())
    registered, chosen = manifest["registered"]
    stages = manifest.get("stages", {})
    model, _, _ = colmap_frames(sfm_dir)
    return {
        "frames_chosen": chosen,
        "frames_registered": registered,
        "registered_share": registered / chosen,
        "sfm_wall_seconds": round(sum(v["wall_s"] for v in stages.values()), 1),
        "sfm_cpu_seconds": round(sum(v["cpu_s"] for v in stages.values()), 1),
        "stages": stages,
        "pairs": manifest.get("pairs"),
        "sfm_summary": manifest["summary"],
        "cameras_vs_truth": camera_errors([f.image.name for f in model], np.stack([f.world_to_camera for f in model]),
                                          Path(str(video) + ".json")),  # fmt: skip
    }


# The video SfM settings before the speed-up (session 8), for --compare: SIFT on frames upsampled 2x and
# pycolmap's default incremental mapper (global adjustment each time the model grows by a tenth).
BEFORE = {"VIDEO_SIFT": {"max_num_features": 4096, "first_octave": -1}, "LARGE_MAPPER": {}}


@contextlib.contextmanager
def sfm_settings(label: str):
    """``after``: recon3d's current video SfM settings; ``before``: the older ones (BEFORE), for a side-by-side."""
    from recon3d.data import photos

    saved = {k: getattr(photos, k) for k in BEFORE}
    try:
        if label == "before":
            for k, v in BEFORE.items():
                setattr(photos, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(photos, k, v)


def run_sfm_only(args: argparse.Namespace) -> dict:
    """Structure-from-motion alone on ``--frames`` chosen frames of the video: stage times, share, camera error.

    With ``--compare``: the older settings (``before``) and the current ones (``after``) on the same frames,
    one after the other in this process, so that the two see the same machine as nearly as a shared one allows.
    """
    from recon3d.data.images import parse_background
    from recon3d.data.photos import run_sfm
    from recon3d.data.video import extract_frames

    make_video(args.video)
    result: dict = {"benchmark": "video_sfm", "machine_at_start": machine(), "video": str(args.video),
                    "frames_asked": args.frames}  # fmt: skip
    base = args.out / f"video_sfm_{args.frames}"
    t0 = time.perf_counter()
    frames_dir, summary = extract_frames(args.video, base / "frames", frames=args.frames)
    result["frame_choice_seconds"] = round(time.perf_counter() - t0, 1)
    result["frames_decoded"] = summary["decoded"]
    for label in ("after", "before") if args.compare else ("after",):
        work = base / label
        if work.exists():  # a fresh SfM each time, never a reused model
            shutil.rmtree(work)
        with sfm_settings(label):
            sfm_dir, _ = run_sfm(frames_dir, work, downscale=1, max_image_size=1600,
                                 background=parse_background("white"), sequential=True)  # fmt: skip
        figures = _sfm_figures(sfm_dir, args.video)
        figures["machine_after"] = machine()["uptime"]
        if args.compare:
            result[label] = figures
        else:
            result.update(figures)
    if args.compare:
        b, a = result["before"], result["after"]
        result["cpu_speedup"] = round(b["sfm_cpu_seconds"] / max(a["sfm_cpu_seconds"], 1e-9), 2)
        result["wall_speedup"] = round(b["sfm_wall_seconds"] / max(a["sfm_wall_seconds"], 1e-9), 2)
        result["mapping_cpu_speedup"] = round(b["stages"]["mapping"]["cpu_s"] / max(a["stages"]["mapping"]["cpu_s"], 1e-9), 2)
        return result
    result["targets"] = {"registered_share >= 0.95": result["registered_share"] >= 0.95}
    if args.frames >= 500:  # issue 21: a 500-frame video registered >= 95 % in <= 20 minutes on 2 cores
        result["targets"]["sfm_wall_seconds <= 1200"] = result["sfm_wall_seconds"] <= 1200
        result["targets"]["sfm_cpu_seconds <= 2400 (2 cores x 20 min)"] = result["sfm_cpu_seconds"] <= 2400
    return result


def main() -> None:
    """Parse the command line, run, print and save."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="run", choices=("run", "sfm"))
    ap.add_argument("--video", type=Path, default=VIDEO)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--frames", type=int, default=0, help="frames to choose (run: recon3d's default; sfm: 500)")
    ap.add_argument("--compare", action="store_true", help="sfm: the older settings and the current ones, side by side")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    args = ap.parse_args()
    if args.what == "sfm":
        args.frames = args.frames or 500
        name = f"video_sfm_{args.frames}" + ("_compare" if args.compare else "")
        result = run_sfm_only(args)
    else:
        result, name = run_benchmark(args), "video"
    result["machine_at_end"] = machine()
    from recon3d.io_utils import atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
