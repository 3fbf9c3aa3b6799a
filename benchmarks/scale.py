"""Large captures: peak RSS and steps/s of a 600-image 1600×1200 capture against a 60-image capture of the
same scene.

    python benchmarks/scale.py                        # 600 views at 1600×1200 (the issue's target)
    python benchmarks/scale.py --views 600 --width 800 --height 600 --steps 200 --image-cache-gb 0.25

1. ``capture``: renders an analytic scene (``recon3d.train.synthetic.truth_scene``: coloured Gaussians on a
   sphere, on a textured ground) from ``--views`` cameras on a sphere of directions into a nerfstudio
   ``transforms.json`` folder (JPEG, quality 95) under ``--work`` (default /tmp/recon3d-scale), and a second
   ``transforms.json`` naming ``--small`` of them spread evenly over the capture (every k-th: the cameras are
   ordered by elevation). Made once, reused.
2. ``memory``: ``recon3d reconstruct`` on each, side by side (three subprocesses at once, 1 thread each, so
   each sees the same machine load and has its own peak RSS), the same steps, preset and threads;
   metrics.json gives steps/s (wall clock), steps per CPU second of the training loop, peak RSS
   (ru_maxrss), and the image store's mode and peak. The run of 1 image measures the process without images:
   the model, the render buffers at this size, torch and the kernels. Targets: RSS of the large capture ≤
   that + 3 GB; steps/s of the large capture within 10 % of the small one (both clocks). ``--image-cache-gb``
   is passed to every run (default: the store's own default, a quarter of free memory up to 2 GiB); the
   store only fills its bound once the steps have visited that many images.
3. ``processes``: 1 process and 2 (``torchrun --nproc_per_node 2``, gloo), batch 1 each, side by side on the
   small capture for ``--dp-steps`` steps: steps/s and images/s, by the wall clock and per CPU second. On 2
   shared cores no gain is expected; the figures are measured, not assumed.

Writes benchmarks/results/scale.json. The machine's load is recorded with the figures (loadavg before and
after): on a shared machine the ratios of runs made side by side are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recon3d.cameras import OPENGL_TO_OPENCV, Cameras, look_at_world_to_camera  # noqa: E402
from recon3d.render import render  # noqa: E402
from recon3d.scene import GaussianScene  # noqa: E402
from recon3d.train.synthetic import truth_scene  # noqa: E402


def scene(num: int = 4000) -> GaussianScene:
    """A sphere of coloured Gaussians above a ground of small checker-coloured ones (texture at every scale)."""
    ball = truth_scene(num // 2, seed=0, radius=1.0)
    g = torch.Generator().manual_seed(1)
    xy = (torch.rand(num // 2, 2, generator=g) * 2 - 1) * 3.0
    ground = torch.cat([xy, torch.full((num // 2, 1), -1.2)], 1)
    checker = ((xy[:, 0].floor() + xy[:, 1].floor()) % 2)[:, None]
    colors = 0.25 + 0.5 * checker * torch.tensor([[0.9, 0.7, 0.4]]) + 0.2 * torch.rand(num // 2, 3, generator=g)
    floor = GaussianScene.from_points(ground, colors.clamp(0, 1), scale=0.06, opacity=0.95)
    return GaussianScene.cat([ball, floor]) if hasattr(GaussianScene, "cat") else _cat(ball, floor)


def _cat(a: GaussianScene, b: GaussianScene) -> GaussianScene:
    return GaussianScene(*(torch.cat([getattr(a, k), getattr(b, k)]) for k in
                           ("means", "scales", "quats", "opacities", "sh0", "shN")))


def camera_poses(n: int) -> list[torch.Tensor]:
    """``n`` world-to-camera matrices on a Fibonacci sphere cap (above the ground), looking at the ball."""
    poses = []
    golden = math.pi * (3 - math.sqrt(5))
    for k in range(n):
        z = 0.05 + 0.85 * (k + 0.5) / n  # elevation: from just above the ground to high up
        r = math.sqrt(1 - z * z)
        eye = 4.0 * torch.tensor([r * math.cos(golden * k), r * math.sin(golden * k), z])
        poses.append(look_at_world_to_camera(eye, torch.zeros(3), (0.0, 0.0, 1.0)))
    return poses


def make_capture(folder: Path, views: int, small: int, width: int, height: int) -> tuple[Path, Path]:
    """The capture's transforms.json (all views) and transforms_small.json (the first ``small``)."""
    from PIL import Image

    full, part = folder / "transforms.json", folder / "small" / "transforms.json"
    if full.is_file():
        meta = json.loads(full.read_text())
        if len(meta["frames"]) == views and meta["w"] == width and meta["h"] == height:
            _write_small(folder, part, meta, small)
            return full, part
    (folder / "images").mkdir(parents=True, exist_ok=True)
    truth = scene()
    poses = camera_poses(views)
    cams = Cameras.from_fov(torch.stack(poses), 0.9, width, height)
    frames = []
    t0 = time.monotonic()
    with torch.no_grad():
        for k in range(views):
            rgb = render(truth, cams[k], background=torch.ones(3), backend="cpu").rgb[0].clamp(0, 1)
            name = f"images/view_{k:04d}.jpg"
            Image.fromarray((rgb.numpy() * 255 + 0.5).astype(np.uint8)).save(folder / name, quality=95)
            c2w = torch.linalg.inv(poses[k].double()) @ OPENGL_TO_OPENCV.double()
            frames.append({"file_path": name, "transform_matrix": c2w.tolist()})
            if k % 50 == 0:
                print(f"  rendered {k + 1}/{views} views ({time.monotonic() - t0:.0f} s)", flush=True)
    common = {"camera_model": "PINHOLE", "fl_x": float(cams.fx[0]), "fl_y": float(cams.fy[0]),
              "cx": float(cams.cx[0]), "cy": float(cams.cy[0]), "w": width, "h": height}
    meta = {**common, "frames": frames}
    full.write_text(json.dumps(meta))
    _write_small(folder, part, meta, small)
    return full, part


