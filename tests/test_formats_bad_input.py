"""Truncated and hostile SPZ, compressed PLY, SOG and glTF files: one ``InputError`` line naming the file and
the problem, and no allocation beyond what the file can hold (as ``recon3d/ply.py`` does for PLY)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon3d.cli import main
from recon3d.errors import InputError
from recon3d.formats import load_scene
from recon3d.formats.compressed_ply import compressed_ply_bytes
from recon3d.formats.gltf import gltf_bytes
from recon3d.formats.sog import sog_files
from recon3d.formats.spz import spz_bytes
from recon3d.scene import GaussianScene


def small_scene(n: int = 40, degree: int = 1) -> GaussianScene:
    g = torch.Generator().manual_seed(1)
    return GaussianScene(
        means=torch.randn(n, 3, generator=g),
        scales=torch.randn(n, 3, generator=g) - 4,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.1,
    )


def refused(path, needle: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_scene(path)
    message = str(info.value)
    assert str(path) in message and needle in message and "\n" not in message, message
    return info.value


def refused_small(path, needle: str) -> None:
    """Refused, and while refusing, Python allocated under 1 MiB (the files here are a few hundred bytes)."""
    tracemalloc.start()
    try:
        refused(path, needle)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak} bytes for a {path.stat().st_size}-byte file"


def spz_with(header: bytes, body: bytes = b"") -> bytes:
    return gzip.compress(header + body, mtime=0)


# ---------------------------------------------------------------- SPZ


def test_spz_huge_point_count_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.spz"
    path.write_bytes(spz_with(struct.pack("<IIIBBBB", 0x5053474E, 3, 0xFFFFFFFF, 3, 12, 0, 0), b"\0" * 64))
    refused_small(path, "claims 4294967295 points")


def test_spz_decompression_bomb_is_bounded(tmp_path):
    """10 points' worth of header, then 64 MiB of zeros (64 KiB gzipped): only what the header needs is inflated."""
    header = struct.pack("<IIIBBBB", 0x5053474E, 3, 10, 0, 12, 0, 0)
    path = tmp_path / "bomb.spz"
    path.write_bytes(gzip.compress(header + bytes(64 << 20), mtime=0))
    tracemalloc.start()
    try:
        scene = load_scene(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(scene) == 10 and peak < 8 << 20, peak


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x1f\x8b\x08\x00garbage-not-deflate" * 3, "not a valid gzip stream"),
        (b"NGSP\x04\x00\x00\x00" + b"\0" * 24, "SPZ version 4 file (zstd)"),
        (b"hello", "not an SPZ file"),
        (spz_with(struct.pack("<IIIBBBB", 0x5053474E, 7, 1, 0, 12, 0, 0)), "SPZ version 7 is not supported"),
        (spz_with(struct.pack("<IIIBBBB", 0x5053474E, 1, 1, 0, 12, 0, 0)), "SPZ version 1 is not supported"),
        (spz_with(struct.pack("<IIIBBBB", 0x12345678, 3, 1, 0, 12, 0, 0)), "does not start with 'NGSP'"),
        (spz_with(struct.pack("<IIIBBBB", 0x5053474E, 3, 1, 4, 12, 0, 0)), "SH degree 4"),
        (spz_with(struct.pack("<IIIBBBB", 0x5053474E, 3, 1, 0, 30, 0, 0)), "fractional bits"),
        (spz_with(b"NGSP\x03\x00"), "ends within the 16-byte header"),
    ],
)
def test_spz_bad_headers(tmp_path, data, needle):
    path = tmp_path / "bad.spz"
    path.write_bytes(data)
    refused(path, needle)


def test_spz_truncated(tmp_path):
    good = spz_bytes(small_scene(500))
    path = tmp_path / "cut.spz"
    path.write_bytes(good[: len(good) // 2])
    refused(path, "truncated")
    raw = gzip.decompress(good)
    path.write_bytes(gzip.compress(raw[: len(raw) - 7], mtime=0))
    refused(path, "SPZ is truncated")


# ---------------------------------------------------------------- compressed PLY


def test_compressed_ply_huge_count_is_refused_without_allocating(tmp_path):
    good = compressed_ply_bytes(small_scene(300, degree=0)).decode("latin-1")
    n = 10**12
    forged = good.replace("element chunk 2", f"element chunk {(n + 255) // 256}").replace(
        "element vertex 300", f"element vertex {n}"
    )
    path = tmp_path / "huge.ply"
    path.write_bytes(forged.encode("latin-1"))
    refused_small(path, "truncated or its header lies")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda h: h.replace("element chunk 2", "element chunk 5"), "5 chunks for 300 Gaussians"),
        (lambda h: h.replace("property uint packed_color", "property float packed_color"), "four packed uint"),
        (lambda h: h.replace("property float max_b", "property float max_q"), "12 or 18 float bounds"),
        (lambda h: h.replace("element sh 300", "element sh 299"), "299 SH rows"),
        (lambda h: h.replace("binary_little_endian", "binary_big_endian"), "binary_little_endian"),
    ],
)
def test_compressed_ply_bad_headers(tmp_path, edit, needle):
    good = compressed_ply_bytes(small_scene(300, degree=1)).decode("latin-1")
    path = tmp_path / "bad.ply"
    path.write_bytes(edit(good).encode("latin-1"))
    refused(path, needle)


