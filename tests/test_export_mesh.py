"""Mesh export: TSDF fusion of rendered depth recovers analytic surfaces, with their colours, closed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import recon3d
from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.errors import InputError
from recon3d.exporters.mesh import extract_mesh, save_mesh, sphere_views
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
@pytest.mark.parametrize("colour_views", [32, 11])
def test_cube_run_directory_mesh_is_closed_and_coloured(tmp_path, colour_views):
    """A run directory (scene.ply + cameras.json) exports a mesh fused from its own cameras (all 22 of them colour
    it, or 11 evenly picked: the colours hold either way; with 5, one face is seen only obliquely and its median
    colour is 0.049 off)."""
    import trimesh

    from recon3d.train.rundir import write_cameras_json

    run = tmp_path / "run"
    run.mkdir()
    recon3d.save_ply(cube_scene(), run / "scene.ply")
    cameras = _ring_cameras(3.0, 112)
    write_cameras_json(
        run / "cameras.json", cameras, [run / f"{i:03d}.png" for i in range(len(cameras))], ["train"] * len(cameras)
    )
    # The ring sees the top and bottom faces from few views at a time: one agreeing neighbour is all the
    # multi-view check can ask for here (the default 2 leaves 0.8 % open edges on those faces).
    out = recon3d.export(
        run,
        "mesh",
        tmp_path / "cube.glb",
        voxel_size=0.02,
        backend="cpu",
        progress=False,
        consistent_views=1,
        max_colour_views=colour_views,
    )
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
    from recon3d.exporters.mesh import _depth_consistent, _grazing_ok

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


GARDEN_STEPS = 700  # SfM (~20 s) + 700 steps (~60-90 s on 2 cores) + export and measurement (~30 s)
# Measured with the default export (parallax check 25°, see-through test of pieces, holes closed within 5 voxels) on
# ten 700-step runs, each with its own structure from motion (one thread; SfM differs run to run; figures in
# benchmarks/results/mesh_garden_short_runs.json): distance median 1.42-2.17 cm; p95 6.8-9.6 cm; holes 2.4-15.4 %;
# colour 18.02-18.43 dB; open edges 0.32-0.61 %; one piece in all ten (largest 1.0). The same runs' TSDF mesh as
# fused (no closing, no see-through test): holes 22-41 %, open edges 9-14 %, two pieces in two of ten (a 0.7 m haze
# piece holding 8.5 % of the faces; a ground patch, largest 0.93); p95 5.8-8.4 cm, or 0.68 m with the haze piece.
# Before the parallax check (earlier sessions): a stray haze piece in about one run in three; and one run in four
# left the ground in three patches.
GARDEN_BOUNDS = {
    "distance_median": 0.03,
    "hole_fraction": 0.25,
    "colour_psnr": 17.0,
    "boundary_edge_fraction": 0.02,
    # One piece, and no stray piece: every piece near the truth, the 95th percentile within ~1.5× the measured
    # worst (a stray piece takes it to 0.3-0.7 m).
    "largest_body_face_fraction": 0.95,
    "worst_body_distance_median": 0.08,
    "distance_p95": 0.15,
}


@pytest.fixture(scope="module")
def garden_mesh(tmp_path_factory):
    """The shipped garden reconstructed from its bare photos (SfM + GARDEN_STEPS steps), exported as a mesh
    through the CLI and measured against the ray tracer's true geometry: (mesh, measurements)."""
    import sys

    import trimesh

    from recon3d.cli import main as cli

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from garden_truth import GARDEN, mesh_measurements

    run = tmp_path_factory.mktemp("garden") / "run"
    argv = ["reconstruct", str(GARDEN / "images"), "-o", str(run), "--steps", str(GARDEN_STEPS), "--seed", "0"]
    assert cli([*argv, "--quiet"]) == 0
    out = run.parent / "garden.glb"
    assert cli(["export", str(run), "--format", "mesh", "-o", str(out)]) == 0
    mesh = trimesh.load(out, force="mesh")
    return mesh, mesh_measurements(mesh, run)


