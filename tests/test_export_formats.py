"""The .splat and point-cloud exports against their published layouts, and the ``recon3d.export`` entry point."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

import recon3d
from recon3d.cameras import Cameras
from recon3d.constants import SH_C0
from recon3d.errors import InputError
from recon3d.exporters import format_for_path, load_splat, save_point_cloud, save_splat
from recon3d.render import render
from recon3d.scene import GaussianScene


def _scene(n: int = 200, seed: int = 0, degree: int = 1) -> GaussianScene:
    g = torch.Generator().manual_seed(seed)
    scene = GaussianScene.from_points(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g), sh_degree=degree)
    scene.scales = torch.log(0.02 + 0.1 * torch.rand(n, 3, generator=g))
    scene.quats = torch.randn(n, 4, generator=g) * 3.0  # not normalised, as trained scenes are
    scene.opacities = torch.randn(n, generator=g) * 2.0
    scene.shN = torch.randn_like(scene.shN, generator=None) * 0.05 if degree else scene.shN
    return scene


def _decode_splat(raw: bytes) -> list[tuple]:
    """Decode .splat records with the layout written out here from the format's description."""
    assert len(raw) % 32 == 0
    return [struct.unpack_from("<3f3f4B4B", raw, 32 * i) for i in range(len(raw) // 32)]


def test_splat_layout_matches_the_format(tmp_path):
    scene = _scene()
    path = save_splat(scene, tmp_path / "s.splat")
    records = _decode_splat(path.read_bytes())
    assert len(records) == len(scene)
    means = scene.means.numpy()
    seen = set()
    for rec in records:
        pos = np.array(rec[0:3], dtype=np.float32)
        i = int(np.argmin(np.abs(means - pos).sum(axis=1)))
        assert np.array_equal(means[i], pos)
        seen.add(i)
        sigma = np.exp(scene.scales[i].double().numpy())
        assert np.allclose(rec[3:6], sigma, rtol=1e-6)
        rgb = np.clip(SH_C0 * scene.sh0[i, 0].double().numpy() + 0.5, 0, 1) * 255
        assert np.abs(np.array(rec[6:9]) - rgb).max() <= 0.5 + 1e-6
        alpha = 255 / (1 + math.exp(-float(scene.opacities[i])))
        assert abs(rec[9] - alpha) <= 0.5 + 1e-6
        q = scene.quats[i].double().numpy()
        q = q / np.linalg.norm(q)
        assert np.abs(np.array(rec[10:14]) - np.clip(q * 128 + 128, 0, 255)).max() <= 0.5 + 1e-6
    assert len(seen) == len(scene)
    # sorted by size × opacity, largest first
    keys = [
        r[3]
        * r[4]
        * r[5]
        / (1 + math.exp(-float(scene.opacities[int(np.argmin(np.abs(means - np.array(r[0:3], np.float32)).sum(1)))])))
        for r in records
    ]
    assert all(a >= b * (1 - 1e-5) for a, b in zip(keys, keys[1:]))


def test_splat_read_back_within_quantisation_and_idempotent(tmp_path):
    scene = _scene(degree=0)
    path = save_splat(scene, tmp_path / "s.splat")
    back = load_splat(path)
    assert len(back) == len(scene) and back.sh_degree == 0
    order = [int(np.argmin(np.abs(scene.means.numpy() - p).sum(1))) for p in back.means.numpy()]
    orig = scene[torch.tensor(order)]
    assert torch.equal(back.means, orig.means)
    assert torch.allclose(back.scales, orig.scales, atol=1e-5)
    assert (back.base_colors() - orig.base_colors()).abs().max() <= 0.5 / 255 + 1e-6
    assert (back.activated_opacities() - orig.activated_opacities()).abs().max() <= 0.5 / 255 + 1e-6
    # rotation: 8 bits per component, so the unit quaternions agree to about 1/128 per component
    dot = (back.normalized_quats() * orig.normalized_quats()).sum(1).abs()
    assert dot.min() > 0.999
    # Writing what was read gives the same records: colour and opacity bytes exactly, rotation bytes to
    # within one step (the decoded quaternion is renormalised before it is quantised again).
    again = {r[0:3]: r for r in _decode_splat(save_splat(back, tmp_path / "again.splat").read_bytes())}
    first = {r[0:3]: r for r in _decode_splat(path.read_bytes())}
    assert again.keys() == first.keys()
    for key, rec in first.items():
        assert np.allclose(again[key][3:6], rec[3:6], rtol=1e-6)
        assert again[key][6:10] == rec[6:10]
        assert np.abs(np.array(again[key][10:14]) - np.array(rec[10:14])).max() <= 1


def test_splat_renders_like_the_original(tmp_path):
    scene = _scene(300, seed=3, degree=0)
    back = load_splat(save_splat(scene, tmp_path / "s.splat"))
    cam = Cameras.look_at((0.0, -5.0, 1.0), (0.0, 0.0, 0.0), width=48, height=48)
    with torch.no_grad():
        a = render(scene, cam, backend="reference").rgb
        b = render(back, cam, backend="reference").rgb
    assert (a - b).abs().mean() < 2e-3 and (a - b).abs().max() < 0.05


def test_point_cloud_opens_in_open3d_trimesh_and_plyfile(tmp_path):
    import open3d as o3d
    import trimesh
    from plyfile import PlyData

    scene = _scene(150, seed=4)
    path = save_point_cloud(scene, tmp_path / "points.ply")
    expected_rgb = np.round(scene.base_colors().numpy() * 255).astype(np.uint8)
    pcd = o3d.io.read_point_cloud(str(path))
    assert np.allclose(np.asarray(pcd.points), scene.means.numpy(), atol=1e-6)
    assert np.allclose(np.asarray(pcd.colors) * 255, expected_rgb, atol=1e-3)
    cloud = trimesh.load(path)
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) == 150
    assert np.array_equal(np.asarray(cloud.colors)[:, :3], expected_rgb)
    ply = PlyData.read(str(path))
    assert [p.name for p in ply["vertex"].properties] == ["x", "y", "z", "red", "green", "blue"]


def test_point_cloud_min_opacity(tmp_path):
    scene = _scene(100, seed=5)
    keep = int((scene.activated_opacities() >= 0.5).sum())
    path = save_point_cloud(scene, tmp_path / "p.ply", min_opacity=0.5)
    assert len(recon3d.exporters.write_point_cloud.__module__) and recon3d.ply.read_ply_vertices(path)["x"].shape == (
        keep,
    )


@pytest.mark.parametrize("fmt, name", [("ply", "a.ply"), ("splat", "a.splat"), ("points", "p.ply")])
def test_export_api_dispatch(tmp_path, fmt, name):
    scene = _scene(50, seed=6, degree=2)
    src = recon3d.save_ply(scene, tmp_path / "src.ply")
    out = recon3d.export(src, fmt, tmp_path / name)
    assert out == tmp_path / name and out.is_file()
    if fmt == "ply":
        back = recon3d.load_ply(out)
        assert all(torch.equal(getattr(back, k), v) for k, v in scene.as_dict().items())
    if fmt == "splat":
        assert out.stat().st_size == 32 * 50


def test_export_converts_splat_to_ply(tmp_path):
    scene = _scene(40, seed=7, degree=0)
    save_splat(scene, tmp_path / "a.splat")
    out = recon3d.export(tmp_path / "a.splat", None, tmp_path / "a.ply")
    assert len(recon3d.load_ply(out)) == 40


def test_export_api_errors(tmp_path):
    scene = _scene(10)
    with pytest.raises(InputError, match="unknown export format"):
        recon3d.export(scene, "usdz", tmp_path / "a.usdz")
    with pytest.raises(InputError, match="a mesh is written as"):
        recon3d.export(scene, "mesh", tmp_path / "a.stl")
    with pytest.raises(InputError, match=".splat"):
        recon3d.export(scene, "splat", tmp_path / "a.ply")
    with pytest.raises(TypeError, match="takes no option"):
        recon3d.export(scene, "ply", tmp_path / "a.ply", min_opacity=0.3)
    with pytest.raises(InputError, match="needs the training cameras"):
        recon3d.export(scene, "nerfstudio", tmp_path / "ns")
    with pytest.raises(InputError, match="no such file"):
        recon3d.export(tmp_path / "missing.ply", "splat", tmp_path / "a.splat")
    (tmp_path / "run").mkdir()
    with pytest.raises(InputError, match="no scene.ply"):
        recon3d.export(tmp_path / "run", "splat", tmp_path / "a.splat")


def test_format_for_path():
    assert format_for_path("a.splat") == "splat"
    assert format_for_path("a.GLB") == "mesh"
    assert format_for_path("a.obj") == "mesh"
    assert format_for_path("a.ply") == "ply"
    assert format_for_path("out/nerfstudio") == "nerfstudio"
    with pytest.raises(InputError):
        format_for_path("a.xyz")


def test_splat_reader_decodes_hand_built_records(tmp_path):
    records = [
        (1.0, 2.0, 3.0, 0.1, 0.2, 0.4, 255, 0, 128, 255, 255, 128, 128, 128),  # identity rotation, opaque
        (-1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 0, 255, 64, 0, 128, 255, 128, 128),  # 180° about x, transparent
    ]
    (tmp_path / "h.splat").write_bytes(b"".join(struct.pack("<3f3f4B4B", *r) for r in records))
    scene = load_splat(tmp_path / "h.splat")
    assert torch.equal(scene.means, torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]))
    assert torch.allclose(scene.activated_scales(), torch.tensor([[0.1, 0.2, 0.4], [1.0, 1.0, 1.0]]), rtol=1e-6)
    assert torch.allclose(scene.base_colors(), torch.tensor([[1.0, 0.0, 128 / 255], [0.0, 1.0, 64 / 255]]), atol=1e-6)
    assert scene.activated_opacities()[0] > 254.5 / 255 and scene.activated_opacities()[1] < 0.5 / 255
    rot = scene.rotation_matrices()
    assert torch.allclose(rot[0], torch.eye(3), atol=0.02)
    assert torch.allclose(rot[1], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=0.02)
    rewritten = _decode_splat(save_splat(scene, tmp_path / "again.splat").read_bytes())
    assert sorted(r[6:10] for r in rewritten) == sorted(r[6:10] for r in records)


def test_export_is_a_function_and_exporters_a_package():
    """``recon3d.export`` stays the function after the package (now ``recon3d.exporters``) is imported."""
    import types

    import recon3d.exporters

    assert isinstance(recon3d.exporters, types.ModuleType)
    assert callable(recon3d.export) and not isinstance(recon3d.export, types.ModuleType)
    assert recon3d.export is recon3d.exporters.export
