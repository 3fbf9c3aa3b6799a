"""Diagnosis of the statue photo folder: per-view PSNR (neutral and with each view's colour fitted) and the
colour-only ceiling of the neutral protocol. Short runs on a prepared COLMAP project (SfM done once).

    # per-photo intrinsics from the shared-camera model of an earlier run (RUN/sfm: images/ + sparse/0)
    .venv/bin/python benchmarks/statue_diagnosis.py split runs/bench/statue/sfm runs/diag/per_photo
    # train N steps and score every view (side-by-side PNGs in RUN/sbs: photo | neutral render | colour-fitted)
    .venv/bin/python benchmarks/statue_diagnosis.py train runs/bench/statue/sfm runs/diag/shared --steps 1500
    # the ceiling: a perfect scene's neutral render is the photo mapped back through its fitted colour transform
    .venv/bin/python benchmarks/statue_diagnosis.py ceiling runs/bench/statue/sfm runs/diag/shared

One torch thread (the machine is shared). Figures go to RUN/diag.json and RUN/ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
            ROOT.parent / "shared" / "data")


def _load(project: Path, downscale: int, masks: str):
    from recon3d.data import load_dataset

    cache = project.parent / f"cache_{project.name}_d{downscale}"  # undistorted images, reused between runs
    return load_dataset(project, work_dir=cache, downscale=downscale, masks=None if masks == "none" else masks)


def _views(data, scene, out: Path | None = None, pngs: tuple[int, ...] = ()) -> list[dict]:
    """Per view: masked PSNR of the neutral render, of the render after a least-squares 3x4 colour fit to the
    whole photo, and of the photo mapped back through that fit (the colour-only ceiling)."""
    import numpy as np
    from PIL import Image

    from recon3d.metrics import fit_affine
    from recon3d.render import render

    test = set(data.test_indices())
    rows = []
    for i in range(len(data.cameras)):
        with torch.no_grad():
            rgb = render(scene, data.cameras[i], background=torch.zeros(3)).rgb[0].clamp(0, 1)
        t = data.load_image(i)
        mk = data.load_mask(i)
        keep = torch.ones(rgb.shape[:2], dtype=torch.bool) if mk is None else mk > 0.5
        m = fit_affine(rgb, t, None if mk is None else mk[..., None]).double()
        fitted = (rgb.double() @ m[:, :3].T + m[:, 3]).clamp(0, 1)
        back = ((t.double() - m[:, 3]) @ torch.linalg.inv(m[:, :3]).T).clamp(0, 1)

        rows.append({"i": i, "name": Path(data.image_paths[i]).stem, "test": i in test, "psnr": _psnr(rgb, t, keep),
                     "psnr_colour_fitted": _psnr(fitted, t, keep), "colour_only_ceiling": _psnr(back, t, keep),
                     "gain": abs(float(torch.linalg.det(m[:, :3]))) ** (1 / 3)})
        if out is not None and i in pngs:
            k = keep[..., None].double()
            img = torch.cat([t.double() * (0.25 + 0.75 * k), rgb.double(), fitted * (0.25 + 0.75 * k)], 1)
            (out / "sbs").mkdir(exist_ok=True)
            Image.fromarray((img.numpy() * 255 + 0.5).astype(np.uint8)).save(
                out / "sbs" / f"{i:02d}_{'test' if i in test else 'train'}_{rows[-1]['name']}.png")
    return rows


def _psnr(x: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> float:
    """PSNR in dB over the kept pixels."""
    return -10 * math.log10(max(float(((x.double() - target.double()) ** 2)[keep].mean()), 1e-10))


def _means(rows: list[dict]) -> dict:
    out = {}
    for group, sel in (("train", [r for r in rows if not r["test"]]), ("test", [r for r in rows if r["test"]])):
        for key in ("psnr", "psnr_colour_fitted", "colour_only_ceiling"):
            if sel:
                out[f"{group}_{key}"] = sum(r[key] for r in sel) / len(sel)
    return out


def cmd_split(args) -> None:
    from recon3d.data.intrinsics import split_intrinsics

    src, dst = Path(args.project), Path(args.run)
    (dst / "sparse").mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "sparse" / "0", dst / "sparse" / "0", dirs_exist_ok=True)
    if not (dst / "images").exists():
        os.symlink((src / "images").resolve(), dst / "images")
    t0 = time.monotonic()
    print(json.dumps({**(split_intrinsics(dst / "sparse" / "0") or {}), "seconds": time.monotonic() - t0}))


def cmd_train(args) -> None:
    from recon3d.api import reconstruct
    from recon3d.ply import load_ply

    data = _load(Path(args.project), args.downscale, args.masks)
    run = Path(args.run)
    t0 = time.monotonic()
    _, _, m = reconstruct(data, run, overwrite=True, preset="fast", appearance=args.appearance, quiet=True,
                          steps=args.steps, assignments=["run.threads=1", "run.eval_renders=0", *args.set])
    rows = _views(data, load_ply(run / "scene.ply"), run, tuple(int(x) for x in args.pngs.split(",") if x))
    out = {"project": args.project, "steps": m.get("steps"), "train_wall_s": time.monotonic() - t0,
           "gaussians": m.get("num_gaussians"), "heldout_psnr": m.get("psnr"), "heldout_nerfw": m.get("psnr_nerfw"),
           "see_through": m.get("see_through"), **_means(rows), "appearance": args.appearance,
           "downscale": args.downscale, "set": args.set, "per_view": rows}
    (run / "diag.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "per_view"}, indent=1))


def cmd_ceiling(args) -> None:
    from recon3d.ply import load_ply

    data = _load(Path(args.project), args.downscale, args.masks)
    rows = _views(data, load_ply(Path(args.run) / "scene.ply"))
    (Path(args.run) / "ceiling.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(_means(rows), indent=1))
    for r in rows:
        if r["test"]:
            print(json.dumps(r))


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("split", "train", "ceiling"))
    parser.add_argument("project", help="a COLMAP project of the statue (images/ + sparse/0)")
    parser.add_argument("run", help="split: the new project; train/ceiling: the run directory")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--downscale", type=int, default=2)
    parser.add_argument("--appearance", default="affine")
    parser.add_argument("--masks", default=str(DATA / "statue" / "masks"), help="mask folder, or none")
    parser.add_argument("--pngs", default="0,8,16,24,32,1,2,3", help="views written side by side")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    {"split": cmd_split, "train": cmd_train, "ceiling": cmd_ceiling}[args.what](args)


if __name__ == "__main__":
    main()