@pytest.mark.slow
def test_reconstructed_example_garden_mesh_is_near_the_truth_closed_and_coloured(garden_mesh):
    """The shipped garden, reconstructed from its bare photos, meshes onto the ray tracer's true geometry.

    Independent reference: ``examples/make_garden.py``'s scene (the surfaces the photos were ray traced from),
    in whose frame the run's cameras are aligned by a similarity (tests/garden_truth.py). Bounds are the
    measured worst of the runs described above, with a margin.
    """
    mesh, m = garden_mesh
    # Near the true surface, with few holes seen from the true cameras.
    assert m["distance_median"] <= GARDEN_BOUNDS["distance_median"], m
    assert m["hole_fraction"] <= GARDEN_BOUNDS["hole_fraction"], m
    # Coloured: per-vertex colours, varied, and close to the photos where the mesh meets the true surface.
    assert mesh.visual.kind == "vertex" and m["colour_std"] >= 0.05, m
    assert m["colour_psnr"] >= GARDEN_BOUNDS["colour_psnr"], m
    # Close to watertight: few open boundary edges (the ground, an open patch of the plane, keeps a rim).
    assert m["boundary_edge_fraction"] <= GARDEN_BOUNDS["boundary_edge_fraction"], m


@pytest.mark.slow
def test_reconstructed_example_garden_mesh_has_no_stray_piece(garden_mesh):
    """Haze in front of the far wall, which only views a few degrees apart agree on, used to be meshed as a
    piece 0.2-0.6 m off the wall (one 700-step run in three, most 3-minute runs); the parallax check leaves
    it out, and what haze passes it (one run in eight: a piece 0.7 m off) the other views see through, so the
    see-through test drops it. Every piece lies near the truth."""
    _, m = garden_mesh
    assert m["worst_body_distance_median"] <= GARDEN_BOUNDS["worst_body_distance_median"], m
    assert m["distance_p95"] <= GARDEN_BOUNDS["distance_p95"], m


@pytest.mark.slow
def test_reconstructed_example_garden_mesh_is_one_piece(garden_mesh):
    """One piece holds the surface. The checks leave a short run's ground full of holes and, in about one run in
    four, in separate patches; closing the holes (screened Poisson within 5 voxels of the fused surface) joins
    them, and the see-through test drops haze pieces before they could be joined."""
    _, m = garden_mesh
    assert m["largest_body_face_fraction"] >= GARDEN_BOUNDS["largest_body_face_fraction"], m


def test_split_large_gaussians_keeps_the_shape_and_moves_depth_onto_the_surface():
    """A wide flat Gaussian on the plane z = 0, seen obliquely: its centre depth is wrong away from the centre,
    the split pieces' median depth follows the plane (analytic ray–plane depth as the reference)."""
    from recon3d.exporters.mesh import split_large_gaussians

    disc = GaussianScene.from_points(torch.zeros(1, 3), torch.full((1, 3), 0.6), scale=0.5, opacity=0.95)
    disc.scales[:, 2] = math.log(0.002)
    pieces = split_large_gaussians(disc, 0.1)
    assert len(pieces) == 16  # 4 × 4 (the most per axis) along the two wide axes, none along the thin one
    assert torch.allclose(pieces.means.mean(0), disc.means[0], atol=1e-6) and pieces.means[:, 2].abs().max() < 1e-6
    assert torch.allclose(torch.exp(pieces.scales[:, :2]), torch.tensor(0.6 * 4 * 0.5 / 4))  # 0.6 of a cell
    assert torch.sigmoid(pieces.opacities).max() <= torch.sigmoid(disc.opacities[0])
    # a camera 2 up and 3 back, looking at the origin: the plane's depth at each pixel is known exactly
    cam = Cameras.from_fov(look_at_world_to_camera(torch.tensor([0.0, -3.0, 2.0]), (0.0, 0.0, 0.0))[None], 0.8, 64, 64)
    v, u = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
    rays_cam = torch.stack([(u - cam.cx[0]) / cam.fx[0], (v - cam.cy[0]) / cam.fy[0], torch.ones_like(u)], -1)
    c2w = torch.linalg.inv(cam.world_to_camera[0])
    rays = rays_cam @ c2w[:3, :3].T  # world direction per unit view depth
    plane_depth = -c2w[2, 3] / rays[..., 2]  # where the ray meets z = 0
    errors = {}
    for name, scene in (("whole", disc), ("split", pieces)):
        out = recon3d.render(scene, cam, backend="cpu", depth="median")
        hit = out.depth[0, ..., 0] > 0
        errors[name] = (out.depth[0, ..., 0] - plane_depth)[hit].abs().median()
        assert hit.sum() > 200
    assert errors["split"] < 0.85 * errors["whole"], errors  # measured: 0.145 vs 0.188


