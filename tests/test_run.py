"""``recon3d.load_run``: one reader of a run directory for export, the viewer, eval and render."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import recon3d
from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.errors import InputError
from recon3d.evaluation import save_png
from recon3d.ply import save_ply
from recon3d.render import render
from recon3d.scene import GaussianScene
from recon3d.train.config import load_preset
from recon3d.train.rundir import write_cameras_json


def _scene() -> GaussianScene:
    g = torch.Generator().manual_seed(0)
    return GaussianScene.from_points(torch.randn(80, 3, generator=g) * 0.4, torch.rand(80, 3, generator=g),
                                     scale=0.15, opacity=0.8)


def _write_run(root, background: str = "black"):
    """A run written by hand: its images are the scene's own renders over the configured background."""
    scene = _scene()
    eyes = [(3, 0, 1), (0, 3, 1), (-3, 0, 1), (0, -3, 1)]
    cams = Cameras.from_fov(torch.stack([look_at_world_to_camera(e, (0, 0, 0)) for e in eyes]), 0.9, 24, 20)
    bg = torch.zeros(3) if background == "black" else torch.ones(3)
    (root / "images").mkdir(parents=True)
    paths = []
    for i in range(len(cams)):
        with torch.no_grad():
            save_png(render(scene, cams[i], background=bg, backend="reference").rgb[0].clamp(0, 1),
                     root / "images" / f"{i}.png")
        paths.append(root / "images" / f"{i}.png")
    save_ply(scene, root / "scene.ply")
    write_cameras_json(root / "cameras.json", cams, paths, ["test", "train", "train", "test"])
    cfg = load_preset("fast")
    (root / "config.yaml").write_text(cfg.to_yaml().replace("background: auto", f"background: {background}"))
    (root / "metrics.json").write_text(json.dumps({"psnr": 30.0, "protocol": "composited"}))
    return scene, cams


def test_load_run_reads_every_part_and_renders(tmp_path):
    scene, cams = _write_run(tmp_path / "run")
    run = recon3d.load_run(tmp_path / "run")
    assert torch.equal(run.scene.means, scene.means) and len(run.cameras) == 4
    assert run.splits == ["test", "train", "train", "test"] and run.indices("test") == [0, 3]
    assert all(p.is_file() for p in run.image_paths) and run.metrics["psnr"] == 30.0
    assert run.config.preset == "fast" and run.config.data.background == "black"
    assert torch.equal(run.background, torch.zeros(3))
    with torch.no_grad():
        expected = render(scene, cams[1], background=torch.zeros(3), backend="reference").rgb
    assert torch.allclose(run.render(cams[1], backend="reference").rgb, expected)
    # the held-out images are the scene's own renders (8-bit): evaluation must find them nearly equal
    result = run.evaluate("test", backend="reference")
    assert result["num_views"] == 2 and result["psnr"] > 45 and result["ssim"] > 0.99
    assert [v["index"] for v in result["per_view"]] == [0, 3]


def test_load_run_without_cameras_and_bad_runs(tmp_path):
    (tmp_path / "bare").mkdir()
    save_ply(_scene(), tmp_path / "bare" / "scene.ply")
    run = recon3d.load_run(tmp_path / "bare")
    assert run.cameras is None and run.config is None and run.indices("all") == []
    with pytest.raises(InputError, match="no cameras.json"):
        run.evaluate()
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    with pytest.raises(InputError, match="no scene.ply.*--resume"):
        recon3d.load_run(tmp_path / "half")
    with pytest.raises(InputError, match="no such directory"):
        recon3d.load_run(tmp_path / "missing")
    _write_run(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"run": {"stepz": 3}}))
    with pytest.raises(InputError, match="config.yaml: unknown config key 'run.stepz'"):
        recon3d.load_run(tmp_path / "run")


def test_point_cloud_reader_scales_colours_and_drops_or_refuses_nan(tmp_path):
    from recon3d.ply import load_point_cloud

    xyz = np.array([[0, 1, 2], [np.nan, 0, 0], [3, 4, 5]], dtype="<f4")
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype="u1")
    v = np.empty(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k, name in enumerate("xyz"):
        v[name] = xyz[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        v[name] = rgb[:, k]
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 3\n" + "".join(
        f"property {t} {n}\n" for t, n in [("float", "x"), ("float", "y"), ("float", "z"), ("uchar", "red"),
                                             ("uchar", "green"), ("uchar", "blue")]) + "end_header\n").encode()
    (tmp_path / "p.ply").write_bytes(header + v.tobytes())
    with pytest.raises(InputError, match="p.ply: PLY points hold NaN"):
        load_point_cloud(tmp_path / "p.ply")
    points, colors = load_point_cloud(tmp_path / "p.ply", drop_nonfinite=True)
    assert points.tolist() == [[0, 1, 2], [3, 4, 5]] and colors.tolist() == [[1, 0, 0], [0, 0, 1]]
