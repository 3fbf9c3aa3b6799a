"""A bare photo folder: structure-from-motion on the shipped example, preparation of awkward photos, bad folders."""

from __future__ import annotations

import io
import json
import shutil
import time
import warnings

import numpy as np
import pytest
import torch
from garden_truth import ground_truth as _ground_truth
from garden_truth import similarity as _similarity
from PIL import Image

from recon3d.data import DataWarning, detect_kind, load_dataset
from recon3d.data.colmap_io import read_model
from recon3d.data.photos import _prepare, scan_photo_folder
from recon3d.errors import InputError


@pytest.mark.slow
def test_sfm_registers_the_shipped_example_with_accurate_poses(project_root, tmp_path, capsys):
    garden = project_root / "examples" / "garden"
    images = garden / "images"
    assert detect_kind(images) == "photos"
    t0 = time.perf_counter()
    data = load_dataset(images, work_dir=tmp_path)
    elapsed = time.perf_counter() - t0
    truth, meta = _ground_truth(garden)
    n = len(truth)
    assert data.source == "photos" and len(data.image_paths) == n == 36  # every view registered
    assert data.points is not None and len(data.points) > 500
    model = read_model(tmp_path / "sfm" / "sparse" / "0")  # a normal COLMAP model
    assert len(model.cameras) == 1 and len(model.images) == 36  # one size -> one shared camera
    assert "36 of 36 images registered" in capsys.readouterr().err
    names = [p.with_suffix(".jpg").name for p in data.image_paths]
    assert names == sorted(truth)
    c2w = torch.linalg.inv(data.cameras.world_to_camera.double()).numpy()
    gt = np.stack([truth[nm] for nm in names])
    s, r, t = _similarity(c2w[:, :3, 3], gt[:, :3, 3])
    centres = s * c2w[:, :3, 3] @ r.T + t
    radius = np.linalg.norm(gt[:, :2, 3], axis=1).mean()
    assert np.abs(centres - gt[:, :3, 3]).max() < 0.01 * radius
    rot_err = []
    for i in range(n):
        rel = (r @ c2w[i, :3, :3]).T @ gt[i, :3, :3]
        rot_err.append(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1))))
    assert max(rot_err) < 0.5
    # the upright frame (recon3d.data.orient): the true +Z (the garden is ray traced Z-up, ground at z = 0) is
    # our +Z, the ground is at z = 0, and the eye-height rule gives the true scale within 20 %
    up_err = np.degrees(np.arccos(np.clip((r @ np.array([0.0, 0.0, 1.0]))[2], -1, 1)))
    assert up_err < 1.0, data.orientation.methods
    assert abs(t[2]) < 0.02 * radius  # our z = 0 is the true ground
    assert abs(s - 1) < 0.2
    assert "ground plane" in data.orientation.methods["up"]
    assert json.loads((tmp_path / "orientation.json").read_text())["scale"] == pytest.approx(data.orientation.scale)
    # focal length from self-calibration against the renderer's
    assert np.allclose(data.cameras.fx.numpy(), meta["fl_x"], rtol=0.01)
    # the LLFF split over the registered images
    assert data.test_indices() == list(range(0, 36, 8))
    print(f"SfM on the shipped example: {elapsed:.1f} s")

    # a re-run reuses the saved model instead of matching again
    t1 = time.perf_counter()
    again = load_dataset(images, work_dir=tmp_path)
    assert time.perf_counter() - t1 < max(5.0, 0.25 * elapsed)
    assert "reusing the structure-from-motion model" in capsys.readouterr().err
    assert torch.allclose(again.cameras.world_to_camera, data.cameras.world_to_camera)

    # and a fresh run in another folder gives the very same model: the same photos, the same scene every time
    # (before: images numbered in the order extraction threads finished, 3,085-3,111 points run to run)
    fresh = load_dataset(images, work_dir=tmp_path / "fresh")
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / "fresh" / "sfm" / "sparse" / "0" / name).read_bytes() == \
            (tmp_path / "sfm" / "sparse" / "0" / name).read_bytes(), name
    assert torch.equal(fresh.cameras.world_to_camera, data.cameras.world_to_camera)


