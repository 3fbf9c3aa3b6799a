"""Mesh export: TSDF fusion of rendered depth recovers analytic surfaces, with their colours, closed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import recon3d
from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.errors import InputError
from recon3d.export.mesh import extract_mesh, save_mesh, sphere_views
from recon3d.scene import GaussianScene


def _disk_quats(normals: torch.Tensor) -> torch.Tensor:
    """Quaternions turning local z onto each normal (flat Gaussians lie in the tangent plane)."""
    w = 1.0 + normals[:, 2]
    q = torch.stack([w, -normals[:, 1], normals[:, 0], torch.zeros_like(w)], dim=1)
    return q / q.norm(dim=1, keepdim=True)


def sphere_scene(n: int = 3000) -> GaussianScene:
    """Flat Gaussians evenly on the unit sphere (Fibonacci points), coloured (normal + 1) / 2."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * k
    normals = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1).float()
    spacing = math.sqrt(4 * math.pi / n)
    scene = GaussianScene.from_points(normals, (normals + 1) / 2, scale=0.7 * spacing, opacity=0.9)
    scene.quats = _disk_quats(normals)
    scene.scales[:, 2] = math.log(0.003)
    return scene


FACE_COLORS = {
    (0, 1): (0.9, 0.1, 0.1),
    (0, -1): (0.1, 0.8, 0.2),
    (1, 1): (0.1, 0.2, 0.9),
    (1, -1): (0.9, 0.8, 0.1),
    (2, 1): (0.8, 0.2, 0.8),
    (2, -1): (0.1, 0.8, 0.8),
}


def cube_scene(grid: int = 24) -> GaussianScene:
    """Flat Gaussians tiling the faces of the cube [-0.5, 0.5]³, one colour per face."""
    parts = []
    t = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid - 0.5
    u, v = torch.meshgrid(t, t, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    for (axis, sign), color in FACE_COLORS.items():
        pts = torch.zeros(len(u), 3)
        others = [a for a in range(3) if a != axis]
        pts[:, axis] = 0.5 * sign
        pts[:, others[0]], pts[:, others[1]] = u, v
        normals = torch.zeros_like(pts)
        normals[:, axis] = 1.0
        face = GaussianScene.from_points(pts, torch.tensor(color).expand(len(u), 3), scale=0.7 / grid, opacity=0.95)
        face.quats = _disk_quats(normals + torch.tensor([0.0, 0.0, 1e-6]))
        face.scales[:, 2] = math.log(0.002)
        parts.append(face)
    return GaussianScene.cat(parts)


def _ring_cameras(radius: float, size: int) -> Cameras:
    w2cs = []
    for elevation in (-35.0, 35.0):
        for k in range(10):
            a, e = 2 * math.pi * (k + 0.5 * (elevation > 0)) / 10, math.radians(elevation)
            eye = radius * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
            w2cs.append(look_at_world_to_camera(eye, (0.0, 0.0, 0.0)))
    for z in (-1.0, 1.0):
        w2cs.append(look_at_world_to_camera(torch.tensor([0.05, 0.03, z * radius]), (0.0, 0.0, 0.0)))
    return Cameras.from_fov(torch.stack(w2cs), 0.8, size, size)


def _distance_to_mesh(mesh, points: np.ndarray) -> np.ndarray:
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    legacy = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(mesh.vertices), o3d.utility.Vector3iVector(mesh.faces)
    )
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(legacy))
    return scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()


def _boundary_edge_fraction(mesh) -> float:
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return float((counts == 1).sum()) / len(counts)