def test_multiview_check_drops_a_floater_seen_by_one_view_only():
    """Three views of the plane z = 0; one of them also sees a floater in front. Its depth there goes."""
    from recon3d.exporters.mesh import MeshOptions, _multiview_consistent

    w2cs = [look_at_world_to_camera(torch.tensor([x, -3.0, 2.0]), (x, 0.0, 0.0)) for x in (-0.3, 0.0, 0.3)]
    cams = Cameras.from_fov(torch.stack(w2cs), 0.8, 48, 48)
    views = []
    for i in range(3):
        cam = cams[i]
        v, u = torch.meshgrid(torch.arange(48.0) + 0.5, torch.arange(48.0) + 0.5, indexing="ij")
        rays = torch.stack([(u - cam.cx[0]) / cam.fx[0], (v - cam.cy[0]) / cam.fy[0], torch.ones_like(u)], -1)
        c2w = torch.linalg.inv(cam.world_to_camera[0])
        depth = -c2w[2, 3] / (rays @ c2w[:3, :3].T)[..., 2]
        views.append((cam, depth, torch.zeros(48, 48, 3)))
    floater = views[1][1].clone()
    floater[20:28, 20:28] *= 0.7  # something 30 % nearer than the plane, in the middle view only
    views[1] = (views[1][0], floater, views[1][2])
    kept = _multiview_consistent(views, MeshOptions(consistent_views=2, neighbour_views=2, min_parallax_deg=0))
    assert not (kept[1][20:28, 20:28] > 0).any()
    # The plane around the floater stays wherever both neighbours see it (away from the image's side edges).
    assert (kept[1][12:40, 8:18] > 0).all() and (kept[1][12:40, 30:40] > 0).all()


