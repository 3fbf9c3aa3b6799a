"""Bad and hostile PLY / .splat files: refused with one InputError naming the file, before any large allocation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recon3d
from recon3d.cli import main
from recon3d.errors import InputError
from recon3d.exporters import load_splat
from recon3d.ply import read_ply_vertices
from recon3d.scene import GaussianScene

PROPS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "f_rest_0", "f_rest_1", "f_rest_2", "f_rest_3", "f_rest_4"]
PROPS += ["f_rest_5", "f_rest_6", "f_rest_7", "f_rest_8", "opacity", "scale_0", "scale_1", "scale_2"]
PROPS += ["rot_0", "rot_1", "rot_2", "rot_3"]


def _header(count: int | str, props=PROPS, fmt="binary_little_endian", extra: str = "") -> bytes:
    lines = ["ply", f"format {fmt} 1.0", f"element vertex {count}"]
    lines += [f"property float {p}" for p in props]
    return ("\n".join(lines) + "\n" + extra + "end_header\n").encode()


def _valid_file(n: int = 4) -> bytes:
    rng = np.random.default_rng(0)
    return _header(n) + rng.normal(size=(n, len(PROPS))).astype("<f4").tobytes()


def _refused(path, *needles: str) -> str:
    with pytest.raises(InputError) as info:
        recon3d.load_ply(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_valid_file_loads(tmp_path):
    (tmp_path / "ok.ply").write_bytes(_valid_file())
    scene = recon3d.load_ply(tmp_path / "ok.ply")
    assert len(scene) == 4 and scene.sh_degree == 1


@pytest.mark.parametrize("keep", [0, 3, 40, -1, -50])
def test_truncated(tmp_path, keep):
    raw = _valid_file()
    (tmp_path / "t.ply").write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    _refused(tmp_path / "t.ply")


def test_truncated_body_names_sizes(tmp_path):
    (tmp_path / "t.ply").write_bytes(_valid_file()[:-10])
    _refused(tmp_path / "t.ply", "truncated")


def test_huge_vertex_count_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.ply"
    path.write_bytes(_header(10**12) + b"\0" * 64)
    tracemalloc.start()
    try:
        _refused(path, "truncated or its header lies")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the file is ~400 bytes; the reader reads a 64 KiB header window and a little bookkeeping
    assert peak < 1 << 20, f"peak {peak} bytes for a {path.stat().st_size}-byte file"


def test_huge_ascii_vertex_count_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge_ascii.ply"
    path.write_bytes(_header(10**12, fmt="ascii") + b"1 2 3\n")
    tracemalloc.start()
    try:
        _refused(path, "too small")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_huge_count_in_element_before_vertex(tmp_path):
    header = b"ply\nformat binary_little_endian 1.0\nelement junk 999999999999\nproperty double a\n"
    path = tmp_path / "junk.ply"
    path.write_bytes(header + _header(2)[len(b"ply\nformat binary_little_endian 1.0\n") :] + b"\0" * 200)
    _refused(path, "truncated")


@pytest.mark.parametrize(
    "header, needle",
    [
        (b"", "not a PLY"),
        (b"PK\x03\x04 this is a zip", "not a PLY"),
        (b"plyx\nformat ascii 1.0\nend_header\n", "not a PLY"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n", "end_header"),
        (b"ply\nformat binary_middle_endian 1.0\nend_header\n", "unsupported PLY format"),
        (b"ply\nelement vertex 1\nproperty float x\nend_header\n", "no format line"),
        (b"ply\nformat ascii 1.0\nelement vertex -5\nend_header\n", "bad PLY element"),
        (b"ply\nformat ascii 1.0\nelement vertex 1e9\nend_header\n", "bad PLY element"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quaternion x\nend_header\n", "unknown PLY property type"),
        (b"ply\nformat ascii 1.0\nproperty float x\nelement vertex 1\nend_header\n", "before any element"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float x\nend_header\n", "twice"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nelement vertex 1\nend_header\n", "twice"),
        (b"ply\nformat ascii 1.0\nelement face 1\nproperty float x\nend_header\n0\n", "no 'vertex'"),
        (b"ply\nformat ascii 1.0\nbogus line\nend_header\n", "unexpected PLY header line"),
        (b"ply\nformat ascii 1.0\ncomment \xff\xfe\nend_header\n", "not ASCII"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nend_header\n", "no properties"),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty list uchar int idx\nend_header\n",
            "list property",
        ),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar bogus idx\nend_header\n", "bad PLY list"),
    ],
)
def test_bad_headers(tmp_path, header, needle):
    path = tmp_path / "bad.ply"
    path.write_bytes(header)
    _refused(path, needle)


def test_too_many_properties(tmp_path):
    path = tmp_path / "many.ply"
    props = [f"p{i}" for i in range(1100)]
    path.write_bytes(_header(1, props=props))
    _refused(path, "more than")


def test_header_without_end_in_first_64k(tmp_path):
    path = tmp_path / "long.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\n" + b"comment " + b"x" * 70000 + b"\nend_header\n")
    _refused(path, "end_header")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("column", ["x", "opacity", "scale_1", "rot_2", "f_rest_7"])
def test_nan_and_inf_values(tmp_path, bad, column):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(6, len(PROPS))).astype("<f4")
    data[[1, 4], PROPS.index(column)] = bad
    path = tmp_path / "nan.ply"
    path.write_bytes(_header(6) + data.tobytes())
    _refused(path, "2 of 6 Gaussians", "NaN or infinite")


def test_double_beyond_float32_range_is_refused(tmp_path):
    props = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    props += ["rot_0", "rot_1", "rot_2", "rot_3"]
    lines = ["ply", "format binary_little_endian 1.0", "element vertex 1"] + [f"property double {p}" for p in props]
    data = np.zeros((1, len(props)), "<f8")
    data[0, 0] = 1e300
    path = tmp_path / "big.ply"
    path.write_bytes(("\n".join(lines) + "\nend_header\n").encode() + data.tobytes())
    _refused(path, "NaN or infinite means")


@pytest.mark.parametrize(
    "props, needle",
    [
        (["x", "y", "z", "red", "green", "blue"], "missing vertex properties"),
        (PROPS[:6] + PROPS[15:], None),  # degree 0: fine
        (PROPS[:6] + ["f_rest_0", "f_rest_1"] + PROPS[15:], "multiple of 3"),
        (PROPS[:6] + [f"f_rest_{i}" for i in range(6)] + PROPS[15:], "do not match any degree"),
        (PROPS[:6] + ["f_rest_0", "f_rest_1", "f_rest_2", "f_rest_4"] + PROPS[15:], "without gaps"),
        (["packed_position", "packed_rotation", "packed_scale", "packed_color"], "compressed PLY"),
    ],
)
def test_wrong_property_sets(tmp_path, props, needle):
    path = tmp_path / "p.ply"
    path.write_bytes(_header(2, props=props) + np.zeros((2, len(props)), "<f4").tobytes())
    if needle is None:
        assert len(recon3d.load_ply(path)) == 2
    else:
        _refused(path, needle)


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"1 2 3\n44 55\n", "malformed"),
        (b"1 2 3\n4 5\n", "too small"),
        (b"1 2 3\nfoo 5 6\n", "malformed"),
        (b"1.0000 2.0000 3.0000\n", "truncated"),
        (b"1 2 3\n4 5 6 7\n", "malformed"),
        (b"1 2 \xff\n4 5 6\n", "not ASCII"),
    ],
)
def test_bad_ascii_bodies(tmp_path, body, needle):
    path = tmp_path / "a.ply"
    path.write_bytes(_header(2, props=["x", "y", "z"], fmt="ascii") + body)
    with pytest.raises(InputError, match=needle):
        read_ply_vertices(path)


def test_missing_file_and_directory(tmp_path):
    _refused(tmp_path / "nope.ply", "file not found")
    (tmp_path / "dir.ply").mkdir()
    _refused(tmp_path / "dir.ply", "not a file")


def test_cli_reports_bad_ply_in_one_line(tmp_path, capsys):
    path = tmp_path / "evil.ply"
    path.write_bytes(_header(10**12))
    code = main(["export", str(path), "-o", str(tmp_path / "out.splat")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "evil.ply" in err and "Traceback" not in err
    assert not (tmp_path / "out.splat").exists()


# ---------------------------------------------------------------- .splat


def test_splat_of_wrong_size_and_nan(tmp_path):
    (tmp_path / "a.splat").write_bytes(b"\0" * 33)
    with pytest.raises(InputError, match="multiple of 32"):
        load_splat(tmp_path / "a.splat")
    rec = np.zeros(2, dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)])
    rec["s"] = 0.1
    rec["p"][1, 2] = np.nan
    (tmp_path / "b.splat").write_bytes(rec.tobytes())
    with pytest.raises(InputError, match="1 of 2 splats"):
        load_splat(tmp_path / "b.splat")
    rec["p"][1, 2] = 0
    rec["s"][0, 0] = -1
    (tmp_path / "c.splat").write_bytes(rec.tobytes())
    with pytest.raises(InputError, match="negative"):
        load_splat(tmp_path / "c.splat")
    with pytest.raises(InputError, match="file not found"):
        load_splat(tmp_path / "missing.splat")


# ---------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_input_errors(path, data: bytes, loader) -> None:
    path.write_bytes(data)
    try:
        result = loader(path)
    except InputError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(result, (GaussianScene, dict))


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes(tmp_path, data):
    _only_input_errors(tmp_path / "f.ply", data, recon3d.load_ply)
    _only_input_errors(tmp_path / "f.splat", data, load_splat)


_HEADER_LINES = st.sampled_from(
    [
        "format ascii 1.0",
        "format binary_little_endian 1.0",
        "format binary_big_endian 1.0",
        "element vertex 3",
        "element vertex 0",
        "element vertex 99999999999",
        "element face 2",
        "property float x",
        "property double y",
        "property uchar z",
        "property list uchar int vertex_indices",
        "property float opacity",
        "comment hi",
        "end_header",
    ]
    + [f"property float {p}" for p in PROPS]
)


@FUZZ
@given(lines=st.lists(_HEADER_LINES, max_size=30), body=st.binary(max_size=300))
def test_fuzz_structured_headers(tmp_path, lines, body):
    data = ("ply\n" + "\n".join(lines) + "\n").encode() + body
    _only_input_errors(tmp_path / "h.ply", data, recon3d.load_ply)
    _only_input_errors(tmp_path / "h.ply", data, read_ply_vertices)


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=2000),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
)
def test_fuzz_mutated_valid_files(tmp_path, cut, flips):
    raw = bytearray(_valid_file(6))
    for pos, value in flips:
        if pos < len(raw):
            raw[pos] = value
    _only_input_errors(tmp_path / "m.ply", bytes(raw[: max(cut, 0)] if cut < len(raw) else raw), recon3d.load_ply)


@FUZZ
@given(
    values=st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["x", "-", "1e999", "0x1", ""])),
        max_size=40,
    )
)
def test_fuzz_ascii_bodies(tmp_path, values):
    body = " ".join(str(v) for v in values).encode()
    _only_input_errors(tmp_path / "a.ply", _header(2, fmt="ascii") + body, recon3d.load_ply)
