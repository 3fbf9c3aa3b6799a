"""A/B: the affine appearance with dense Adam vs row Adam (optim.appearance_row_adam) on the garden photo folder.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/appearance_rows_ab.py STEPS [SEED]

The garden photos as a photo folder (SfM cached under runs/bench_s3k/cameras_sfm), preset fast, affine
appearance, fixed steps, the two arms one after the other; prints each arm's held-out figures and writes
runs/ab_app_STEPS_seedSEED.json. Results of 2026-12-08: benchmarks/results/appearance_row_adam_garden_ab.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("psnr", "psnr_black", "psnr_white", "psnr_nerfw", "ssim", "see_through", "num_gaussians", "steps",
        "train_seconds", "appearance")


def main() -> int:
    from recon3d.api import reconstruct
    from recon3d.data import load_dataset

    torch.set_num_threads(1)
    steps = int(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    data = load_dataset(ROOT / "examples" / "garden" / "images", work_dir=ROOT / "runs" / "bench_s3k" / "cameras_sfm")
    rows = {}
    for name, flag in (("dense", "false"), ("rows", "true")):
        t0 = time.time()
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        _, _, m = reconstruct(data, ROOT / "runs" / f"ab_app_{name}_s{seed}", overwrite=True, steps=steps,
                              preset="fast", appearance="affine", quiet=True, threads=1,
                              assignments=[f"optim.appearance_row_adam={flag}", f"run.seed={seed}"])
        rows[name] = {k: m.get(k) for k in KEYS} | {"uptime_at_start": load, "wall_s": round(time.time() - t0, 1)}
        print(name, json.dumps(rows[name]), flush=True)
    (ROOT / "runs" / f"ab_app_{steps}_seed{seed}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
