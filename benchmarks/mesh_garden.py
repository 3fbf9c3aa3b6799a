"""The mesh of the reconstructed example scene (``examples/garden``) measured against the scene that made it.

``examples/make_garden.py`` ray traces the shipped photos from known geometry (a ground plane, five objects, a
ring wall), so the true surface is an independent reference. This reconstructs the garden from the bare photos
as ``make demo`` does (or takes an existing run directory), exports its mesh with the first settings
("before": expected depth, no multi-view check), with the current defaults less the parallax check
("no_parallax": what the export did until the check came), with the checks but the TSDF mesh as fused ("tsdf_only":
no closing of holes, no see-through test of pieces) and with the current defaults ("after"), side by side, and
reports for each, in the ray tracer's frame (the run's cameras aligned to the true ones by a similarity):
- distance from the mesh's vertices to the true surface (median, 95th percentile);
- holes: the share of pixels of the 36 true views whose ray meets the true surface inside the mesh's box
  (shrunk by 10 cm sideways; the box's extent is reported too) but misses the mesh;
- colour: the mesh's vertex colours, ray cast into each view where the mesh and the truth agree on depth,
  against the photo (PSNR);
- topology: pieces, share of faces in the largest, open boundary edges.

    .venv/bin/python benchmarks/mesh_garden.py                      # make demo's run (3 min) + both meshes
    .venv/bin/python benchmarks/mesh_garden.py --run RUN_DIR        # measure an existing garden run
    .venv/bin/python benchmarks/mesh_garden.py --run RUN_DIR --variant 'name={"consistent_views": 3}'
    .venv/bin/python benchmarks/mesh_garden.py --run RUN_DIR --only tsdf_only --only after --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from garden_truth import GARDEN, ROOT, mesh_measurements  # noqa: E402

# The export as it was before median depth: expected depth, every filter added since switched off.
BEFORE = {
    "depth": "expected",
    "consistent_views": 0,
    "split_voxels": 0.0,
    "min_parallax_deg": 0.0,
    "close_holes": False,
    "max_see_through": 1.0,
}
# The export before the parallax check (median depth, split, neighbour check): haze in front of the far wall stayed.
NO_PARALLAX = {"min_parallax_deg": 0.0, "close_holes": False, "max_see_through": 1.0}
# The export before the closing (every check, the TSDF mesh as fused): a third of the ground in holes.
TSDF_ONLY = {"close_holes": False, "max_see_through": 1.0}


def reconstruct(run: Path, minutes: float, extra: list[str]) -> None:
    """Reconstruct the shipped garden photos (SfM + training) as ``make demo`` does."""
    cli = [sys.executable, "-m", "recon3d.cli", "reconstruct", str(GARDEN / "images"), "-o", str(run)]
    subprocess.run([*cli, "--time-budget", str(minutes), "--overwrite", "--quiet", *extra], check=True, cwd=ROOT)


def measure_variant(source, options: dict) -> dict:
    """Extract the mesh of ``source`` with ``options`` (MeshOptions fields) and measure it."""
    from recon3d.exporters.mesh import extract_mesh

    start = time.perf_counter()
    mesh = extract_mesh(source.scene, source.cameras, progress=False, **options)
    seconds = time.perf_counter() - start
    return {"options": options, "export_seconds": round(seconds, 2), **mesh_measurements(mesh, source.root)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="an existing run directory of the garden (default: reconstruct one)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget (make demo: 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training overrides")
    parser.add_argument(
        "--variant", action="append", default=[], metavar='NAME={"option": value}', help="more mesh settings to measure"
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="measure only these variants (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mesh_garden.json")
    args = parser.parse_args()
    from recon3d.exporters import load_source

    variants = {"before": BEFORE, "no_parallax": NO_PARALLAX, "tsdf_only": TSDF_ONLY, "after": {}}
    for text in args.variant:
        name, _, options = text.partition("=")
        variants[name] = json.loads(options)
    if args.only:
        variants = {name: variants[name] for name in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "garden"
            reconstruct(run, args.minutes, [x for kv in args.set for x in ("--set", kv)])
        source = load_source(run)
        results = {}
        for name, options in variants.items():
            results[name] = measure_variant(source, options)
            print(name, json.dumps(results[name]), flush=True)
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    result = {
        "run": str(run) if args.run else f"recon3d reconstruct examples/garden/images --time-budget {args.minutes}",
        "run_metrics": {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
        "meshes": results,
    }
    keys = ("distance_median", "distance_p95", "hole_fraction", "colour_psnr", "bodies", "largest_body_face_fraction")
    keys += ("worst_body_distance_median",)
    keys += ("boundary_edge_fraction", "faces", "export_seconds")
    print(f"{'':14s}" + "".join(f"{k[:14]:>16s}" for k in keys))
    for name, r in results.items():
        print(f"{name[:14]:14s}" + "".join(f"{r[k]:16.4g}" for k in keys))
    args.out.write_text(json.dumps(result, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
