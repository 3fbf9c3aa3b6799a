"""nerfstudio / instant-ngp ``transforms.json`` and Blender ``transforms_{train,val}.json`` readers."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_common import orbit_cameras, quantized, render_views, save_png, small_scene

from recon3d.data import DataWarning, detect_kind, load_dataset
from recon3d.errors import InputError


def _c2w_opengl(w2c: torch.Tensor) -> list[list[float]]:
    """OpenCV world-to-camera -> OpenGL camera-to-world: invert, then flip the camera's y and z axes."""
    c2w = np.linalg.inv(w2c.double().numpy())
    c2w[:, 1] *= -1
    c2w[:, 2] *= -1
    return c2w.tolist()


def _nerfstudio(tmp_path, n=5, **extra):
    cams = orbit_cameras(n)
    scene = small_scene(1)
    renders = render_views(scene, cams)
    frames = []
    for i in range(n):
        save_png(tmp_path / "images" / f"f{i}.png", renders[i])
        frames.append({"file_path": f"images/f{i}.png", "transform_matrix": _c2w_opengl(cams.world_to_camera[i])})
    meta = {"fl_x": 50.0, "fl_y": 52.0, "cx": float(cams.cx[0]), "cy": float(cams.cy[0]), "w": 48, "h": 36,
            "frames": frames, **extra}  # fmt: skip
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    return cams, scene, renders, meta


def _write(tmp_path, meta):
    (tmp_path / "transforms.json").write_text(json.dumps(meta))


def test_nerfstudio_poses_reproduce_the_renders(tmp_path):
    cams, scene, renders, _ = _nerfstudio(tmp_path, 9)
    assert detect_kind(tmp_path) == "nerfstudio"
    data = load_dataset(tmp_path)
    assert data.source == "nerfstudio" and data.points is None and data.background is None
    assert torch.allclose(data.cameras.world_to_camera, cams.world_to_camera, atol=1e-5)
    assert torch.allclose(data.cameras.fy, cams.fy) and torch.allclose(data.cameras.cx, cams.cx)
    assert data.test_indices() == [0, 8]
    again = render_views(scene, data.cameras)
    assert torch.allclose(again, renders, atol=1e-4)
    assert torch.allclose(data.load_image(3), quantized(renders[3]), atol=1e-6)
    # the json file itself is accepted as the path too
    assert len(load_dataset(tmp_path / "transforms.json").image_paths) == 9


def test_per_frame_intrinsics_and_camera_angle(tmp_path):
    _, _, _, meta = _nerfstudio(tmp_path, 3)
    for k in ("fl_x", "fl_y", "w", "h"):
        del meta[k]
    meta["camera_angle_x"] = 2 * math.atan(24 / 40.0)  # -> fl_x = 40 at width 48 (read from the image)
    meta["frames"][1]["fl_x"] = 70.0
    meta["frames"][1]["fl_y"] = 71.0
    _write(tmp_path, meta)
    data = load_dataset(tmp_path)
    assert data.cameras.fx.tolist() == pytest.approx([40.0, 70.0, 40.0])
    assert data.cameras.fy.tolist() == pytest.approx([40.0, 71.0, 40.0])
    assert data.cameras.width.tolist() == [48] * 3