def _write_small(folder: Path, part: Path, meta: dict, small: int) -> None:
    """The small capture: ``small`` views spread evenly over the whole capture (every k-th), so both runs see
    the same mix of viewpoints. The cameras are ordered by elevation, and a step's cost depends on the view
    (the 1-image run's steps cost 1.3× the 60-image run's per CPU second): the first ``small`` views, all near
    the ground, made the comparison one of viewpoints rather than of image counts."""
    frames = meta["frames"]
    picked = [frames[round(i * len(frames) / small)] for i in range(small)]
    part.parent.mkdir(parents=True, exist_ok=True)
    (part.parent / "images").mkdir(exist_ok=True)
    for f in picked:  # the small capture names the same files, through links in its own folder
        link = part.parent / f["file_path"]
        if not link.exists():
            link.symlink_to(folder / f["file_path"])
    part.write_text(json.dumps({**meta, "frames": picked}))


def _command(data: Path, run: Path, steps: int, threads: int, extra: list[str],
             launcher: list[str] | None = None) -> list[str]:
    return (launcher or [sys.executable]) + ["-m", "recon3d.cli", "reconstruct", str(data.parent), "-o", str(run),
                                             "--overwrite", "--preset", "fast", "--steps", str(steps), "--quiet",
                                             "--set", f"run.threads={threads}", "--set", "data.test_every=0",
                                             "--max-gaussians", "20000", *extra]


