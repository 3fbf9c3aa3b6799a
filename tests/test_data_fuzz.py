"""Property-based fuzzing of the COLMAP (.bin, .txt) and transforms.json readers.

The property: whatever the bytes, loading either succeeds or raises recon3d's ``InputError``; never
another exception, a crash or a runaway allocation.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from recon3d.data import load_dataset
from recon3d.data.colmap_io import (
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    ColmapPoints,
    read_model,
    write_model_binary,
    write_model_text,
)
from recon3d.errors import InputError

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
NAMES = ("a.png", "b.png", "c.png")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A valid little COLMAP project and transforms.json with three 8×6 images."""
    root = tmp_path_factory.mktemp("fuzz_template")
    (root / "images").mkdir()
    for i, n in enumerate(NAMES):
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(root / "images" / n)
    cams = {1: ColmapCamera(1, "SIMPLE_RADIAL", 8, 6, np.array([7.0, 4.0, 3.0, 0.01])),
            2: ColmapCamera(2, "PINHOLE", 8, 6, np.array([7.0, 7.5, 4.0, 3.0]))}  # fmt: skip
    imgs = {i + 1: ColmapImage(i + 1, np.array([1.0, 0, 0, 0]), np.array([0.0, 0, i]), 1 + i % 2, n, 0)
            for i, n in enumerate(NAMES)}  # fmt: skip
    pts = ColmapPoints(np.arange(12.0).reshape(4, 3), np.full((4, 3), 9, np.uint8), np.zeros(4))
    model = ColmapModel(cams, imgs, pts, None)
    write_model_binary(model, root / "bin")
    write_model_text(model, root / "txt")
    frames = [{"file_path": f"images/{n}", "transform_matrix": np.eye(4).tolist()} for n in NAMES]
    (root / "transforms.json").write_text(json.dumps({"fl_x": 7.0, "fl_y": 7.0, "w": 8, "h": 6, "k1": 0.01,
                                                      "frames": frames}))  # fmt: skip
    return root


def _project(template: Path, files: dict[str, bytes]) -> Path:
    """A fresh COLMAP project folder with ``files`` as its sparse/0 model (images linked from the template)."""
    root = Path(tempfile.mkdtemp(prefix="fuzz_"))
    (root / "images").symlink_to(template / "images")
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    for name, data in files.items():
        (model / name).write_bytes(data)
    return root


def _expect_only_input_error(fn) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except InputError:
            pass


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    if cut is not None:
        buf = buf[: cut % (len(buf) + 1)]
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
CUT = st.none() | st.integers(0, 1 << 16)
FILES_BIN = ("cameras.bin", "images.bin", "points3D.bin")
FILES_TXT = ("cameras.txt", "images.txt", "points3D.txt")


@FUZZ
@given(which=st.sampled_from(FILES_BIN), edits=EDITS, cut=CUT)
def test_fuzz_colmap_binary_mutations(template, which, edits, cut):
    files = {n: (template / "bin" / n).read_bytes() for n in FILES_BIN}
    files[which] = _mutate(files[which], edits, cut)
    root = _project(template, files)
    try:
        _expect_only_input_error(lambda: load_dataset(root, work_dir=root / "work"))
    finally:
        shutil.rmtree(root)


@FUZZ
@given(which=st.sampled_from(FILES_BIN), blob=st.binary(max_size=300), count=st.none() | st.integers(0, (1 << 64) - 1))
def test_fuzz_colmap_binary_random(template, which, blob, count):
    files = {n: (template / "bin" / n).read_bytes() for n in FILES_BIN}
    files[which] = (struct.pack("<Q", count) if count is not None else b"") + blob
    root = _project(template, files)
    try:
        _expect_only_input_error(lambda: read_model(root / "sparse" / "0"))
    finally:
        shutil.rmtree(root)


TOKENS = st.sampled_from(
    ["1", "2", "3", "0", "-1", "8", "6", "7.0", "1e308", "-1e308", "1e999", "nan", "inf", "-inf", "0.5", "1e-320",
     "99999999999999999999999", "PINHOLE", "SIMPLE_RADIAL", "OPENCV_FISHEYE", "FOV", "EQUIRECTANGULAR", "a.png",
     "b.png", "#", "x", "", "\u00e9", "\t"]
)  # fmt: skip
LINES = st.lists(st.lists(TOKENS, max_size=14).map(" ".join), max_size=8).map("\n".join)