def test_distortion_coefficients_removed(tmp_path):
    w, h, fx, fy, cx, cy = 100, 80, 90.0, 92.0, 50.5, 39.0
    k1, k2, p1, p2 = 0.08, -0.02, 0.001, 0.0015

    def distort(x, y):
        r2 = x * x + y * y
        rad = 1 + k1 * r2 + k2 * r2 * r2
        return x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y

    def pattern(x, y):
        return 0.5 + 0.4 * np.cos(8 * x - 0.3) * np.sin(6 * y + 0.2)

    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xd, yd = (u - cx) / fx, (v - cy) / fy
    x, y = xd.copy(), yd.copy()
    for _ in range(50):  # invert the distortion by fixed-point iteration
        dx, dy = distort(x, y)
        x, y = x + xd - dx, y + yd - dy
    img = np.repeat(pattern(x, y)[..., None], 3, axis=2)
    (tmp_path / "im").mkdir()
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(tmp_path / "im" / "a.png")
    eye = np.eye(4).tolist()
    meta = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": w, "h": h, "k1": k1, "k2": k2, "p1": p1, "p2": p2,
            "frames": [{"file_path": "im/a.png", "transform_matrix": eye}]}  # fmt: skip
    _write(tmp_path, meta)
    data = load_dataset(tmp_path, work_dir=tmp_path / "run")
    assert data.image_paths[0] == tmp_path / "run" / "undistorted" / "im" / "a.png"
    c = data.cameras
    out = data.load_image(0)[..., 0].numpy()
    expected = pattern((u - float(c.cx[0])) / float(c.fx[0]), (v - float(c.cy[0])) / float(c.fy[0]))
    assert np.abs(out - expected)[3:-3, 3:-3].max() < 0.02  # 8-bit input, bilinear resampling
    assert float(c.fx[0]) > fx  # barrel distortion: the no-blank-pixel pinhole is narrower


def _write_ply_binary(path, xyz, rgb):
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    rec = np.zeros(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz.T
    rec["r"], rec["g"], rec["b"] = rgb.T
    path.write_bytes(header.encode() + rec.tobytes())


def test_applied_transform_moves_ply_points_into_the_pose_frame(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    _write_ply_binary(tmp_path / "sparse_pc.ply", xyz, rgb)
    applied = [[0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.0, -1.0], [0.0, 0.0, -1.0, 2.0]]  # nerfstudio's usual 3×4
    _nerfstudio(tmp_path, 3, ply_file_path="sparse_pc.ply", applied_transform=applied)
    data = load_dataset(tmp_path)
    a = np.array(applied)
    expected = xyz.astype(np.float64) @ a[:, :3].T + a[:, 3]
    assert np.allclose(data.points.numpy(), expected, atol=1e-5)
    assert np.allclose(data.point_colors.numpy(), rgb / 255.0, atol=1e-6)


def test_ascii_ply_and_hostile_ply_count(tmp_path):
    (tmp_path / "p.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
        "1 2 3\n4 5 6\n"
    )
    _nerfstudio(tmp_path, 2, ply_file_path="p.ply")
    data = load_dataset(tmp_path)
    assert data.points.tolist() == [[1, 2, 3], [4, 5, 6]] and torch.all(data.point_colors == 0.5)
    (tmp_path / "p.ply").write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 4000000000\nproperty float x\n"
        b"property float y\nproperty float z\nend_header\n" + b"\0" * 24
    )
    with pytest.raises(InputError, match=r"p.ply: PLY claims 4000000000 vertices but the file holds at most 2"):
        load_dataset(tmp_path)


def test_missing_frames_skipped_with_one_warning_naming_them(tmp_path):
    _nerfstudio(tmp_path, 6)
    for i in (1, 4):
        (tmp_path / "images" / f"f{i}.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(tmp_path)
    ours = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert "transforms.json: 2 of 6 frames point at missing images" in msg and "images/f1.png, images/f4.png" in msg
    assert [p.name for p in data.image_paths] == ["f0.png", "f2.png", "f3.png", "f5.png"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("frames"), "missing key 'frames'"),
        (lambda m: m.update(frames=[]), "'frames' is empty"),
        (lambda m: m["frames"][1].pop("transform_matrix"), "frames[1]: missing key 'transform_matrix'"),
        (lambda m: m["frames"][0].pop("file_path"), "frames[0]: missing or invalid key 'file_path'"),
        (lambda m: m["frames"][0]["transform_matrix"][0].__setitem__(1, float("nan")), "holds NaN or infinite"),
        (lambda m: m["frames"][2]["transform_matrix"][1].__setitem__(3, float("inf")), "holds NaN or infinite"),
        (lambda m: m["frames"][0]["transform_matrix"][0].__setitem__(1, "x"), "holds a non-number"),
        (lambda m: m["frames"][0].update(transform_matrix=[[1, 0], [0, 1]]), "must be a 4×4 (or 3×4) matrix"),
        (lambda m: m["frames"][0].update(transform_matrix=np.zeros((4, 4)).tolist()), "singular"),
        (lambda m: m.update(fl_x=float("nan")), "'fl_x' is NaN or infinite"),
        (lambda m: m.update(fl_x=-3.0), "focal lengths must be positive"),
        (lambda m: [m.pop(k) for k in ("fl_x", "fl_y")], "missing focal length: needs 'fl_x' or 'camera_angle_x'"),
        (
            lambda m: m.update(camera_model="EQUIRECTANGULAR"),
            'unsupported camera_model "EQUIRECTANGULAR"; supported: OPENCV',
        ),
        (lambda m: m.update(k4=0.1), "k4 is only supported with camera_model OPENCV_FISHEYE"),
        (lambda m: m.update(w=0), "is not a positive whole number"),
    ],
)
def test_malformed_transforms(tmp_path, mutate, message):
    _, _, _, meta = _nerfstudio(tmp_path, 3)
    mutate(meta)
    _write(tmp_path, meta)
    with pytest.raises(InputError) as e:
        load_dataset(tmp_path)
    assert e.value.path == tmp_path / "transforms.json"
    assert message in str(e.value)


