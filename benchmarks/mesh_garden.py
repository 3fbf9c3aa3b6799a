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
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from garden_truth import GARDEN, ROOT, ground_truth, make_garden_module, similarity  # noqa: E402


def _rays(c2w: np.ndarray, meta: dict, stride: int) -> np.ndarray:
    """One ray per ``stride``-th pixel centre of a true (OpenCV camera-to-world) camera: origin + unit direction."""
    u = np.arange(stride / 2, meta["w"], stride)
    v = np.arange(stride / 2, meta["h"], stride)
    uu, vv = np.meshgrid(u, v)
    d_cam = np.stack([(uu - meta["cx"]) / meta["fl_x"], (vv - meta["cy"]) / meta["fl_y"], np.ones_like(uu)], -1)
    d = d_cam.reshape(-1, 3) @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.concatenate([np.broadcast_to(c2w[:3, 3], d.shape), d], 1).astype(np.float32)


def to_true_frame(vertices: np.ndarray, run: Path) -> np.ndarray:
    """Mesh vertices in the ray tracer's frame: the run's camera centres aligned to the true ones (similarity)."""
    truth, _ = ground_truth()
    ours = {}
    for cam in json.loads((run / "cameras.json").read_text()):
        w2c = np.asarray(cam["world_to_camera"], dtype=np.float64)
        ours[Path(cam["image"]).stem] = -w2c[:3, :3].T @ w2c[:3, 3]
    names = sorted(set(ours) & {Path(k).stem for k in truth})
    true_centres = {Path(k).stem: v[:3, 3] for k, v in truth.items()}
    s, r, t = similarity(np.stack([ours[n] for n in names]), np.stack([true_centres[n] for n in names]))
    return vertices @ (s * r).T + t


def mesh_measurements(mesh, run: Path, stride: int = 2) -> dict:
    """Distance to the true surface, holes seen from the true cameras, colour error vs the photos, topology."""
    import open3d as o3d
    from PIL import Image

    truth_scene, _ = make_garden_module().build_scene()
    vertices = to_true_frame(np.asarray(mesh.vertices, np.float64), run).astype(np.float32)
    ours = o3d.t.geometry.RaycastingScene()
    ours.add_triangles(o3d.core.Tensor(vertices), o3d.core.Tensor(np.asarray(mesh.faces, np.uint32)))
    dist = truth_scene.compute_distance(o3d.core.Tensor(vertices)).numpy()
    lo, hi = vertices.min(0), vertices.max(0)
    colours = mesh.visual.vertex_colors[:, :3].astype(np.float64) / 255.0
    truth, meta = ground_truth()
    seen = holes = 0
    errors = []
    for name, c2w in sorted(truth.items()):
        rays = _rays(c2w, meta, stride)
        t_true = truth_scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        hit = ours.cast_rays(o3d.core.Tensor(rays))
        t_ours = hit["t_hit"].numpy()
        p_true = rays[:, :3] + rays[:, 3:] * np.where(np.isfinite(t_true), t_true, 0)[:, None]
        # Only surface inside the mesh's box (shrunk by a margin) was fused: beyond it there is nothing to hit.
        inside = np.isfinite(t_true) & np.all((p_true > lo + 0.1) & (p_true < hi - 0.1), axis=1)
        seen += int(inside.sum())
        holes += int((inside & ~np.isfinite(t_ours)).sum())
        # Colour: the hit triangle's vertex colours, interpolated, against the photo's pixel.
        ok = inside & np.isfinite(t_ours) & (np.abs(t_ours - t_true) < 0.05)
        tri = mesh.faces[hit["primitive_ids"].numpy()[ok]]
        uv = hit["primitive_uvs"].numpy()[ok]
        bary = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)
        predicted = np.einsum("nk,nkc->nc", bary, colours[tri])
        photo = np.asarray(Image.open(GARDEN / "images" / name).convert("RGB"), np.float64) / 255.0
        ys = np.arange(stride / 2, meta["h"], stride).astype(int)
        xs = np.arange(stride / 2, meta["w"], stride).astype(int)
        errors.append(predicted - photo[np.ix_(ys, xs)].reshape(-1, 3)[ok])
    errors = np.concatenate(errors)
    faces_per_body = np.bincount(_face_labels(mesh))
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return {
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "distance_median": float(np.median(dist)),
        "distance_p95": float(np.percentile(dist, 95)),
        "hole_fraction": holes / max(seen, 1),
        "pixels_checked": seen,
        "colour_pixels": len(errors),
        "colour_psnr": float(-10 * math.log10(np.mean(errors**2))),
        "colour_median_abs": float(np.median(np.abs(errors))),
        "bodies": len(faces_per_body),
        "largest_body_face_fraction": float(faces_per_body.max() / len(mesh.faces)),
        "boundary_edge_fraction": float((counts == 1).sum() / len(counts)),
        "colour_std": float(colours.std(axis=0).mean()),
    }


def _face_labels(mesh) -> np.ndarray:
    import trimesh

    return trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))


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
