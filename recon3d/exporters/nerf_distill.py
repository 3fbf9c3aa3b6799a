"""Distil a NeRF run into splats: the run-level step above ``recon3d.nerf.distill`` (it reads the run through
``recon3d.run.load_run``, which itself knows NeRF runs, so it lives here and not in ``recon3d.nerf``)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io_utils import atomic_write_text
from ..nerf.distill import DISTILL_FILE, DistillOptions, distill
from ..ply import save_ply
from ..run import load_run


def distill_run(run_dir: str | Path, options: DistillOptions | None = None, *, progress: bool = True,
                evaluate: bool = True) -> Path:
    """Distil a NeRF run's field into ``RUN/scene.ply`` (and ``RUN/distill.json``: counts, times, and the
    splats' held-out figures beside the field's); returns the scene's path."""

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.nerf is None:
        raise InputError(run_dir, "is not a NeRF run (no nerf.pt); only a NeRF run is distilled")
    if run.cameras is None:
        raise InputError(run_dir, "has no cameras.json: distillation seeds from the training cameras")
    train = run.indices("train") or list(range(len(run.cameras)))
    options = options or DistillOptions()
    t0 = time.monotonic()
    scene, stats = distill(run.nerf, run.cameras[train], options, progress=progress)
    stats["seconds"] = round(time.monotonic() - t0, 3)
    path = save_ply(scene, run_dir / "scene.ply")
    record: dict[str, Any] = {"options": asdict(options), **stats}
    if evaluate and run.indices("test") and all(run.image_paths[i].is_file() for i in run.indices("test")):
        import dataclasses

        splats = dataclasses.replace(run, scene=scene, nerf=None).evaluate("test")
        keys = ["psnr", "ssim"]
        if run.metrics is not None and run.metrics.get("psnr_black") is not None:
            keys += ["psnr_black", "psnr_white"]  # where the run's protocol measures over both (RGBA data)
        record["splats"] = {k: splats.get(k) for k in (*keys, "num_views")}
        if run.metrics is not None:
            record["field"] = {k: run.metrics.get(k) for k in keys}
    atomic_write_text(run_dir / DISTILL_FILE, json.dumps(record, indent=1) + "\n")
    return path
