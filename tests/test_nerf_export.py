"""A NeRF run downstream (issue 20 item 3): distillation into splats, the marching-cubes mesh, the viewer.

The field is a small hash grid regressed onto an analytic ball (``nerf_sphere.py``), so the independent
reference is the ball itself: its ray-traced images, its radius, its colour function.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from nerf_sphere import CENTER, RADIUS, ball_cameras, ball_color, ball_render, fit_ball_model

from recon3d.cli import main
from recon3d.metrics import psnr
from recon3d.nerf.distill import DistillOptions, distill
from recon3d.nerf.mesh import density_mesh, field_mesh
from recon3d.render import render
from recon3d.train.rundir import write_cameras_json

TRAIN, TEST = 16, 4
BOX = 2.0 / 0.8  # the field's box side in world units (training-frame half-size 1, scale 0.8)
CELL = BOX / 128  # the hash grid's finest cell, world units: how finely the field can place the ball's surface

pytestmark = pytest.mark.slow  # the module's field fit (~10 s on a quiet core) and renders


@pytest.fixture(scope="module")
def model():
    return fit_ball_model()


@pytest.fixture(scope="module")
def test_cameras():
    return ball_cameras(TEST, offset=0.5)  # between the training cameras, none of them


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


def test_the_fitted_field_is_the_ball(model, test_cameras):
    # the premise of the tests below: the field renders the analytic ball (silhouette and colour)
    for i in range(TEST):
        rgb, alpha, _ = model.render(test_cameras, i)
        ref_rgb, ref_alpha = ball_render(test_cameras, i)
        assert _iou(alpha, ref_alpha) > 0.9
        assert psnr(rgb, ref_rgb) > 20.0


@pytest.fixture(scope="module")
def distilled(model):
    options = DistillOptions(seed_rays=40000, steps=150, seconds=1e9, sh_degree=1)
    return distill(model, ball_cameras(TRAIN), options, progress=False)


def test_seeds_lie_on_the_field_surface(model):
    from recon3d.nerf.distill import seed_gaussians

    cams = model.transform.cameras_to_train(ball_cameras(TRAIN))
    scene, stats = seed_gaussians(model, cams, DistillOptions(seed_rays=40000))
    world = model.transform.scene_to_world(scene)
    r = (world.means - CENTER).norm(dim=-1)
    # median-depth points of an opaque ball: on the field's surface, which is the ball's to within the field's
    # finest hash cell (0.0195 world units here; its iso-surface sits ~1 cell inside the ball: see the mesh test).
    # Measured: mean 0.021, 95th percentile 0.033
    assert float((r - RADIUS).abs().mean()) < 1.5 * CELL
    assert float((r - RADIUS).abs().quantile(0.95)) < 2.5 * CELL
    assert stats["seeded"] == len(scene) <= stats["seed_points"]
    # colours from the field, which is the ball's colour there
    err = (world.base_colors().clamp(0, 1) - ball_color(world.means)).abs().mean()
    assert float(err) < 0.06


def test_distilled_splats_render_like_the_field_and_the_ball(model, distilled, test_cameras):
    scene, stats = distilled
    assert stats["steps"] == 150 and len(scene) > 500
    assert stats["fit_views"] == TRAIN  # an unbounded budget renders every view
    for i in range(TEST):
        out = render(scene, test_cameras[i])
        field_rgb, field_alpha, _ = model.render(test_cameras, i)
        ref_rgb, ref_alpha = ball_render(test_cameras, i)
        # held-out views (none of the training cameras): the splats match the field and the analytic ball
        assert _iou(out.alpha[0], ref_alpha) > 0.9
        assert psnr(out.rgb[0].clamp(0, 1), field_rgb) > 22.0
        assert psnr(out.rgb[0].clamp(0, 1), ref_rgb) > 20.0


@pytest.mark.parametrize("image_scale", [1.0, 0.5])
def test_fine_tune_improves_on_the_seeds(model, test_cameras, image_scale):
    # measured at half size (24² targets): seeds 18.6 dB against the field on average, tuned 21.7
    seeds, _ = distill(model, ball_cameras(TRAIN), DistillOptions(seed_rays=40000, seconds=0, sh_degree=1),
                       progress=False)
    tuned, _ = distill(model, ball_cameras(TRAIN), DistillOptions(seed_rays=40000, steps=150, seconds=1e9,
                                                                     sh_degree=1, image_scale=image_scale),
                       progress=False)

    def score(scene):
        return np.mean([float(psnr(render(scene, test_cameras[i]).rgb[0].clamp(0, 1), model.render(test_cameras, i)[0]))
                        for i in range(TEST)])

    assert score(tuned) > score(seeds) + 1.0


def test_spread_views():
    from recon3d.nerf.distill import spread

    assert spread(100, 10) == list(range(0, 100, 10))
    assert spread(5, 10) == spread(5, 5) == [0, 1, 2, 3, 4]
    picked = spread(16, 3)
    assert picked[0] == 0 and len(picked) == 3 and len(set(picked)) == 3


def test_fine_tune_fits_only_the_views_asked_for(model, monkeypatch):
    import recon3d.nerf.field as field_module

    rendered = []
    real = field_module.render_camera

    def counting(field, bounds, grid, cameras, index, **kw):
        rendered.append(index)
        return real(field, bounds, grid, cameras, index, **kw)

    monkeypatch.setattr(field_module, "render_camera", counting)
    _, stats = distill(model, ball_cameras(TRAIN), DistillOptions(seed_rays=4000, steps=20, seconds=1e9, sh_degree=0,
                                                                  views=4), progress=False)
    assert stats["fit_views"] == 4 and stats["steps"] == 20
    assert sorted(set(rendered)) == [0, 4, 8, 12]  # each fitted view's field render made once, no other view's
    assert len(rendered) == 4


def test_density_mesh_of_an_analytic_sphere():
    r0 = 0.3

    def density(x: torch.Tensor) -> torch.Tensor:
        return 100.0 * torch.sigmoid(-(x.norm(dim=-1) - r0) / 0.005)

    mesh = density_mesh(density, np.full(3, -0.5), np.full(3, 0.5), 64, 50.0)
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.is_watertight
    assert np.abs(r - r0).max() < 0.5 / 64  # within half a voxel of the sphere
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * r0**3, rel=0.03)
    # faces wind outward: normals point away from the centre
    normals = mesh.vertex_normals
    assert float(((normals * mesh.vertices).sum(1) > 0).mean()) > 0.99


def test_field_mesh_is_the_ball_with_its_colours(model):
    mesh = field_mesh(model, resolution=64, progress=False)
    v = torch.from_numpy(np.asarray(mesh.vertices)).float()
    r = (v - CENTER).norm(dim=-1)
    # the field's iso-surface is the ball's to within a field cell, and marching cubes places a vertex within its
    # voxel edge (the density jumps across one): measured mean 0.025 inside, 95th percentile 0.028
    voxel = BOX / 64
    assert float((r - RADIUS).abs().quantile(0.95)) < 1.5 * voxel + CELL
    assert mesh.is_watertight
    colors = torch.from_numpy(np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float32) / 255)
    assert float((colors - ball_color(v)).abs().mean()) < 0.06


@pytest.fixture()
def nerf_run(model, tmp_path):
    """A NeRF run directory of the ball: nerf.pt, cameras.json with the ball's images (RGBA), config.yaml."""
    from PIL import Image

    from recon3d.cameras import Cameras
    from recon3d.train.config import TrainConfig

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    model.save(run / "nerf.pt")
    cams = Cameras.cat([ball_cameras(TRAIN), ball_cameras(TEST, offset=0.5)])
    paths, splits = [], []
    for i in range(len(cams)):
        rgb, alpha = ball_render(cams, i)
        rgba = torch.cat([rgb / alpha.clamp_min(1e-6) * (alpha > 0), alpha], -1)
        path = run / "images" / f"{i:03d}.png"
        Image.fromarray((rgba.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
        splits.append("train" if i < TRAIN else "test")
    write_cameras_json(run / "cameras.json", cams, paths, splits)
    cfg = TrainConfig()
    cfg.run.method = "nerf"
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "metrics.json").write_text(json.dumps({"method": "nerf", "protocol": "composited", "psnr": None}))
    return run


def test_export_cli_distils_once_then_reuses_and_writes_every_splat_format(nerf_run, tmp_path, capsys):
    from recon3d.ply import load_ply

    args = ["--distill-steps", "60", "--distill-seconds", "1e9"]
    assert main(["export", str(nerf_run), "-o", str(tmp_path / "a.ply"), *args]) == 0
    assert (nerf_run / "scene.ply").is_file()
    record = json.loads((nerf_run / "distill.json").read_text())
    assert record["steps"] == 60 and record["gaussians"] == len(load_ply(tmp_path / "a.ply"))
    # the splats' held-out figures against the ball's images (over white and black)
    assert record["splats"]["num_views"] == TEST and record["splats"]["psnr"] > 18.0
    stamp = (nerf_run / "scene.ply").stat().st_mtime_ns
    for fmt, name in (("splat", "b.splat"), ("spz", "c.spz"), ("points", "d.ply"), ("gltf", "e.glb")):
        assert main(["export", str(nerf_run), "--format", fmt, "-o", str(tmp_path / name)]) == 0
        assert (tmp_path / name).stat().st_size > 0
    assert (nerf_run / "scene.ply").stat().st_mtime_ns == stamp  # distilled once, reused after
    out = capsys.readouterr().out
    assert out.count("distilling the NeRF run") == 1


def test_export_cli_mesh_of_a_nerf_run(nerf_run, tmp_path):
    import trimesh

    assert main(["export", str(nerf_run), "--format", "mesh", "-o", str(tmp_path / "m.ply"), "--resolution", "48"]) == 0
    mesh = trimesh.load(tmp_path / "m.ply")
    r = np.linalg.norm(np.asarray(mesh.vertices) - CENTER.numpy(), axis=1)
    # as in test_field_mesh_is_the_ball_with_its_colours, at 48 voxels: measured 95th percentile 0.079
    assert np.quantile(np.abs(r - RADIUS), 0.95) < 1.5 * BOX / 48 + CELL
    assert not (nerf_run / "scene.ply").exists()  # the mesh comes from the field, not from distilled splats
    from recon3d.exporters import export

    written = export(nerf_run, "mesh", tmp_path / "m.obj", resolution=32)  # the Python API takes the same path
    assert len(trimesh.load(written, force="mesh").vertices) > 100 and not (nerf_run / "scene.ply").exists()


def test_viewer_serves_a_nerf_run_with_the_field_at_progressive_resolution(nerf_run, model, monkeypatch):
    import time

    from recon3d.viewer.app import FIELD_RENDERER, ViewerApp, _ClientView
    from recon3d.viewer.source import load_target
    from test_viewer_app import _FakeClient

    data = load_target(nerf_run)
    assert data.nerf is not None and len(data.scene) == 0
    app = ViewerApp(data, port=0, max_resolution=64)
    try:
        assert app.renderer == FIELD_RENDERER
        cams = ball_cameras(TEST, size=32, offset=0.5)
        image = app.render_image(cams[1])
        ref, _, _ = model.render(cams, 1, background=torch.ones(3))
        assert np.abs(image - ref.numpy()).max() < 1e-5  # the field itself, over the viewer's white
        client = _FakeClient()
        client.camera.image_width, client.camera.image_height = 64, 48
        view = _ClientView(app, client)
        app.views[client.client_id] = view
        view.last_move, view.scale = 0.0, 0.25  # at rest, after moving frames that ran at a quarter size
        mark = time.time()
        view.invalidate()
        deadline = time.time() + 120
        while not view.full_done and time.time() < deadline:
            time.sleep(0.05)
        widths = [f[0] for f in client.scene.frames if f[2] == "png" and f[3] >= mark]
        # at rest the frames sharpen step by step (the side doubles) up to the full (max_resolution-capped) canvas
        assert view.full_done and widths[-3:] == [16, 32, 64], widths
    finally:
        app.stop()