def test_compressed_ply_truncated(tmp_path):
    good = compressed_ply_bytes(small_scene(300))
    path = tmp_path / "cut.ply"
    path.write_bytes(good[:-10])
    refused(path, "truncated")


# ---------------------------------------------------------------- SOG


def write_sog(tmp_path, files: dict[str, bytes], name: str = "x.sog"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


def with_meta(files: dict[str, bytes], change) -> dict[str, bytes]:
    meta = json.loads(files["meta.json"])
    change(meta)
    return {**files, "meta.json": json.dumps(meta).encode()}


@pytest.fixture(scope="module")
def sog():
    return sog_files(small_scene(300), sh_palette=16)


def test_sog_huge_count_is_refused_without_allocating(tmp_path, sog):
    path = write_sog(tmp_path, with_meta(sog, lambda m: m.update(count=10**12)))
    refused_small(path, "count 1000000000000")


def test_sog_count_beyond_the_images_is_refused_before_decoding(tmp_path, sog):
    path = write_sog(tmp_path, with_meta(sog, lambda m: m.update(count=16383 * 16383)))
    refused_small(path, "needs at least 268402689 texels")


def test_sog_webp_of_wrong_size(tmp_path, sog):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(buf, format="WEBP", lossless=True)
    refused(write_sog(tmp_path, {**sog, "scales.webp": buf.getvalue()}), "scales.webp is 8×8")
    buf = io.BytesIO()
    Image.new("RGBA", (17 * 16, 1)).save(buf, format="WEBP", lossless=True)
    refused(write_sog(tmp_path, {**sog, "shN_centroids.webp": buf.getvalue()}, "y.sog"), "needs width 192")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda m: m.update(version=3), "SOG version 3 is not supported"),
        (lambda m: m.update(count="many"), "count 'many'"),
        (lambda m: m["scales"].update(codebook=[0.0] * 12), "scales.codebook must be 256"),
        (lambda m: m["means"].update(mins=[0, 0, float("nan")]), "means.mins must be 3 finite"),
        (lambda m: m["quats"].update(files=["../../etc/passwd"]), "outside the bundle"),
        (lambda m: m["sh0"].update(files=["missing.webp"]), "has no missing.webp"),
        (lambda m: m["shN"].update(bands=7), "shN.bands 7"),
        (lambda m: m["shN"].update(count=2), "palette"),
    ],
)
def test_sog_bad_meta(tmp_path, sog, change, needle):
    refused(write_sog(tmp_path, with_meta(sog, change)), needle)


def test_sog_not_webp_and_not_zip(tmp_path, sog):
    refused(write_sog(tmp_path, {**sog, "quats.webp": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}), "not a readable WebP")
    path = tmp_path / "z.sog"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 30)
    refused(path, "not a readable zip")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "meta.json").write_text("{not json")
    refused(tmp_path / "folder", "not valid JSON")


# ---------------------------------------------------------------- glTF


def glb_parts(data: bytes) -> tuple[dict, bytes]:
    json_len = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20 : 20 + json_len])
    bin_len = struct.unpack_from("<I", data, 20 + json_len)[0]
    return doc, data[28 + json_len : 28 + json_len + bin_len]


def make_glb(doc: dict, blob: bytes) -> bytes:
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    total = 28 + len(text) + len(blob)
    return struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack(
        "<II", len(blob), 0x004E4942
    ) + blob