@FUZZ
@given(which=st.sampled_from(FILES_TXT), text=LINES | st.text(max_size=200))
def test_fuzz_colmap_text_random(template, which, text):
    files = {n: (template / "txt" / n).read_bytes() for n in FILES_TXT}
    files[which] = text.encode("utf-8", "surrogatepass")
    root = _project(template, files)
    try:
        _expect_only_input_error(lambda: load_dataset(root, work_dir=root / "work"))
    finally:
        shutil.rmtree(root)


@FUZZ
@given(which=st.sampled_from(FILES_TXT), line=st.integers(0, 50), token=st.integers(0, 20), new=TOKENS)
def test_fuzz_colmap_text_token_swaps(template, which, line, token, new):
    files = {n: (template / "txt" / n).read_bytes() for n in FILES_TXT}
    lines = files[which].decode().splitlines()
    words = lines[line % len(lines)].split(" ")
    words[token % len(words)] = new
    lines[line % len(lines)] = " ".join(words)
    files[which] = "\n".join(lines).encode()
    root = _project(template, files)
    try:
        _expect_only_input_error(lambda: load_dataset(root, work_dir=root / "work"))
    finally:
        shutil.rmtree(root)


# ------------------------------------------------------------------------------------------ transforms.json
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.sampled_from([0, 1, 6, 8, 7.0, -1.0, 1e308])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["images/a.png", "images/b", "images", "../images/a.png", "OPENCV", "OPENCV_FISHEYE"])
)  # fmt: skip
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=20)  # fmt: skip
MATRIX = st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5), min_size=4, max_size=4),
                  min_size=3, max_size=4)  # fmt: skip
FRAME_KEYS = ["file_path", "transform_matrix", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k4", "p1", "camera_model"]
TOP_KEYS = FRAME_KEYS[2:] + ["camera_angle_x", "camera_angle_y", "applied_transform", "ply_file_path", "is_fisheye",
                             "test_filenames", "frames"]  # fmt: skip


@st.composite
def transforms_meta(draw):
    """A transforms.json-like object: the valid template with some keys replaced by arbitrary JSON."""
    meta = {"fl_x": 7.0, "fl_y": 7.0, "w": 8, "h": 6,
            "frames": [{"file_path": f"images/{n}", "transform_matrix": np.eye(4).tolist()} for n in NAMES]}  # fmt: skip
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=3)):
        meta[key] = draw(JSON_VALUES)
    if isinstance(meta.get("frames"), list):
        for fr in meta["frames"]:
            if isinstance(fr, dict):
                for key in draw(st.lists(st.sampled_from(FRAME_KEYS), max_size=2)):
                    fr[key] = draw(MATRIX if key == "transform_matrix" and draw(st.booleans()) else JSON_VALUES)
    for key in draw(st.lists(st.sampled_from(list(meta)), max_size=2)):
        meta.pop(key, None)
    return meta


def _json_dir(template: Path, text: str, name: str = "transforms.json") -> Path:
    root = Path(tempfile.mkdtemp(prefix="fuzzjson_"))
    (root / "images").symlink_to(template / "images")
    (root / name).write_text(text, encoding="utf-8", errors="surrogatepass")
    return root


@FUZZ
@given(meta=transforms_meta(), blender=st.booleans())
def test_fuzz_transforms_structure(template, meta, blender):
    text = json.dumps(meta, allow_nan=True)
    root = _json_dir(template, text, "transforms_train.json" if blender else "transforms.json")
    try:
        _expect_only_input_error(lambda: load_dataset(root, work_dir=root / "work"))
    finally:
        shutil.rmtree(root)


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")), edits=EDITS, cut=CUT)
def test_fuzz_transforms_bytes(template, text, edits, cut):
    valid = (template / "transforms.json").read_bytes()
    data = _mutate(valid, edits, cut) if text == "" else text.encode("utf-8", "surrogatepass")
    root = Path(tempfile.mkdtemp(prefix="fuzzjson_"))
    (root / "images").symlink_to(template / "images")
    (root / "transforms.json").write_bytes(data)
    try:
        _expect_only_input_error(lambda: load_dataset(root, work_dir=root / "work"))
    finally:
        shutil.rmtree(root)


def test_fuzz_targets_are_valid_when_untouched(template):
    """The templates the fuzzers mutate load cleanly, so the mutations are what is tested."""
    for sub in ("bin", "txt"):
        root = _project(template, {p.name: p.read_bytes() for p in (template / sub).iterdir()})
        try:
            data = load_dataset(root, work_dir=root / "work")
            assert len(data.image_paths) == 3 and data.points.shape == (4, 3)
        finally:
            shutil.rmtree(root)
    root = _json_dir(template, (template / "transforms.json").read_text())
    try:
        assert len(load_dataset(root, work_dir=root / "work").image_paths) == 3
    finally:
        shutil.rmtree(root)
