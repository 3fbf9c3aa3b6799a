"""COLMAP projects: parsers (.bin/.txt), every camera model, undistortion, bad inputs, the shared statue model."""

from __future__ import annotations

import math
import struct
import warnings

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image
from test_data_common import orbit_cameras, quantized, render_views, save_png, small_scene

from recon3d.data import DataWarning, load_dataset
from recon3d.data.colmap_io import (
    CAMERA_MODELS,
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    ColmapPoints,
    quaternion_to_rotation,
    read_cameras_binary,
    read_model,
    rotation_to_quaternion,
    write_model_binary,
    write_model_text,
)
from recon3d.data.undistort import make_pycolmap_camera, undistorted_intrinsics, undistortion_grid
from recon3d.errors import InputError

# Plausible parameters for every model (focal, principal point, then small distortion terms).
MODEL_PARAMS = {
    "SIMPLE_PINHOLE": [50.0, 24.0, 18.0],
    "PINHOLE": [50.0, 52.0, 24.0, 18.0],
    "SIMPLE_RADIAL": [50.0, 24.0, 18.0, 0.05],
    "RADIAL": [50.0, 24.0, 18.0, 0.05, -0.01],
    "OPENCV": [50.0, 52.0, 24.0, 18.0, 0.05, -0.01, 0.001, -0.002],
    "OPENCV_FISHEYE": [50.0, 52.0, 24.0, 18.0, 0.02, -0.01, 0.001, 0.0],
    "FULL_OPENCV": [50.0, 52.0, 24.0, 18.0, 0.05, -0.01, 0.001, -0.002, 0.001, 0.01, 0.0, 0.0],
    "FOV": [50.0, 52.0, 24.0, 18.0, 0.3],
    "SIMPLE_RADIAL_FISHEYE": [50.0, 24.0, 18.0, 0.02],
    "RADIAL_FISHEYE": [50.0, 24.0, 18.0, 0.02, -0.01],
    "THIN_PRISM_FISHEYE": [50.0, 52.0, 24.0, 18.0, 0.02, -0.01, 0.001, 0.001, 0.0, 0.0, 0.001, 0.001],
    "RAD_TAN_THIN_PRISM_FISHEYE": [50.0, 52.0, 24.0, 18.0, 0.02, -0.01, 0, 0, 0, 0, 0.001, 0.001, 0, 0, 0, 0],
    "SIMPLE_DIVISION": [50.0, 24.0, 18.0, -0.05],
    "DIVISION": [50.0, 52.0, 24.0, 18.0, -0.05],
    "SIMPLE_FISHEYE": [50.0, 24.0, 18.0],
    "FISHEYE": [50.0, 52.0, 24.0, 18.0],
    "EUCM": [50.0, 52.0, 24.0, 18.0, 0.5, 1.0],
}


def test_every_model_has_parameters_here_and_in_pycolmap():
    assert set(MODEL_PARAMS) == set(CAMERA_MODELS)
    for name, (model_id, names) in CAMERA_MODELS.items():
        cam = pycolmap.Camera.create_from_model_name(1, name, 1.0, 48, 36)
        assert int(cam.model) == model_id, name
        assert len(cam.params) == len(names) == len(MODEL_PARAMS[name]), name


def _random_model(rng: np.random.Generator, n_images: int = 5, n_points: int = 20) -> ColmapModel:
    cameras = {}
    for i, (name, params) in enumerate(MODEL_PARAMS.items(), start=1):
        cameras[i] = ColmapCamera(i, name, 48, 36, np.array(params))
    images = {}
    for i in range(1, n_images + 1):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        images[i * 3] = ColmapImage(i * 3, q, rng.normal(size=3), 1 + i % len(cameras), f"img_{i:02d}.png", 0)
    points = ColmapPoints(rng.normal(size=(n_points, 3)), rng.integers(0, 256, (n_points, 3)).astype(np.uint8),
                          rng.random(n_points))  # fmt: skip
    return ColmapModel(cameras, images, points, None)


