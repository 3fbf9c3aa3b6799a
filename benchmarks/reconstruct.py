"""Reconstruction benchmarks on the shared data sets; prints a summary and saves JSON.

    .venv/bin/python benchmarks/reconstruct.py lego      # --time-budget 10, white bg, train/ -> val/ (target ≥ 32 dB)
    .venv/bin/python benchmarks/reconstruct.py statue    # bare photo folder: SfM + 10 min of training
    .venv/bin/python benchmarks/reconstruct.py fox       # --downscale 2, 10 min
    .venv/bin/python benchmarks/reconstruct.py garden --minutes 3   # make demo: photo folder (target ≥ 27 dB)
    .venv/bin/python benchmarks/reconstruct.py cameras   # garden, cameras perturbed 1.5° / 2 %: --refine-cameras
    .venv/bin/python benchmarks/reconstruct.py statue_cameras --only refined --minutes 3   # refinement on/off, statue
    .venv/bin/python benchmarks/reconstruct.py speed     # first steps/s, cpu vs reference, side by side
    .venv/bin/python benchmarks/reconstruct.py opensplat # s/step at statue 400×600 vs OpenSplat's 0.42 s @ ~2k Gaussians

Results go to benchmarks/results/reconstruct_<name>.json (with `uptime`: the machine is shared). Options:
``--minutes M`` changes the budgets, ``--out DIR`` the run directories (default runs/bench/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (a worktree one level deeper finds it one folder further up)
DATA = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
            ROOT.parent / "shared" / "data")
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    """Where and under what load the figures were taken."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {
        "uptime": uptime,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def save(name: str, result: dict) -> Path:
    """Write benchmarks/results/reconstruct_<name>.json."""
    from recon3d.io_utils import atomic_write_text

    result = {"benchmark": name, "machine_at_start": result.pop("machine_at_start", None), **result,
              "machine_at_end": machine()}
    path = RESULTS / f"reconstruct_{name}.json"
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "per_view")}, indent=1))
    print(f"saved {path}")
    return path


def summary(metrics: dict) -> dict:
    """The figures of a run's metrics.json worth keeping."""
    keys = ("psnr", "ssim", "protocol", "psnr_black", "psnr_white", "see_through", "psnr_nerfw", "psnr_nerfw_black",
            "psnr_nerfw_white", "psnr_nerfw_grid", "masked", "steps", "train_seconds", "total_seconds", "steps_per_second",
            "num_gaussians", "peak_ram_mb", "num_test_views", "num_train_views", "image_size", "backend", "strategy",
            "initialisation", "initial_fill_points", "appearance", "camera_refinement", "threads")
    return {k: metrics.get(k) for k in keys} | {"curve": metrics.get("curve", [])}


