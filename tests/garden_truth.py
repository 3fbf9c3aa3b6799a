"""The shipped example garden's ground truth, for tests: true cameras, true geometry, frame alignment, and
the measurements of a mesh against them (distance, holes from the true views, colour, topology)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GARDEN = ROOT / "examples" / "garden"


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: scale s, rotation R, translation t minimising |s R src + t - dst|²."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    s = float(np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean())
    return s, r, mu_d - s * r @ mu_s


def ground_truth(garden: Path = GARDEN) -> tuple[dict[str, np.ndarray], dict]:
    """Image name -> OpenCV camera-to-world from the example's transforms.json (OpenGL camera-to-world)."""
    meta = json.loads((garden / "transforms.json").read_text())
    out = {}
    for f in meta["frames"]:
        c2w = np.array(f["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
        out[f["file_path"].split("/")[-1]] = c2w
    return out, meta


def make_garden_module():
    """``examples/make_garden.py`` as a module (its ``build_scene()`` is the true geometry)."""
    spec = importlib.util.spec_from_file_location("make_garden", ROOT / "examples" / "make_garden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        # Only surface inside the mesh's box was fused: beyond it there is nothing to hit. The box is shrunk by
        # a margin sideways only; shrunk in height it would leave out the ground (z = 0, its floor).
        inside = np.isfinite(t_true) & np.all((p_true[:, :2] > lo[:2] + 0.1) & (p_true[:, :2] < hi[:2] - 0.1), axis=1)
        inside &= (p_true[:, 2] > lo[2] - 0.1) & (p_true[:, 2] < hi[2] + 0.1)
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
    labels = _face_labels(mesh)
    faces_per_body = np.bincount(labels)
    # A stray piece (haze meshed in front of the far wall) lies tens of cm off; a real one (the torus, apart
    # from the ground) lies as near as the rest: the farthest piece's median distance tells them apart.
    body_distance = [float(np.median(dist[np.unique(mesh.faces[labels == b])])) for b in range(len(faces_per_body))]
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
        "worst_body_distance_median": max(body_distance),
        "boundary_edge_fraction": float((counts == 1).sum() / len(counts)),
        "colour_std": float(colours.std(axis=0).mean()),
        # What the mesh covers (the holes are counted inside this box only): the ring wall stands at radius 6.5.
        "box_min": [round(float(x), 3) for x in lo],
        "box_max": [round(float(x), 3) for x in hi],
    }


def _face_labels(mesh) -> np.ndarray:
    import trimesh

    return trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