@pytest.mark.parametrize("writer, ext", [(write_model_binary, ".bin"), (write_model_text, ".txt")])
def test_round_trip_every_camera_model(tmp_path, writer, ext):
    model = _random_model(np.random.default_rng(1))
    writer(model, tmp_path)
    back = read_model(tmp_path, ext)
    assert back.cameras.keys() == model.cameras.keys()
    for k, cam in model.cameras.items():
        got = back.cameras[k]
        assert (got.model, got.width, got.height) == (cam.model, cam.width, cam.height)
        assert np.array_equal(got.params, cam.params)
    for k, im in model.images.items():
        got = back.images[k]
        assert got.name == im.name and got.camera_id == im.camera_id
        assert np.allclose(got.world_to_camera(), im.world_to_camera(), atol=1e-12)
    assert np.array_equal(back.points.xyz, model.points.xyz)
    assert np.array_equal(back.points.rgb, model.points.rgb)


def test_binary_reader_agrees_with_pycolmap(tmp_path):
    model = _random_model(np.random.default_rng(2))
    write_model_binary(model, tmp_path)
    rec = pycolmap.Reconstruction(str(tmp_path))
    ours = read_model(tmp_path)
    for image_id in model.images:
        ref = rec.image(image_id).cam_from_world().matrix()
        assert np.allclose(ours.images[image_id].world_to_camera()[:3], ref, atol=1e-10)
    for cam_id, cam in rec.cameras.items():
        assert cam.model_name == model.cameras[cam_id].model


def test_quaternion_conversions_invert():
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        r = quaternion_to_rotation(q)
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-12) and np.linalg.det(r) == pytest.approx(1.0)
        assert np.allclose(rotation_to_quaternion(r), q, atol=1e-10)


def _project_with_scene_cameras(tmp_path, cams, model_name="PINHOLE"):
    """A COLMAP project (text model) for ``cams``, with images rendered from a splat scene."""
    scene = small_scene()
    renders = render_views(scene, cams)
    images = {}
    cameras = {}
    for i in range(len(cams)):
        name = f"view_{i:02d}.png"
        save_png(tmp_path / "images" / name, renders[i])
        w2c = cams.world_to_camera[i].double().numpy()
        fx, fy, cx, cy = (float(getattr(cams, k)[i]) for k in ("fx", "fy", "cx", "cy"))
        cameras[i + 1] = ColmapCamera(i + 1, model_name, int(cams.width[i]), int(cams.height[i]),
                                      np.array([fx, fy, cx, cy]))  # fmt: skip
        images[i + 1] = ColmapImage(i + 1, rotation_to_quaternion(w2c[:3, :3]), w2c[:3, 3], i + 1, name, 0)
    pts = ColmapPoints(scene.means.double().numpy(), np.full((len(scene), 3), 128, np.uint8), np.zeros(len(scene)))
    return ColmapModel(cameras, images, pts, None), scene, renders


def test_colmap_project_loads_cameras_that_reproduce_the_images(tmp_path):
    cams = orbit_cameras(9)
    model, scene, renders = _project_with_scene_cameras(tmp_path, cams)
    write_model_text(model, tmp_path / "sparse" / "0")
    data = load_dataset(tmp_path)
    assert data.source == "colmap" and len(data.image_paths) == 9 and data.background is None
    assert torch.allclose(data.cameras.world_to_camera, cams.world_to_camera, atol=1e-5)
    assert torch.allclose(data.cameras.fx, cams.fx) and torch.allclose(data.cameras.cy, cams.cy)
    assert data.split == ["test"] + ["train"] * 7 + ["test"]  # LLFF: i % 8 == 0
    assert data.points.shape == (len(scene), 3) and torch.allclose(
        data.point_colors, torch.full_like(data.points, 128 / 255)
    )
    again = render_views(scene, data.cameras)
    for i in range(9):
        assert torch.allclose(data.load_image(i), quantized(renders[i]), atol=1e-6)
        assert torch.allclose(again[i], renders[i], atol=1e-4)


