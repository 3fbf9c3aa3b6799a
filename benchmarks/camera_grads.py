"""What camera gradients and the anti-aliased mode cost on the CPU: fwd+bwd of one render, alternating in one
process between plain cameras, cameras whose world_to_camera/fx/fy/cx/cy require grad, and the anti-aliased
mode (and features, K = 16), medians over the repeats (the machine may be loaded: alternation spreads the load
over all variants alike).

    .venv/bin/python benchmarks/camera_grads.py --gaussians 100000 --res 400 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rasterize import benchmark_camera, surface_scene  # noqa: E402

import recon3d  # noqa: E402
from recon3d.io_utils import atomic_write_text  # noqa: E402


def _step(scene, cams, variant: str, feats) -> float:
    s = scene.detach().requires_grad_()
    c = cams
    kwargs = {}
    if variant == "camera_grads":
        leaves = [cams.world_to_camera.clone().requires_grad_()] + [
            getattr(cams, k).clone().requires_grad_() for k in ("fx", "fy", "cx", "cy")
        ]
        c = recon3d.Cameras(*leaves, cams.width, cams.height)
    if variant == "antialiased":
        kwargs["antialiased"] = True
    if variant == "features16":
        kwargs["features"] = feats
    t0 = time.perf_counter()
    out = recon3d.render(s, c, background=torch.ones(3), backend="cpu", **kwargs)
    loss = out.rgb.sum() + out.depth.mean()
    if out.features is not None:
        loss = loss + out.features.sum()
    loss.backward()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    """Alternate the variants and write benchmarks/results/camera_grads_cpu.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gaussians", type=int, default=100_000)
    p.add_argument("--res", type=int, default=400)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--variants", nargs="+", default=["plain", "camera_grads", "antialiased", "features16"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "camera_grads_cpu.json")
    args = p.parse_args()
    scene, cams = surface_scene(args.gaussians), benchmark_camera(args.res)
    feats = torch.rand(args.gaussians, 16, requires_grad=True)
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    load_before = os.getloadavg()
    for rep in range(args.repeats + 1):
        order = args.variants if rep % 2 == 0 else list(reversed(args.variants))
        for v in order:
            t = _step(scene, cams, v, feats)
            if rep:  # the first round warms caches (and builds kernels)
                times[v].append(t)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_threads": torch.get_num_threads(),
        "fwd_bwd_ms_median": {v: statistics.median(t) for v, t in times.items()},
        "fwd_bwd_ms_all": times,
    }
    base = result["fwd_bwd_ms_median"].get("plain")
    for v, m in result["fwd_bwd_ms_median"].items():
        print(f"{v:14s} median {m:8.1f} ms" + (f"  ({m / base:.2f}x plain)" if base else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
