"""Anti-aliased mode benchmark (issue 17): lego trained at 400² with and without ``--antialiased``, its
held-out views rendered zoomed out (200² and 100², the cameras scaled) against the ground truth
box-downsampled to that size, PSNR per mode; and one 800² render of each for the eye (PNG).

    .venv/bin/python benchmarks/antialias.py --minutes 10            # trains both runs, then evaluates
    .venv/bin/python benchmarks/antialias.py --runs runs/aa_classic runs/aa_antialiased   # evaluate only

Each model is rendered in the mode it was trained in (its scene.ply says which).
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


def train(data: Path, out: Path, minutes: float, antialiased: bool, downscale: int, steps: int | None = None) -> None:
    """One reconstruct run (the shared lego copy is 400²: --downscale 1 trains at 400²); ``steps`` replaces the
    time budget (equal steps compare the modes fairly on a loaded machine)."""
    budget = ["--steps", str(steps)] if steps else ["--time-budget", str(minutes)]
    cmd = [sys.executable, "-m", "recon3d.cli", "reconstruct", str(data), "-o", str(out), "--downscale", str(downscale),
           *budget, "--overwrite", "--quiet"] + (["--antialiased"] if antialiased else [])
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


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


def evaluate(run: Path, sizes: list[int], look_dir: Path) -> dict:
    """PSNR of the run's test views at each size, in the run's own render mode."""
    scene = load_ply(run / "scene.ply")
    aa = ply_antialiased(run / "scene.ply")
    cams, images, splits = read_cameras_json(run / "cameras.json")
    test = [i for i, s in enumerate(splits) if s == "test"]
    result = {"run": str(run), "antialiased": aa, "gaussians": len(scene), "test_views": len(test), "psnr": {}}
    base = int(cams.width[0])
    for size in sizes:
        values = []
        for i in test:
            cam = cams[i].scaled(size / base)
            with torch.no_grad():
                out = recon3d.render(scene, cam, background=(1.0, 1.0, 1.0), antialiased=aa)
            values.append(psnr(out.rgb[0].clamp(0, 1), ground_truth(images[i], size)))
        result["psnr"][str(size)] = float(np.mean(values))
    cam = cams[test[0]].scaled(800 / base)
    with torch.no_grad():
        big = recon3d.render(scene, cam, background=(1.0, 1.0, 1.0), antialiased=aa).rgb[0].clamp(0, 1)
    name = f"antialias_{'aa' if aa else 'classic'}_800.png"
    Image.fromarray((big.numpy() * 255).round().astype(np.uint8)).save(look_dir / name)
    result["look_800"] = str(look_dir / name)
    return result


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
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "antialias.json")
    args = p.parse_args()
    load_before = os.getloadavg()
    if args.runs:
        runs = list(args.runs)
    else:
        runs = [args.work / "aa_classic", args.work / "aa_antialiased"]
        for run, aa in zip(runs, (False, True)):
            train(args.data, run, args.minutes, aa, args.downscale, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = [evaluate(run, args.sizes, args.out.parent) for run in runs]
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "minutes_per_run": None if args.runs or args.steps else args.minutes,
        "steps_per_run": None if args.runs else args.steps,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "runs": results,
        "gain_db": {s: results[1]["psnr"][s] - results[0]["psnr"][s] for s in results[0]["psnr"]},
    }
    for r in results:
        print(("antialiased" if r["antialiased"] else "classic    "), {k: round(v, 2) for k, v in r["psnr"].items()})
    print("gain (dB):", {k: round(v, 2) for k, v in summary["gain_db"].items()})
    atomic_write_text(args.out, json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
