"""The scene and image encoders (recon3d.understand) and describe, checked against independent facts:
permutation invariance of the set encoder, composed scenes whose captions are known (a scene's own caption
must rank first among distractors; a library of untitled scenes found by text and by a new view), scenes
unlike anything composed (describe must refuse), and one-line errors for bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon3d.errors import InputError

# distinct shapes and well-separated colours: the distractors differ from each scene in shape and colour
SCENES = [("cube", "red"), ("sphere", "blue"), ("cone", "yellow"), ("torus", "green"), ("cylinder", "purple"),
          ("pyramid", "orange")]


def _compose(shape: str, colour: str | None, seed: int, per_object: int = 300):
    from recon3d.generation.composer import compose_grammar_scene
    from recon3d.generation.grammar import bare_scene

    return compose_grammar_scene(bare_scene(shape, colour), per_object=per_object, seed=seed)[0]


@pytest.fixture(scope="module")
def embedder():
    from recon3d.library.embed import TextEmbedder

    torch.set_num_threads(1)
    return TextEmbedder()


def test_scene_encoder_ignores_the_order_of_the_gaussians():
    from recon3d.understand.model import SceneEncoder

    torch.manual_seed(0)
    enc = SceneEncoder(width=32, heads=2, inducing=4, blocks=1, seeds=2).eval()
    x = torch.randn(3, 64, 9)
    with torch.no_grad():
        a = enc(x)
        b = enc(x[:, torch.randperm(64)])
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)


def test_scene_features_do_not_depend_on_where_the_scene_stands_or_its_density():
    from recon3d.understand.features import normalise_rows, visible_rows

    scene = _compose("cube", "red", 0)
    rows = normalise_rows(visible_rows(scene))
    moved = scene.clone() if hasattr(scene, "clone") else scene
    shifted = visible_rows(scene)
    shifted[:, :3] += np.array([3.0, -2.0, 1.0])
    assert np.allclose(normalise_rows(shifted), rows, atol=1e-5)
    # twice the Gaussians of half the area each: the relative size feature stays where it was
    dense = _compose("cube", "red", 0, per_object=1200)
    assert abs(float(np.median(normalise_rows(visible_rows(dense))[:, 3])) - float(np.median(rows[:, 3]))) < 1e-6
    assert moved is not None


def test_own_caption_ranks_first_among_distractors(embedder):
    from recon3d.understand.describe import scene_embeddings

    q = []
    for k, (shape, colour) in enumerate(SCENES):
        s, v = scene_embeddings(_compose(shape, colour, 40 + k))
        q.append((s + v) / np.linalg.norm(s + v))
    q = np.stack(q)
    texts = [f"a {colour} {shape}" for shape, colour in SCENES]
    enc = embedder.embed(texts)
    t = np.stack([enc[x] for x in texts])
    sims = q @ t.T
    assert (sims.argmax(1) == np.arange(len(SCENES))).all(), np.round(sims, 3)


@pytest.mark.slow
def test_untitled_scenes_are_found_by_text_and_by_a_new_view(tmp_path, embedder):
    from recon3d.generation.views import render_view
    from recon3d.library import index_library, search
    from recon3d.ply import save_ply

    scenes = {}
    for k, (shape, colour) in enumerate(SCENES):
        scene = _compose(shape, colour, 60 + k)
        save_ply(scene, tmp_path / f"untitled_{k}.ply")  # nothing written about it: no prompt, a bare name
        scenes[f"untitled_{k}.ply"] = scene
    index_library(tmp_path, progress=False, embedder=embedder)
    hits = 0
    for k, (shape, colour) in enumerate(SCENES):
        rel = f"untitled_{k}.ply"
        found = search(f"can you make a {shape} that is {colour}", tmp_path, top=1, update=False, embedder=embedder)
        hits += found[0].rel == rel
        rgb, _ = render_view(scenes[rel], 96, azimuth=math.radians(70), elevation=0.6)
        image_hit = search(None, tmp_path, image=rgb.numpy(), top=1, update=False)
        assert image_hit[0].rel == rel, (rel, image_hit[0].rel)
    assert hits == len(SCENES), hits


def test_describe_names_a_composed_scene():
    """Shape and count are read right; the colour named is nearer the true colour than the other scenes' colours.

    At the shipped weights the heads name colours close to the truth but often not within the judge's
    tolerance (ΔE ≤ 12: `crimson` for red, `jade` for green); benchmarks/search.py recall measures that share
    over 200 scenes rather than this test asserting it.
    """
    from recon3d.generation.grammar import COLOUR_RGB, Scene, delta_e
    from recon3d.understand.describe import describe

    palette = np.array([COLOUR_RGB[c] for _, c in SCENES])
    shapes_right, colours_nearest = 0, 0
    for k, (shape, colour) in enumerate(SCENES):
        d = describe(_compose(shape, colour, 80 + k))
        assert d.known, d.text
        got = Scene.from_json(d.structure)
        g = got.groups[0]
        shapes_right += len(got.groups) == 1 and g.shape == shape and g.count == 1
        colours_nearest += int(np.argmin(delta_e(palette, np.array(COLOUR_RGB[g.colour])[None]))) == k
    assert shapes_right >= 5, shapes_right
    assert colours_nearest >= 5, colours_nearest


def _cloud(n: int, seed: int):
    """Gaussians strewn through a box with random colours and sizes: nothing the composer makes."""
    from recon3d.scene import GaussianScene, rgb_to_sh0

    g = torch.Generator().manual_seed(seed)
    return GaussianScene(means=torch.rand(n, 3, generator=g) * 4 - 2, scales=torch.rand(n, 3, generator=g) * 2 - 5,
                         quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
                         opacities=torch.randn(n, generator=g), sh0=rgb_to_sh0(torch.rand(n, 1, 3, generator=g)))


def test_describe_refuses_scenes_unlike_what_it_knows():
    from recon3d.understand.describe import describe

    for seed in range(3):
        d = describe(_cloud(4000, seed))
        assert not d.known and d.caption is None and "unlike" in d.text, d.text
        assert d.familiarity < d.threshold or d.agreement < d.agreement_threshold


def test_describe_bad_input_is_one_line(tmp_path, capsys):
    from recon3d.cli import main

    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nproperty float x\n"
                                          b"end_header\n\x00\x00")
    for target, message in ((tmp_path / "nope.ply", "no such scene file"), (tmp_path / "empty_dir", "not a run directory"),
                            (tmp_path / "broken.ply", "broken.ply")):
        code = main(["describe", str(target)])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], captured.err
    with pytest.raises(InputError):
        from recon3d.understand.describe import describe

        describe(tmp_path / "nope.ply")


def test_extra_training_captions_keep_the_scene_and_never_use_held_out_wording():
    import json

    from recon3d.generation.grammar import (
        HELDOUT_WRAPPERS,
        SHAPE_WORDS,
        WRAPPERS,
        Relation,
        Scene,
        Thing,
        training_rules,
    )
    from recon3d.understand.data import extra_captions

    spec = Scene([Thing("cube", "red", None, 2), Thing("sphere", "blue")], [Relation(0, "on", [1])])
    caps = extra_captions(json.dumps(spec.to_json()), 0, 3, 5, training_rules(), count=12)
    assert len(caps) == 12 and len(set(caps)) > 3  # other wordings, not one caption repeated
    held = [WRAPPERS[w].format("").strip() for w in HELDOUT_WRAPPERS]
    for c in caps:
        assert not any(c.startswith(h) for h in held), c
        assert " that is " not in c and " that are " not in c and " in red" not in c, c  # held-out templates
        assert "red" in c and "blue" in c, c
        assert any(w in c for w in SHAPE_WORDS["cube"]) and any(w in c for w in SHAPE_WORDS["sphere"]), c
    # deterministic: the same scene and seed give the same captions
    assert caps == extra_captions(json.dumps(spec.to_json()), 0, 3, 5, training_rules(), count=12)


def test_paraphrases_keep_the_scene_and_keep_the_held_out_wordings_out_of_training():
    from recon3d.generation.grammar import HELDOUT_WRAPPERS, WRAPPERS, Relation, Scene, Thing
    from recon3d.understand.data import (
        PARA_TEMPLATES,
        PARA_WRAPPERS,
        VAL_ONLY_TEMPLATES,
        VAL_ONLY_WRAPPERS,
        para_caption,
    )

    spec = Scene([Thing("cube", "red", "small", 2), Thing("sphere", "blue")], [Relation(0, "on", [1])])
    train = [para_caption(spec, np.random.default_rng(k)) for k in range(300)]
    val = [para_caption(spec, np.random.default_rng(k), validation=True) for k in range(50)]
    held = [WRAPPERS[w].format("").strip() for w in HELDOUT_WRAPPERS]
    val_marks = [PARA_WRAPPERS[w].format("").strip() for w in VAL_ONLY_WRAPPERS]
    val_marks += [PARA_TEMPLATES[t].format(size="", noun="", colour="").strip() for t in VAL_ONLY_TEMPLATES]
    assert len(set(train)) > 100  # many wordings
    for c in train + val:
        assert not any(c.startswith(h) for h in held), c  # the benchmark's held-out wrappers
        assert " that is " not in c and " that are " not in c and " in red" not in c and " in blue" not in c, c
        assert "red" in c and "blue" in c and "small" in c and ("two" in c or "2" in c or "pair" in c), c
    for c in train:  # our validation-only wordings never reach training
        assert not any(m in c for m in val_marks), c
    for c in val:
        assert c.startswith("an illustration of") and "of red colour" in c, c


def test_extra_views_compose_the_chunk_scenes_again(tmp_path, monkeypatch):
    from recon3d.generation.grammar import training_rules
    from recon3d.understand import data as D

    class Fake:  # a stand-in text encoder: this test is about the scenes
        def encode(self, caps):
            return None, None, torch.zeros(len(caps), 384)

    monkeypatch.setattr(D, "CHUNK", 2)
    torch.set_num_threads(1)
    path = tmp_path / "chunk-5-00007.npz"
    D.build_chunk(path, 5, 7, Fake(), training_rules())
    D.build_views(path, training_rules())
    D.build_paraphrases(path, Fake())
    d = D.load_chunks(tmp_path)
    assert d["more_views"].shape == (2, D.MORE_VIEWS, D.VIEW_SIZE, D.VIEW_SIZE, 3)
    assert list(d["views_n"]) == [D.MORE_VIEWS] * 2 and list(d["more_n"]) == [D.MORE_CAPTIONS] * 2
    for k in range(2):
        extra = np.load(D.views_path(path))["views"][k]
        assert not np.array_equal(extra[0], d["views"][k]) and not np.array_equal(extra[0], extra[1])
        # replaying the scene's seeds gives the chunk's scene (its rows and its view, bit for bit) ...
        rng = np.random.default_rng([5, 7, k])
        _, scene, _ = D.compose_example(rng, training_rules())
        rows = D.scene_rows(scene, rng)
        assert np.array_equal(rows, d["rows"][k, : len(rows)]) and d["counts"][k] == len(rows)
        assert np.array_equal(D.render_random_view(scene, rng), d["views"][k])
        # ... and the extra views are that scene seen from the extra views' own random viewpoints
        r2 = np.random.default_rng([5, 7, k, 4000])
        for v in extra:
            assert np.array_equal(D.render_random_view(scene, r2), v)
            assert (v < 245).any(-1).mean() > 0.02  # the objects are in the frame


def test_hard_negative_batches_are_distinct_and_pair_scenes_of_one_kind():
    from recon3d.understand.train import pick_batch

    rng = np.random.default_rng(0)
    bucket_of = rng.integers(0, 20, size=500)
    buckets = {c: np.flatnonzero(bucket_of == c) for c in range(20)}
    idx = pick_batch(500, 64, buckets, bucket_of, np.random.default_rng(1), hard=0.5)
    assert len(idx) == 64 and len(set(idx.tolist())) == 64 and idx.max() < 500
    # the hard half comes in consecutive pairs from one bucket: far more same-bucket neighbours than chance (1/20)
    same = np.mean([bucket_of[idx[k]] == bucket_of[idx[k + 1]] for k in range(0, 30, 2)])
    assert same > 0.8
    plain = pick_batch(500, 64, buckets, bucket_of, np.random.default_rng(1), hard=0.0)
    assert len(set(plain.tolist())) == 64


def test_learning_rate_decays_by_the_clock_from_peak_to_floor():
    from recon3d.understand.train import lr_at

    assert lr_at(0.0, 0.0, 100.0, 2e-3, 1e-4) == pytest.approx(2e-3)
    assert lr_at(50.0, 0.0, 100.0, 2e-3, 1e-4) == pytest.approx((2e-3 + 1e-4) / 2)
    assert lr_at(100.0, 0.0, 100.0, 2e-3, 1e-4) == pytest.approx(1e-4)
    assert lr_at(500.0, 0.0, 100.0, 2e-3, 1e-4) == pytest.approx(1e-4)


def test_until_is_the_next_utc_time_of_day():
    import calendar

    from recon3d.understand.train import next_utc

    now = float(calendar.timegm((2026, 12, 7, 23, 30, 0)))
    assert next_utc("23:45", now) == now + 15 * 60
    assert next_utc("00:25", now) == now + 55 * 60  # after midnight: tomorrow's, not this morning's


def test_query_image_shifts_are_the_training_shifts():
    """encode's test-time shifts of a query move it as the training augmentation (train.shifted_views) does."""
    from recon3d.understand.encode import QUERY_SHIFTS, shift_views

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
    padded = np.pad(img[0], ((1, 1), (1, 1), (0, 0)), constant_values=255)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            want = padded[1 + dy:9 + dy, 1 + dx:9 + dx]  # the crop train.shifted_views takes for (dy, dx)
            got = (shift_views(x, dy, dx)[0].permute(1, 2, 0) * 255).round().numpy().astype(np.uint8)
            np.testing.assert_array_equal(got, want)
    assert (0, 0) in QUERY_SHIFTS and len(set(QUERY_SHIFTS)) == len(QUERY_SHIFTS)