class StepTimer:
    """A TrainingMonitor that records (wall time, step, Gaussians) of every step."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, int, int]] = []

    def on_step(self, step, scene, metrics) -> None:
        self.rows.append((time.monotonic(), step, int(metrics["num_gaussians"])))

    def paused(self) -> bool:
        return False

    def take_save_request(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def window(self, first: int, last: int) -> dict:
        """Seconds per step and mean Gaussians between two steps."""
        rows = [r for r in self.rows if first <= r[1] <= last]
        if len(rows) < 2:
            return {}
        seconds = (rows[-1][0] - rows[0][0]) / (rows[-1][1] - rows[0][1])
        return {"steps": [rows[0][1], rows[-1][1]], "seconds_per_step": seconds,
                "mean_gaussians": sum(r[2] for r in rows) / len(rows)}


def _command(args) -> str:
    """The command line that produced a result (overrides included)."""
    return "benchmarks/reconstruct.py " + " ".join(sys.argv[1:])


def bench_lego(args) -> None:
    from recon3d.api import reconstruct

    start = machine()
    t0 = time.monotonic()
    _, _, metrics = reconstruct(DATA / "lego", Path(args.out) / "lego", overwrite=True, preset="fast",
                                time_budget=args.minutes, background="white", backend=args.backend,
                                assignments=["run.curve_every_s=60", "run.curve_views=5", *args.set])
    wall = time.monotonic() - t0
    save("lego", {"machine_at_start": start, "command": "recon3d reconstruct ../shared/data/lego -o runs/bench/lego "
                  f"--preset fast --time-budget {args.minutes} --background white"
                  + "".join(f" --set {a}" for a in args.set),
                  "target": "PSNR >= 32 dB on val/ in <= 10 min", "wall_seconds": wall, **summary(metrics)})


def bench_statue(args) -> None:
    from recon3d.api import reconstruct
    from recon3d.data import load_dataset
    from recon3d.train.rundir import prepare_run_dir

    start = machine()
    run = prepare_run_dir(Path(args.out) / "statue", overwrite=True)
    images = sorted(p for p in (DATA / "statue" / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    t0 = time.monotonic()
    masks = None if args.no_masks else DATA / "statue" / "masks"
    data = load_dataset(DATA / "statue" / "images", work_dir=run, masks=masks)
    sfm_seconds = time.monotonic() - t0
    _, _, metrics = reconstruct(data, run, resume=False, overwrite=True, preset="fast", time_budget=args.minutes,
                                backend=args.backend, assignments=args.set)
    manifest = json.loads((run / "sfm" / "manifest.json").read_text()) if (run / "sfm" / "manifest.json").is_file() else {}
    save("statue", {"machine_at_start": start, "command": _command(args), "masks": str(masks),
                    "sfm_summary": manifest.get("summary"),
                    # per-photo focal lengths when the EXIF names several cameras (recon3d/data/intrinsics.py)
                    "sfm_intrinsics": manifest.get("intrinsics", "one shared camera"),
                    "target": ">= 22 dB neutral, >= 24 dB NeRF-W protocol (10 min, over black and white)",
                    "input_images": len(images), "registered": len(data.cameras),
                    "target_registered": ">= 38 of 40", "sfm_seconds": sfm_seconds,
                    "sfm_points": None if data.points is None else len(data.points), **summary(metrics)})


def bench_fox(args) -> None:
    from recon3d.api import reconstruct

    start = machine()
    _, _, metrics = reconstruct(DATA / "fox", Path(args.out) / "fox", overwrite=True, preset="fast", downscale=2,
                                time_budget=args.minutes, backend=args.backend, assignments=args.set)
    save("fox", {"machine_at_start": start, "command": _command(args), "target": ">= 30.5 dB (10 min)",
                 **summary(metrics)})


def bench_speed(args) -> None:
    """The first steps of the same lego run (downscaled 4×: the dense reference cannot do 400×400) per backend."""
    from recon3d.api import reconstruct

    start = machine()
    rows = {}
    for backend in ("cpu", "reference"):
        timer = StepTimer()
        _, _, metrics = reconstruct(DATA / "lego", Path(args.out) / f"speed_{backend}", overwrite=True, preset="fast",
                                    steps=args.steps, downscale=4, backend=backend, monitor=timer, quiet=True,
                                    init_num_random=10000, eval_renders=0, assignments=args.set)
        rows[backend] = {"first_steps": timer.window(1, args.steps), "image_size": metrics["image_size"],
                         "gaussians": metrics["num_gaussians"], "threads": metrics.get("threads")}
    ratio = rows["reference"]["first_steps"]["seconds_per_step"] / rows["cpu"]["first_steps"]["seconds_per_step"]
    save("speed", {"machine_at_start": start, "command": _command(args), "backends": rows, "cpu_speedup_over_reference": ratio})


def bench_opensplat(args) -> None:
    """statue at 400×600 (COLMAP model, 1,816 points) grown quickly to ~20k Gaussians; s/step once there.

    Growing to the cap fast needs a refinement every 10 steps (MCMC relocation keeps running at the cap),
    while OpenSplat refines every 100: timing every step after the cap would charge us ten refinements per
    hundred steps against its one. So the figure is the mean of the steps without a refinement plus a
    refinement's extra cost once per 100 steps (OpenSplat's cadence); the plain mean is kept beside it.
    """
    import statistics

    from recon3d.api import reconstruct

    start = machine()
    timer = StepTimer()
    cap = args.cap
    every = 10
    # the per-phase step profile of the last 40 % of the steps (after the cap: about step 100 at 30 % growth
    # per refinement from 1,816 points); its timers cost a few microseconds a step
    os.environ["RECON3D_PROFILE"] = "1"
    os.environ["RECON3D_PROFILE_FROM"] = str(args.steps * 3 // 5)
    _, _, metrics = reconstruct(DATA / "statue", Path(args.out) / "opensplat", overwrite=True, preset="fast",
                                downscale=2, steps=args.steps, backend=args.backend, monitor=timer,
                                assignments=[f"strategy.cap={cap}", "strategy.refine_start=0", f"strategy.refine_every={every}",
                                             "strategy.growth=0.3", f"strategy.refine_stop={args.steps + 1}",
                                             "run.eval_renders=0", *args.set])
    reached = next((r[1] for r in timer.rows if r[2] >= cap), None)
    first = reached + 20 if reached is not None else args.steps // 2
    window = timer.window(first, args.steps)
    # duration of step s (1-based, completed) = t[s] − t[s−1]; it refined when its 0-based index s−1 is a
    # multiple of `every` (the trainer refines at step % every == 0 before counting the step)
    times = {r[1]: r[0] for r in timer.rows}
    plain, refine = [], []
    for s in range(first + 1, args.steps + 1):
        if s in times and s - 1 in times:
            (refine if (s - 1) % every == 0 else plain).append(times[s] - times[s - 1])
    fair = None
    if plain:
        extra = (statistics.mean(refine) - statistics.mean(plain)) if refine else 0.0
        fair = statistics.mean(plain) + max(extra, 0.0) / 100.0
        window.update({
            "seconds_per_step_all_steps": window["seconds_per_step"],
            "seconds_per_step": fair,
            "plain_steps": len(plain), "plain_mean_s": statistics.mean(plain), "plain_median_s": statistics.median(plain),
            "refine_steps": len(refine), "refine_mean_s": statistics.mean(refine) if refine else None,
            "how": (f"mean of the {len(plain)} steps without a refinement after the cap was reached (+20 steps), "
                    f"plus one refinement's extra cost per 100 steps (OpenSplat refines every 100; this run refines "
                    f"every {every} to reach the cap quickly); 'seconds_per_step_all_steps' times every step instead"),
        })
    peer = {"seconds_per_step": 0.42, "gaussians": 1816, "image": "399x599", "source": "REFERENCES.md (OpenSplat 1.1.5 CPU)"}
    save("opensplat", {"machine_at_start": start, "command": _command(args),
                       "ours": {**window, "image_size": metrics["image_size"], "threads": metrics.get("threads")},
                       "opensplat": peer,
                       "fewer_seconds_per_step": peer["seconds_per_step"] / window["seconds_per_step"] if window else None,
                       "more_gaussians": window["mean_gaussians"] / peer["gaussians"] if window else None,
                       "target": ">= 10x fewer s/step with >= 10x more Gaussians (<= 0.042 s/step with >= 20k)",
                       "sh_degree": ("0 throughout: the fast preset raises the SH degree every 500 steps and the run "
                                     f"ends at step {args.steps}; with degree 0, Adam also leaves out the 45 SH-rest "
                                     "floats per Gaussian, whose gradients and moments are still zero"),
                       "step_profile": metrics.get("step_profile"),
                       "psnr": metrics["psnr"]})


def perturb_cameras(cameras, indices, degrees: float, fraction: float, seed: int = 0):
    """Cameras with each of ``indices`` turned by ``degrees`` about a random axis through its centre and moved
    by ``fraction`` of the orbit radius (the mean camera distance from their centroid) in a random direction.

    The perturbations' common part (the similarity that best maps the perturbed set onto the true one:
    random turns and shifts of a few dozen cameras do not average to zero) is then taken out, as structure
    from motion's errors have none relative to its own frame: no method could recover it from the images, and
    the unperturbed held-out cameras stay in the perturbed set's frame. Each camera's error stays near
    ``degrees`` and ``fraction`` (the errors before refinement are reported as measured).
    """
    from recon3d.cameras import Cameras
    from recon3d.train.camera_opt import remove_common_motion, twist_matrix

    g = torch.Generator().manual_seed(seed)
    centers = cameras.centers().double()
    radius = float((centers - centers.mean(0)).norm(dim=-1).mean())
    w2c = cameras.world_to_camera.double().clone()
    for i in indices:
        axis = torch.randn(3, generator=g, dtype=torch.float64)
        shift = torch.randn(3, generator=g, dtype=torch.float64)
        axis, shift = axis / axis.norm(), shift / shift.norm()
        turn = twist_matrix(torch.cat([axis * math.radians(degrees), torch.zeros(3, dtype=torch.float64)]))[:3, :3]
        c2w = torch.linalg.inv(w2c[i])
        c2w[:3, :3] = turn @ c2w[:3, :3]  # turned about its own centre
        c2w[:3, 3] = c2w[:3, 3] + shift * fraction * radius  # and moved
        w2c[i] = torch.linalg.inv(c2w)
    # the similarity that best maps the true poses onto the perturbed ones, undone
    w2c[indices], _ = remove_common_motion(cameras.world_to_camera[indices].double(), w2c[indices], radius)
    out = Cameras(w2c.to(cameras.world_to_camera.dtype), cameras.fx, cameras.fy, cameras.cx, cameras.cy,
                  cameras.width, cameras.height, cameras.distortion)
    return out, radius


def pose_errors(estimate, truth, indices, radius: float, align: bool = False) -> dict:
    """Rotation (degrees) and centre (fraction of ``radius``) errors of ``estimate`` against ``truth``.

    ``align``: first undo the similarity that best maps ``truth``'s poses onto ``estimate``'s (centres and
    orientations, ``pose_similarity_fit``): the scene and its cameras are only defined up to a common motion
    and scale (the gauge), so this measures the cameras' placement relative to each other, as trajectory
    errors (ATE) do. Without it, the errors include any common drift.
    """
    from recon3d.cameras import Cameras
    from recon3d.train.camera_opt import remove_common_motion

    est_w2c = estimate.world_to_camera[indices].double()
    true_w2c = truth.world_to_camera[indices].double()
    if align:
        est_w2c, _ = remove_common_motion(true_w2c, est_w2c, radius)
    rot = []
    for e, g in zip(est_w2c, true_w2c):
        r = e[:3, :3] @ g[:3, :3].T
        rot.append(math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(r)) - 1) / 2)))))
    ce = Cameras(est_w2c, 1.0, 1.0, 0.0, 0.0, 1, 1).centers()
    ct = Cameras(true_w2c, 1.0, 1.0, 0.0, 0.0, 1, 1).centers()
    trans = [float((a - b).norm()) / radius for a, b in zip(ce, ct)]
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"rotation_deg_mean": sum(rot) / len(rot), "rotation_deg_median": med(rot), "rotation_deg_max": max(rot),
            "translation_mean": sum(trans) / len(trans), "translation_median": med(trans),
            "translation_max": max(trans)}


def _project(points: torch.Tensor, w2c: torch.Tensor, fx: float, fy: float, cx: float, cy: float):
    """Pixel positions and depths of ``points`` in a pinhole camera."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2].clamp_min(1e-6)
    return torch.stack([fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy], -1), cam[:, 2]