def _plane_depth(cam: Cameras, height: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """View-space z (size × size) of the plane z = ``height`` at each pixel centre of one camera, and the
    world points hit (size × size × 3)."""
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    rays = torch.stack([(u - cam.cx[0]) / cam.fx[0], (v - cam.cy[0]) / cam.fy[0], torch.ones_like(u)], -1)
    c2w = torch.linalg.inv(cam.world_to_camera[0])
    world_rays = rays @ c2w[:3, :3].T
    depth = (height - c2w[2, 3]) / world_rays[..., 2]
    return depth, c2w[:3, 3] + world_rays * depth[..., None]


def test_parallax_check_drops_a_layer_only_near_views_agree_on():
    """Three close views (5° apart) see a false layer (a square 0.3 above the plane z = 0: a haze whose depth
    close views agree on); two views 40° round see the true plane there. With the parallax check (15°) the layer
    goes from the close views and the plane stays where a wide view sees it; without it the layer stays."""
    from recon3d.exporters.mesh import MeshOptions, _multiview_consistent

    eyes = [(x, -3.0, 2.0) for x in (-0.3, 0.0, 0.3)] + [(x, -2.5, 2.0) for x in (-2.3, 2.3)]
    cams = Cameras.from_fov(
        torch.stack([look_at_world_to_camera(torch.tensor(e), (0.0, 0.0, 0.0)) for e in eyes]), 0.8, 48, 48
    )
    views, layer_masks = [], []
    for i in range(len(eyes)):
        depth, _ = _plane_depth(cams[i], 0.0, 48)
        layer_depth, hit = _plane_depth(cams[i], 0.3, 48)
        layer = (hit[..., :2].abs() < 0.4).all(-1) if i < 3 else torch.zeros(48, 48, dtype=torch.bool)
        views.append((cams[i], torch.where(layer, layer_depth, depth), torch.zeros(48, 48, 3)))
        layer_masks.append(layer)
    options = {"consistent_views": 2, "neighbour_views": 2}
    without = _multiview_consistent(views, MeshOptions(**options, min_parallax_deg=0))
    kept = _multiview_consistent(views, MeshOptions(**options, min_parallax_deg=15))
    layer = layer_masks[1]
    assert layer.sum() > 50 and (without[1] > 0)[layer].float().mean() > 0.9  # the close views agree on it
    assert not (kept[1] > 0)[layer].any()
    # The plane around the layer stays where the wide views see it, at the plane's depth.
    truth, _ = _plane_depth(cams[1], 0.0, 48)
    assert (kept[1] > 0).sum() > 200
    assert torch.allclose(kept[1][kept[1] > 0], truth[kept[1] > 0])


def test_cameras_closer_than_the_parallax_angle_get_a_one_line_error():
    """Three views 4° apart (a short sweep) cannot confirm anything from 25° round: the export says so and
    names the option, instead of an empty mesh; with the check off the same views give the face."""
    face = cube_scene(grid=16)
    face = face[face.means[:, 2] > 0.49]
    w2cs = [look_at_world_to_camera(torch.tensor([x, 0.02, 3.0]), (0.0, 0.0, 0.5)) for x in (-0.18, 0.0, 0.18)]
    cams = Cameras.from_fov(torch.stack(w2cs), 0.8, 64, 64)
    with pytest.raises(InputError, match="min-parallax"):
        extract_mesh(face, cams, voxel_size=0.02, backend="cpu", progress=False)
    mesh = extract_mesh(face, cams, voxel_size=0.02, backend="cpu", progress=False, min_parallax_deg=0)
    z = np.asarray(mesh.vertices)[:, 2]
    assert len(z) > 100 and np.abs(z - 0.5).max() < 0.04


def test_a_view_left_with_a_few_isolated_depth_pixels_is_skipped(monkeypatch):
    """open3d finds no TSDF block for a view that kept one isolated depth pixel (it samples every few pixels)
    and aborts; such a view (left over by the multi-view check) is skipped instead."""
    import recon3d.exporters.mesh as mesh_module

    face = cube_scene(grid=16)
    face = face[face.means[:, 2] > 0.49]
    w2cs = [look_at_world_to_camera(torch.tensor([x, 0.02, 3.0]), (0.0, 0.0, 0.5)) for x in (0.01, 0.2)]
    cams = Cameras.from_fov(torch.stack(w2cs), 0.8, 64, 64)

    def keep_one_pixel_in_the_first_view(views, options):
        depths = [d.clone() for _, d, _ in views]
        lone = torch.zeros_like(depths[0])
        lone[33, 33] = depths[0][33, 33]
        return [lone, *depths[1:]]

    monkeypatch.setattr(mesh_module, "_multiview_consistent", keep_one_pixel_in_the_first_view)
    mesh = extract_mesh(face, cams, voxel_size=0.02, backend="cpu", progress=False)
    z = np.asarray(mesh.vertices)[:, 2]
    assert len(z) > 100 and np.abs(z - 0.5).max() < 0.04


def _plane_with_hole(hole_radius: float, n: int = 41):
    """The square [-1, 1]² of the plane z = 0 as a triangle grid, less a round hole at the centre."""
    import trimesh

    x = np.linspace(-1.0, 1.0, n)
    xx, yy = np.meshgrid(x, x)
    vertices = np.stack([xx.ravel(), yy.ravel(), np.zeros(n * n)], 1)
    a = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    faces = np.concatenate([np.stack([a, a + 1, a + n], 1), np.stack([a + 1, a + n + 1, a + n], 1)])
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh.update_faces(np.linalg.norm(mesh.triangles_center[:, :2], axis=1) > hole_radius)
    mesh.remove_unreferenced_vertices()
    return mesh


def test_close_surface_closes_a_hole_within_reach_and_adds_nothing_beyond():
    """A plane with a hole of radius 0.2: the closed surface covers the hole when the reach (0.25) exceeds its
    radius and stays on the plane; with a reach of 0.1 the hole's centre stays open; no vertex is added farther
    than the reach from the input (analytic reference: the plane z = 0)."""
    import open3d as o3d
    from scipy.spatial import cKDTree

    from recon3d.exporters.mesh import close_surface

    holed = _plane_with_hole(0.2)
    rays = np.array([[x, y, 1.0, 0.0, 0.0, -1.0] for x, y in ((0.0, 0.0), (0.1, 0.05), (-0.05, -0.12))], np.float32)
    for reach, closes in ((0.25, True), (0.1, False)):
        closed = close_surface(holed, 7, reach)
        assert cKDTree(holed.vertices).query(closed.vertices)[0].max() <= reach
        # On the plane to within a fraction of the grid spacing (0.05), borders included.
        assert np.abs(closed.vertices[:, 2]).max() <= 0.01 and closed.body_count == 1
        caster = o3d.t.geometry.RaycastingScene()
        caster.add_triangles(
            o3d.core.Tensor(closed.vertices.astype(np.float32)), o3d.core.Tensor(closed.faces.astype(np.uint32))
        )
        hits = caster.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        if closes:
            assert np.allclose(hits, 1.0, atol=0.01), hits
        else:
            assert not np.isfinite(hits[0]), hits


def test_see_through_test_tells_a_floater_from_a_surface():
    """A ground square (z = 0) and a small square floating 0.5 above it, seen from above by four views. When the
    views' depth is the ground's everywhere (they see past the floater, as past haze), the floater is seen through
    in every sighting and the ground in none; when their depth shows the floater (an opaque object), neither is.
    Reference: the analytic depth of the planes z = 0 and z = 0.5 at each pixel."""
    import trimesh

    from recon3d.exporters.mesh import _see_through_fractions

    ground = _plane_with_hole(-1.0, n=41)  # [-1, 1]² at z = 0, no hole
    floater = _plane_with_hole(-1.0, n=11)
    floater.apply_transform(np.diag([0.15, 0.15, 1.0, 1.0]))
    floater.apply_translation((0.2, 0.1, 0.5))  # [0.05, 0.35] × [-0.05, 0.25] at z = 0.5
    mesh = trimesh.util.concatenate([ground, floater])
    eyes = [(0.3, 0.0, 3.0), (-0.3, 0.2, 3.0), (0.0, -0.4, 3.0), (0.1, 0.4, 3.2)]
    cams = Cameras.from_fov(
        torch.stack([look_at_world_to_camera(torch.tensor(e), (0.0, 0.0, 0.0)) for e in eyes]), 0.8, 64, 64
    )
    size, voxel = 64, 0.02
    for shows_floater in (False, True):
        views = []
        for i in range(len(eyes)):
            depth, _ = _plane_depth(cams[i], 0.0, size)
            if shows_floater:  # (a pixel's margin round the square, so its rim's vertices see it too)
                top, top_hit = _plane_depth(cams[i], 0.5, size)
                on = ((top_hit[..., 0] - 0.2).abs() < 0.17) & ((top_hit[..., 1] - 0.1).abs() < 0.17)
                depth = torch.where(on, top, depth)
            views.append((cams[i], torch.zeros(size, size, 3), torch.ones(size, size), depth))
        labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
        fractions = _see_through_fractions(mesh, labels, views, voxel)
        big = np.argmax(np.bincount(labels))
        assert len(fractions) == 2 and fractions[big] < 0.05, fractions
        if shows_floater:
            assert fractions[1 - big] < 0.05, fractions
        else:
            assert fractions[1 - big] > 0.95, fractions


def test_camera_space_test_tells_a_sheet_where_the_cameras_stand_from_the_ground():
    """Eight cameras on a ring (radius 3, 1.5 up) look at the ground z = 0 ([-4, 4]²); a small sheet stands
    behind one of them, where its view shows nothing (an orbit's far side meshed as haze). All of the sheet
    lies where the cameras stand (nearer a camera than the near end of its view's depth), little of the ground
    does. Reference: the analytic ground depth of each view, and brute-force distances to the centres."""
    import trimesh

    from recon3d.exporters.mesh import MeshOptions, _camera_space, _camera_space_fractions

    ground = _plane_with_hole(-1.0, n=41)
    ground.apply_transform(np.diag([4.0, 4.0, 1.0, 1.0]))
    sheet = _plane_with_hole(-1.0, n=11)
    sheet.apply_transform(np.diag([0.2, 0.2, 1.0, 1.0]))
    sheet.apply_translation((3.3, 0.0, 1.0))  # 0.3 behind and 0.5 below the camera at (3, 0, 1.5)
    mesh = trimesh.util.concatenate([ground, sheet])
    eyes = [(3 * math.cos(a), 3 * math.sin(a), 1.5) for a in np.arange(8) * math.pi / 4]
    cams = Cameras.from_fov(
        torch.stack([look_at_world_to_camera(torch.tensor(e), (0.0, 0.0, 0.0)) for e in eyes]), 0.8, 64, 64
    )
    views = [(cams[i], torch.zeros(64, 64, 3), torch.ones(64, 64), _plane_depth(cams[i], 0.0, 64)[0]) for i in range(8)]
    centres, radii = _camera_space(views)
    assert np.allclose(centres, np.array(eyes), atol=1e-5)
    near = np.array([float(torch.quantile(v[3].flatten(), 0.05)) for v in views])
    assert np.allclose(radii, near, rtol=1e-5) and 1.5 < near.min()  # the ground's nearest seen depth
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    fractions = _camera_space_fractions(mesh, labels, centres, radii)
    big = np.argmax(np.bincount(labels))
    for piece in (big, 1 - big):
        v = mesh.vertices[np.unique(mesh.faces[labels == piece])]
        inside = (np.linalg.norm(v[:, None] - np.array(eyes)[None], axis=2) < near[None]).any(1)
        assert fractions[piece] == pytest.approx(inside.mean())
    assert fractions[1 - big] == 1.0 and fractions[big] < MeshOptions().max_in_camera_space, fractions