def test_downscale_and_cap(tmp_path):
    cams = orbit_cameras(3, width=48, height=36)
    model, _, renders = _project_with_scene_cameras(tmp_path, cams)
    write_model_binary(model, tmp_path / "sparse")  # sparse/ without 0/
    half = load_dataset(tmp_path, downscale=2)
    assert half.cameras.width.tolist() == [24] * 3 and half.cameras.height.tolist() == [18] * 3
    assert torch.allclose(half.cameras.fx, cams.fx / 2) and torch.allclose(half.cameras.cx, cams.cx / 2)
    img = half.load_image(1)
    assert img.shape == (18, 24, 3)
    ref = quantized(renders[1]).reshape(18, 2, 24, 2, 3).mean(dim=(1, 3))
    assert torch.allclose(img, ref, atol=1e-5)
    assert half.load_image(1) is img  # decoded once, then cached
    for bad in (0, -2, 1.5, "2"):
        with pytest.raises(InputError, match=r"downscale must be a whole number ≥ 1"):
            load_dataset(tmp_path, downscale=bad)
    capped = load_dataset(tmp_path, max_image_size=24)
    assert capped.cameras.width.tolist() == [24] * 3 and torch.allclose(capped.cameras.fy, cams.fy / 2)


def _opencv_distort(x, y, k1, k2, p1, p2):
    """OpenCV radial-tangential distortion of normalised coordinates, written out independently."""
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y


def _pattern(x, y):
    """A smooth pattern on the ideal image plane (x/z, y/z)."""
    return 0.5 + 0.4 * np.sin(9 * x + 1.0) * np.cos(7 * y - 0.5)


def test_opencv_distortion_removed(tmp_path):
    w, h = 120, 90
    fx, fy, cx, cy = 100.0, 104.0, 61.0, 44.0
    k1, k2, p1, p2 = -0.12, 0.03, 0.002, -0.001
    # The distorted photo: for each pixel, invert the distortion by fixed-point iteration to find its ray.
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xd, yd = (u - cx) / fx, (v - cy) / fy
    x, y = xd.copy(), yd.copy()
    for _ in range(50):
        dx, dy = _opencv_distort(x, y, k1, k2, p1, p2)
        x, y = x + (xd - dx), y + (yd - dy)
    photo = np.repeat(_pattern(x, y)[..., None], 3, axis=2)
    (tmp_path / "images").mkdir()
    Image.fromarray((photo * 65535).astype(np.uint16)[..., 0]).save(tmp_path / "images" / "p.png")
    cam = ColmapCamera(1, "OPENCV", w, h, np.array([fx, fy, cx, cy, k1, k2, p1, p2]))
    img = ColmapImage(1, np.array([1.0, 0, 0, 0]), np.zeros(3), 1, "p.png", 0)
    write_model_text(ColmapModel({1: cam}, {1: img}, None, None), tmp_path / "sparse" / "0")
    data = load_dataset(tmp_path, work_dir=tmp_path / "run")
    assert data.image_paths[0] == tmp_path / "run" / "undistorted" / "images" / "p.png"
    assert data.image_paths[0].is_file() and data.points is None
    k = data.cameras
    assert (int(k.width[0]), int(k.height[0])) == (w, h) and float(k.cx[0]) == w / 2
    out = data.load_image(0)[..., 0].numpy()
    xu = (u - float(k.cx[0])) / float(k.fx[0])
    yu = (v - float(k.cy[0])) / float(k.fy[0])
    expected = _pattern(xu, yu)
    inner = (slice(3, -3), slice(3, -3))
    assert np.abs(out[inner] - expected[inner]).max() < 0.02
    # no blank border: every output pixel sampled inside the photo
    assert np.abs(out - expected).mean() < 0.005
    # a re-run reuses the undistorted copy
    mtime = data.image_paths[0].stat().st_mtime_ns
    load_dataset(tmp_path, work_dir=tmp_path / "run")
    assert data.image_paths[0].stat().st_mtime_ns == mtime


@pytest.mark.parametrize("model", sorted(MODEL_PARAMS))
def test_every_model_undistorts_to_a_pinhole_without_blank_pixels(model):
    cam = make_pycolmap_camera(ColmapCamera(1, model, 48, 36, np.array(MODEL_PARAMS[model])))
    fx, fy, cx, cy = undistorted_intrinsics(cam)
    assert 0.5 * cam.focal_length_x <= fx <= 2 * cam.focal_length_x and (cx, cy) == (24.0, 18.0)
    grid = undistortion_grid(cam, (fx, fy, cx, cy))
    assert grid.shape == (36, 48, 2) and torch.isfinite(grid).all()
    assert grid.abs().max() <= 1.0 + 1e-3  # samples stay inside the source image
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        u = (torch.arange(48) + 0.5) / 48 * 2 - 1
        assert torch.allclose(grid[0, :, 0], u, atol=1e-3)


