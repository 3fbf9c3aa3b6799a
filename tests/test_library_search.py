"""recon3d index / search on a small library of composed scenes: discovery, ranking by caption and by image,
incremental re-indexing, resumption after an interruption, unreadable scenes, and bad input lines.

The library is made here with the generator's composer (ground-truth scenes of known captions), a run
directory, a .splat copy, a corrupt file and a PLY that is not a splat scene.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recon3d.errors import InputError

PER_OBJECT = 300

# (file stem, grammar scene, prompt written beside it); None: a scene nobody wrote anything about
CAPTIONED = [
    ("gen_001", ("cube", "red"), "a red cube"),
    ("gen_002", ("sphere", "blue"), "a blue sphere"),
    ("gen_003", ("cone", "yellow"), "a yellow cone"),
    ("gen_004", ("torus", "green"), "a green donut"),
    ("gen_005", ("cylinder", "purple"), "a tall purple cylinder"),
    ("gen_006", ("pyramid", "orange"), "an orange pyramid"),
]
UNTITLED = [("scan_a", ("sphere", "pink")), ("scan_b", ("cube", "cyan")), ("scan_c", ("torus", "brown"))]


def _compose(shape: str, colour: str, seed: int):
    from recon3d.generation.composer import compose_grammar_scene
    from recon3d.generation.grammar import bare_scene

    scene, _ = compose_grammar_scene(bare_scene(shape, colour), per_object=PER_OBJECT, seed=seed)
    return scene


def make_library(root: Path) -> dict[str, object]:
    """Write the test library; returns the composed scenes by relative path."""
    from recon3d.formats import save_scene
    from recon3d.ply import save_ply

    scenes = {}
    gen = root / "generated"
    gen.mkdir(parents=True)
    for k, (stem, (shape, colour), prompt) in enumerate(CAPTIONED):
        scene = _compose(shape, colour, k)
        save_ply(scene, gen / f"{stem}.ply")
        (gen / f"{stem}.json").write_text(json.dumps({"prompt": prompt}))
        scenes[f"generated/{stem}.ply"] = scene
    scans = root / "scans"
    scans.mkdir()
    for k, (stem, (shape, colour)) in enumerate(UNTITLED):
        scene = _compose(shape, colour, 100 + k)
        save_ply(scene, scans / f"{stem}.ply")
        scenes[f"scans/{stem}.ply"] = scene
    # a .splat copy of a scene, named for what it shows
    scene = _compose("capsule", "white", 7)
    save_scene(scene, root / "white_capsule.splat")
    scenes["white_capsule.splat"] = scene
    # a run directory: scene.ply plus cameras.json (its points.ply is not a scene of its own)
    run = root / "runs" / "snowman_run"
    run.mkdir(parents=True)
    scene = _compose("snowman", None, 8)
    save_ply(scene, run / "scene.ply")
    _write_cameras(run / "cameras.json", scene, root / "photos" / "backyard" / "images")
    (run / "points.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                                    "property float z\nend_header\n0 0 0\n")
    scenes["runs/snowman_run"] = scene
    # a corrupt scene and a PLY mesh that is not a splat scene
    (root / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1000\nproperty float x\n"
                                      b"property float f_dc_0\nend_header\n" + b"\x00" * 17)
    (root / "mesh.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                   "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
                                   "0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    return scenes


def _write_cameras(path: Path, scene, images: Path) -> None:
    """Four cameras around the scene in recon3d's cameras.json layout (via its own writer)."""
    from recon3d.cameras import Cameras
    from recon3d.generation.views import orbit_camera, scene_frame
    from recon3d.train.rundir import write_cameras_json

    centre, radius = scene_frame(scene)
    cams = Cameras.cat([orbit_camera(centre, radius, a, 0.4, 96) for a in (0.3, 1.9, 3.5, 5.1)])
    write_cameras_json(path, cams, [images / f"{i:03d}.png" for i in range(4)], ["train"] * 4)


def _photo(scene, size: int, azimuth: float, elevation: float) -> torch.Tensor:
    """A new view of a scene over white (our rasterizer), as a user's picture of it."""
    from recon3d.generation.views import orbit_camera, scene_frame
    from recon3d.render import render

    centre, radius = scene_frame(scene)
    with torch.no_grad():
        out = render(scene, orbit_camera(centre, radius, azimuth, elevation, size), background=torch.ones(3))
    return out.rgb[0].clamp(0, 1)


@pytest.fixture(scope="module")
def embedder():
    from recon3d.library.embed import TextEmbedder

    return TextEmbedder()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, embedder):
    """The library, indexed once."""
    from recon3d.library import index_library

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("library")
    scenes = make_library(root)
    report = index_library(root, progress=False, embedder=embedder)
    return root, scenes, report