def test_invalid_json_and_all_images_missing(tmp_path):
    (tmp_path / "transforms.json").write_text('{"frames": [ {"file_path": "a.png", ')
    with pytest.raises(InputError, match=r"transforms.json: invalid JSON: Expecting property name .* at line 1"):
        load_dataset(tmp_path)
    (tmp_path / "transforms.json").write_text("[1, 2, 3]")
    with pytest.raises(InputError, match=r"transforms.json: expected a JSON object at the top level, found list"):
        load_dataset(tmp_path)
    _write(tmp_path, {"fl_x": 10, "frames": [{"file_path": "nope.png", "transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(InputError, match=r"transforms.json: none of the 1 frames' images exist"):
        load_dataset(tmp_path)


def test_nerfstudio_explicit_split(tmp_path):
    _, _, _, meta = _nerfstudio(tmp_path, 4, test_filenames=["images/f2.png"])
    data = load_dataset(tmp_path)
    assert data.split == ["train", "train", "test", "train"]


# ------------------------------------------------------------------------------------------- blender
def _blender(tmp_path, n_train=3, n_val=2):
    cams = orbit_cameras(n_train + n_val, width=40, height=40)
    angle = 0.9
    fx = 20 / math.tan(angle / 2)
    cams = type(cams)(cams.world_to_camera, fx, fx, 20.0, 20.0, 40, 40)
    rgb = render_views(small_scene(2), cams)
    rng = np.random.default_rng(0)
    alphas = []
    for split, idx in (("train", range(n_train)), ("val", range(n_train, n_train + n_val))):
        frames = []
        for j, i in enumerate(idx):
            a = rng.integers(0, 256, (40, 40), dtype=np.uint8)
            rgba = np.dstack([(rgb[i].numpy() * 255 + 0.5).astype(np.uint8), a])
            (tmp_path / split).mkdir(exist_ok=True)
            Image.fromarray(rgba, mode="RGBA").save(tmp_path / split / f"r_{j}.png")
            frames.append({"file_path": f"./{split}/r_{j}", "transform_matrix": _c2w_opengl(cams.world_to_camera[i])})
            alphas.append(a)
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return cams, rgb, alphas


def test_blender_splits_intrinsics_and_background(tmp_path):
    cams, rgb, alphas = _blender(tmp_path)
    assert detect_kind(tmp_path) == "blender"
    data = load_dataset(tmp_path)
    assert data.source == "blender" and data.split == ["train"] * 3 + ["test"] * 2
    assert data.train_indices() == [0, 1, 2] and data.test_indices() == [3, 4]
    assert torch.allclose(data.cameras.world_to_camera, cams.world_to_camera, atol=1e-5)
    assert torch.allclose(data.cameras.fx, cams.fx) and data.cameras.cx.tolist() == [20.0] * 5
    assert data.background.tolist() == [1.0, 1.0, 1.0]
    a = torch.from_numpy(alphas[4].astype(np.float32) / 255)[..., None]
    expected = quantized(rgb[4]) * a + (1 - a)
    assert torch.allclose(data.load_image(4), expected, atol=1e-6)
    assert torch.allclose(data.load_alpha(4), a[..., 0])
    black = load_dataset(tmp_path, background="black")
    assert black.background.tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(black.load_image(4), quantized(rgb[4]) * a, atol=1e-6)


def test_blender_missing_camera_angle(tmp_path):
    _blender(tmp_path)
    meta = json.loads((tmp_path / "transforms_val.json").read_text())
    del meta["camera_angle_x"]
    (tmp_path / "transforms_val.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as e:
        load_dataset(tmp_path)
    assert e.value.path == tmp_path / "transforms_val.json" and "missing key 'camera_angle_x'" in str(e.value)


# ------------------------------------------------------------------------------------------- shared data
@pytest.mark.data
def test_lego_counts_and_intrinsics(shared_data):
    data = load_dataset(shared_data / "lego")
    assert data.source == "blender" and len(data.train_indices()) == 100 and len(data.test_indices()) == 25
    meta = json.loads((shared_data / "lego" / "transforms_train.json").read_text())
    fx = 0.5 * 400 / math.tan(0.5 * meta["camera_angle_x"])
    assert torch.allclose(data.cameras.fx, torch.full((125,), fx)) and torch.allclose(data.cameras.fy, data.cameras.fx)
    assert data.cameras.width.tolist() == [400] * 125 and data.cameras.cx.tolist() == [200.0] * 125
    assert data.background.tolist() == [1.0, 1.0, 1.0]
    img = data.load_image(0)
    assert img.shape == (400, 400, 3) and float(img[0, 0].min()) == 1.0  # empty corner composited to white
    # the first camera's centre is the translation column of its camera-to-world matrix
    c2w = torch.tensor(meta["frames"][0]["transform_matrix"], dtype=torch.float32)
    assert torch.allclose(data.cameras.centers()[0], c2w[:3, 3], atol=1e-4)


@pytest.mark.data
@pytest.mark.slow
def test_fox_loads_every_frame_that_exists(shared_data, tmp_path):
    meta = json.loads((shared_data / "fox" / "transforms.json").read_text())
    assert len(meta["frames"]) == 67
    present = [f for f in meta["frames"] if (shared_data / "fox" / f["file_path"]).is_file()]
    data = load_dataset(shared_data / "fox", work_dir=tmp_path, downscale=4)
    assert data.source == "nerfstudio" and len(data.image_paths) == len(present)
    assert data.cameras.width.tolist() == [135] * len(present) and data.cameras.height.tolist() == [240] * len(present)
    assert all(p.is_file() for p in data.image_paths)  # undistorted copies (k1, k2, p1, p2 in the file)
    assert len(data.test_indices()) == math.ceil(len(present) / 8)
    # pose of the first frame (sorted by name) against the file: OpenGL c2w -> OpenCV w2c
    first = sorted(present, key=lambda f: f["file_path"])[0]
    c2w = torch.tensor(first["transform_matrix"], dtype=torch.float64)
    assert torch.allclose(data.cameras.centers()[0].double(), c2w[:3, 3], atol=1e-4)
    forward = -c2w[:3, 2]  # OpenGL cameras look down -z
    assert torch.allclose(data.cameras.world_to_camera[0, 2, :3].double(), forward, atol=1e-5)
