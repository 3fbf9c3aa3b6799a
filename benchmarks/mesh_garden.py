"""The mesh of the reconstructed example scene (``examples/garden``) measured against the scene that made it.

``examples/make_garden.py`` ray traces the shipped photos from known geometry (a ground plane, five objects, a
ring wall), so the true surface is an independent reference. This reconstructs the garden from the bare photos
(or takes an existing run directory), exports its mesh with ``recon3d export --format mesh`` and reports, in the
ray tracer's frame (the run's cameras aligned to the true ones by a similarity transform):
- distance from the mesh's vertices to the true surface (median, 95th percentile);
- holes: the share of pixels of the 36 true views whose ray meets the true surface inside the mesh's box but
  misses the mesh;
- colour: the mesh's vertex colours, ray cast into each view where the mesh and the truth agree on depth,
  against the photo (PSNR);
- topology: pieces, share of faces in the largest, open boundary edges.

    .venv/bin/python benchmarks/mesh_garden.py                      # reconstruct (1,500 steps) + mesh + measure
    .venv/bin/python benchmarks/mesh_garden.py --run RUN_DIR        # measure an existing garden run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from garden_truth import GARDEN, ROOT, mesh_measurements  # noqa: E402


def reconstruct_and_mesh(tmp: Path, steps: int, extra: list[str]) -> tuple[object, Path]:
    """Reconstruct the shipped garden photos (SfM + training) and export the mesh with the CLI."""
    import trimesh

    run = tmp / "garden"
    cli = [sys.executable, "-m", "recon3d.cli"]
    subprocess.run(
        [
            *cli,
            "reconstruct",
            str(GARDEN / "images"),
            "-o",
            str(run),
            "--steps",
            str(steps),
            "--overwrite",
            "--quiet",
            *extra,
        ],
        check=True,
        cwd=ROOT,
    )
    out = tmp / "garden.ply"
    subprocess.run([*cli, "export", str(run), "--format", "mesh", "-o", str(out)], check=True, cwd=ROOT)
    return trimesh.load(out, force="mesh"), run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="an existing run directory of the garden (default: reconstruct one)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mesh_garden.json")
    args = parser.parse_args()
    import trimesh

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.run is None:
            extra = [x for kv in args.set for x in ("--set", kv)]
            mesh, run = reconstruct_and_mesh(tmp, args.steps, extra)
        else:
            run = args.run
            out = tmp / "garden.ply"
            subprocess.run(
                [sys.executable, "-m", "recon3d.cli", "export", str(run), "--format", "mesh", "-o", str(out)],
                check=True,
                cwd=ROOT,
            )
            mesh = trimesh.load(out, force="mesh")
        result = {
            "run": str(run),
            "run_metrics": json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else None,
            "mesh": mesh_measurements(mesh, run),
        }
    result["run_metrics"] = {k: v for k, v in (result["run_metrics"] or {}).items() if not isinstance(v, (list, dict))}
    print(json.dumps(result["mesh"], indent=1))
    args.out.write_text(json.dumps(result, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