def test_discovery_lists_scenes_once_and_skips_other_plys(tmp_path):
    from recon3d.library.discover import discover

    make_library(tmp_path)
    found = {e.rel: e.kind for e in discover(tmp_path)}
    assert found == {
        **{f"generated/{s}.ply": "ply" for s, _, _ in CAPTIONED},
        **{f"scans/{s}.ply": "ply" for s, _ in UNTITLED},
        "white_capsule.splat": "splat",
        "runs/snowman_run": "run",
        "broken.ply": "ply",  # listed, so that indexing reports it
    }


def test_index_reports_the_corrupt_scene_and_indexes_the_rest(indexed, capsys):
    root, scenes, report = indexed
    assert sorted(report.new) == sorted(scenes)
    assert list(report.failed) == ["broken.ply"]
    assert "vertex" in report.failed["broken.ply"] or "truncated" in report.failed["broken.ply"].lower() \
        or "bytes" in report.failed["broken.ply"]
    assert report.total == len(scenes)
    assert (root / ".recon3d-index" / "library.sqlite").is_file()


def test_own_caption_ranks_its_scene_first(indexed, embedder):
    from recon3d.library import search

    root, _, _ = indexed
    for stem, _, prompt in CAPTIONED:
        results = search(prompt, root, top=3, update=False, embedder=embedder)
        assert results[0].rel == f"generated/{stem}.ply", (prompt, [(r.rel, r.score) for r in results])
        assert results[0].score > results[1].score


def test_other_wording_and_names_find_scenes(indexed, embedder):
    from recon3d.library import search

    root, _, _ = indexed
    # synonyms and names: the text part is MiniLM, not word matching
    for query, expected in [("a crimson box", "generated/gen_001.ply"), ("blue ball", "generated/gen_002.ply"),
                            ("ring shaped green thing", "generated/gen_004.ply"), ("capsule", "white_capsule.splat"),
                            ("snowman", "runs/snowman_run")]:
        results = search(query, root, top=3, update=False, embedder=embedder)
        assert results[0].rel == expected, (query, [(r.rel, round(r.score, 3)) for r in results])


def test_image_of_a_new_viewpoint_finds_the_untitled_scene(indexed, tmp_path, embedder):
    from PIL import Image

    from recon3d.library import search

    root, scenes, _ = indexed
    for rel in ("scans/scan_a.ply", "scans/scan_b.ply", "scans/scan_c.ply", "generated/gen_003.ply"):
        # an azimuth between the thumbnails' (0°, 120°, 240°), another elevation, another size
        rgb = _photo(scenes[rel], size=200, azimuth=math.radians(70), elevation=0.6)
        photo = tmp_path / "photo.png"
        Image.fromarray((rgb.numpy() * 255).round().astype(np.uint8)).save(photo)
        results = search(None, root, image=photo, top=3, update=False)
        assert results[0].rel == rel, (rel, [(r.rel, round(r.score, 3)) for r in results])


def test_text_and_image_together(indexed, tmp_path, embedder):
    from PIL import Image

    from recon3d.library import search

    root, scenes, _ = indexed
    rgb = _photo(scenes["generated/gen_002.ply"], size=128, azimuth=1.0, elevation=0.35)
    photo = tmp_path / "p.png"
    Image.fromarray((rgb.numpy() * 255).round().astype(np.uint8)).save(photo)
    both = search("a blue sphere", root, image=photo, top=2, update=False, embedder=embedder)
    text = search("a blue sphere", root, top=2, update=False, embedder=embedder)
    assert both[0].rel == text[0].rel == "generated/gen_002.ply"
    # the score is the mean of the two cosines: between the text-only score and 1
    image_only = search(None, root, image=photo, top=1, update=False)
    assert both[0].score == pytest.approx((text[0].score + image_only[0].score) / 2, abs=2e-3)


def test_thumbnails_show_the_scene(indexed):
    from PIL import Image

    root, _, _ = indexed
    import sqlite3

    from recon3d.library.store import DB_NAME

    db = sqlite3.connect(root / ".recon3d-index" / DB_NAME)
    thumb = db.execute("SELECT thumb FROM scenes WHERE rel = 'generated/gen_001.ply'").fetchone()[0]
    db.close()
    img = np.asarray(Image.open(root / ".recon3d-index" / "thumbs" / thumb)).astype(float) / 255
    assert img.shape == (128, 3 * 128, 3)
    # a red cube over white: red pixels in each of the three views, white at the corners
    for v in range(3):
        view = img[:, v * 128 : (v + 1) * 128]
        red = (view[..., 0] > 0.6) & (view[..., 1] < 0.3) & (view[..., 2] < 0.3)
        assert red.mean() > 0.03
        assert view[0, 0].min() > 0.95