def side_by_side(jobs: dict[str, list[str]], env: dict | None = None) -> dict[str, dict]:
    """Run the commands at once (the same machine load for each); per job its metrics.json, its wall time and,
    from wait4, the CPU seconds and peak RSS of the process with its children (torchrun's workers)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    t0 = time.monotonic()
    procs = {name: subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, cmd in jobs.items()}
    rows: dict[str, dict] = {}
    for name, proc in procs.items():
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            for other in procs.values():
                if other.poll() is None:
                    other.kill()
            raise SystemExit(f"{name}: {' '.join(jobs[name])} failed:\n{err[-3000:]}")
        cmd = jobs[name]
        run = Path(cmd[cmd.index("-o") + 1])
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["wall_seconds"] = round(time.monotonic() - t0, 1)
        metrics["process_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)  # the whole run, all ranks
        metrics["command"] = " ".join(cmd[cmd.index("reconstruct") - 2:])
        rows[name] = metrics
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    """Make the capture, run the comparisons, print and save the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=600)
    p.add_argument("--small", type=int, default=60)
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1200)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--image-cache-gb", type=float, default=None)
    p.add_argument("--work", type=Path, default=Path("/tmp/recon3d-scale"))
    p.add_argument("--dp-steps", type=int, default=20, help="steps of the 1- and 2-process runs")
    p.add_argument("--steady-steps", type=int, default=0, help="steps of the float-vs-disk runs after the first "
                   "epoch (0: skip)")
    p.add_argument("--steady-cache-gb", type=float, default=0.1)
    p.add_argument("--skip", choices=("memory", "processes"), action="append", default=[])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = p.parse_args()

    load_before = os.getloadavg()
    print(f"capture: {args.views} views at {args.width}×{args.height} in {args.work}", flush=True)
    full, part = make_capture(args.work, args.views, args.small, args.width, args.height)
    one = args.work / "one" / "transforms.json"
    meta = json.loads(part.read_text())
    one.parent.mkdir(exist_ok=True)
    (one.parent / "images").mkdir(exist_ok=True)
    link = one.parent / meta["frames"][0]["file_path"]
    if not link.exists():
        link.symlink_to(args.work / meta["frames"][0]["file_path"])
    one.write_text(json.dumps({**meta, "frames": meta["frames"][:1]}))
    result: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "torch": torch.__version__, "views": args.views, "small": args.small,
                    "size": [args.width, args.height], "steps": args.steps, "threads": args.threads,
                    "image_cache_gb": args.image_cache_gb}
    runs = args.work / "runs"
    keep = ("steps", "steps_per_second", "train_seconds", "train_cpu_seconds", "steps_per_cpu_second", "peak_ram_mb",
            "image_store", "num_gaussians", "num_train_views", "batch_size", "processes", "wall_seconds",
            "process_cpu_seconds", "command")
    if "memory" not in args.skip:
        # the three runs side by side (1 thread each): the same machine load for each
        extra = [] if args.image_cache_gb is None else ["--image-cache-gb", str(args.image_cache_gb)]
        print(f"memory: 1 image, {args.small} and {args.views} images side by side, {args.steps} steps", flush=True)
        rows = side_by_side({name: _command(data, runs / name, args.steps, args.threads, extra)
                             for name, data in (("one_image", one), ("small", part), ("large", full))})
        base, small, large = (rows[k]["peak_ram_mb"] for k in ("one_image", "small", "large"))
        ratio = rows["large"]["steps_per_second"] / rows["small"]["steps_per_second"]
        cpu_ratio = rows["large"]["steps_per_cpu_second"] / rows["small"]["steps_per_cpu_second"]
        result["memory"] = {
            "runs": {k: {key: v.get(key) for key in keep} for k, v in rows.items()},
            "large_over_no_images_mb": round(large - base, 1),
            "small_over_no_images_mb": round(small - base, 1),
            "float32_would_need_mb": round(args.views * args.width * args.height * 12 / 2**20, 1),
            "uint8_would_need_mb": round(args.views * args.width * args.height * 3 / 2**20, 1),
            "steps_per_second_large_over_small": round(ratio, 3),
            "steps_per_cpu_second_large_over_small": round(cpu_ratio, 3),
            "target_rss_met": large - base <= 3 * 1024, "target_speed_met": min(ratio, cpu_ratio) >= 0.9,
        }
        print(f"peak RSS: 1 image {base:.0f} MB, {args.small} images {small:.0f} MB, {args.views} images {large:.0f} MB "
              f"(+{large - base:.0f} MB over the run without images; float32 images alone would be "
              f"{result['memory']['float32_would_need_mb']:.0f} MB)")
        print(f"steps/s: {args.small} images {rows['small']['steps_per_second']:.3f}, {args.views} images "
              f"{rows['large']['steps_per_second']:.3f} (ratio {ratio:.3f}); per CPU second "
              f"{rows['small']['steps_per_cpu_second']:.3f} / {rows['large']['steps_per_cpu_second']:.3f} "
              f"(ratio {cpu_ratio:.3f})", flush=True)
    if "processes" not in args.skip:
        # 1 process and 2 (torchrun, gloo) with batch 1 each, side by side on the small capture: the figures
        # are printed, not assumed; on 2 shared cores no gain is expected
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
        print(f"processes: 1 and 2 on {args.small} images side by side, {args.dp_steps} steps", flush=True)
        rows = side_by_side({"one_process": _command(part, runs / "one_process", args.dp_steps, args.threads, []),
                             "two_processes": _command(part, runs / "two_processes", args.dp_steps, args.threads, [],
                                                       torchrun)})
        for row in rows.values():
            images = row["processes"] * row["batch_size"]
            row["images_per_second"] = round(row["steps_per_second"] * images, 3)
            # CPU seconds per step over every process: rank 0's CPU time × the processes (they run the same work)
            row["images_per_cpu_second"] = round(row["steps_per_cpu_second"] * images / row["processes"], 3)
        result["processes"] = {k: {key: v.get(key) for key in (*keep, "images_per_second", "images_per_cpu_second")}
                               for k, v in rows.items()}
        for k, v in rows.items():
            print(f"{k}: {v['steps_per_second']:.3f} steps/s, {v['images_per_second']:.3f} images/s "
                  f"({v['images_per_cpu_second']:.3f} images per CPU second)", flush=True)
    if args.steady_steps:
        # after the first epoch: the small capture held as float32 against the same images in the disk cache
        # with a RAM bound that holds few of them (each step reads a decoded file and converts uint8 -> float);
        # several epochs, so the first epoch's decode-on-first-use weighs little
        print(f"steady: float vs disk (bound {args.steady_cache_gb} GB) on {args.small} images, "
              f"{args.steady_steps} steps", flush=True)
        modes = {"float": ["--image-cache", "float"],
                 "disk": ["--image-cache", "disk", "--image-cache-gb", str(args.steady_cache_gb)]}
        rows = side_by_side({mode: _command(part, runs / f"steady_{mode}", args.steady_steps, args.threads, flags)
                             for mode, flags in modes.items()})
        result["steady"] = {"runs": {k: {key: v.get(key) for key in keep} for k, v in rows.items()},
                            "epochs": round(args.steady_steps / args.small, 2),
                            "steps_per_second_disk_over_float": round(
                                rows["disk"]["steps_per_second"] / rows["float"]["steps_per_second"], 3),
                            "steps_per_cpu_second_disk_over_float": round(
                                rows["disk"]["steps_per_cpu_second"] / rows["float"]["steps_per_cpu_second"], 3)}
        print(f"steady: disk/float steps/s {result['steady']['steps_per_second_disk_over_float']}, per CPU second "
              f"{result['steady']['steps_per_cpu_second_disk_over_float']}", flush=True)
    result["loadavg_before_after"] = [list(load_before), list(os.getloadavg())]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