def per_camera_errors(estimate, truth, indices, radius: float, points: torch.Tensor) -> list[dict]:
    """Per training camera, after the similarity alignment of ``pose_errors``: rotation error (degrees), centre
    error (fraction of ``radius``) split into its part along the true view axis and across it, and how far
    the points move in the image between the true and the estimated camera (median and max over ``points``
    in view, pixels): an error the images barely show (a small shift in pixels for a large pose error) is
    one the photometric loss can hardly correct."""
    from recon3d.train.camera_opt import remove_common_motion, rigid_inverse

    est_w2c, _ = remove_common_motion(truth.world_to_camera[indices].double(),
                                      estimate.world_to_camera[indices].double(), radius)
    true_w2c = truth.world_to_camera[indices].double()
    pts = points.double()
    rows = []
    for k, i in enumerate(indices):
        e, g = est_w2c[k], true_w2c[k]
        r = e[:3, :3] @ g[:3, :3].T
        rot = math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(r)) - 1) / 2))))
        ce, cg = rigid_inverse(e)[:3, 3], rigid_inverse(g)[:3, 3]
        axis = g[2, :3]  # the true camera's view direction in the world
        d = ce - cg
        along = float(d @ axis)
        across = float((d - along * axis).norm())
        fx, fy, cx, cy = (float(truth.fx[i]), float(truth.fy[i]), float(truth.cx[i]), float(truth.cy[i]))

        uv_g, z_g = _project(pts, g, fx, fy, cx, cy)
        uv_e, _ = _project(pts, e, fx, fy, cx, cy)
        inside = (z_g > 1e-6) & (uv_g[:, 0] >= 0) & (uv_g[:, 0] < float(truth.width[i])) & (uv_g[:, 1] >= 0) & (
            uv_g[:, 1] < float(truth.height[i]))
        shift = (uv_e - uv_g)[inside].norm(dim=-1)
        rows.append({"camera": int(i), "rotation_deg": rot, "translation": float(d.norm()) / radius,
                     "along_view": along / radius, "across_view": across / radius,
                     "pixels_median": float(shift.median()) if len(shift) else None,
                     "pixels_max": float(shift.max()) if len(shift) else None})
    return rows