def _copy_library(indexed, tmp_path) -> Path:
    root, _, _ = indexed
    lib = tmp_path / "lib"
    shutil.copytree(root, lib)
    return lib


def test_reindex_touches_only_changed_files(indexed, tmp_path, embedder, monkeypatch):
    from recon3d.library import index as index_module
    from recon3d.library import index_library, search
    from recon3d.ply import save_ply

    lib = _copy_library(indexed, tmp_path)  # copytree keeps the mtimes (copy2)
    loaded: list[str] = []
    real = index_module.load_entry
    monkeypatch.setattr(index_module, "load_entry", lambda library, entry: loaded.append(entry.rel) or real(library, entry))

    again = index_library(lib, progress=False, embedder=embedder)
    assert loaded == [] and again.new == [] and again.changed == [] and again.unchanged == 11
    assert list(again.still_failed) == ["broken.ply"]  # known broken and unchanged: reported, not retried

    # change one scene's content, touch another (same bytes, new mtime), edit a prompt, delete one
    save_ply(_compose("cube", "green", 42), lib / "scans" / "scan_b.ply")
    st = os.stat(lib / "scans" / "scan_a.ply")
    os.utime(lib / "scans" / "scan_a.ply", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (lib / "generated" / "gen_006.json").write_text(json.dumps({"prompt": "a tiny golden tetrahedron"}))
    (lib / "white_capsule.splat").unlink()
    loaded.clear()
    report = index_library(lib, progress=False, embedder=embedder)
    assert sorted(loaded) == ["generated/gen_006.ply", "scans/scan_b.ply"]
    assert sorted(report.changed) == ["generated/gen_006.ply", "scans/scan_b.ply"]
    assert report.touched == ["scans/scan_a.ply"] and report.removed == ["white_capsule.splat"]
    assert report.total == 10
    assert search("golden tetrahedron", lib, top=1, update=False, embedder=embedder)[0].rel == "generated/gen_006.ply"
    assert all(r.rel != "white_capsule.splat" for r in search("capsule", lib, top=10, update=False, embedder=embedder))


def test_interrupted_indexing_resumes(tmp_path, embedder, monkeypatch):
    from recon3d.library import index as index_module
    from recon3d.library import index_library, search

    lib = tmp_path / "lib"
    make_library(lib)
    batches = []

    def stop_after_two(report):
        batches.append((len(report.new), list(report.failed)))
        if len(batches) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index_library(lib, progress=False, embedder=embedder, batch_size=3, after_batch=stop_after_two)
    # broken.ply sorts first: the first batch is it and two scenes
    assert batches == [(2, ["broken.ply"]), (5, ["broken.ply"])]
    loaded: list[str] = []
    real = index_module.load_entry
    monkeypatch.setattr(index_module, "load_entry", lambda library, entry: loaded.append(entry.rel) or real(library, entry))
    report = index_library(lib, progress=False, embedder=embedder)
    assert len(loaded) == 12 - 6 and len(report.new) == 11 - 5  # only the rest (the broken file is not retried)
    assert list(report.still_failed) == ["broken.ply"]
    assert report.total == 11
    assert search("a red cube", lib, top=1, update=False, embedder=embedder)[0].rel == "generated/gen_001.ply"


def test_vector_index_rebuilt_when_damaged_or_older(indexed, tmp_path, embedder):
    from recon3d.library import search
    from recon3d.library.store import VECTORS_NAME

    lib = _copy_library(indexed, tmp_path)
    (lib / ".recon3d-index" / VECTORS_NAME).write_bytes(b"garbage")  # a vector index file left half-written
    (lib / ".recon3d-index" / "vectors.json").write_text('{"generation": -1}')
    assert search("a yellow cone", lib, top=1, update=False, embedder=embedder)[0].rel == "generated/gen_003.ply"


def test_read_only_library_needs_an_index_path(indexed, tmp_path, embedder, monkeypatch):
    from recon3d.library import index as index_module
    from recon3d.library import index_library, search

    root, _, _ = indexed
    lib = tmp_path / "ro"
    shutil.copytree(root, lib, ignore=shutil.ignore_patterns(".recon3d-index"))
    # tests run as root, for whom a chmod'ed folder stays writable: the check itself is made to say "read-only"
    monkeypatch.setattr(index_module, "_writable", lambda folder: not str(folder).startswith(str(lib)))
    with pytest.raises(InputError, match="read-only.*--index PATH"):
        index_library(lib, progress=False, embedder=embedder)
    with pytest.raises(InputError, match="read-only"):
        search("a red cube", lib, embedder=embedder)
    cache = tmp_path / "cache" / "idx"
    report = index_library(lib, cache, progress=False, embedder=embedder)
    assert report.total == 11 and not (lib / ".recon3d-index").exists()
    hit = search("a red cube", lib, index=cache, embedder=embedder)[0]
    assert hit.path == lib / "generated" / "gen_001.ply"


def test_cli_json_prints_only_the_list(indexed, capsys):
    from recon3d.cli import main

    root, _, _ = indexed
    assert main(["search", "a blue sphere", str(root), "--top", "3", "--json", "--no-update"]) == 0
    out = capsys.readouterr().out
    results = json.loads(out)
    assert [set(r) for r in results] == [{"path", "score"}] * 3
    assert results[0]["path"] == str(root / "generated" / "gen_002.ply")
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]


