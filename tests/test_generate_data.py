"""The procedural composer: captions, world conventions, sizes, relations and held-out exclusion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon3d.errors import InputError
from recon3d.generation.data import (
    COLOURS,
    PRIMITIVES,
    RELATIONS,
    SHAPES,
    HeldOut,
    ObjectSpec,
    SceneSpec,
    all_single_specs,
    compose,
    features_to_scene,
    from_reference_density,
    load_heldout,
    parse_caption,
    quat_from_z_to,
    sample_spec,
    to_reference_density,
)


def _obj_points(spec: SceneSpec, seed: int = 0, n: int = 2000) -> np.ndarray:
    return compose(spec, n, np.random.default_rng(seed))


def test_captions_read_naturally_and_parse_back():
    spec = SceneSpec([ObjectSpec("cube", "red", "small"), ObjectSpec("sphere", "orange")], "on top of")
    assert spec.caption == "a small red cube on top of an orange sphere"
    back = parse_caption(spec.caption)
    assert back is not None and back.caption == spec.caption and back.relation == "on top of"
    assert parse_caption("an elephant") is None
    assert SceneSpec([ObjectSpec("tree")]).caption == "a tree"


@pytest.mark.parametrize("shape", SHAPES)
def test_every_object_rests_on_the_ground_at_unit_size(shape):
    f = _obj_points(SceneSpec([ObjectSpec(shape, "red")]))
    assert f.shape == (2000, 14) and np.isfinite(f).all()
    pts = f[:, :3]
    assert abs(pts[:, 2].min()) < 0.02  # resting on z = 0
    extent = pts.max(0) - pts.min(0)
    # about 1 across; a random yaw can show a square footprint's diagonal (1.0 × √2) along x or y
    assert 0.6 < extent.max() < 1.45, extent


def test_sizes_scale_the_object():
    ext = {}
    for size in (None, "small", "large"):
        pts = _obj_points(SceneSpec([ObjectSpec("cube", "blue", size)]))[:, :3]
        ext[size] = (pts.max(0) - pts.min(0)).max()
    assert ext["small"] / ext[None] == pytest.approx(0.5, rel=0.05)
    assert ext["large"] / ext[None] == pytest.approx(1.5, rel=0.05)


@pytest.mark.parametrize("relation", RELATIONS)
def test_relations_follow_the_world_convention(relation):
    spec = SceneSpec([ObjectSpec("cube", "red"), ObjectSpec("sphere", "blue")], relation)
    for seed in range(3):
        f = _obj_points(spec, seed)
        red = f[:, 11] > f[:, 13]  # the first object is the red one
        a, b = f[red, :3], f[~red, :3]
        d = a.mean(0) - b.mean(0)
        if relation == "on top of":
            assert a[:, 2].min() == pytest.approx(b[:, 2].max(), abs=0.03)  # resting on it
            assert d[2] > 0.5
        elif relation == "to the left of":
            assert a[:, 0].max() < b[:, 0].min()
        elif relation == "to the right of":
            assert a[:, 0].min() > b[:, 0].max()
        elif relation == "in front of":  # the camera stands on −y
            assert a[:, 1].max() < b[:, 1].min()
        elif relation == "behind":
            assert a[:, 1].min() > b[:, 1].max()
        else:
            # side by side along x, one side or the other
            assert a[:, 0].max() < b[:, 0].min() or a[:, 0].min() > b[:, 0].max()
        assert min(a[:, 2].min(), b[:, 2].min()) == pytest.approx(0.0, abs=0.02)


def test_gaussians_are_flat_along_the_normal_and_coloured_by_name():
    rng = np.random.default_rng(0)
    f = compose(SceneSpec([ObjectSpec("sphere", "green")]), 1000, rng)
    scene = features_to_scene(torch.from_numpy(f))
    # the rotated local z axis (the thin one) is the sphere's outward normal
    q = torch.nn.functional.normalize(scene.quats, dim=1)
    w, x, y, z = q.unbind(1)
    local_z = torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], 1)
    normal = torch.nn.functional.normalize(scene.means - torch.tensor([0.0, 0.0, 0.5]) - scene.means.mean(0) * torch.tensor([1.0, 1.0, 0.0]), dim=1)
    assert (local_z * normal).sum(1).abs().mean() > 0.97
    s = scene.scales.exp()
    assert torch.all(s[:, 2] < 0.2 * s[:, 0])
    # σ from the sampling density: a sphere of area π split over 1000 Gaussians
    assert float(s[:, 0].mean()) == pytest.approx(0.6 * np.sqrt(np.pi / 1000), rel=0.05)
    mean_rgb = f[:, 11:14].mean(0)
    assert np.linalg.norm(mean_rgb - np.array(COLOURS["green"])) < 0.1  # light shading only


def test_quaternions_take_z_to_the_normal():
    rng = np.random.default_rng(1)
    n = rng.normal(size=(200, 3))
    n = np.concatenate([n, [[0, 0, -1.0], [0, 0, 1.0]]])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    q = quat_from_z_to(n)
    w, x, y, z = q.T
    local_z = np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], 1)
    np.testing.assert_allclose(local_z, n, atol=1e-6)


def test_density_shift_round_trips():
    f = torch.randn(3, 100, 14)
    back = from_reference_density(to_reference_density(f, 100), 100)
    torch.testing.assert_close(back, f)


@pytest.mark.heldout
def test_heldout_file_parses(project_root):
    held = load_heldout()
    assert ("torus", "green") in held.pairs and len(held.pairs) == 8
    assert "a green torus on top of a red cube" in held.pair_prompts
    assert "a green torus" in held.single_prompts


def test_bad_heldout_file_names_the_line(tmp_path):
    p = tmp_path / "held.txt"
    p.write_text("pair torus\n")
    with pytest.raises(InputError, match="line 1"):
        load_heldout(p)
    with pytest.raises(InputError, match="not found"):
        load_heldout(tmp_path / "missing.txt")


@pytest.mark.heldout
@pytest.mark.slow
def test_heldout_pairs_never_appear_in_a_large_sample():
    held = load_heldout()
    rng = np.random.default_rng(0)
    prompts = {p.lower() for p in held.prompts}
    seen_shapes_by_colour: set[tuple[str, str]] = set()
    for _ in range(20000):
        spec = sample_spec(rng, held)
        for o in spec.objects:
            assert (o.shape, o.colour) not in held.pairs, spec.caption
            seen_shapes_by_colour.add((o.shape, o.colour))
        assert spec.caption not in prompts
    singles = all_single_specs(held)
    assert all((s.objects[0].shape, s.objects[0].colour) not in held.pairs for s in singles)
    # the sample still covers every other (primitive, colour) pair: the exclusion is exact, not broad
    allowed = {(s, c) for s in PRIMITIVES for c in COLOURS} - held.pairs
    assert allowed <= seen_shapes_by_colour


def test_heldout_allows_checks_prompts_too():
    held = HeldOut(pairs=set(), prompts=["a red cube"])
    assert not held.allows(SceneSpec([ObjectSpec("cube", "red")]))
    assert held.allows(SceneSpec([ObjectSpec("cube", "blue")]))


def _write_scan_folder(folder, caption: str):
    from recon3d.ply import save_ply
    from recon3d.scene import GaussianScene

    folder.mkdir()
    pts = torch.rand(300, 3) * torch.tensor([2.0, 2.0, 4.0]) + 5.0
    save_ply(GaussianScene.from_points(pts, torch.rand(300, 3)), folder / "thing.ply")
    (folder / "captions.jsonl").write_text(json.dumps({"file": "thing.ply", "caption": caption}) + "\n")


@pytest.mark.heldout
@pytest.mark.slow
def test_meshes_and_scans_join_the_training_set(tmp_path):
    import trimesh

    from recon3d.generation.data import build_dataset, load_dataset
    from recon3d.generation.text import HashEncoder

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box(extents=(2.0, 1.0, 3.0)).export(meshes / "tall-box.ply")
    _write_scan_folder(tmp_path / "scans", "a scanned statue")
    out = build_dataset(
        tmp_path / "data", num_pairs=10, heldout=load_heldout(), mesh_dir=meshes, scan_dirs=[tmp_path / "scans"],
        encoder=HashEncoder(), stats_scenes=8, progress=False,
    )
    data = load_dataset(out)
    captions = [s.caption for s in data.specs]
    assert "a red tall box" in captions and "a tall box" in captions
    feats, rows = data.sample(64, 100, np.random.default_rng(0))
    assert feats.shape == (64, 100, 14) and torch.isfinite(feats).all()
    # every drawn scene, mesh and scan ones included, rests on z = 0 at about unit size
    z_min = feats[:, :, 2].min(1).values
    assert (z_min.abs() < 0.05).all()
    assert data.info["num_scans"] == 1 and data.info["num_mesh"] > 0


@pytest.mark.heldout
def test_scan_caption_equal_to_a_heldout_prompt_is_refused(tmp_path):
    from recon3d.generation.data import build_dataset
    from recon3d.generation.text import HashEncoder

    _write_scan_folder(tmp_path / "scans", "a green torus")
    with pytest.raises(InputError, match="held-out"):
        build_dataset(tmp_path / "d", num_pairs=5, heldout=load_heldout(), scan_dirs=[tmp_path / "scans"],
                      encoder=HashEncoder(), stats_scenes=4, progress=False)


def test_bad_scan_index_names_the_file(tmp_path):
    from recon3d.generation.data import load_scan_folder

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "captions.jsonl").write_text("not json\n")
    with pytest.raises(InputError, match="captions.jsonl: line 1"):
        load_scan_folder(folder)
    with pytest.raises(InputError, match="captions.jsonl"):
        load_scan_folder(tmp_path)