class PoseTrace:
    """Records the corrected training poses (training frame) every ``every`` camera steps of a run:
    wraps ``CameraRefinement.step`` while in use (a benchmark-only probe; training is unchanged)."""

    def __init__(self, every: int = 25) -> None:
        self.every = every
        self.snapshots: list[tuple[int, torch.Tensor]] = []

    def __enter__(self) -> PoseTrace:
        from recon3d.train import camera_opt

        self._cls, self._orig = camera_opt.CameraRefinement, camera_opt.CameraRefinement.step
        orig, trace = self._orig, self

        def step(refinement, lr_scale: float = 1.0) -> None:
            orig(refinement, lr_scale)
            if refinement.optimizer.count % trace.every == 0 and refinement.poses is not None:
                n = len(refinement.delta)
                trace.snapshots.append((refinement.optimizer.count,
                                        refinement.matrices(list(range(n)), detach=True) @ refinement.poses))
        self._cls.step = step
        return self

    def __exit__(self, *exc) -> None:
        self._cls.step = self._orig

    def errors(self, truth, indices, radius: float) -> list[dict]:
        """Aligned pose errors (``pose_errors(align=True)``) of each snapshot against ``truth``: the alignment
        absorbs the training frame's similarity."""
        from recon3d.cameras import Cameras

        out = []
        for count, w2c in self.snapshots:
            cams = Cameras(w2c.float(), truth.fx, truth.fy, truth.cx, truth.cy, truth.width, truth.height)
            err = pose_errors(cams, truth, indices, radius, align=True)
            out.append({"camera_steps": count, "rotation_deg_mean": err["rotation_deg_mean"],
                        "translation_mean": err["translation_mean"]})
        return out


