"""Floaters in reconstructed runs: how many Gaussians lie outside the scene, and how much of the picture they take.

For each run directory (``recon3d reconstruct … -o RUN``), with the scene's robust bounds from
``recon3d.bounds.scene_bounds`` (the box the viewer and ``recon3d render`` frame):

- ``outside_share``: the share of Gaussians whose centre lies outside the robust bounds;
- ``far_share``: the share outside the robust bounds widened by their size on each side (what
  ``export --clean`` drops as far floaters), ``few_views_share``: the share inside that fewer than 2 training
  cameras see (``--clean`` drops them too);
- ``minmax_extent`` vs ``robust_extent``: the diagonal of the min/max box against the robust box's;
- screen coverage, in the run's held-out views (what a user compares with the photos) and in an overview
  that frames the *min/max* box (what the viewer showed when it framed every Gaussian, "zoomed out"):
  ``floater_alpha`` (mean alpha of the floaters rendered alone), ``changed_pixels`` (share of pixels whose
  colour moves by more than 8/255 when ``export --clean`` removes them; over white, as training);
- ``psnr_full`` / ``psnr_clean`` / ``psnr_clean_tight``: held-out PSNR before and after ``--clean`` and after
  ``--clean --clean-margin 0`` (does it remove what the photos show?).

    .venv/bin/python benchmarks/floaters.py demo=runs/demo statue=runs/statue [--out benchmarks/results/floaters.json]
        [--figure docs/floaters.png]

``--figure`` writes, for each run, a row of four renders: the overview framing every Gaussian (as the viewer
used to open) before and after ``export --clean``, and the first held-out view before and after.

Each run keeps its own entry in the JSON (a re-measure of one label replaces only that label).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon3d.bounds import clean_mask, framing_distance, outside_bounds, scene_bounds  # noqa: E402
from recon3d.cameras import Cameras, look_at_world_to_camera  # noqa: E402
from recon3d.data.images import decode_image  # noqa: E402
from recon3d.metrics import image_metrics  # noqa: E402
from recon3d.render import render  # noqa: E402
from recon3d.run import load_run  # noqa: E402

MAX_SIDE = 320  # the views are measured at most this large (coverage is a share of pixels)
CHANGE = 8 / 255


def _views(cameras: Cameras, splits: list[str]) -> Cameras:
    idx = [i for i, s in enumerate(splits) if s == "test"] or list(range(0, len(cameras), max(1, len(cameras) // 8)))
    cams = cameras[idx]
    factor = min(1.0, MAX_SIDE / float(max(cams.width.max(), cams.height.max())))
    return cams.scaled(factor) if factor < 1 else cams


def _overview(scene, width: int = 320, height: int = 240) -> Cameras:
    """A camera framing the min/max box of every Gaussian: the old "zoomed out" first screen."""
    means = scene.means.detach().double().numpy()
    lo, hi = means.min(0), means.max(0)
    fov = 0.8
    fov_y = 2 * math.atan(math.tan(fov / 2) * height / width)
    target = 0.5 * (lo + hi)
    eye = target + np.array([0.55, -0.65, 0.5]) / np.linalg.norm([0.55, -0.65, 0.5]) * framing_distance(lo, hi, fov, fov_y)
    return Cameras.from_fov(look_at_world_to_camera(eye.tolist(), target.tolist()), fov, width, height)


def _coverage(scene, keep: torch.Tensor, cams: Cameras) -> dict:
    white = torch.ones(3)
    alpha_floaters, changed = [], []
    floaters, clean = scene[~keep], scene[keep]
    for i in range(len(cams)):
        cam = cams[i]
        with torch.no_grad():
            full = render(scene, cam, background=white).rgb[0]
            cleaned = render(clean, cam, background=white).rgb[0]
            if len(floaters):
                alpha_floaters.append(float(render(floaters, cam, background=white).alpha[0].mean()))
            else:
                alpha_floaters.append(0.0)
        changed.append(float(((full - cleaned).abs().amax(-1) > CHANGE).float().mean()))
    return {"floater_alpha": float(np.mean(alpha_floaters)), "changed_pixels": float(np.mean(changed)),
            "views": len(cams)}  # fmt: skip


def figure_row(run: Path, height: int = 240) -> np.ndarray:
    """Overview before/after --clean and the first held-out view before/after, side by side (H×4W×3 uint8)."""
    r = load_run(run)
    scene, cameras, splits = r.scene, r.cameras, r.splits
    train_idx = [i for i, s in enumerate(splits) if s == "train"] or list(range(len(cameras)))
    keep, _ = clean_mask(scene, cameras[train_idx])
    view = _views(cameras, splits)[0]
    view = view.scaled(height / float(view.height[0]))
    over = _overview(scene, int(round(height * 4 / 3)), height)
    tiles = []
    for cam in (over, view):
        for s in (scene, scene[keep]):
            with torch.no_grad():
                tiles.append(render(s, cam, background=torch.ones(3)).rgb[0].clamp(0, 1).numpy())
    row = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=0.6) for t in tiles], axis=1)
    return (row * 255).round().astype(np.uint8)


def _psnr(scene, keep: torch.Tensor, cameras: Cameras, images: list, splits: list[str]) -> tuple[float, float]:
    """Mean held-out PSNR of the scene and of what --clean keeps, over white (as training)."""
    full, clean = [], []
    for i in [i for i, s in enumerate(splits) if s == "test"]:
        cam = cameras[i]
        target, _ = decode_image(images[i], size=(int(cam.width[0]), int(cam.height[0])), background=torch.ones(3))
        with torch.no_grad():
            full.append(image_metrics(render(scene, cam, background=torch.ones(3)).rgb[0], target)["psnr"])
            clean.append(image_metrics(render(scene[keep], cam, background=torch.ones(3)).rgb[0], target)["psnr"])
    return (float(np.mean(full)), float(np.mean(clean))) if full else (float("nan"), float("nan"))


def measure(run: Path) -> dict:
    """The floater figures of one run directory."""
    r = load_run(run)
    scene, cameras, images, splits = r.scene, r.cameras, r.image_paths, r.splits
    lo, hi = scene_bounds(scene)
    train_idx = [i for i, s in enumerate(splits) if s == "train"] or list(range(len(cameras)))
    keep, stats = clean_mask(scene, cameras[train_idx])
    keep_tight, _ = clean_mask(scene, cameras[train_idx], margin=0.0)  # --clean --clean-margin 0
    means = scene.means.detach().double().numpy()
    n = len(scene)
    return {
        "run": str(run),
        "gaussians": n,
        "outside_share": float(outside_bounds(scene, lo, hi).float().mean()),
        "far_share": stats["outside_bounds"] / n,
        "few_views_share": stats["seen_by_too_few_views"] / n,
        "clean_drops_share": 1 - stats["kept"] / n,
        "robust_bounds": [lo.tolist(), hi.tolist()],
        "robust_extent": float(np.linalg.norm(hi - lo)),
        "minmax_bounds": [means.min(0).tolist(), means.max(0).tolist()],
        "minmax_extent": float(np.linalg.norm(means.max(0) - means.min(0))),
        "held_out_views": _coverage(scene, keep, _views(cameras, splits)),
        "overview": _coverage(scene, keep, _overview(scene)),
        **dict(zip(("psnr_full", "psnr_clean"), _psnr(scene, keep, cameras, images, splits))),
        "tight_drops_share": 1 - float(keep_tight.float().mean()),
        "psnr_clean_tight": _psnr(scene, keep_tight, cameras, images, splits)[1],
        "metrics": json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else None,
    }


def main() -> int:
    """Measure the runs given as LABEL=RUN_DIR and merge them into the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "floaters.json")
    p.add_argument("--note", default="", help="machine state etc., stored with each entry")
    p.add_argument("--figure", type=Path, default=None, help="also write the before/after renders as a PNG")
    args = p.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for item in args.runs:
        label, _, run = item.partition("=")
        entry = measure(Path(run))
        entry["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        entry["machine"] = f"{os.cpu_count()} cores; {args.note}".strip("; ")
        entry["command"] = "benchmarks/floaters.py " + item
        results[label] = entry
        ho, ov = entry["held_out_views"], entry["overview"]
        print(f"{label}: {entry['gaussians']:,} Gaussians, {100 * entry['outside_share']:.2f} % outside the robust "
              f"bounds, {100 * entry['far_share']:.2f} % far outside, {100 * entry['few_views_share']:.2f} % seen by "
              f"< 2 views; held-out PSNR {entry['psnr_full']:.2f} -> {entry['psnr_clean']:.2f} dB with --clean, "
              f"{entry['psnr_clean_tight']:.2f} with margin 0 ({100 * entry['tight_drops_share']:.2f} % dropped); "
              f"extent min/max "
              f"{entry['minmax_extent']:.3g} vs robust {entry['robust_extent']:.3g}; held-out views: floater alpha "
              f"{ho['floater_alpha']:.4f}, {100 * ho['changed_pixels']:.2f} % pixels changed by --clean; overview: "
              f"floater alpha {ov['floater_alpha']:.4f}, {100 * ov['changed_pixels']:.2f} % changed")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.figure is not None:
        from PIL import Image

        rows = [figure_row(Path(item.partition("=")[2])) for item in args.runs]
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.figure)
        print(f"wrote {args.figure}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
