"""SPZ, compressed PLY, SOG and glTF: round trips within each format's quantisation, checked against readers
we did not write (gsply for SPZ/compressed PLY/SOG, pygltflib and trimesh for glTF), and ``load_scene``'s
choice of reader by content.

Tolerances are the formats' own steps, derived from their published layouts, not fitted to results:
SPZ stores positions in 1/4096 steps, log-scales in 1/16, the DC colour in 1/(0.15·255), SH in 1/128
steps kept to SH1_BITS/SH_REST_BITS significant bits; compressed PLY stores 11/10/11 bits
of each chunk's range; SOG 16 bits of the log-transformed positions and 256-entry codebooks.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from recon3d.cli import main
from recon3d.formats import detect_format, load_scene, save_scene
from recon3d.formats._common import RDF_TO_LUF, RDF_TO_RUB, flip_axes
from recon3d.formats.compressed_ply import load_compressed_ply, save_compressed_ply
from recon3d.formats.gltf import EXT, EXT_SPZ, load_gltf, save_gltf
from recon3d.formats.sog import load_sog, save_sog, texture_size
from recon3d.formats.spz import read_spz, save_spz
from recon3d.ply import load_ply, save_ply
from recon3d.scene import GaussianScene

PARAMS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def random_scene(n: int = 2000, degree: int = 3, seed: int = 0) -> GaussianScene:
    """A scene spread like a trained one: means in a few units, σ of mm to dm, colours within gamut."""
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return GaussianScene(
        means=torch.randn(n, 3, generator=g) * 1.5,
        scales=torch.randn(n, 3, generator=g) * 0.6 - 4.0,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g) * 2.0,
        sh0=torch.randn(n, 1, 3, generator=g) * 0.7,
        shN=torch.randn(n, k, 3, generator=g) * 0.15,
    )


def same_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − |⟨a, b⟩| of normalised quaternions (0 when they are the same rotation; q and −q are)."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return 1.0 - (a * b).sum(dim=1).abs()


def raw_arrays(scene: GaussianScene) -> dict[str, np.ndarray]:
    return {k: getattr(scene, k).numpy() for k in PARAMS}


def gsply_arrays(g, n: int) -> dict[str, np.ndarray]:
    """gsply's GSData as our raw arrays (it keeps PLY parameters: log σ, logit, w-first quaternions)."""
    return {
        "means": np.asarray(g.means, dtype=np.float32),
        "scales": np.asarray(g.scales, dtype=np.float32),
        "quats": np.asarray(g.quats, dtype=np.float32),
        "opacities": np.asarray(g.opacities, dtype=np.float32).reshape(n),
        "sh0": np.asarray(g.sh0, dtype=np.float32).reshape(n, 1, 3),
        "shN": np.asarray(g.shN, dtype=np.float32).reshape(n, -1, 3),
    }