@pytest.mark.slow
def test_sphere_mesh_lies_within_chamfer_bound():
    """Bound: marching cubes on a TSDF places the surface to within half a voxel on average, and within
    two voxels everywhere; we ask that of both Chamfer directions."""
    voxel = 0.025
    mesh = extract_mesh(
        sphere_scene(), None, num_views=32, image_size=128, voxel_size=voxel, backend="cpu", progress=False
    )
    import trimesh

    surface = trimesh.sample.sample_surface(mesh, 20000, seed=0)[0]
    mesh_to_sphere = np.abs(np.linalg.norm(surface, axis=1) - 1.0)
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(20000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    sphere_to_mesh = _distance_to_mesh(mesh, sphere)
    assert mesh_to_sphere.mean() <= voxel / 2 and sphere_to_mesh.mean() <= voxel / 2
    assert mesh_to_sphere.max() <= 2 * voxel and sphere_to_mesh.max() <= 2 * voxel
    # one closed piece, coloured as the Gaussians were: (normal + 1) / 2
    assert mesh.body_count == 1 and _boundary_edge_fraction(mesh) <= 1e-3
    normals = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    assert np.abs(colors - (normals + 1) / 2).mean() < 0.02


@pytest.mark.slow
def test_cube_run_directory_mesh_is_closed_and_coloured(tmp_path):
    """A run directory (scene.ply + cameras.json) exports a mesh fused from its own cameras."""
    import trimesh

    from recon3d.train.rundir import write_cameras_json

    run = tmp_path / "run"
    run.mkdir()
    recon3d.save_ply(cube_scene(), run / "scene.ply")
    cameras = _ring_cameras(3.0, 112)
    write_cameras_json(
        run / "cameras.json", cameras, [run / f"{i:03d}.png" for i in range(len(cameras))], ["train"] * len(cameras)
    )
    out = recon3d.export(run, "mesh", tmp_path / "cube.glb", voxel_size=0.02, backend="cpu", progress=False)
    mesh = trimesh.load(out, force="mesh")
    assert _boundary_edge_fraction(mesh) <= 1e-3 and mesh.body_count == 1
    # On the cube's surface: the L∞ norm of every vertex is 0.5 to within two voxels, and on average to
    # within half a voxel plus half the Gaussians' σ: faces seen obliquely from the ring get 3DGS depth
    # (each Gaussian at its centre's depth, nearer ones composited first) up to about σ in front.
    voxel, sigma = 0.02, 0.7 / 24
    linf = np.abs(mesh.vertices).max(axis=1)
    assert np.abs(linf - 0.5).max() <= 2 * voxel and np.abs(linf - 0.5).mean() <= voxel / 2 + sigma / 2
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    for (axis, sign), color in FACE_COLORS.items():
        others = [a for a in range(3) if a != axis]
        on_face = (np.abs(mesh.vertices[:, axis] - 0.5 * sign) < 0.03) & (np.abs(mesh.vertices[:, others]) < 0.4).all(1)
        assert on_face.sum() > 100
        assert np.abs(np.median(colors[on_face], axis=0) - np.array(color)).max() < 0.03, (axis, sign)


def test_sphere_views_see_the_whole_scene():
    scene = sphere_scene(500)
    cams = sphere_views(scene, num_views=12, image_size=64)
    points = scene.means
    for i in range(len(cams)):
        w2c = cams.world_to_camera[i]
        p = points @ w2c[:3, :3].T + w2c[:3, 3]
        u = cams.fx[i] * p[:, 0] / p[:, 2] + cams.cx[i]
        v = cams.fy[i] * p[:, 1] / p[:, 2] + cams.cy[i]
        assert (p[:, 2] > 0).all() and (u > 0).all() and (u < 64).all() and (v > 0).all() and (v < 64).all()
    directions = cams.centers() / cams.centers().norm(dim=1, keepdim=True)
    assert directions.mean(0).norm() < 0.1  # spread evenly around the scene


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_mesh_files_keep_vertex_colours(tmp_path, suffix):
    import open3d as o3d
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=2)
    rgb = (np.abs(mesh.vertices) * 255).astype(np.uint8)
    mesh.visual.vertex_colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    path = save_mesh(mesh, tmp_path / f"m{suffix}")
    back = trimesh.load(path, force="mesh", process=False)
    assert len(back.faces) == len(mesh.faces)
    order = np.lexsort(np.round(back.vertices, 5).T)
    expected_order = np.lexsort(np.round(mesh.vertices, 5).T)
    assert np.allclose(back.vertices[order], mesh.vertices[expected_order], atol=1e-5)
    assert np.array_equal(back.visual.vertex_colors[order, :3], rgb[expected_order])
    if suffix in (".ply", ".obj"):
        o3 = o3d.io.read_triangle_mesh(str(path))
        assert o3.has_vertex_colors() and len(o3.triangles) == len(mesh.faces)


def test_mesh_errors(tmp_path):
    with pytest.raises(InputError, match="no Gaussians"):
        extract_mesh(GaussianScene.empty(), progress=False)
    invisible = sphere_scene(200)
    invisible.opacities[:] = -20.0
    with pytest.raises(InputError, match="no view saw"):
        extract_mesh(invisible, num_views=2, image_size=32, resolution=16, backend="cpu", progress=False)
    with pytest.raises(InputError, match="unknown mesh extension"):
        save_mesh(None, tmp_path / "m.stl")
    with pytest.raises(TypeError):
        extract_mesh(sphere_scene(10), bogus_option=1)


def test_depth_filters_drop_see_through_veins_and_grazing_views():
    from recon3d.export.mesh import _depth_consistent, _grazing_ok

    # a steep plane z = 2 + 0.05·u seen face-on-ish, with a 2-pixel vein showing the far side through a gap
    h, w = 40, 40
    u = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    depth = 2.0 + 0.05 * u
    veined = depth.clone()
    veined[:, 20:22] += 0.5
    keep = _depth_consistent(veined, tolerance=0.04)
    assert not keep[3:-3, 20:22].any() and keep[3:-3, 3:17].all() and keep[3:-3, 25:-3].all()
    # grazing: a plane whose normal makes 30° or 80° with the optical axis, seen by a centred camera
    cam = Cameras.from_fov(torch.eye(4), 0.8, w, h)
    for tilt, expected in ((30.0, True), (80.0, False)):
        # points on the plane x·sin(t) + (z − 3)·cos(t) = 0 along the ray (x/z = (u + 0.5 − cx)/fx)
        t = math.radians(tilt)
        slope = (u + 0.5 - cam.cx[0]) / cam.fx[0]
        z = 3.0 * math.cos(t) / (slope * math.sin(t) + math.cos(t))
        ok = _grazing_ok(z, cam, 75.0)
        centre = ok[h // 2 - 3 : h // 2 + 3, w // 2 - 3 : w // 2 + 3]
        assert bool(centre.all()) == expected and (expected or not centre.any())


def test_a_view_whose_depth_is_all_filtered_is_skipped():
    """A camera that sees only grazing surface keeps no depth after the filters; fusion goes on without it."""
    # One face of the cube (z = +0.5), seen head-on from above and edge-on from the side.
    face = cube_scene(grid=16)
    face = face[face.means[:, 2] > 0.49]
    top = look_at_world_to_camera(torch.tensor([0.01, 0.02, 3.0]), (0.0, 0.0, 0.5))
    grazing = look_at_world_to_camera(torch.tensor([3.0, 0.0, 0.56]), (0.0, 0.0, 0.5))
    cams = Cameras.from_fov(torch.stack([grazing, top]), 0.8, 64, 64)
    mesh = extract_mesh(face, cams, voxel_size=0.02, backend="cpu", progress=False, max_grazing_deg=60.0)
    z = np.asarray(mesh.vertices)[:, 2]
    assert len(z) > 100 and np.abs(z - 0.5).max() < 0.04
