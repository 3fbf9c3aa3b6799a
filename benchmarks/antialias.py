"""Anti-aliased mode benchmark (issue 17): lego trained at 400² with and without ``--antialiased``, its
held-out views rendered zoomed out (200² and 100², the cameras scaled) against the ground truth
box-downsampled to that size, PSNR per mode; and one 800² render of each for the eye (PNG).

    .venv/bin/python benchmarks/antialias.py --steps 3000 --parallel   # both runs side by side, equal steps
    .venv/bin/python benchmarks/antialias.py --minutes 10                # equal wall-clock budgets, one after the other
    .venv/bin/python benchmarks/antialias.py --runs runs/aa_classic runs/aa_antialiased   # evaluate only

Each model is rendered in the mode it was trained in (its scene.ply says which). On a shared machine prefer
--steps: a time budget under load gives the two runs different step counts (the JSON records each run's
steps and steps/s, and flags a mismatch), and a few hundred steps leave both models near their random
initialisation, where the two modes cannot differ. Writes, next to the JSON, one PNG per size of the first
held-out view (ground truth | classic | anti-aliased, enlarged to the training size) and an 800² render of
each model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import recon3d  # noqa: E402
from recon3d.io_utils import atomic_write_text  # noqa: E402
from recon3d.ply import load_ply, ply_antialiased  # noqa: E402
from recon3d.train.rundir import read_cameras_json  # noqa: E402


def train(data: Path, out: Path, minutes: float, antialiased: bool, downscale: int, steps: int | None = None,
          threads: int = 1) -> subprocess.Popen:
    """Start one reconstruct run (the shared lego copy is 400²: --downscale 1 trains at 400²); ``steps`` replaces
    the time budget (equal steps compare the modes fairly on a loaded machine). The caller waits on it."""
    budget = ["--steps", str(steps)] if steps else ["--time-budget", str(minutes)]
    cmd = [sys.executable, "-m", "recon3d.cli", "reconstruct", str(data), "-o", str(out), "--downscale", str(downscale),
           *budget, "--set", f"run.threads={threads}", "--overwrite", "--quiet"] + (["--antialiased"] if antialiased else [])
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env)  # cwd: this checkout's recon3d, whatever the caller's cwd


def ground_truth(path: Path, size: int, background: float = 1.0) -> torch.Tensor:
    """The image composited on white, box-downsampled to size² (PIL's reduce: the mean of each block)."""
    img = Image.open(path)
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + background * (1 - rgba[..., 3:])
    factor = rgb.shape[0] // size  # the ground truth's own size over the render's (400 -> 200: 2)
    h, w = size, size
    boxed = rgb[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
    return torch.from_numpy(boxed).float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def to_png(img: torch.Tensor, path: Path, size: int | None = None) -> None:
    """Save an H×W×3 image in [0, 1] as PNG, enlarged (nearest) to ``size`` so small renders can be looked at."""
    pil = Image.fromarray((img.clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    if size and pil.width != size:
        pil = pil.resize((size, size), Image.NEAREST)
    pil.save(path)


def run_info(run: Path) -> dict:
    """What the run's own metrics.json says about its training (steps, time, its held-out PSNR)."""
    try:
        m = json.loads((run / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: m.get(k) for k in ("steps", "train_seconds", "steps_per_second", "psnr", "num_gaussians")}


def evaluate(run: Path, sizes: list[int], look_dir: Path, prefix: str) -> tuple[dict, dict[int, torch.Tensor]]:
    """PSNR of the run's test views at each size, in the run's own render mode; and its renders of the first
    test view at each size (for the side-by-side PNGs)."""
    scene = load_ply(run / "scene.ply")
    aa = ply_antialiased(run / "scene.ply")
    cams, images, splits = read_cameras_json(run / "cameras.json")
    test = [i for i, s in enumerate(splits) if s == "test"]
    result = {"run": str(run), "antialiased": aa, "gaussians": len(scene), "test_views": len(test),
              "training": run_info(run), "psnr": {}}
    base = int(cams.width[0])
    looks = {}
    for size in sizes:
        values = []
        for i in test:
            cam = cams[i].scaled(size / base)
            with torch.no_grad():
                out = recon3d.render(scene, cam, background=(1.0, 1.0, 1.0), antialiased=aa)
            values.append(psnr(out.rgb[0].clamp(0, 1), ground_truth(images[i], size)))
            if i == test[0]:
                looks[size] = out.rgb[0].clamp(0, 1)
        result["psnr"][str(size)] = float(np.mean(values))
    cam = cams[test[0]].scaled(800 / base)
    with torch.no_grad():
        big = recon3d.render(scene, cam, background=(1.0, 1.0, 1.0), antialiased=aa).rgb[0]
    path = look_dir / f"{prefix}_{'aa' if aa else 'classic'}_800.png"
    to_png(big, path)
    result["look_800"] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    result["test_view"] = str(images[test[0]])
    return result, looks


def main() -> None:
    """Train (unless --runs) and evaluate; writes benchmarks/results/antialias.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "lego")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each run")
    p.add_argument("--steps", type=int, default=None, help="train this many steps instead of --minutes")
    p.add_argument("--downscale", type=int, default=1, help="training images at 1/N (1: the 400² lego copy at 400²)")
    p.add_argument("--runs", type=Path, nargs=2, metavar=("CLASSIC", "ANTIALIASED"), help="evaluate these runs")
    p.add_argument("--work", type=Path, default=ROOT / "runs")
    p.add_argument("--sizes", type=int, nargs="+", default=[400, 200, 100])
    p.add_argument("--threads", type=int, default=1, help="torch threads of each training run")
    p.add_argument("--parallel", action="store_true", help="train the two runs at once (side by side)")
    p.add_argument("--note", default=None, help="free text kept in the JSON (e.g. how --runs were trained)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "antialias.json")
    args = p.parse_args()
    load_before = os.getloadavg()
    if args.runs:
        runs = list(args.runs)
    else:
        runs = [args.work / "aa_classic", args.work / "aa_antialiased"]
        procs = []
        for run, aa in zip(runs, (False, True)):
            procs.append(train(args.data, run, args.minutes, aa, args.downscale, args.steps, args.threads))
            if not args.parallel:
                if procs[-1].wait():
                    sys.exit(f"training {run} failed")
        if args.parallel and any(proc.wait() for proc in procs):
            sys.exit("a training run failed")
    load_trained = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prefix = args.out.stem
    evaluated = [evaluate(run, args.sizes, args.out.parent, prefix) for run in runs]
    results = [r for r, _ in evaluated]
    # one strip per size: ground truth | classic | anti-aliased, each enlarged to the largest size
    cams, images, splits = read_cameras_json(runs[0] / "cameras.json")
    view = images[splits.index("test")]
    big = max(args.sizes)
    for size in args.sizes:
        tiles = [ground_truth(view, size)] + [looks[size] for _, looks in evaluated]
        strip = torch.cat([torch.nn.functional.interpolate(t.permute(2, 0, 1)[None], size=(big, big), mode="nearest")[0]
                           .permute(1, 2, 0) for t in tiles], dim=1)
        to_png(strip, args.out.parent / f"{prefix}_{size}.png")
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "minutes_per_run": None if args.runs or args.steps else args.minutes,
        "steps_per_run": None if args.runs else args.steps,
        "note": args.note,
        "threads_per_run": args.threads,
        "trained_side_by_side": bool(args.parallel and not args.runs),
        "nice": os.nice(0),
        "load_average_before": load_before,
        "load_average_after_training": load_trained,
        "load_average_after": os.getloadavg(),
        "strips": f"{prefix}_<size>.png: ground truth | classic | anti-aliased (first test view, enlarged)",
        "runs": results,
        "gain_db": {s: results[1]["psnr"][s] - results[0]["psnr"][s] for s in results[0]["psnr"]},
    }
    steps = [r["training"].get("steps") for r in results]
    if all(steps) and abs(steps[0] - steps[1]) > 0.1 * max(steps):
        summary["warning"] = (f"the runs trained different numbers of steps ({steps[0]} vs {steps[1]}): an equal-budget "
                              "comparison; read the zoomed-out gains against the gain at the training size")
        print("WARNING:", summary["warning"])
    for r in results:
        print(("antialiased" if r["antialiased"] else "classic    "), {k: round(v, 2) for k, v in r["psnr"].items()})
    print("gain (dB):", {k: round(v, 2) for k, v in summary["gain_db"].items()})
    atomic_write_text(args.out, json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
