"""Per-photo intrinsics (recon3d/data/intrinsics.py): the EXIF rule, and the split of a shared-camera model
recovering known focal lengths of a synthetic multi-camera scene."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon3d.data.intrinsics import several_cameras, split_intrinsics


def _photo(path: Path, make: str | None = None, model: str | None = None, focal: float | None = None) -> Path:
    exif = Image.Exif()
    if make is not None:
        exif[271] = make
    if model is not None:
        exif[272] = model
    if focal is not None:
        exif.get_ifd(0x8769)[37386] = focal
    Image.new("RGB", (16, 12), (90, 120, 30)).save(path, format="JPEG", exif=exif.tobytes())
    return path


def test_several_cameras_reads_exif(tmp_path: Path) -> None:
    bare = [_photo(tmp_path / f"bare{i}.jpg") for i in range(3)]
    one = [_photo(tmp_path / f"one{i}.jpg", "Canon", "EOS 6D", 50.0) for i in range(3)]
    assert not several_cameras(bare)  # renders, video frames: no EXIF at all
    assert not several_cameras(one)  # one camera, one focal length
    assert several_cameras(one + [_photo(tmp_path / "nikon.jpg", "NIKON", "D750", 50.0)])
    assert several_cameras(one + [_photo(tmp_path / "zoom.jpg", "Canon", "EOS 6D", 120.0)])  # a zoom setting
    assert several_cameras(one + bare[:1])  # some photos with EXIF and some without


def _look_at(center: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t), OpenCV axes (x right, y down, z forward), looking from ``center`` at ``target``."""
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, np.array([0.0, 0.0, 1.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    return r, -r @ center


def _quaternion(r: np.ndarray) -> np.ndarray:
    from recon3d.rotations import rotation_to_quaternion

    return np.asarray(rotation_to_quaternion(r), dtype=np.float64)


def test_split_recovers_each_photos_focal_length(tmp_path: Path) -> None:
    """Eight photos of a point cloud with focal lengths from 250 to 1,400 px, stored as a shared-camera model
    (focal 600, the poses and points of the true scene): after the split every photo's focal length is back
    within 1 % of its own, and the reprojection error falls to the noise level."""
    pytest.importorskip("pycolmap")
    rng = np.random.default_rng(0)
    width, height = 400, 300
    points = rng.uniform(-1.0, 1.0, size=(400, 3))
    focals = [250.0, 400.0, 600.0, 800.0, 1000.0, 1400.0, 500.0, 700.0]
    images, observations = [], {j: [] for j in range(len(points))}
    for i, f in enumerate(focals):
        angle = 2 * math.pi * i / len(focals)
        # farther for longer lenses, as a photographer frames the same object: the perspective differs
        distance = 2.5 * f / 400.0 + 2.0
        center = np.array([distance * math.cos(angle), distance * math.sin(angle), 0.6 * math.sin(3 * angle)])
        r, t = _look_at(center, np.zeros(3))
        cam = points @ r.T + t
        uv = f * cam[:, :2] / cam[:, 2:] + np.array([width / 2, height / 2])
        uv += rng.normal(0.0, 0.2, size=uv.shape)
        rows = []
        for j, (u, v) in enumerate(uv):
            if 0 <= u < width and 0 <= v < height:
                observations[j].append((i + 1, len(rows)))
                rows.append(f"{u:.4f} {v:.4f} {j + 1}")
        q = _quaternion(r)
        images.append(f"{i + 1} {' '.join(f'{x:.12f}' for x in q)} {' '.join(f'{x:.12f}' for x in t)} 1 img{i}.jpg")
        images.append(" ".join(rows))
    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text(f"1 SIMPLE_RADIAL {width} {height} 600 {width / 2} {height / 2} 0\n")
    (model / "images.txt").write_text("\n".join(images) + "\n")
    lines = [f"{j + 1} {x:.12f} {y:.12f} {z:.12f} 128 128 128 0.5 " + " ".join(f"{a} {b}" for a, b in obs)
             for j, ((x, y, z), obs) in enumerate(zip(points, observations.values())) if len(obs) >= 2]  # fmt: skip
    (model / "points3D.txt").write_text("\n".join(lines) + "\n")

    result = split_intrinsics(model, max_iterations=200)

    assert result is not None
    assert result["cameras"] == len(focals)
    assert result["reprojection_error_before"] > 5.0  # one shared focal cannot fit them
    assert result["reprojection_error_after"] < 0.5  # ~ the 0.2 px noise per axis
    import pycolmap

    rec = pycolmap.Reconstruction(str(model))
    assert rec.num_cameras() == len(focals)
    for image in rec.images.values():
        truth = focals[int(image.name[3:-4])]
        got = float(rec.cameras[image.camera_id].params[0])
        assert abs(got - truth) / truth < 0.01, (image.name, got, truth)


def test_split_leaves_a_multi_camera_model_alone(tmp_path: Path) -> None:
    pytest.importorskip("pycolmap")
    model = tmp_path / "m"
    model.mkdir()
    (model / "cameras.txt").write_text("1 SIMPLE_PINHOLE 40 30 50 20 15\n2 SIMPLE_PINHOLE 40 30 60 20 15\n")
    (model / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.jpg\n\n2 1 0 0 0 1 0 0 2 b.jpg\n\n")
    (model / "points3D.txt").write_text("")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    assert split_intrinsics(model) is None
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


@pytest.mark.slow
def test_photo_folder_from_several_cameras_gets_per_photo_intrinsics(project_root: Path, tmp_path: Path) -> None:
    """The shipped garden photos (one rendering camera, focal known) labelled in EXIF as taken by two
    cameras: SfM gives every photo its own camera, and each photo's focal length still matches the renderer's
    within 2 % (the split does not spoil a capture whose photos really share one camera)."""
    import torch
    from garden_truth import ground_truth

    from recon3d.data import load_dataset
    from recon3d.data.colmap_io import read_model

    garden = project_root / "examples" / "garden"
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, src in enumerate(sorted((garden / "images").iterdir())):
        exif = Image.Exif()
        exif[271], exif[272] = ("Canon", "EOS 6D") if k % 2 else ("NIKON", "D750")
        Image.open(src).convert("RGB").save(folder / (src.stem + ".jpg"), format="JPEG", quality=95,
                                            exif=exif.tobytes())
    data = load_dataset(folder, work_dir=tmp_path / "run")
    _, meta = ground_truth(garden)
    model = read_model(tmp_path / "run" / "sfm" / "sparse" / "0")
    assert len(model.cameras) == len(model.images) == len(data.image_paths) == 36
    manifest = json.loads((tmp_path / "run" / "sfm" / "manifest.json").read_text())
    assert manifest["intrinsics"]["cameras"] == 36
    assert torch.allclose(data.cameras.fx.double(), torch.full((36,), float(meta["fl_x"]), dtype=torch.float64),
                          rtol=0.02)