def exported_views_psnr(run: Path, data, indices, backend: str, count: int = 6) -> dict:
    """PSNR of training views rendered from the run's scene.ply through its cameras.json (refined) and through
    the input cameras, against the photos (masked pixels excluded): whether the exported scene and cameras agree
    (the neutral appearance: an exposure difference counts too, alike for both)."""
    from recon3d.ply import load_ply
    from recon3d.render import render
    from recon3d.train.rundir import read_cameras_json

    scene = load_ply(run / "scene.ply")
    exported, _, _ = read_cameras_json(run / "cameras.json")
    picked = list(indices)[:: max(1, len(indices) // count)][:count]
    out = {}
    for name, cams in (("exported_cameras", exported), ("input_cameras", data.cameras)):
        values = []
        for i in picked:
            rgb = render(scene, cams[i], background=torch.zeros(3), backend=backend).rgb[0].clamp(0, 1)
            target, mask = data.load_image(i), data.load_mask(i)
            keep = torch.ones(rgb.shape[:2], dtype=torch.bool) if mask is None else mask > 0.5
            mse = float(((rgb - target) ** 2)[keep].mean())
            values.append(-10 * math.log10(max(mse, 1e-10)))
        out[name] = sum(values) / len(values)
    return out


def bench_statue_cameras(args) -> None:
    """The statue photo folder with its masks (SfM once, cached in ``--out``): camera refinement on (gauge fixed),
    on with the gauge free, and off, each for ``--minutes`` (run them side by side with ``--only``)."""
    from recon3d.api import reconstruct
    from recon3d.data import load_dataset

    start = machine()
    # --project: an SfM model of these photos already made (a COLMAP project: images/ + sparse/0), no SfM here
    source = Path(args.project) if args.project else DATA / "statue" / "images"
    data = load_dataset(source, work_dir=Path(args.out) / "statue_cameras_sfm", masks=DATA / "statue" / "masks")
    rows = {}
    names = args.only.split(",") if args.only else ["refined", "refined_nogauge", "unrefined"]
    for name in names:
        assignments = args.set + (["optim.camera_gauge_every=0"] if name.endswith("_nogauge") else [])
        run = Path(args.out) / f"statue_cameras_{name}"
        # --train-steps: fixed steps (a time budget counts loading the photos, minutes on a loaded machine)
        length = {"steps": args.train_steps} if args.train_steps else {"time_budget": args.minutes}
        _, _, metrics = reconstruct(data, run, overwrite=True, preset="fast", backend=args.backend,
                                    refine_cameras=name.startswith("refined"), assignments=assignments, **length)
        row = summary(metrics) | {"train_views": exported_views_psnr(run, data, data.train_indices(), args.backend)}
        rows[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    save(args.name or "statue_cameras", {"machine_at_start": start, "command": _command(args), "runs": rows,
                                         "registered": len(data.cameras)})


def garden_truth(out: Path):
    """The shipped garden with its true cameras (transforms.json) and, as a photo capture has, sparse points:
    structure from motion on its photos (cached in ``out``), mapped into the true frame by the similarity
    that fits the SfM camera centres to the true ones. (transforms.json has no points; a random start in a
    cube would leave the brick wall and the far ground bare, a poor scene to refine cameras against.)"""
    import dataclasses

    from recon3d.data import load_dataset
    from recon3d.train.camera_opt import similarity_fit

    truth = load_dataset(ROOT / "examples" / "garden", work_dir=out / "cameras_data")
    sfm = load_dataset(ROOT / "examples" / "garden" / "images", work_dir=out / "cameras_sfm")
    true_index = {Path(p).stem: i for i, p in enumerate(truth.image_paths)}
    pairs = [(i, true_index[Path(p).stem]) for i, p in enumerate(sfm.image_paths) if Path(p).stem in true_index]
    s, r, t = similarity_fit(sfm.cameras.centers()[[a for a, _ in pairs]],
                             truth.cameras.centers()[[b for _, b in pairs]])
    points = (s * sfm.points.double() @ r.T + t).float()
    return dataclasses.replace(truth, points=points, point_colors=sfm.point_colors), len(pairs)


def aligned_evaluation(run: Path, backend: str, steps: int) -> dict:
    """The run's held-out figures re-measured from scene.ply + cameras.json (``recon3d eval``), without and with
    test-time pose alignment (``recon3d eval --align-poses``), and the correction each held-out view took."""
    from recon3d.run import load_run

    result = load_run(run).evaluate(backend=backend, align_poses=True, align_steps=steps)
    keys = ("psnr", "psnr_black", "psnr_white", "ssim")
    return {"eval_unaligned": {k: result[k] for k in keys}, "aligned_poses": result["aligned_poses"],
            "aligned_per_view": [{"image": Path(v["image"]).name, **{k: v[k] for k in keys},
                                  "aligned": {k: v["aligned_poses"][k] for k in keys + (
                                      "rotation_deg", "translation_orbit_fraction", "loss_before", "loss_after")}}
                                 for v in result["per_view"]]}


def bench_cameras(args) -> None:
    """The shipped garden with its true cameras (transforms.json, SfM points mapped into their frame):
    perturbed training cameras (1.5°, 2 % of the orbit radius) trained with --refine-cameras, against the true
    cameras and the perturbed ones unrefined. Fixed steps (``--train-steps``) or a time budget (``--minutes``)."""
    import dataclasses

    from recon3d.api import reconstruct
    from recon3d.train.rundir import read_cameras_json

    start = machine()
    rows = {}
    truth_data, registered = garden_truth(Path(args.out))
    train = truth_data.train_indices()
    centers = truth_data.cameras.centers().double()
    radius = float((centers - centers.mean(0)).norm(dim=-1).mean())
    length = {"steps": args.train_steps} if args.train_steps else {"time_budget": args.minutes}
    names = args.only.split(",") if args.only else ["true", "perturbed_refined", "perturbed_unrefined"]
    for name in names:
        # true_refined: refinement on the true cameras (does it hurt where the poses are already right?)
        perturbed, refine = name.startswith("perturbed"), name.startswith(("perturbed_refined", "true_refined"))
        # perturbed_refined_nogauge: the corrections' common motion left free (optim.camera_gauge_every=0)
        assignments = args.set + (["optim.camera_gauge_every=0"] if name.endswith("_nogauge") else [])
        data = truth_data
        if perturbed:
            cams, _ = perturb_cameras(truth_data.cameras, train, args.degrees, args.fraction)
            data = dataclasses.replace(truth_data, cameras=cams)
        run = Path(args.out) / f"cameras_{name}"
        with PoseTrace(every=args.trace_every) as trace:
            _, _, metrics = reconstruct(data, run, overwrite=True, preset="fast", backend=args.backend,
                                        refine_cameras=refine, appearance="none", assignments=assignments, **length)
        row = summary(metrics)
        if refine:
            row["trace"] = trace.errors(truth_data.cameras, train, radius)
        if perturbed or refine:
            got, _, _ = read_cameras_json(run / "cameras.json")
            row["per_camera_after"] = per_camera_errors(got, truth_data.cameras, train, radius, truth_data.points)
        if perturbed:
            row["per_camera_before"] = per_camera_errors(data.cameras, truth_data.cameras, train, radius,
                                                         truth_data.points)
            row["errors_before"] = pose_errors(data.cameras, truth_data.cameras, train, radius)
            row["errors_after"] = pose_errors(got, truth_data.cameras, train, radius)
            row["errors_before_aligned"] = pose_errors(data.cameras, truth_data.cameras, train, radius, align=True)
            row["errors_after_aligned"] = pose_errors(got, truth_data.cameras, train, radius, align=True)
        row["train_views"] = exported_views_psnr(run, data, train, args.backend)
        if args.align_steps > 0:
            row.update(aligned_evaluation(run, args.backend, args.align_steps))
        rows[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k not in ("curve", "per_camera_after", "per_camera_before")}),
              flush=True)
    both = {"true", "perturbed_refined"} <= set(rows)
    gap = rows["true"]["psnr"] - rows["perturbed_refined"]["psnr"] if both else None
    gap_aligned = (rows["true"]["aligned_poses"]["psnr"] - rows["perturbed_refined"]["aligned_poses"]["psnr"]
                   if both and args.align_steps > 0 else None)
    save(args.name or "cameras", {"machine_at_start": start, "command": _command(args), "degrees": args.degrees,
                                  "fraction_of_radius": args.fraction, "orbit_radius": radius,
                                  "sfm_registered": registered, "runs": rows, "psnr_gap_refined_vs_true": gap,
                                  "psnr_gap_refined_vs_true_aligned_poses": gap_aligned,
                                  "target": "recovered within 0.3 deg and 0.5 % of the radius (after a similarity "
                                            "alignment: the gauge); held-out PSNR within 0.5 dB of true"})


def bench_garden(args) -> None:
    """``make demo``: the shipped garden photos as a bare photo folder (SfM included in the budget)."""
    from recon3d.api import reconstruct

    start = machine()
    _, _, metrics = reconstruct(ROOT / "examples" / "garden" / "images", Path(args.out) / "garden", overwrite=True,
                                preset="fast", time_budget=args.minutes, backend=args.backend, assignments=args.set)
    save("garden", {"machine_at_start": start, "command": _command(args), "target": ">= 27 dB in 3 minutes",
                    **summary(metrics)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=("lego", "statue", "fox", "garden", "cameras", "statue_cameras", "speed",
                                          "opensplat"))
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget (default 10)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--steps", type=int, default=10, help="steps for speed (default 10) / opensplat (use 400)")
    parser.add_argument("--cap", type=int, default=20000, help="opensplat: Gaussian count to reach")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--no-masks", action="store_true", help="statue: without its masks")
    parser.add_argument("--degrees", type=float, default=1.5, help="cameras: rotation of each perturbation")
    parser.add_argument("--fraction", type=float, default=0.02, help="cameras: shift, as a fraction of the orbit radius")
    parser.add_argument("--train-steps", type=int, default=0, help="cameras, statue_cameras: fixed steps instead of "
                        "--minutes")
    parser.add_argument("--only", default="", help="cameras: comma-separated runs (true, true_refined, "
                        "perturbed_refined, perturbed_unrefined, perturbed_refined_nogauge)")
    parser.add_argument("--trace-every", type=int, default=25, help="cameras: record the pose errors every N camera "
                        "steps (the run's 'trace')")
    parser.add_argument("--name", default="", help="cameras: results file suffix (default: cameras)")
    parser.add_argument("--align-steps", type=int, default=50, help="cameras: also evaluate each run with test-time "
                        "pose alignment, at most N renders (L-BFGS evaluations) per held-out view (0: not)")
    parser.add_argument("--project", default="", help="statue_cameras: a COLMAP project of the statue (skips SfM)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    if not DATA.is_dir() and args.which not in ("garden", "cameras"):
        print(f"the shared data sets are not at {DATA}", file=sys.stderr)
        return 2
    {"lego": bench_lego, "statue": bench_statue, "fox": bench_fox, "garden": bench_garden, "cameras": bench_cameras,
     "statue_cameras": bench_statue_cameras, "speed": bench_speed, "opensplat": bench_opensplat}[args.which](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
