"""Pair selection for SfM: sequential neighbours, loop closure and VLAD retrieval against true camera positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recon3d.data import pairs as P


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_sequential_pairs_are_each_item_with_its_next_ones():
    got = P.sequential_pairs(6, 2)
    assert got == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4), (3, 5), (4, 5)}
    assert P.sequential_pairs(1, 8) == set() and len(P.sequential_pairs(100, 8)) == sum(min(8, 99 - i) for i in range(100))


def test_loop_pairs_join_revisits_and_nothing_else_far_apart():
    """A walk that returns the way it came: frame i and frame 39 - i see the same place."""
    rng = np.random.default_rng(0)
    places = _unit(rng.normal(size=(22, 64)))
    place_of = [i if i < 20 else 39 - i for i in range(40)]
    # a frame sees its place and, more faintly, the places either side (so neighbours in time look alike)
    desc = _unit(np.stack([places[p + 1] + 0.6 * places[p] + 0.6 * places[p + 2] for p in place_of])
                 + 0.05 * rng.normal(size=(40, 64)))  # fmt: skip
    pairs = P.loop_pairs(desc, overlap=3, per_frame=2, min_gap=5, ends=0)
    assert pairs, "the revisits were not found"
    for i, j in pairs:  # every loop pair links frames whose places are no further apart than `overlap` frames
        assert j - i >= 5 and abs(place_of[i] - place_of[j]) <= 3, (i, j)
    assert sum(1 for i in range(20) if any((min(i, 39 - i + d), max(i, 39 - i + d)) in pairs for d in (-1, 0, 1))) >= 15
    ends = P.loop_pairs(desc, overlap=3, min_gap=5, ends=3) - pairs
    assert {(0, 39), (0, 37), (2, 39)} <= ends | pairs


def test_loop_pairs_of_a_one_way_pan_add_only_the_ends():
    """Frames that never return: no far frame looks as alike as a near one, only the end pairs are added."""
    rng = np.random.default_rng(1)
    places = _unit(rng.normal(size=(66, 64)))
    weights = np.array([0.3, 0.6, 0.8, 1.0, 0.8, 0.6, 0.3])  # a frame sees 3 places either side, fainter
    desc = _unit(np.stack([weights @ places[i : i + 7] for i in range(60)]))
    assert P.loop_pairs(desc, overlap=4, min_gap=10, ends=2) == {(0, 58), (0, 59), (1, 58), (1, 59)}


def _orbit_descriptors(n: int, rng: np.random.Generator, spread: int = 12) -> np.ndarray:
    """Global descriptors of ``n`` frames of one closed orbit: frame i sees the places around angle 2*pi*i/n
    (``spread`` places either side, fainter with distance: frames a few apart see much the same)."""
    places = _unit(rng.normal(size=(n, 96)))
    weights = np.exp(-0.5 * (np.arange(-spread, spread + 1) / (spread / 2)) ** 2)
    seen = [weights @ places[(i + np.arange(-spread, spread + 1)) % n] for i in range(n)]
    return _unit(np.stack(seen) + 0.02 * rng.normal(size=(n, 96)))


@pytest.mark.parametrize("n", [120, 500])
def test_video_pairs_cover_true_overlaps_and_close_the_orbit(n: int):
    """A closed orbit in frame order: every pair of frames near in truth is chosen, across the seam too,
    and the count grows as N*k (sequential neighbours + a few loop pairs a frame), not as N^2."""
    desc = _orbit_descriptors(n, np.random.default_rng(n))
    names = [f"frame_{i:05d}.jpg" for i in range(n)]
    chosen, counts = P.choose_pairs(names, desc, sequential=True)
    got = {(int(a[6:11]), int(b[6:11])) for a, b in chosen}
    circular = lambda i, j: min(abs(i - j), n - abs(i - j))  # noqa: E731  (the truth: distance on the orbit)
    near = {(i, j) for i in range(n) for j in range(i + 1, n) if circular(i, j) <= P.SEQUENTIAL_OVERLAP}
    across_seam = {(i, j) for i, j in near if j - i > P.SEQUENTIAL_OVERLAP}
    assert near - across_seam <= got  # sequential neighbours
    # across the seam (far apart in frame order, near on the orbit): the first 6 frames each with the last
    # 2, the last 6 with the first 2 -- beyond the first/last 3 x 3 that are always added, found by looks
    seam = {(i, n - 1 - d) for i in range(6) for d in range(2)} | {(d, n - 1 - i) for i in range(6) for d in range(2)}
    assert seam <= got, sorted(seam - got)
    far_loop = {(i, j) for i, j in got if j - i > P.SEQUENTIAL_OVERLAP and circular(i, j) > 2 * P.SEQUENTIAL_OVERLAP}
    assert far_loop <= {(i, j) for i in range(P.LOOP_ENDS) for j in range(n - P.LOOP_ENDS, n)}, sorted(far_loop)
    bound = n * (P.SEQUENTIAL_OVERLAP + P.LOOP_NEIGHBOURS) + P.LOOP_ENDS**2
    assert counts["total"] == len(got) <= bound
    assert counts["sequential"] + counts["loop_closure"] == counts["total"]


@pytest.mark.parametrize("n", [120, 500])
def test_unordered_pairs_find_true_neighbours_of_a_shuffled_orbit(n: int):
    """The orbit's frames under shuffled names: retrieval links each frame with its 2 true neighbours,
    and the count stays within N * (name-order + retrieval neighbours)."""
    desc = _orbit_descriptors(n, np.random.default_rng(n + 1))
    order = np.random.default_rng(7).permutation(n)  # names carry no order information
    names = [f"img_{k:05d}_{i}.jpg" for k, i in enumerate(order)]
    chosen, counts = P.choose_pairs(names, desc[order], sequential=False)
    got = {frozenset(int(x.rsplit("_", 1)[1][:-4]) for x in pair) for pair in chosen}
    missed = [(i, (i + d) % n) for i in range(n) for d in (1, 2) if frozenset((i, (i + d) % n)) not in got]
    assert not missed, missed[:10]
    assert counts["total"] == len(got) <= n * (P.NAME_NEIGHBOURS + P.RETRIEVAL_NEIGHBOURS)


def test_retrieval_pairs_take_the_most_similar():
    desc = _unit(np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1]]))
    assert P.retrieval_pairs(desc, 1) == {(0, 1), (2, 3), (3, 4)}
    assert P.retrieval_pairs(desc[:1], 3) == set()


def test_vlad_of_identical_and_disjoint_descriptor_sets():
    rng = np.random.default_rng(2)
    a, b = _unit(rng.normal(size=(300, 128))).astype(np.float32), _unit(rng.normal(size=(300, 128))).astype(np.float32)
    g = P.global_descriptors([a, a[::-1].copy(), b, np.zeros((0, 128), np.float32)], words=8)
    assert np.allclose(np.linalg.norm(g[:3], axis=1), 1.0, atol=1e-5) and not g[3].any()
    assert g[0] @ g[1] == pytest.approx(1.0, abs=1e-5)  # order of features does not matter
    assert g[0] @ g[2] < 0.9


@pytest.fixture(scope="module")
def garden_vlad(tmp_path_factory, project_root_module) -> tuple[list[str], np.ndarray, np.ndarray]:
    """VLAD rows of the shipped garden's 36 orbit views (SIFT by pycolmap) and the true camera centres."""
    import pycolmap

    garden = project_root_module / "examples" / "garden"
    work = tmp_path_factory.mktemp("vlad")
    names = sorted(p.name for p in (garden / "images").glob("*.jpg"))
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 2
    pycolmap.logging.minloglevel = 2
    pycolmap.extract_features(work / "db.db", garden / "images", extraction_options=extraction,
                              device=pycolmap.Device.cpu)  # fmt: skip
    desc = P.global_descriptors(P.read_descriptors(work / "db.db", names))
    meta = json.loads((garden / "transforms.json").read_text())
    centre = {Path(f["file_path"]).name: np.asarray(f["transform_matrix"])[:3, 3] for f in meta["frames"]}
    return names, desc, np.stack([centre[n] for n in names])