def test_renumbered_database_matches_extraction_in_name_order(project_root, tmp_path):
    """Threaded extraction numbers images as its threads finish; _renumber_images must give the rows that an
    extraction in name order gives. Reference: one-thread extraction in name order; the case to fix: the same
    photos extracted one by one in reverse order (ids n..1), the worst order the threads could produce."""
    import sqlite3

    import pycolmap

    from recon3d.data.photos import _renumber_images

    folder = project_root / "examples" / "garden" / "images"
    names = sorted(p.name for p in folder.iterdir())[:6]
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 1

    def extract(db, batches):
        for i, batch in enumerate(batches):  # later batches join the first one's camera, as _extract does
            reader.existing_camera_id = 1 if i else -1
            pycolmap.extract_features(db, folder, image_names=batch, camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader, extraction_options=extraction,
                                      device=pycolmap.Device.cpu)  # fmt: skip

    def rows(db):
        con = sqlite3.connect(db)
        tables = ("cameras", "rigs", "frames", "frame_data", "images", "keypoints", "descriptors", "pose_priors")
        out = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
        con.close()
        return out

    reference, shuffled = tmp_path / "reference.db", tmp_path / "reversed.db"
    extract(reference, [names])
    extract(shuffled, [[name] for name in names[::-1]])  # pycolmap sorts the names of one call itself
    before = rows(shuffled)
    assert [n for _, n, _ in before["images"]] == names[::-1]  # ids really were in the wrong order
    _renumber_images(shuffled, names)
    after, expected = rows(shuffled), rows(reference)
    assert [n for _, n, _ in after["images"]] == names
    assert after == expected
    _renumber_images(shuffled, names)  # already in order: nothing moves
    assert rows(shuffled) == expected
    with pytest.raises(InputError, match="one image and frame per photo"):
        _renumber_images(shuffled, names[:-1])


