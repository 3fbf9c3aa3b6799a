"""The 3DGS PLY reader against the files real tools write, built here from each tool's documented layout.

The expected scene is assembled independently of recon3d's reader from the per-property arrays: means
from x y z, sh0 from f_dc_*, shN[k, c] = f_rest_(c·K + k) (channel-major, as Inria's code stores it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

import recon3d
from recon3d.ply import read_ply_vertices
from recon3d.scene import GaussianScene, num_sh_rest


def _random_properties(n: int, degree: int, seed: int = 0, normals: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = num_sh_rest(degree)
    props: dict[str, np.ndarray] = {}
    for name in ("x", "y", "z"):
        props[name] = rng.normal(size=n).astype(np.float32)
    if normals:
        for name in ("nx", "ny", "nz"):
            props[name] = np.zeros(n, np.float32)
    for i in range(3):
        props[f"f_dc_{i}"] = rng.normal(size=n).astype(np.float32)
    for i in range(3 * k):
        props[f"f_rest_{i}"] = rng.normal(size=n).astype(np.float32) * 0.1
    props["opacity"] = rng.normal(size=n).astype(np.float32)
    for i in range(3):
        props[f"scale_{i}"] = (rng.normal(size=n) - 4).astype(np.float32)
    for i in range(4):
        props[f"rot_{i}"] = rng.normal(size=n).astype(np.float32)
    return props


def _expected_scene(props: dict[str, np.ndarray]) -> GaussianScene:
    n = len(props["x"])
    k = sum(1 for name in props if name.startswith("f_rest_")) // 3
    col = lambda *names: torch.tensor(np.stack([props[m] for m in names], axis=1), dtype=torch.float32)
    shn = torch.zeros(n, k, 3)
    for c in range(3):
        for j in range(k):
            shn[:, j, c] = torch.tensor(props[f"f_rest_{c * k + j}"], dtype=torch.float32)
    return GaussianScene(
        means=col("x", "y", "z"),
        scales=col("scale_0", "scale_1", "scale_2"),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
        opacities=torch.tensor(props["opacity"], dtype=torch.float32),
        sh0=col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        shN=shn,
    )


def _assert_scene_equal(a: GaussianScene, b: GaussianScene) -> None:
    assert len(a) == len(b) and a.sh_degree == b.sh_degree
    for name, ta in a.as_dict().items():
        assert torch.equal(ta, getattr(b, name)), name


def _write_with_plyfile(
    path, props: dict[str, np.ndarray], *, types: dict[str, str] | None = None, text=False, byte_order="<"
):
    types = types or {}
    dtype = [(name, types.get(name, "f4")) for name in props]
    arr = np.empty(len(props["x"]), dtype=dtype)
    for name, values in props.items():
        arr[name] = values
    PlyData([PlyElement.describe(arr, "vertex")], text=text, byte_order=byte_order).write(str(path))


def _write_by_hand(path, props: dict[str, np.ndarray], header_extra: str = "", fmt="binary_little_endian"):
    """The layout gsplat's and nerfstudio's exporters write: a minimal header and packed float32 rows."""
    n = len(props["x"])
    lines = ["ply", f"format {fmt} 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in props]
    lines.append("end_header")
    data = np.stack([props[name] for name in props], axis=1).astype("<f4" if fmt.endswith("little_endian") else ">f4")
    path.write_bytes(("\n".join(lines) + "\n" + header_extra).encode() + data.tobytes())


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact_and_byte_stable(tmp_path, degree):
    scene = _expected_scene(_random_properties(257, degree, seed=degree))
    first = recon3d.save_ply(scene, tmp_path / "a.ply")
    back = recon3d.load_ply(first)
    _assert_scene_equal(back, scene)
    second = recon3d.save_ply(back, tmp_path / "b.ply")
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_reads_inria_layout_written_by_plyfile(tmp_path, degree):
    props = _random_properties(100, degree, seed=1)
    _write_with_plyfile(tmp_path / "point_cloud.ply", props)
    _assert_scene_equal(recon3d.load_ply(tmp_path / "point_cloud.ply"), _expected_scene(props))


def test_reads_gsplat_layout_without_normals(tmp_path):
    props = _random_properties(64, 3, seed=2, normals=False)
    _write_by_hand(tmp_path / "gsplat.ply", props)
    _assert_scene_equal(recon3d.load_ply(tmp_path / "gsplat.ply"), _expected_scene(props))


def test_reads_nerfstudio_layout(tmp_path):
    props = _random_properties(80, 3, seed=3)
    _write_by_hand(tmp_path / "splat.ply", props)
    _assert_scene_equal(recon3d.load_ply(tmp_path / "splat.ply"), _expected_scene(props))


def test_reads_shuffled_order_double_and_extra_properties(tmp_path):
    props = _random_properties(50, 1, seed=4)
    rng = np.random.default_rng(0)
    props["red"] = rng.integers(0, 255, 50).astype(np.uint8)  # extra properties are ignored
    props["filter_3D"] = rng.normal(size=50).astype(np.float32)
    names = list(props)
    rng.shuffle(names)
    shuffled = {name: props[name] for name in names}
    types = {name: "f8" for name in ("x", "opacity", "f_rest_2", "rot_3")} | {"red": "u1"}
    _write_with_plyfile(tmp_path / "mixed.ply", shuffled, types=types)
    del props["red"], props["filter_3D"]
    _assert_scene_equal(recon3d.load_ply(tmp_path / "mixed.ply"), _expected_scene(props))


@pytest.mark.parametrize("text,byte_order", [(True, "="), (False, ">")])
def test_reads_ascii_and_big_endian(tmp_path, text, byte_order):
    props = _random_properties(40, 2, seed=5)
    _write_with_plyfile(tmp_path / "v.ply", props, text=text, byte_order=byte_order)
    # plyfile prints float32 with enough digits to parse back to the same float32, so ASCII is exact too
    _assert_scene_equal(recon3d.load_ply(tmp_path / "v.ply"), _expected_scene(props))


def test_reads_vertex_between_other_elements(tmp_path):
    props = _random_properties(30, 0, seed=6)
    arr = np.empty(30, dtype=[(name, "f4") for name in props])
    for name, values in props.items():
        arr[name] = values
    camera = np.zeros(2, dtype=[("a", "f8"), ("b", "u1")])
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "O")])
    for text in (False, True):
        elements = [
            PlyElement.describe(camera, "camera"),
            PlyElement.describe(arr, "vertex"),
            PlyElement.describe(faces, "face"),
        ]
        PlyData(elements, text=text).write(str(tmp_path / "e.ply"))
        _assert_scene_equal(recon3d.load_ply(tmp_path / "e.ply"), _expected_scene(props))


def test_crlf_header_and_empty_scene(tmp_path):
    props = _random_properties(5, 0, seed=7)
    _write_by_hand(tmp_path / "crlf.ply", props)
    raw = (tmp_path / "crlf.ply").read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    (tmp_path / "crlf.ply").write_bytes(head.replace(b"\n", b"\r\n") + b"end_header\r\n" + body)
    _assert_scene_equal(recon3d.load_ply(tmp_path / "crlf.ply"), _expected_scene(props))
    empty = recon3d.save_ply(GaussianScene.empty(sh_degree=2), tmp_path / "empty.ply")
    back = recon3d.load_ply(empty)
    assert len(back) == 0 and back.sh_degree == 2


def test_written_ply_opens_in_plyfile_trimesh_and_open3d(tmp_path):
    import open3d as o3d
    import trimesh

    scene = _expected_scene(_random_properties(120, 3, seed=8))
    path = recon3d.save_ply(scene, tmp_path / "scene.ply")
    ply = PlyData.read(str(path))
    assert ply["vertex"].count == 120
    assert np.array_equal(ply["vertex"]["f_rest_44"], _random_properties(120, 3, seed=8)["f_rest_44"])
    cloud = trimesh.load(path)
    assert np.allclose(np.asarray(cloud.vertices), scene.means.numpy())
    pcd = o3d.io.read_point_cloud(str(path))
    assert np.allclose(np.asarray(pcd.points), scene.means.numpy(), atol=1e-6)


def test_read_ply_vertices_returns_every_property(tmp_path):
    props = _random_properties(10, 0, seed=9)
    _write_by_hand(tmp_path / "v.ply", props)
    v = read_ply_vertices(tmp_path / "v.ply")
    assert list(v) == list(props)
    for name in props:
        assert np.array_equal(v[name], props[name])