def test_zero_distortion_is_left_alone(tmp_path):
    cams = orbit_cameras(2)
    model, _, _ = _project_with_scene_cameras(tmp_path, cams)
    for c in model.cameras.values():
        c.model, c.params = "OPENCV", np.concatenate([c.params, np.zeros(4)])
    write_model_binary(model, tmp_path / "sparse" / "0")
    data = load_dataset(tmp_path)
    assert data.image_paths[0] == tmp_path / "images" / "view_00.png"  # not copied
    assert torch.allclose(data.cameras.fx, cams.fx)


# ------------------------------------------------------------------------------------------- bad input
def _valid_project(tmp_path, n=3):
    cams = orbit_cameras(n)
    model, _, _ = _project_with_scene_cameras(tmp_path, cams)
    return model


def test_empty_sparse_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    with pytest.raises(InputError) as e:
        load_dataset(tmp_path)
    assert e.value.path == tmp_path / "sparse" and "empty sparse/ folder" in str(e.value)


def test_missing_images_skipped_with_one_warning(tmp_path):
    model = _valid_project(tmp_path, 4)
    write_model_binary(model, tmp_path / "sparse" / "0")
    (tmp_path / "images" / "view_01.png").unlink()
    (tmp_path / "images" / "view_03.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(tmp_path)
    ours = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(ours) == 1
    assert "2 of 4" in str(ours[0].message) and "view_01.png, view_03.png" in str(ours[0].message)
    assert [p.name for p in data.image_paths] == ["view_00.png", "view_02.png"]


def test_unsupported_camera_model_text_and_binary(tmp_path):
    model = _valid_project(tmp_path, 2)
    write_model_text(model, tmp_path / "sparse" / "0")
    path = tmp_path / "sparse" / "0" / "cameras.txt"
    path.write_text(path.read_text().replace("PINHOLE", "EQUIRECTANGULAR", 1))
    with pytest.raises(InputError) as e:
        load_dataset(tmp_path)
    assert e.value.path == path and "unsupported camera model 'EQUIRECTANGULAR'" in str(e.value)
    assert "SIMPLE_RADIAL" in str(e.value)  # says which are supported
    bin_path = tmp_path / "cameras.bin"
    bin_path.write_bytes(struct.pack("<QIiQQ", 1, 1, 99, 10, 10) + struct.pack("<3d", 1, 2, 3))
    with pytest.raises(InputError, match=r"cameras.bin: camera 1: unsupported camera model id 99; supported: "):
        read_cameras_binary(bin_path)


def test_truncated_and_hostile_binary_files(tmp_path):
    model = _valid_project(tmp_path, 2)
    write_model_binary(model, tmp_path / "m")
    cams = (tmp_path / "m" / "cameras.bin").read_bytes()
    (tmp_path / "m" / "cameras.bin").write_bytes(cams[:-5])
    with pytest.raises(InputError, match=r"cameras.bin: file is truncated at byte"):
        read_model(tmp_path / "m")
    # a count of 2^60 cameras in a 40-byte file: refused before allocating anything
    (tmp_path / "m" / "cameras.bin").write_bytes(struct.pack("<Q", 1 << 60) + cams[8:])
    with pytest.raises(InputError, match=r"claims 1152921504606846976 cameras, more than the"):
        read_model(tmp_path / "m")
    (tmp_path / "m" / "cameras.bin").write_bytes(cams)
    imgs = bytearray((tmp_path / "m" / "images.bin").read_bytes())
    # the first image's 2D-point count sits after id, 7 doubles, camera id and the NUL-terminated name
    at = 8 + 4 + 56 + 4 + len("view_00.png") + 1
    imgs[at : at + 8] = struct.pack("<Q", (1 << 64) - 1)
    (tmp_path / "m" / "images.bin").write_bytes(bytes(imgs))
    with pytest.raises(InputError, match=r"images.bin: header claims 18446744073709551615 2D points"):
        read_model(tmp_path / "m")


def test_nan_pose_and_bad_numbers_in_text(tmp_path):
    model = _valid_project(tmp_path, 2)
    write_model_text(model, tmp_path / "m")
    images_txt = tmp_path / "m" / "images.txt"
    lines = images_txt.read_text().splitlines()
    words = lines[1].split()
    words[5] = "nan"
    images_txt.write_text("\n".join([lines[0], " ".join(words), *lines[2:]]) + "\n")
    with pytest.raises(InputError, match=r"images.txt: line 2: pose holds NaN or infinite values"):
        read_model(tmp_path / "m")
    words[5] = "inf"
    images_txt.write_text("\n".join([lines[0], " ".join(words), *lines[2:]]) + "\n")
    with pytest.raises(InputError, match=r"images.txt: line 2: pose holds NaN or infinite values"):
        read_model(tmp_path / "m")
    words[5] = "abc"
    images_txt.write_text("\n".join([lines[0], " ".join(words), *lines[2:]]) + "\n")
    with pytest.raises(InputError, match=r"images.txt: line 2: 'abc' is not a valid number"):
        read_model(tmp_path / "m")


def test_wrong_parameter_count_and_unknown_camera(tmp_path):
    model = _valid_project(tmp_path, 2)
    write_model_text(model, tmp_path / "m")
    cams_txt = tmp_path / "m" / "cameras.txt"
    text = cams_txt.read_text()
    cams_txt.write_text(text.replace("\n1 PINHOLE 48 36 ", "\n1 PINHOLE 48 36 7.0 "))
    with pytest.raises(InputError, match=r"cameras.txt: line 2: camera model PINHOLE needs 4 parameters, found 5"):
        read_model(tmp_path / "m")
    cams_txt.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("2 ")) + "\n")
    with pytest.raises(InputError, match=r"images.txt: image 'view_01.png' refers to camera 2, which is not defined"):
        read_model(tmp_path / "m")


