"""Splat formats side by side: file size against the 3DGS PLY, write/read time, and what the decoded scene
looks like (PSNR of its renders against the original's, 8 views), plus reading a 1M-Gaussian SPZ.

    python benchmarks/formats.py --source runs/lego          # a run directory (its first 8 held-out views)
    python benchmarks/formats.py --synthetic 150000          # no run: a synthetic 150k scene, 8 orbit views
    python benchmarks/formats.py --source runs/lego --upsample 150000   # a short run split up to 150k

Also times gsply (the PyPI reader/writer the formats were checked against) on the same files when it is
installed, and checks that it decodes our files to the values we decode. Writes
``benchmarks/results/formats.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recon3d.exporters.mesh import sphere_views  # noqa: E402
from recon3d.formats import load_scene, save_scene  # noqa: E402
from recon3d.formats.spz import load_spz, save_spz  # noqa: E402
from recon3d.render import render  # noqa: E402
from recon3d.scene import GaussianScene  # noqa: E402

VARIANTS = [
    # (label, format, file name, writer options)
    ("ply", "ply", "scene.ply", {}),
    ("spz v3", "spz", "scene.spz", {"version": 3}),
    ("spz v2", "spz", "scene_v2.spz", {"version": 2}),
    ("compressed-ply", "compressed-ply", "scene.compressed.ply", {}),
    ("sog", "sog", "scene.sog", {}),
    ("gltf", "gltf", "scene.glb", {}),
    ("gltf+spz", "gltf", "scene_spz.glb", {"spz": True}),
    ("splat (SH dropped)", "splat", "scene.splat", {}),
]


def synthetic_scene(n: int, degree: int = 3, seed: int = 0) -> GaussianScene:
    """An object-like scene: Gaussians on a few noisy shells, σ ~ 1 cm, colours and SH as a trained scene's."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    radius = 0.5 + 0.15 * torch.randint(0, 4, (n, 1), generator=g) + 0.02 * torch.randn(n, 1, generator=g)
    k = (degree + 1) ** 2 - 1
    sh0 = (torch.rand(n, 1, 3, generator=g) - 0.5) * 3.0
    return GaussianScene(
        means=dirs * radius,
        scales=torch.randn(n, 3, generator=g) * 0.4 - 4.6,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g) * 1.5 + 1.0,
        sh0=sh0,
        shN=torch.randn(n, k, 3, generator=g) * 0.08,
    )


def upsample(scene: GaussianScene, target: int, seed: int = 0) -> GaussianScene:
    """Split every Gaussian into k ≈ target/n smaller ones around it (σ/∛k, centres jittered within the
    original), keeping colour, SH and opacity: a trained scene's statistics at a larger count."""
    k = max(1, math.ceil(target / len(scene)))
    g = torch.Generator().manual_seed(seed)
    rep = scene.map(lambda t: t.repeat_interleave(k, dim=0))
    rot = rep.rotation_matrices()
    sigma = rep.activated_scales()
    offset = (rot @ (torch.randn(len(rep), 3, generator=g) * sigma * 0.5)[..., None])[..., 0]
    out = GaussianScene(rep.means + offset, rep.scales - math.log(k) / 3, rep.quats, rep.opacities, rep.sh0, rep.shN)
    return out[torch.randperm(len(out), generator=g)[:target]]