def test_gltf_huge_accessor_count_is_refused_without_allocating(tmp_path):
    doc, blob = glb_parts(gltf_bytes(small_scene(20, degree=0)))
    for acc in doc["accessors"]:
        acc["count"] = 10**12
    path = tmp_path / "huge.glb"
    path.write_bytes(make_glb(doc, blob))
    refused_small(path, "need")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["bufferViews"][0].update(byteOffset=10**9), "lies outside"),
        (lambda d: d["accessors"][1].update(type="VEC2"), "not a VEC4 accessor"),
        (lambda d: d["accessors"][2].update(count=3), "has 3 values, POSITION has 20"),
        (lambda d: d["meshes"][0]["primitives"][0].pop("extensions"), "no mesh primitive with the"),
        (lambda d: d["asset"].update(version="1.0"), "not a glTF 2.0 file"),
        (lambda d: d["meshes"][0]["primitives"][0]["attributes"].pop("KHR_gaussian_splatting:SCALE"), "lacks"),
        (lambda d: d["buffers"][0].update(uri="../secret.bin"), "does not follow"),
        (lambda d: d["meshes"][0]["primitives"][0]["extensions"]["KHR_gaussian_splatting"].update(kernel="box"), "kernel"),
    ],
)
def test_gltf_bad_documents(tmp_path, change, needle):
    doc, blob = glb_parts(gltf_bytes(small_scene(20, degree=0)))
    change(doc)
    path = tmp_path / "bad.glb"
    path.write_bytes(make_glb(doc, blob))
    refused(path, needle)


def test_gltf_truncated_and_lying_lengths(tmp_path):
    good = gltf_bytes(small_scene(20))
    path = tmp_path / "cut.glb"
    path.write_bytes(good[: len(good) - 100])
    refused(path, "truncated")
    path.write_bytes(good[:12])
    refused(path, "truncated")


def test_gltf_spz_payload_is_checked_too(tmp_path):
    doc, blob = glb_parts(gltf_bytes(small_scene(20), spz=True))
    view = doc["meshes"][0]["primitives"][0]["extensions"]["KHR_gaussian_splatting"]["extensions"][
        "KHR_gaussian_splatting_compression_spz_2"
    ]["bufferView"]
    start = doc["bufferViews"][view].get("byteOffset", 0)
    broken = bytearray(blob)
    broken[start + 10 : start + 40] = b"\xff" * 30
    path = tmp_path / "bad.glb"
    path.write_bytes(make_glb(doc, bytes(broken)))
    refused(path, "gzip")


# ---------------------------------------------------------------- CLI and fuzzing


def test_cli_reports_bad_spz_in_one_line(tmp_path, capsys):
    path = tmp_path / "evil.spz"
    path.write_bytes(spz_with(struct.pack("<IIIBBBB", 0x5053474E, 9, 1, 0, 12, 0, 0)))
    code = main(["export", str(path), "-o", str(tmp_path / "out.ply")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "evil.spz" in err and "Traceback" not in err
    assert not (tmp_path / "out.ply").exists()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_VALID = {
    "spz": gzip.decompress(spz_bytes(small_scene(30))),
    "cply": compressed_ply_bytes(small_scene(30)),
    "glb": gltf_bytes(small_scene(30)),
}


def _only_input_errors(path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        result = load_scene(path)
    except InputError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(result, GaussianScene)


@FUZZ
@given(
    kind=st.sampled_from(sorted(_VALID)),
    cut=st.integers(min_value=0, max_value=4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
)
def test_fuzz_mutated_valid_files(tmp_path, kind, cut, flips):
    raw = bytearray(_VALID[kind])
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    raw = raw[:cut] if cut < len(raw) else raw
    data = gzip.compress(bytes(raw), mtime=0) if kind == "spz" else bytes(raw)
    _only_input_errors(tmp_path / f"m.{kind}", data)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_random_bytes(tmp_path, data):
    _only_input_errors(tmp_path / "r.bin", data)
    _only_input_errors(tmp_path / "r.spz", b"\x1f\x8b" + data)
    _only_input_errors(tmp_path / "r.glb", b"glTF" + data)


@FUZZ
@given(values=st.lists(st.integers(0, 255), min_size=4, max_size=64))
def test_fuzz_sog_images(tmp_path, values):
    """Random texel bytes in the SOG images decode (every byte pattern names some value) or are refused."""
    files = sog_files(small_scene(16, degree=1), sh_palette=4)
    from PIL import Image

    texels = np.resize(np.array(values, dtype=np.uint8), (4 * 4 * 4,)).reshape(4, 4, 4)
    buf = io.BytesIO()
    Image.fromarray(texels, "RGBA").save(buf, format="WEBP", lossless=True, exact=True)
    for name in ("quats.webp", "shN_labels.webp", "sh0.webp"):
        _only_input_errors(tmp_path / f"{name}.sog", b"")
        path = write_sog(tmp_path, {**files, name: buf.getvalue()}, f"{name}.sog")
        try:
            load_scene(path)
        except InputError as exc:
            assert str(path) in str(exc)


def test_unknown_content_names_the_formats(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    refused(path, "not a PLY, nor another splat file recon3d reads")
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"\0" * 96)  # 3 × 32 bytes, but named .ply: the PLY reader explains
    refused(junk, "not a PLY")