@pytest.fixture(scope="module")
def project_root_module() -> Path:
    return Path(__file__).resolve().parents[1]


def test_vlad_retrieval_finds_the_true_neighbours_on_the_orbit(garden_vlad):
    """Each view's most similar view by VLAD is one of its 2 nearest cameras, in truth (true centres)."""
    names, desc, centres = garden_vlad
    n = len(names)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    true_near = np.argsort(dist, axis=1)[:, :2]
    sim = desc @ desc.T
    np.fill_diagonal(sim, -np.inf)
    best = np.argmax(sim, axis=1)
    assert all(best[i] in true_near[i] for i in range(n))
    # and the unordered-set choice (retrieval + name order), fed shuffled names, links every true neighbour
    order = np.random.default_rng(3).permutation(n)
    chosen, counts = P.choose_pairs([names[i] for i in order], desc[order], sequential=False)
    linked = {frozenset(p) for p in chosen}
    missed = [(i, j) for i in range(n) for j in true_near[i] if frozenset((names[i], names[j])) not in linked]
    assert not missed and counts["retrieval"] > 0 and counts["total"] < n * (n - 1) // 2


@pytest.mark.slow
def test_sfm_beyond_the_exhaustive_limit_uses_chosen_pairs(project_root, tmp_path, monkeypatch):
    """With the exhaustive limit below 36, the shipped garden registers every view from chosen pairs."""
    from recon3d.data import load_dataset, photos

    monkeypatch.setattr(photos, "EXHAUSTIVE_LIMIT", 10)
    shutil.copytree(project_root / "examples" / "garden" / "images", tmp_path / "images")
    data = load_dataset(tmp_path / "images", work_dir=tmp_path / "w")
    manifest = json.loads((tmp_path / "w" / "sfm" / "manifest.json").read_text())
    assert manifest["registered"] == [36, 36] and len(data.image_paths) == 36
    assert 0 < manifest["pairs"]["total"] < 36 * 35 // 2 and manifest["pairs"]["retrieval"] > 0
    assert set(manifest["stages"]) == {"features", "pairs", "matching", "mapping"}