def assert_arrays_match(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    """Two decodings of one file agree (opacity compared after the sigmoid: both clamp 0/255 differently)."""
    for k in ("means", "scales", "sh0", "shN"):
        np.testing.assert_allclose(ours[k], theirs[k], atol=tol, err_msg=k)
    sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
    np.testing.assert_allclose(sig(ours["opacities"]), sig(theirs["opacities"]), atol=1.0 / 255)
    assert float(same_rotation(torch.from_numpy(ours["quats"]), torch.from_numpy(theirs["quats"])).max()) < 1e-5


# ---------------------------------------------------------------- SPZ


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_spz_round_trip_within_quantisation(tmp_path, version, degree):
    scene = random_scene(degree=degree)
    path = save_spz(scene, tmp_path / "a.spz", version=version)
    back, info = read_spz(path)
    assert (info.version, info.sh_degree, info.num_points, info.antialiased) == (version, degree, len(scene), False)
    assert back.sh_degree == degree and len(back) == len(scene)
    assert (back.means - scene.means).abs().max() <= 0.5 / 4096 + 1e-6
    assert (back.scales - scene.scales).abs().max() <= 0.5 / 16 + 1e-6
    dc_step = 1.0 / (0.15 * 255)
    assert (back.sh0 - scene.sh0).abs().max() <= 0.5 * dc_step + 1e-6
    alpha = torch.sigmoid(scene.opacities)
    assert (torch.sigmoid(back.opacities) - alpha).abs().max() <= 0.5 / 255 + 1e-4
    if degree:
        from recon3d.formats.spz import SH1_BITS, SH_REST_BITS

        # 1/128 steps, then rounded to buckets of 2^(8 - bits) steps
        sh_err = (back.shN - scene.shN).abs()
        assert sh_err[:, :3].max() <= (0.5 + 2 ** (8 - SH1_BITS) / 2) / 128 + 1e-6
        if degree > 1:
            assert sh_err[:, 3:].max() <= (0.5 + 2 ** (8 - SH_REST_BITS) / 2) / 128 + 1e-6
    rot = same_rotation(back.quats, scene.quats).max()
    assert rot < (3e-4 if version == 3 else 2e-2), rot  # v3: 10-bit smallest three; v2: 8-bit xyz


def test_spz_sh_bits_as_niantic_writes_them(tmp_path):
    """Niantic's default (5 bits for degree 1, 4 for 2-3): values land on bucket centres, 0 stays 0."""
    scene = random_scene(500)
    back, _ = read_spz(save_spz(scene, tmp_path / "a.spz", sh1_bits=5, sh_rest_bits=4))
    steps = back.shN * 128
    assert torch.equal(steps[:, :3] % 8, torch.zeros_like(steps[:, :3]))
    assert torch.equal(steps[:, 3:] % 16, torch.zeros_like(steps[:, 3:]))
    assert (back.shN - scene.shN).abs()[:, 3:].max() <= 8.5 / 128 + 1e-6


def test_spz_antialias_flag_and_determinism(tmp_path):
    scene = random_scene(300)
    a = save_spz(scene, tmp_path / "a.spz", antialiased=True)
    assert read_spz(a)[1].antialiased is True
    b = save_spz(scene, tmp_path / "b.spz", antialiased=False)
    assert read_spz(b)[1].antialiased is False
    assert a.read_bytes() != b.read_bytes()
    assert save_spz(scene, tmp_path / "c.spz", antialiased=True).read_bytes() == a.read_bytes()


def test_spz_is_stored_in_its_own_frame(tmp_path):
    """SPZ keeps y up, z back: a point at OpenCV (1, 2, 3) is stored as (1, −2, −3)."""
    scene = random_scene(4, degree=0)
    scene.means[:] = torch.tensor([[1.0, 2.0, 3.0]])
    import gzip

    raw = gzip.decompress(save_spz(scene, tmp_path / "a.spz").read_bytes())
    fixed = np.frombuffer(raw[16 : 16 + 9], dtype=np.uint8).astype(np.int64)
    vals = [int(fixed[3 * i] | (fixed[3 * i + 1] << 8) | (fixed[3 * i + 2] << 16)) for i in range(3)]
    vals = [v - (1 << 24) if v & 0x800000 else v for v in vals]
    assert vals == [4096, -2 * 4096, -3 * 4096]


def test_flip_axes_keeps_rendered_geometry():
    """The axis flip is a rotation: covariances and SH-evaluated colours turn with the points."""
    from recon3d.sh import eval_sh

    scene = random_scene(50)
    flipped = GaussianScene(**{k: torch.from_numpy(v) for k, v in flip_axes(raw_arrays(scene), RDF_TO_RUB).items()})
    rot = torch.diag(torch.tensor(RDF_TO_RUB, dtype=torch.float32))
    torch.testing.assert_close(flipped.covariances(), rot @ scene.covariances() @ rot.T, atol=1e-6, rtol=1e-5)
    dirs = torch.nn.functional.normalize(torch.randn(50, 3), dim=1)
    sh = lambda s: torch.cat([s.sh0, s.shN], dim=1)  # noqa: E731
    torch.testing.assert_close(eval_sh(sh(flipped), dirs @ rot.T, 3), eval_sh(sh(scene), dirs, 3), atol=1e-5, rtol=1e-5)


def test_spz_against_gsply(tmp_path):
    """gsply (MIT, written from Niantic's spec independently of us) decodes our v2/v3 files to our values,
    and we decode its v3 files to its values. gsply reads the stored frame as is, so flip before comparing."""
    gsply = pytest.importorskip("gsply")
    scene = random_scene(3000)
    for version in (2, 3):
        path = save_spz(scene, tmp_path / f"v{version}.spz", version=version)
        ours = raw_arrays(read_spz(path)[0])
        theirs = flip_axes(gsply_arrays(gsply.read_spz(path), len(scene)), RDF_TO_RUB)
        assert_arrays_match(ours, theirs)
    g = gsply.read_spz(tmp_path / "v3.spz")
    gsply.write_spz(tmp_path / "theirs.spz", g)
    ours = raw_arrays(read_spz(tmp_path / "theirs.spz")[0])
    assert_arrays_match(ours, flip_axes(gsply_arrays(g, len(scene)), RDF_TO_RUB))


# ---------------------------------------------------------------- compressed PLY


@pytest.mark.parametrize("degree", [0, 2, 3])
def test_compressed_ply_round_trip_within_quantisation(tmp_path, degree):
    scene = random_scene(1000, degree=degree)
    path = save_compressed_ply(scene, tmp_path / "a.compressed.ply")
    assert detect_format(path) == "compressed-ply"
    back = load_scene(path)
    # Written in Morton order: match Gaussians back by position (unique within the quantisation).
    order = _match_order(back.means, scene.means)
    back = back[order]
    chunk_extent = 12.0  # |means| stays within ±6 for this scene; a chunk spans at most that
    assert (back.means - scene.means).abs().max() <= chunk_extent / 1023 / 2 + 1e-5
    assert (back.scales - scene.scales).abs().max() <= 8.0 / 1023 / 2 + 1e-4
    assert (torch.sigmoid(back.opacities) - torch.sigmoid(scene.opacities)).abs().max() <= 0.5 / 255 + 1e-4
    assert same_rotation(back.quats, scene.quats).max() < 2e-3
    if degree:
        assert (back.shN - scene.shN).abs().max() <= 8 / 256 + 1e-5  # (v/8+½)·256 truncated


def _match_order(found: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(wanted.double(), found.double())
    return d.argmin(dim=1)


def test_compressed_ply_against_gsply(tmp_path):
    gsply = pytest.importorskip("gsply")
    scene = random_scene(3000)
    path = save_compressed_ply(scene, tmp_path / "a.compressed.ply")
    assert_arrays_match(raw_arrays(load_compressed_ply(path)), gsply_arrays(gsply.plyread(path), len(scene)))
    g = gsply.GSData(
        means=scene.means.numpy(), scales=scene.scales.numpy(), quats=scene.quats.numpy(),
        opacities=scene.opacities.numpy(), sh0=scene.sh0[:, 0].numpy(), shN=scene.shN.numpy(),
    )  # fmt: skip
    gsply.plywrite(tmp_path / "theirs.ply", g, compressed=True)
    written = next(tmp_path.glob("theirs*.ply"))
    assert_arrays_match(raw_arrays(load_scene(written)), gsply_arrays(gsply.plyread(written), len(scene)))


# ---------------------------------------------------------------- SOG


def test_sog_layout_and_round_trip(tmp_path):
    scene = random_scene(3000)
    path = save_sog(scene, tmp_path / "a.sog", sh_palette=256)
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read("meta.json"))
        names = set(z.namelist())
    assert meta["version"] == 2 and meta["count"] == 3000 and meta["shN"]["bands"] == 3
    assert names == {"meta.json", *meta["means"]["files"], *meta["scales"]["files"], *meta["quats"]["files"],
                     *meta["sh0"]["files"], *meta["shN"]["files"]}  # fmt: skip
    folder = save_sog(scene, tmp_path / "folder")
    assert detect_format(folder) == "sog" and detect_format(folder / "meta.json") == "sog"
    back = load_scene(path)
    order = _match_order(back.means, scene.means)
    back = back[order]
    # 16-bit steps of sign·ln(|v|+1): at |v| ≤ 6, a step is at most (e^{ln 7·2/65535} − 1)·7.
    span = 2 * math.log(7.0)
    assert (back.means - scene.means).abs().max() <= 7.0 * span / 65535 + 1e-4
    assert (torch.sigmoid(back.opacities) - torch.sigmoid(scene.opacities)).abs().max() <= 0.5 / 255 + 1e-4
    assert same_rotation(back.quats, scene.quats).max() < 5e-3
    # 256-entry codebooks: no worse (RMS) than 256 even steps over the values' range would be.
    for name in ("scales", "sh0"):
        a, b = getattr(back, name), getattr(scene, name)
        even_steps = float(b.max() - b.min()) / 256 / math.sqrt(12)
        assert float((a - b).pow(2).mean().sqrt()) <= even_steps, name
    # The SH palette (256 centroids for 3000 random vectors) keeps the mean, not each vector.
    assert (back.shN - scene.shN).pow(2).mean() < scene.shN.pow(2).mean()


def test_sog_against_gsply(tmp_path):
    """gsply's SOG reader (libwebp through imagecodecs, not Pillow) decodes our bundle to our values."""
    gsply = pytest.importorskip("gsply")
    pytest.importorskip("imagecodecs")
    scene = random_scene(2000)
    path = save_sog(scene, tmp_path / "a.sog", sh_palette=512)
    assert_arrays_match(raw_arrays(load_sog(path)), gsply_arrays(gsply.sogread(path), len(scene)))


def test_sog_texture_size_rule():
    assert texture_size(1) == (4, 4)
    assert texture_size(3000) == (56, 56)
    w, h = texture_size(150_000)
    assert w % 4 == 0 and h % 4 == 0 and w * h >= 150_000


# ---------------------------------------------------------------- glTF


@pytest.mark.parametrize("degree", [0, 3])
def test_gltf_round_trip(tmp_path, degree):
    scene = random_scene(500, degree=degree)
    back = load_gltf(save_gltf(scene, tmp_path / "a.glb"))
    for k in ("means", "sh0", "shN"):
        torch.testing.assert_close(getattr(back, k), getattr(scene, k), atol=1e-6, rtol=0)
    torch.testing.assert_close(back.scales, scene.scales, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(back.opacities), torch.sigmoid(scene.opacities), atol=1e-6, rtol=0)
    assert same_rotation(back.quats, scene.quats).max() < 1e-6


def test_gltf_spz_variant_round_trip(tmp_path):
    scene = random_scene(500)
    path = save_gltf(scene, tmp_path / "a.glb", spz=True)
    back = load_scene(path)
    spz_back, _ = read_spz(save_spz(scene, tmp_path / "a.spz"))
    for k in PARAMS:
        torch.testing.assert_close(getattr(back, k), getattr(spz_back, k))


def test_gltf_structure_with_pygltflib(tmp_path):
    """pygltflib parses the GLB; the accessors it reads hold the spec's attributes in glTF's frame."""
    pygltflib = pytest.importorskip("pygltflib")
    scene = random_scene(300, degree=2)
    path = save_gltf(scene, tmp_path / "a.glb")
    g = pygltflib.GLTF2().load(str(path))
    prim = g.meshes[0].primitives[0]
    assert prim.mode == pygltflib.POINTS and EXT in g.extensionsUsed
    assert prim.extensions[EXT] == {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}
    blob = g.binary_blob()

    def read(index: int, width: int) -> np.ndarray:
        acc = g.accessors[index]
        view = g.bufferViews[acc.bufferView]
        assert acc.componentType == pygltflib.FLOAT and acc.count == len(scene)
        start = (view.byteOffset or 0) + (acc.byteOffset or 0)
        return np.frombuffer(blob, dtype="<f4", count=acc.count * width, offset=start).reshape(acc.count, width)

    attrs = prim.attributes.__dict__
    luf = flip_axes(raw_arrays(scene), RDF_TO_LUF)
    np.testing.assert_allclose(read(attrs["POSITION"], 3), luf["means"], atol=1e-6)
    acc = g.accessors[attrs["POSITION"]]
    np.testing.assert_allclose(acc.min, luf["means"].min(axis=0), atol=1e-6)
    np.testing.assert_allclose(read(attrs[f"{EXT}:SCALE"], 3), np.exp(luf["scales"]), rtol=1e-5)
    np.testing.assert_allclose(read(attrs[f"{EXT}:OPACITY"], 1)[:, 0], 1 / (1 + np.exp(-luf["opacities"])), atol=1e-6)
    q = luf["quats"] / np.linalg.norm(luf["quats"], axis=1, keepdims=True)
    np.testing.assert_allclose(read(attrs[f"{EXT}:ROTATION"], 4), np.concatenate([q[:, 1:], q[:, :1]], 1), atol=1e-6)
    np.testing.assert_allclose(read(attrs[f"{EXT}:SH_DEGREE_2_COEF_4"], 3), luf["shN"][:, 7], atol=1e-6)
    assert f"{EXT}:SH_DEGREE_3_COEF_0" not in attrs


def test_gltf_spz_structure_with_pygltflib(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    path = save_gltf(random_scene(100), tmp_path / "a.glb", spz=True)
    g = pygltflib.GLTF2().load(str(path))
    prim = g.meshes[0].primitives[0]
    view = prim.extensions[EXT]["extensions"][EXT_SPZ]["bufferView"]
    assert EXT_SPZ in g.extensionsRequired and EXT_SPZ in g.extensionsUsed
    start = g.bufferViews[view].byteOffset or 0
    assert g.binary_blob()[start : start + 2] == b"\x1f\x8b"  # the SPZ (gzip) stream
    assert all(g.accessors[i].bufferView is None and g.accessors[i].count == 100 for i in prim.attributes.__dict__.values() if isinstance(i, int))


def test_gltf_points_load_in_trimesh(tmp_path):
    """trimesh's GLB loader (a generic glTF reader) sees the splats as a point cloud at the right places."""
    trimesh = pytest.importorskip("trimesh")
    scene = random_scene(200, degree=0)
    loaded = trimesh.load(save_gltf(scene, tmp_path / "a.glb"))
    geom = next(iter(loaded.geometry.values())) if hasattr(loaded, "geometry") else loaded
    luf = flip_axes(raw_arrays(scene), RDF_TO_LUF)["means"]
    np.testing.assert_allclose(np.sort(np.asarray(geom.vertices), axis=0), np.sort(luf, axis=0), atol=1e-6)


# ---------------------------------------------------------------- dispatch, PLY, CLI


def test_ply_round_trip_is_exact(tmp_path):
    scene = random_scene(500)
    back = load_scene(save_scene(scene, tmp_path / "a.ply"))
    for k in PARAMS:
        assert torch.equal(getattr(back, k), getattr(scene, k)), k


def test_load_scene_picks_by_content_not_name(tmp_path):
    scene = random_scene(256, degree=1)
    written = {
        "spz": save_spz(scene, tmp_path / "a.spz"),
        "compressed-ply": save_compressed_ply(scene, tmp_path / "b.compressed.ply"),
        "sog": save_sog(scene, tmp_path / "c.sog", sh_palette=64),
        "gltf": save_gltf(scene, tmp_path / "d.glb"),
        "ply": save_ply(scene, tmp_path / "e.ply"),
    }
    for fmt, path in written.items():
        renamed = path.rename(tmp_path / f"misnamed_{fmt}.bin")
        assert detect_format(renamed) == fmt
        assert len(load_scene(renamed)) == len(scene)
    assert load_ply(tmp_path / "misnamed_ply.bin").sh_degree == 1


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("spz", "o.spz"), ("compressed-ply", "o.compressed.ply"), ("sog", "o.sog"), ("gltf", "o.glb"), (None, "p.spz")],
)
def test_cli_export_formats(tmp_path, fmt, name, capsys):
    scene = random_scene(300)
    src = save_ply(scene, tmp_path / "scene.ply")
    args = ["export", str(src), "-o", str(tmp_path / name)] + (["--format", fmt] if fmt else [])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "300 Gaussians" in out
    assert len(load_scene(tmp_path / name)) == 300


