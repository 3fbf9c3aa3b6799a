"""nerfstudio export: transforms.json + sparse_pc.ply that read back to the very cameras and points written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recon3d
from recon3d.cameras import Cameras, look_at_world_to_camera, opengl_camera_to_world_to_opencv_world_to_camera
from recon3d.errors import InputError
from recon3d.exporters import write_nerfstudio
from recon3d.ply import read_ply_vertices
from recon3d.scene import GaussianScene
from recon3d.train.rundir import write_cameras_json


def _cameras(n: int = 6, width: int = 40, height: int = 30, mixed: bool = False) -> Cameras:
    w2cs = []
    for k in range(n):
        a = 2 * math.pi * k / n
        eye = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 0.5 + 0.2 * k])
        w2cs.append(look_at_world_to_camera(eye, (0.1, -0.2, 0.3)))
    fx = torch.tensor([35.0 + (3.0 * k if mixed else 0.0) for k in range(n)])
    cams = Cameras(torch.stack(w2cs), fx, fx * 1.01, width / 2 + 0.7, height / 2 - 0.3, width, height)
    return cams


def _images(folder: Path, cameras: Cameras) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(cameras)):
        p = folder / f"{i:03d}.png"
        Image.fromarray(np.full((int(cameras.height[i]), int(cameras.width[i]), 3), 20 * i, np.uint8)).save(p)
        paths.append(p)
    return paths


def _read_back(json_path: Path) -> tuple[torch.Tensor, list[dict], dict]:
    """Cameras from the written file with recon3d's own OpenGL→OpenCV conversion (cameras.py)."""
    meta = json.loads(json_path.read_text())
    c2w = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float64)
    return opengl_camera_to_world_to_opencv_world_to_camera(c2w), meta["frames"], meta


def test_transforms_read_back_to_the_same_cameras(tmp_path):
    cams = _cameras()
    images = _images(tmp_path / "data" / "images", cams)
    splits = ["test" if i % 3 == 0 else "train" for i in range(len(cams))]
    points = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    colors = np.random.default_rng(1).integers(0, 256, (50, 3)).astype(np.uint8)
    out = tmp_path / "ns"
    path = write_nerfstudio(out, cams, images, splits=splits, points=points, point_colors=colors)
    w2c, frames, meta = _read_back(path)
    assert torch.allclose(w2c, cams.world_to_camera, atol=1e-5)
    assert meta["camera_model"] == "OPENCV" and meta["applied_transform"] == np.eye(4)[:3].tolist()
    assert (meta["w"], meta["h"]) == (40, 30)
    assert meta["fl_x"] == pytest.approx(35.0) and meta["fl_y"] == pytest.approx(35.35)
    assert meta["cx"] == pytest.approx(20.7) and meta["cy"] == pytest.approx(14.7)
    for frame, image in zip(frames, images):
        assert (out / frame["file_path"]).resolve() == image.resolve()
    assert meta["test_filenames"] == [f["file_path"] for f, s in zip(frames, splits) if s == "test"]
    assert meta["val_filenames"] == meta["test_filenames"]
    v = read_ply_vertices(out / meta["ply_file_path"])
    assert np.array_equal(np.stack([v["x"], v["y"], v["z"]], 1), points)
    assert np.array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), colors)


def test_opengl_axes_are_what_nerfstudio_expects(tmp_path):
    # A camera at (0, -3, 0) looking at the origin with z up: in OpenGL axes it looks along its -z,
    # so the third column of camera-to-world points back at the camera (0, -1, 0), and y is up (0, 0, 1).
    cams = Cameras.look_at((0.0, -3.0, 0.0), (0.0, 0.0, 0.0), width=20, height=20)
    path = write_nerfstudio(tmp_path / "ns", cams, [tmp_path / "a.png"])
    m = np.array(json.loads(path.read_text())["frames"][0]["transform_matrix"])
    assert np.allclose(m[:3, 3], [0, -3, 0], atol=1e-6)
    assert np.allclose(m[:3, 2], [0, -1, 0], atol=1e-6) and np.allclose(m[:3, 1], [0, 0, 1], atol=1e-6)


def test_mixed_intrinsics_go_per_frame(tmp_path):
    cams = _cameras(4, mixed=True)
    path = write_nerfstudio(tmp_path / "ns", cams, [tmp_path / f"{i}.png" for i in range(4)])
    _, frames, meta = _read_back(path)
    assert "fl_x" not in meta and "ply_file_path" not in meta
    assert [f["fl_x"] for f in frames] == pytest.approx([35.0, 38.0, 41.0, 44.0])
    assert all(f["w"] == 40 and f["h"] == 30 for f in frames)