def test_cli_table_and_index(indexed, capsys):
    from recon3d.cli import main

    root, _, _ = indexed
    assert main(["index", str(root)]) == 0
    captured = capsys.readouterr()
    assert "11 scenes indexed" in captured.out and "0 new" in captured.out
    assert "broken.ply" in captured.err
    assert main(["search", "a yellow cone", str(root), "--top", "2", "--no-update"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2 and "generated/gen_003.ply" in rows[0], out


@pytest.mark.parametrize("argv, message", [
    (["search", "", "{lib}"], "the query is empty"),
    (["search", "   ", "{lib}"], "the query is empty"),
    (["search", "{lib}"], "give a query and the library folder"),
    (["search", "a cube", "{lib}", "--top", "0"], "--top must be"),
    (["search", "a cube", "{missing}"], "no such folder"),
    (["search", "a cube", "{lib}", "--image", "{missing}"], "image not found"),
    (["search", "a cube", "{lib}", "--image", "{notimage}"], "not a readable image"),
    (["index", "{missing}"], "no such folder"),
    (["index", "{file}"], "not a folder"),
    (["search", "x" * 400, "{lib}"], "too long"),
])
def test_cli_bad_input_is_one_line(indexed, tmp_path, capsys, argv, message):
    from recon3d.cli import main

    root, _, _ = indexed
    (tmp_path / "note.txt").write_text("not an image")
    names = {"lib": str(root), "missing": str(tmp_path / "nope"), "notimage": str(tmp_path / "note.txt"),
             "file": str(tmp_path / "note.txt")}
    code = main([a.format(**names) for a in argv] + (["--no-update"] if argv[0] == "search" else []))
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert captured.out == ""


def test_what_is_known_about_a_scene(tmp_path):
    from recon3d.library.discover import discover
    from recon3d.library.metadata import NAME_WEIGHT, name_words, scene_text
    from recon3d.ply import save_ply

    assert name_words("my_scans/redCube-v2/scene.ply") == "my scans red cube v 2"
    assert name_words("garden.compressed.ply") == "garden"
    make_library(tmp_path)
    scene = _compose("cube", "red", 0)
    save_ply(scene, tmp_path / "x.ply")
    # a prompt in the PLY header, as a generator may write it
    raw = (tmp_path / "x.ply").read_bytes().replace(b"comment written by recon3d\n",
                                                     b"comment written by recon3d\ncomment prompt: a lone red box\n", 1)
    (tmp_path / "x.ply").write_bytes(raw)
    (tmp_path / "captions.jsonl").write_text('{"file": "x.ply", "caption": "a box in red"}\nnot json\n')
    texts = {e.rel: scene_text(tmp_path, e).texts for e in discover(tmp_path)}
    assert ("a lone red box", 1.0) in texts["x.ply"] and ("a box in red", 1.0) in texts["x.ply"]
    assert ("x", NAME_WEIGHT) in texts["x.ply"]
    # a run: its folder name and the folder its photos came from
    assert texts["runs/snowman_run"] == [("snowman", NAME_WEIGHT), ("backyard", NAME_WEIGHT)]
    assert texts["scans/scan_a.ply"] == [("scans scan a", NAME_WEIGHT)]


def test_faiss_leaves_torch_threads_as_they_were(tmp_path):
    """faiss runs on one OpenMP thread per call; torch keeps the caller's thread count (they share the runtime)."""
    from recon3d.library.store import VectorIndex

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        index = VectorIndex(8)
        rng = np.random.default_rng(0)
        index.add(np.arange(5), rng.standard_normal((5, 8)))
        labels, _ = index.query(rng.standard_normal(8), 3)
        index.remove([int(labels[0])])
        index.save(tmp_path / "v.faiss")
        VectorIndex.load(tmp_path / "v.faiss", 8)
        assert torch.get_num_threads() == 2 and len(index) == 4
    finally:
        torch.set_num_threads(before)