def test_cli_export_from_compressed_source(tmp_path):
    """Any readable format is an export source: SPZ in, SOG folder out, glTF back to PLY."""
    scene = random_scene(300, degree=1)
    spz = save_spz(scene, tmp_path / "a.spz")
    assert main(["export", str(spz), "-o", str(tmp_path / "sog"), "--format", "sog", "--sh-palette", "32"]) == 0
    assert main(["export", str(tmp_path / "sog"), "-o", str(tmp_path / "b.glb"), "--format", "gltf"]) == 0
    assert main(["export", str(tmp_path / "b.glb"), "-o", str(tmp_path / "c.ply")]) == 0
    assert len(load_ply(tmp_path / "c.ply")) == 300


def test_cli_export_spz_options(tmp_path):
    src = save_ply(random_scene(100), tmp_path / "scene.ply")
    assert main(["export", str(src), "-o", str(tmp_path / "a.spz"), "--spz-version", "2", "--antialiased"]) == 0
    info = read_spz(tmp_path / "a.spz")[1]
    assert info.version == 2 and info.antialiased


def test_export_refuses_mismatched_names(tmp_path, capsys):
    src = save_ply(random_scene(10), tmp_path / "scene.ply")
    assert main(["export", str(src), "-o", str(tmp_path / "a.ply"), "--format", "spz"]) == 2
    assert main(["export", str(src), "-o", str(tmp_path / "a.spz"), "--format", "gltf"]) == 2
    assert main(["export", str(src), "-o", str(tmp_path / "a.xyz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err


def test_reconstruct_refuses_an_unknown_export_before_training(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "photos"), "-o", str(tmp_path / "run"), "--export", "spz,bogus"]) == 2
    err = capsys.readouterr().err
    assert "'bogus' is not one of" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_reconstruct_exports_spz_and_sog(tmp_path, capsys):
    from recon3d.train.synthetic import make_synthetic_data, write_blender

    data = make_synthetic_data(tmp_path / "synthetic", num_views=6, size=32, num_gaussians=100)
    blender = write_blender(data, tmp_path / "blender")
    run = tmp_path / "run"
    argv = ["reconstruct", str(blender), "-o", str(run), "--steps", "30", "--backend", "cpu", "--quiet",
            "--export", "spz", "--export", "sog,gltf"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    trained = load_ply(run / "scene.ply")
    for name in ("scene.spz", "scene.sog", "scene.glb"):
        assert f"exported {run / name}" in out
        assert len(load_scene(run / name)) == len(trained)


def test_viewer_opens_every_format(tmp_path):
    """``recon3d view file.spz`` (and .sog, SOG folders, .glb, compressed PLY) loads through load_target."""
    from recon3d.viewer.source import load_target

    scene = random_scene(200, degree=1)
    targets = [
        save_spz(scene, tmp_path / "a.spz"),
        save_sog(scene, tmp_path / "b.sog", sh_palette=16),
        save_sog(scene, tmp_path / "sog_folder", sh_palette=16),
        save_gltf(scene, tmp_path / "c.glb"),
        save_compressed_ply(scene, tmp_path / "d.compressed.ply"),
    ]
    for target in targets:
        data = load_target(target)
        assert len(data.scene) == 200 and data.scene.sh_degree == 1 and data.cameras is None


def test_antialiased_mode_carries_between_ply_and_spz(tmp_path):
    """A PLY marked for the anti-aliased render mode exports to an SPZ with the header flag, and back."""
    from recon3d.formats import file_antialiased

    scene = random_scene(50)
    marked = save_ply(scene, tmp_path / "aa.ply", antialiased=True)
    plain = save_ply(scene, tmp_path / "plain.ply")
    assert main(["export", str(marked), "-o", str(tmp_path / "aa.spz")]) == 0
    assert main(["export", str(plain), "-o", str(tmp_path / "plain.spz")]) == 0
    assert read_spz(tmp_path / "aa.spz")[1].antialiased and not read_spz(tmp_path / "plain.spz")[1].antialiased
    assert file_antialiased(tmp_path / "aa.spz") and not file_antialiased(tmp_path / "plain.spz")
    from recon3d.viewer.source import load_target

    assert load_target(tmp_path / "aa.spz").antialiased and not load_target(tmp_path / "plain.spz").antialiased


def test_top_level_load_scene_and_save_scene_are_the_formats_ones(tmp_path):
    """``recon3d.load_scene`` / ``recon3d.save_scene`` (the README's API) round-trip a scene through SPZ."""
    import recon3d
    import recon3d.formats as formats

    assert recon3d.load_scene is formats.load_scene and recon3d.save_scene is formats.save_scene
    scene = recon3d.load_ply(Path(__file__).resolve().parents[1] / "examples" / "scene.ply")
    path = recon3d.save_scene(scene, tmp_path / "s.spz")
    back = recon3d.load_scene(path)
    assert len(back) == len(scene)
    assert torch.allclose(back.means, scene.means, atol=1e-2)