def test_image_of_another_aspect_ratio_is_refused(tmp_path):
    model = _valid_project(tmp_path, 2)
    write_model_text(model, tmp_path / "sparse" / "0")
    save_png(tmp_path / "images" / "view_01.png", torch.zeros(36, 36, 3))
    with pytest.raises(InputError) as e:
        load_dataset(tmp_path)
    assert e.value.path == tmp_path / "images" / "view_01.png" and "36×36 but its camera says 48×36" in str(e.value)


# ------------------------------------------------------------------------------------------- shared data
@pytest.mark.data
def test_statue_binary_and_text_agree(shared_data):
    sparse = shared_data / "statue" / "sparse" / "0"
    a, b = read_model(sparse, ".bin"), read_model(sparse, ".txt")
    assert len(a.images) == len(b.images) == 40 and len(a.points.xyz) == len(b.points.xyz) == 1816
    assert a.cameras[1].model == "SIMPLE_RADIAL" and (a.cameras[1].width, a.cameras[1].height) == (800, 1200)
    assert np.allclose(a.cameras[1].params, b.cameras[1].params, rtol=5e-6)  # .txt keeps 6 significant digits
    for k, im in a.images.items():
        assert im.name == b.images[k].name
        assert np.allclose(im.world_to_camera(), b.images[k].world_to_camera(), atol=1e-6)
    assert np.allclose(a.points.xyz, b.points.xyz, atol=1e-6) and np.array_equal(a.points.rgb, b.points.rgb)
    rec = pycolmap.Reconstruction(str(sparse))
    for k, im in a.images.items():
        assert np.allclose(im.world_to_camera()[:3], rec.image(k).cam_from_world().matrix(), atol=1e-9)


@pytest.mark.data
@pytest.mark.slow
def test_statue_loads_undistorted(shared_data, tmp_path):
    data = load_dataset(shared_data / "statue", work_dir=tmp_path, downscale=4)
    assert data.source == "colmap" and len(data.image_paths) == 40 and len(data.test_indices()) == 5
    assert data.cameras.width.tolist() == [200] * 40 and data.cameras.height.tolist() == [300] * 40
    assert all(p.parent == tmp_path / "undistorted" / "images" for p in data.image_paths)
    assert data.points.shape == (1816, 3)
    # SIMPLE_RADIAL with k < 0 (pincushion): the widest no-blank pinhole has a shorter focal length
    assert float(data.cameras.fx[0]) < 2395.65 / 4
    assert not math.isnan(float(data.load_image(0).mean()))