def test_recon3d_loader_reads_the_export(tmp_path):
    from recon3d.data import load_dataset

    cams = _cameras()
    images = _images(tmp_path / "photos", cams)
    splits = ["test" if i in (0, 4) else "train" for i in range(len(cams))]
    points = np.random.default_rng(2).normal(size=(30, 3)).astype(np.float32)
    colors = np.random.default_rng(3).random((30, 3)).astype(np.float32)
    out = tmp_path / "ns"
    write_nerfstudio(out, cams, images, splits=splits, points=points, point_colors=colors, copy_images=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == [p.name for p in images]
    data = load_dataset(out)
    assert data.source == "nerfstudio" and len(data.cameras) == len(cams)
    by_name = {p.name: i for i, p in enumerate(data.image_paths)}
    for i, image in enumerate(images):
        j = by_name[image.name]
        assert torch.allclose(data.cameras.world_to_camera[j].double(), cams.world_to_camera[i].double(), atol=1e-5)
        for key in ("fx", "fy", "cx", "cy", "width", "height"):
            assert float(getattr(data.cameras, key)[j]) == pytest.approx(float(getattr(cams, key)[i]), abs=1e-4)
        assert data.split[j] == splits[i]
    assert np.allclose(np.asarray(data.points), points, atol=1e-6)
    assert np.abs(np.asarray(data.point_colors) - np.round(colors * 255) / 255).max() < 1e-6


def _run_dir(tmp_path: Path, scene: GaussianScene) -> tuple[Path, Cameras]:
    run = tmp_path / "run"
    run.mkdir()
    recon3d.save_ply(scene, run / "scene.ply")
    cams = _cameras()
    images = _images(tmp_path / "photos", cams)
    write_cameras_json(run / "cameras.json", cams, images, ["train"] * len(cams))
    return run, cams


def test_run_export_uses_sfm_points_then_gaussian_centres(tmp_path):
    import pycolmap

    scene = GaussianScene.from_points(torch.randn(20, 3), torch.rand(20, 3), opacity=0.6)
    run, cams = _run_dir(tmp_path, scene)
    # no sparse points in the run: the Gaussian centres stand in
    recon3d.export(run, "nerfstudio", tmp_path / "a")
    v = read_ply_vertices(tmp_path / "a" / "sparse_pc.ply")
    assert np.allclose(np.stack([v["x"], v["y"], v["z"]], 1), scene.means.numpy())
    w2c, _, _ = _read_back(tmp_path / "a" / "transforms.json")
    assert torch.allclose(w2c, cams.world_to_camera, atol=1e-5)
    # a COLMAP model in sfm/ (what a photo-folder run keeps) wins
    rec = pycolmap.Reconstruction()
    rec.add_point3D(np.array([1.0, 2.0, 3.0]), pycolmap.Track(), np.array([10, 20, 30], np.uint8))
    (run / "sfm" / "sparse" / "0").mkdir(parents=True)
    rec.write(str(run / "sfm" / "sparse" / "0"))
    recon3d.export(run, "nerfstudio", tmp_path / "b")
    v = read_ply_vertices(tmp_path / "b" / "sparse_pc.ply")
    assert np.array_equal(np.stack([v["x"], v["y"], v["z"]], 1), [[1.0, 2.0, 3.0]])
    assert (int(v["red"][0]), int(v["green"][0]), int(v["blue"][0])) == (10, 20, 30)


def test_nerfstudio_output_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="writes a folder"):
        write_nerfstudio(tmp_path / "file", _cameras(2), [tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(InputError, match="image not found"):
        write_nerfstudio(tmp_path / "ns", _cameras(2), [tmp_path / "a.png", tmp_path / "b.png"], copy_images=True)


def test_run_with_images_named_relative_to_the_working_directory(tmp_path, monkeypatch, capsys):
    # `recon3d reconstruct data/x -o runs/y` records image names relative to where it was started
    monkeypatch.chdir(tmp_path)
    cams = _cameras(3)
    images = _images(tmp_path / "data" / "x", cams)
    run = tmp_path / "runs" / "y"
    run.mkdir(parents=True)
    recon3d.save_ply(GaussianScene.from_points(torch.randn(5, 3)), run / "scene.ply")
    write_cameras_json(run / "cameras.json", cams, [p.relative_to(tmp_path) for p in images], ["train"] * 3)
    recon3d.export(Path("runs/y"), "nerfstudio", tmp_path / "ns")
    frames = json.loads((tmp_path / "ns" / "transforms.json").read_text())["frames"]
    assert [(tmp_path / "ns" / f["file_path"]).resolve() for f in frames] == [p.resolve() for p in images]
    assert "warning" not in capsys.readouterr().err
    # images that exist nowhere: exported all the same, with a warning naming the first
    write_cameras_json(run / "cameras.json", cams, [Path("gone") / p.name for p in images], ["train"] * 3)
    recon3d.export(run, "nerfstudio", tmp_path / "ns2")
    err = capsys.readouterr().err
    assert "3 of 3 images do not exist" in err and "000.png" in err