def test_image_query_embedding_is_the_unit_mean_over_its_shifts():
    from recon3d.understand.encode import image_query_embeddings, shift_views
    from recon3d.understand.model import Encoders
    from recon3d.understand.train import CONFIG

    torch.manual_seed(0)
    model = Encoders(CONFIG).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain = model.image(x)
        np.testing.assert_allclose(image_query_embeddings(model, x, shifts=((0, 0),)).numpy(), plain.numpy(), atol=1e-6)
        each = [model.image(shift_views(x, dy, dx)).numpy() for dy, dx in ((0, 0), (1, 0), (0, -1))]
    mean = np.mean(each, 0)
    want = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    got = image_query_embeddings(model, x, shifts=((0, 0), (1, 0), (0, -1))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.linalg.norm(got - plain.numpy(), axis=1).min() > 0  # the shifts change the embedding


def test_shifted_views_move_the_image_by_at_most_a_pixel_with_white_coming_in():
    from recon3d.understand.train import shifted_views

    views = np.full((40, 8, 8, 3), 255, np.uint8)
    views[:, 3:5, 3:5] = 0  # a dark square in the middle
    out = shifted_views(views, np.random.default_rng(0), p=1.0)
    assert out.shape == views.shape
    for v in out:
        ys, xs = np.nonzero(v[..., 0] == 0)
        assert len(ys) == 4 and abs(ys.min() - 3) <= 1 and abs(xs.min() - 3) <= 1
    assert (out != views).any(axis=(1, 2, 3)).sum() > 20  # most moved (8 of 9 offsets move)


def test_measured_structure_takes_colours_and_a_true_relation_from_the_gaussians():
    """The heads' graph with neighbour colours and a relation that does not hold: measuring the scene's own
    Gaussians names the true colours (within the judge's ΔE) and picks the most probable relation that holds."""
    from recon3d.generation.composer import compose_grammar_scene
    from recon3d.generation.grammar import COLOUR_RGB, Relation, Scene, Thing, delta_e
    from recon3d.generation.judge import COLOUR_TOLERANCE
    from recon3d.understand.describe import measure_structure

    truth = Scene([Thing("cube", "red"), Thing("sphere", "blue")], [Relation(0, "on", (1,))])
    scene = compose_grammar_scene(truth, per_object=300, seed=5)[0]
    # the heads' guess: wrong shapes, neighbour colours, a relation that does not hold
    guess = Scene([Thing("pyramid", "indian red"), Thing("cone", "slate blue")], [Relation(0, "left", (1,))])
    assert delta_e(np.array(COLOUR_RGB["indian red"]), np.array(COLOUR_RGB["red"])) > COLOUR_TOLERANCE
    got = measure_structure(scene, guess, ["left", "right", "on", "above", "under"])
    for g, want in zip(got.groups, ("red", "blue")):
        assert delta_e(np.array(COLOUR_RGB[g.colour]), np.array(COLOUR_RGB[want])) <= COLOUR_TOLERANCE, g.colour
    assert got.relations[0].relation == "on"  # 'left' does not hold; 'on' is the next that does
    # each group's shape read by the encoders and heads from its own Gaussians (the shipped weights)
    assert [(g.shape, g.count) for g in got.groups] == [("cube", 1), ("sphere", 1)]
    # a composite: the named colour is its main part's, not the trunk's brown
    tree = compose_grammar_scene(Scene([Thing("tree", "purple")]), per_object=400, seed=6)[0]
    got = measure_structure(tree, Scene([Thing("tree", "medium purple")]), [])
    assert delta_e(np.array(COLOUR_RGB[got.groups[0].colour]), np.array(COLOUR_RGB["purple"])) <= COLOUR_TOLERANCE


def test_text_query_score_is_the_weighted_cosine_less_the_scenes_hubness():
    """The fused inner product against an independent computation: Σ w_k cos(q, part_k), less β times the
    mean of the scene's 50 best weighted-cosine scores over the bank's captions (text queries only)."""
    from recon3d.understand import fusion

    rng = np.random.default_rng(5)

    def unit(n):
        x = rng.standard_normal((n, 384))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    t, s, i = unit(1)[0], unit(1)[0], unit(1)[0]
    q = unit(1)[0]
    with np.load(fusion.QUERY_BANK_FILE) as z:
        bank = z["emb"].astype(np.float64)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    wt, ws, wi = fusion.QUERY_WEIGHTS["text"]
    per_caption = wt * bank @ t + ws * bank @ s + wi * bank @ i
    hub = np.sort(per_caption)[-fusion.HUB_K:].mean()
    v = fusion.fuse(t, s, i)
    assert v.shape == (fusion.DIM,) and abs(v[-1] - hub) < 1e-5
    want = wt * q @ t + ws * q @ s + wi * q @ i - fusion.HUB_BETA * hub
    assert abs(float(fusion.query_vector(q, None) @ v) - want) < 1e-5
    # an image query: the weighted cosine alone
    vt, vs, vi = fusion.QUERY_WEIGHTS["image"]
    assert abs(float(fusion.query_vector(None, q) @ v) - (vt * q @ t + vs * q @ s + vi * q @ i)) < 1e-5
    # a missing part is zeros, and many scenes at once fuse as one at a time
    many = fusion.fuse_many(np.stack([t, np.zeros(384)]), np.stack([s, s]), np.stack([i, i]))
    np.testing.assert_allclose(many[0], v, atol=1e-6)
    np.testing.assert_allclose(many[1], fusion.fuse(None, s, i), atol=1e-6)