def source_scene(args) -> tuple[GaussianScene, object, str]:
    if args.source:
        from recon3d.exporters import load_source

        src = load_source(args.source)
        cams = None
        if src.cameras is not None:
            splits = src.splits or ["train"] * len(src.cameras)
            idx = [i for i, s in enumerate(splits) if s == "test"] or list(range(len(src.cameras)))
            cams = src.cameras[idx[: args.views]]
            h, w = cams.image_size()
            cams = cams.scaled(min(1.0, args.size / max(w, h)))
        label = f"{args.source} ({len(src.scene)} Gaussians, SH {src.scene.sh_degree})"
        if args.upsample:
            label += f", each Gaussian split into ~{math.ceil(args.upsample / len(src.scene))} (upsample to {args.upsample})"
            return upsample(src.scene, args.upsample), cams, label
        return src.scene, cams, label
    scene = synthetic_scene(args.synthetic)
    return scene, None, f"synthetic object-like scene, {args.synthetic} Gaussians, SH 3 (benchmarks/formats.py)"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, help="a run directory or splat file (default: a synthetic scene)")
    ap.add_argument("--upsample", type=int, default=0, help="split the source's Gaussians up to this many")
    ap.add_argument("--synthetic", type=int, default=150_000, help="Gaussians in the synthetic scene (150000)")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--size", type=int, default=400, help="longest side of the rendered views (400)")
    ap.add_argument("--big", type=int, default=1_000_000, help="Gaussians in the SPZ read-time test (1000000)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "formats.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()

    scene, cams, label = source_scene(args)
    if cams is None:
        cams = sphere_views(scene, num_views=args.views, image_size=args.size)
    background = torch.zeros(3)
    reference = render(scene, cams, background=background).rgb.clamp(0, 1)
    tmp = Path(tempfile.mkdtemp(prefix="recon3d_formats_"))
    rows = []
    try:
        ply_size = None
        for name, fmt, fname, opts in VARIANTS:
            path = tmp / fname
            written, t_write = timed(lambda: save_scene(scene, path, fmt, **opts))  # noqa: B023
            decoded, t_read = timed(lambda: load_scene(written), repeat=2)  # noqa: B023
            size = size_of(written)
            if fmt == "ply":
                ply_size = size
                exact = all(torch.equal(getattr(decoded, k), getattr(scene, k)) for k in
                            ("means", "scales", "quats", "opacities", "sh0", "shN"))  # fmt: skip
            else:
                exact = None
            out = render(decoded, cams, background=background).rgb.clamp(0, 1)
            per_view = [psnr(out[i], reference[i]) for i in range(len(cams))]
            row = {
                "format": name,
                "bytes": size,
                "bytes_per_gaussian": round(size / len(scene), 2),
                "ratio_to_ply": None if ply_size is None else round(ply_size / size, 2),
                "write_s": round(t_write, 3),
                "read_s": round(t_read, 3),
                "psnr_min_db": round(min(per_view), 2) if math.isfinite(min(per_view)) else "inf",
                "psnr_mean_db": round(float(np.mean(per_view)), 2) if all(map(math.isfinite, per_view)) else "inf",
            }
            if exact is not None:
                row["exact_round_trip"] = exact
            rows.append(row)
            print(json.dumps(row), flush=True)

        # Reading a 1M-Gaussian SPZ (SH 3), ours and gsply's, best of 3.
        big = synthetic_scene(args.big, seed=1)
        big_path = save_spz(big, tmp / "big.spz")
        _, t_ours = timed(lambda: load_spz(big_path), repeat=3)
        big_row = {"gaussians": args.big, "bytes": big_path.stat().st_size, "recon3d_read_s": round(t_ours, 3)}
        gsply_rows = {}
        try:
            import gsply

            gsply.read_spz(big_path)  # compile its numba kernels outside the timing
            _, t_g = timed(lambda: gsply.read_spz(big_path), repeat=3)
            big_row["gsply_read_s"] = round(t_g, 3)
            cply = tmp / "scene.compressed.ply"
            spz = tmp / "scene.spz"
            gsply.plyread(cply)
            _, gsply_rows["compressed_ply_read_s"] = timed(lambda: gsply.plyread(cply), repeat=2)
            _, gsply_rows["spz_read_s"] = timed(lambda: gsply.read_spz(spz), repeat=2)
            g = gsply.read_spz(spz)
            _, gsply_rows["spz_write_s"] = timed(lambda: gsply.write_spz(tmp / "g.spz", g))
            gsply_rows = {k: round(v, 3) for k, v in gsply_rows.items()}
            gsply_rows["version"] = gsply.__version__
        except ImportError:
            gsply_rows = {"note": "gsply not installed"}
        print(json.dumps(big_row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "command": "python benchmarks/formats.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; load average (1/5/15 min) {', '.join(f'{v:.1f}' for v in load_before)} at the "
        f"start, {', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end (a shared machine: times are loaded)",
        "scene": label,
        "views": f"{len(cams)} views, {cams.image_size()[1]}x{cams.image_size()[0]}, black background; PSNR of the "
        "decoded scene's render against the original scene's render",
        "formats": rows,
        "read_spz_1m": big_row,
        "gsply_on_same_files": gsply_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