def test_prepared_copies_handle_awkward_photos(tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    yy, xx = np.mgrid[0:60, 0:80] / 80.0  # smooth and asymmetric, so JPEG keeps it and rotations differ
    base = (np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx + 3 * yy)], -1) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display
    Image.fromarray(base).save(src / "a_rotated.jpg", exif=exif, quality=95)
    Image.fromarray(base[..., 0], mode="L").save(src / "b_gray.png")
    Image.fromarray(base[..., 1].astype(np.uint16) * 257).save(src / "c_16bit.png")
    rgba = np.dstack([base, np.full((60, 80), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(src / "d_rgba.png")
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(src / "e_big.png")  # larger and another size
    (src / "notes.txt").write_text("not a photo")
    (src / "f_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    images, others = scan_photo_folder(src)
    assert [p.name for p in images] == ["a_rotated.jpg", "b_gray.png", "c_16bit.png", "d_rgba.png", "e_big.png",
                                        "f_broken.jpg"]  # fmt: skip
    assert others == 1
    sfm = tmp_path / "work" / "sfm"
    sfm.mkdir(parents=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared, manifest, reused = _prepare(src, images, sfm, 1, 200, torch.tensor([0.0, 0.0, 1.0]))
    assert not reused
    ours = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(ours) == 1 and "1 unreadable image file(s) skipped: f_broken.jpg" in ours[0]
    assert "larger than max_image_size=200" in capsys.readouterr().err
    assert prepared == ["a_rotated.jpg", "b_gray.png", "c_16bit.png", "d_rgba.png", "e_big.png"]
    # one factor for the set (200/400): every photo keeps its own size and aspect ratio
    sizes = {n: Image.open(sfm / "images" / n).size for n in prepared}
    assert sizes == {"a_rotated.jpg": (30, 40), "b_gray.png": (40, 30), "c_16bit.png": (40, 30),
                     "d_rgba.png": (40, 30), "e_big.png": (200, 150)}  # fmt: skip
    for n in prepared:
        assert Image.open(sfm / "images" / n).mode == "RGB"
    half = base.reshape(30, 2, 40, 2, 3).mean(axis=(1, 3)) / 255
    rotated = np.asarray(Image.open(sfm / "images" / "a_rotated.jpg"), dtype=np.float64) / 255
    assert np.abs(rotated - np.rot90(half, k=1)).max() < 0.05  # orientation 8: rotate 90° counter-clockwise
    gray = np.asarray(Image.open(sfm / "images" / "b_gray.png"), dtype=np.float64) / 255
    assert np.abs(gray - half[..., :1]).max() < 0.01
    sixteen = np.asarray(Image.open(sfm / "images" / "c_16bit.png"), dtype=np.float64) / 255
    assert np.abs(sixteen - half[..., 1:2]).max() < 0.01
    comp = np.asarray(Image.open(sfm / "images" / "d_rgba.png"), dtype=np.float64) / 255
    a = 128 / 255
    assert np.abs(comp - (half * a + (1 - a) * np.array([0, 0, 1.0]))).max() < 0.01
    # the same inputs and settings again: reused without rewriting
    manifest["summary"] = "x"
    (sfm / "manifest.json").write_text(json.dumps(manifest))
    assert _prepare(src, images, sfm, 1, 200, torch.tensor([0.0, 0.0, 1.0]))[2] is True


def test_empty_folder_and_folder_without_images(tmp_path):
    with pytest.raises(InputError) as e:
        load_dataset(tmp_path)
    assert e.value.path == tmp_path and "no JPEG/PNG images found (0 other file(s))" in str(e.value)
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(InputError, match=r"no JPEG/PNG images found \(2 other file\(s\)\)"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("deterministic", [True, False])
def test_sfm_deterministic_key_picks_the_mapping_threads(project_root, tmp_path, monkeypatch, deterministic):
    """data.sfm_deterministic reaches the mapper: one thread (the default), or pycolmap's every core (-1)."""
    import pycolmap

    from recon3d import api
    from recon3d.data import photos
    from recon3d.train.config import apply_overrides, load_preset

    cfg = apply_overrides(load_preset("default"), {"data.sfm_deterministic": deterministic})
    seen = {}

    def fake_run_sfm(folder, work_dir, **kwargs):
        seen.update(kwargs)
        raise InputError(folder, "stop here")

    monkeypatch.setattr(photos, "run_sfm", fake_run_sfm)
    with pytest.raises(InputError, match="stop here"):
        api._load(project_root / "examples" / "garden" / "images", tmp_path, cfg)
    assert seen["deterministic"] is deterministic

    def fake_mapping(db, images, out, options, **callbacks):
        seen["num_threads"] = options.num_threads
        return {}

    monkeypatch.setattr(pycolmap, "incremental_mapping", fake_mapping)
    with photos.progress() as bar:
        photos._map(tmp_path / "db", tmp_path, tmp_path / "raw", 3, False, bar, one_thread=deterministic)
    assert seen["num_threads"] == (1 if deterministic else -1)
    with photos.progress() as bar:  # video maps on every core whatever the key says
        photos._map(tmp_path / "db", tmp_path, tmp_path / "raw", 3, True, bar, one_thread=deterministic)
    assert seen["num_threads"] == -1


@pytest.mark.parametrize("count", [1, 2])
def test_one_or_two_images(tmp_path, count):
    for i in range(count):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.jpg")
    with pytest.raises(InputError) as e:
        load_dataset(tmp_path, work_dir=tmp_path / "w")
    assert e.value.path == tmp_path
    assert f"only {count} image(s); structure-from-motion needs at least 3" in str(e.value)


def test_corrupt_and_non_images_leave_too_few(tmp_path, capsys):
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.png")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:40])
    (tmp_path / "x.json").write_text("{}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=r"only 2 readable image\(s\); structure-from-motion needs at least 3"):
            load_dataset(tmp_path, work_dir=tmp_path / "w")
    assert any("cut.png" in str(w.message) for w in caught if issubclass(w.category, DataWarning))
    assert "skipped 1 file(s) that are not JPEG/PNG images" in capsys.readouterr().err


@pytest.mark.slow
def test_unregistrable_photos_say_how_many_registered(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(4):  # independent noise: nothing matches, so no initial pair
        Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).save(tmp_path / f"n{i}.png")
    with pytest.raises(InputError) as e:
        load_dataset(tmp_path, work_dir=tmp_path / "w")
    assert e.value.path == tmp_path and "registered 0 of 4 images" in str(e.value)


def test_folder_with_images_subfolder_is_photos(tmp_path, project_root):
    shutil.copytree(project_root / "examples" / "garden" / "images", tmp_path / "images")
    assert detect_kind(tmp_path) == "photos"
