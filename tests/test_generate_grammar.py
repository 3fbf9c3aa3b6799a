"""The round-2 grammar and composer: colours, synonyms, counts, relations, layouts and held-out sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon3d.generation import grammar as g
from recon3d.generation.composer import compose_grammar, compose_grammar_scene
from recon3d.generation.judge import count_objects, judge_scene, relation_holds, silhouette_iou

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_palette_has_100_real_colours_with_light_and_dark_shades():
    assert len(g.COLOUR_RGB) >= 100
    assert all(0 <= c <= 1 for rgb in g.COLOUR_RGB.values() for c in rgb)
    # CSS values, read from the hex strings (an independent spelling of the same numbers)
    assert np.allclose(g.COLOUR_RGB["crimson"], (220 / 255, 20 / 255, 60 / 255))
    assert np.allclose(g.COLOUR_RGB["lime green"], (50 / 255, 205 / 255, 50 / 255))
    assert g.COLOUR_RGB["grey"] == g.COLOUR_RGB["gray"]
    for base in ("red", "green", "blue", "purple", "brown"):
        light, dark = (np.mean(g.COLOUR_RGB[f"{w} {base}"]) for w in ("light", "dark"))
        assert light > np.mean(g.COLOUR_RGB[base]) > dark
    # ΔE: CIELAB of pure white is L=100, a=b=0; red vs a lighter red is closer than red vs blue
    assert np.allclose(g.srgb_to_lab(np.ones(3)), [100, 0, 0], atol=0.05)
    assert g.delta_e(np.array(g.COLOUR_RGB["red"]), np.array(g.COLOUR_RGB["crimson"])) < g.delta_e(
        np.array(g.COLOUR_RGB["red"]), np.array(g.COLOUR_RGB["blue"]))


def test_shape_synonyms_plurals_counts_and_relations_are_wide():
    assert {"ball", "box", "block", "donut", "ring", "tube", "pill", "cone", "pyramid"} <= {
        w for ws in g.SHAPE_WORDS.values() for w in ws}
    assert g.plural("box") == "boxes" and g.plural("torus") == "tori" and g.plural("pine tree") == "pine trees"
    assert sorted(g.COUNT_WORDS) == [1, 2, 3, 4, 5]
    assert len(g.RELATIONS) >= 12
    phrasings = {p for ps in g.RELATION_WORDS.values() for p in ps}
    for p in ("on", "on top of", "above", "under", "below", "beneath", "beside", "next to", "near", "left of",
              "right of", "in front of", "behind", "between", "around", "in a row", "stacked"):
        assert p in phrasings, p


def test_captions_name_every_group_and_return_the_mention_order():
    rng = np.random.default_rng(0)
    scene = g.Scene([g.Thing("cube", "teal", count=3), g.Thing("sphere", "gold")], [g.Relation(0, "left", (1,))])
    cap = g.caption(scene, rng, template="plain", wrapper="bare")
    assert cap.order == [0, 1]
    assert "teal cubes" in cap.text and "gold sphere" in cap.text and ("left of" in cap.text)
    between = g.Scene([g.Thing("sphere", "red"), g.Thing("cube", "blue"), g.Thing("cone", "green")],
                      [g.Relation(0, "between", (1, 2))])
    cap = g.caption(between, rng, template="plain", wrapper="bare")
    assert cap.order == [0, 1, 2] and " between " in cap.text and " and " in cap.text
    triple = g.Scene([g.Thing("sphere", "red"), g.Thing("cube", "blue"), g.Thing("cone", "green")],
                     [g.Relation(0, "on", (1,)), g.Relation(2, "left", (1,))])
    cap = g.caption(triple, rng, template="plain", wrapper="bare")
    assert "the blue" in cap.text  # the second mention of the shared anchor is definite


@pytest.mark.parametrize("relation", ["on", "above", "under", "beside", "near", "left", "right", "front", "behind"])
def test_composed_pairs_satisfy_their_relation(relation):
    rng = np.random.default_rng(1)
    for _ in range(3):
        scene = g.Scene([g.Thing("cube", "red"), g.Thing("sphere", "blue")], [g.Relation(0, relation, (1,))])
        feats, slots, layout = compose_grammar(scene, 200, rng)
        assert feats.shape == (400, 14) and np.isfinite(feats).all()
        assert (slots[:200] == 0).all() and (slots[200:] == 1).all()
        a, b = (np.asarray(layout[k]["centre"]) for k in (0, 1))
        assert relation_holds(relation, a[None], [b[None]]), (relation, a, b)
        # no object sinks below the ground, and objects do not overlap (boxes apart or stacked)
        assert feats[:, 2].min() > -0.02
        lo = [np.asarray(item["lo"]) for item in layout]
        hi = [np.asarray(item["hi"]) for item in layout]
        overlap = np.minimum(hi[0], hi[1]) - np.maximum(lo[0], lo[1])
        assert (overlap < 0.02).any()


def test_groups_between_around_rows_and_stacks():
    rng = np.random.default_rng(2)
    for count in range(1, 6):
        feats, slots, layout = compose_grammar(g.bare_scene("sphere", "red", count=count), 100, rng)
        assert len(layout) == count and feats.shape[0] == 100 * count
        assert np.bincount(slots).tolist() == [100] * count
    stack = g.Scene([g.Thing("cube", "red", count=3, arrangement="stack")])
    _, _, layout = compose_grammar(stack, 100, rng)
    z = [item["centre"][2] for item in layout]
    assert z == sorted(z) and relation_holds("stack", np.array([i["centre"] for i in layout]), [])
    row = g.Scene([g.Thing("cube", "red", count=4, arrangement="row")])
    _, _, layout = compose_grammar(row, 100, rng)
    assert relation_holds("row", np.array([i["centre"] for i in layout]), [])
    around = g.Scene([g.Thing("sphere", "red", "small", count=4), g.Thing("cube", "blue")], [g.Relation(0, "around", (1,))])
    _, _, layout = compose_grammar(around, 100, rng)
    c = np.array([i["centre"] for i in layout])
    assert relation_holds("around", c[:4], [c[4:]])
    between = g.Scene([g.Thing("sphere", "red"), g.Thing("cube", "blue", count=2)], [g.Relation(0, "between", (1,))])
    _, _, layout = compose_grammar(between, 100, rng)
    c = np.array([i["centre"] for i in layout])
    assert relation_holds("between", c[:1], [c[1:]])


def test_slot_order_follows_the_caption_not_the_group_list():
    rng = np.random.default_rng(3)
    scene = g.Scene([g.Thing("cube", "red"), g.Thing("sphere", "blue", count=2)])
    _, slots, layout = compose_grammar(scene, 50, rng, order=[1, 0])
    assert [item["shape"] for item in layout] == ["sphere", "sphere", "cube"]
    assert np.bincount(slots).tolist() == [50, 50, 50]


@pytest.mark.heldout
def test_training_scenes_never_contain_held_out_pairs_combos_or_templates():
    from recon3d.generation.data import load_heldout, normalise_prompt

    held = load_heldout()
    rules = g.training_rules(held)
    rng = np.random.default_rng(4)
    prompts = {normalise_prompt(p) for p in held.prompts}
    for _ in range(3000):
        scene = g.random_scene(rng, rules)
        cap = g.caption(scene, rng, rules)
        assert scene.num_objects <= g.MAX_OBJECTS
        for t in scene.groups:
            rgb = g.COLOUR_RGB.get(t.colour)
            assert not any(s == t.shape and g.COLOUR_RGB[c] == rgb for s, c in rules.pairs)
            if t.arrangement:
                assert (t.count, t.arrangement) not in g.VALIDATION_COUNT_RELATIONS
        for r in scene.relations:
            assert (scene.groups[r.subject].count, r.relation) not in g.VALIDATION_COUNT_RELATIONS
        assert cap.template not in g.HELDOUT_OBJECT_TEMPLATES and cap.wrapper not in g.HELDOUT_WRAPPERS
        assert normalise_prompt(cap.text) not in prompts
    # aliases of a held-out colour are held out too (grey for gray)
    assert g.Rules(pairs={("cube", "gray")}).pair_held("cube", "grey")


def test_judge_reads_composed_scenes_counts_and_silhouettes():
    scene = g.Scene([g.Thing("cube", "teal"), g.Thing("sphere", "gold", count=2)], [g.Relation(0, "left", (1,))])
    gt, _ = compose_grammar_scene(scene, 400, seed=0)
    v = judge_scene(gt, scene)
    assert v.all_ok and v.counted == 3, (v.objects, v.details)
    wrong = g.Scene([g.Thing("cone", "navy"), g.Thing("sphere", "gold", count=2)], [g.Relation(0, "right", (1,))])
    v = judge_scene(gt, wrong)
    assert not v.shapes_ok and not v.colours_ok and not v.relations_ok
    other, _ = compose_grammar_scene(scene, 400, seed=1)
    cube, _ = compose_grammar_scene(g.bare_scene("cube", "red"), 400, seed=0)
    sphere, _ = compose_grammar_scene(g.bare_scene("sphere", "red"), 400, seed=0)
    assert silhouette_iou(cube, cube) == pytest.approx(1.0)
    assert silhouette_iou(sphere, cube) < silhouette_iou(cube, compose_grammar_scene(g.bare_scene("cube", "red"), 400, seed=5)[0])
    assert 0.0 <= silhouette_iou(other, gt) <= 1.0
    five, _ = compose_grammar_scene(g.Scene([g.Thing("sphere", "red", count=5, arrangement="row")]), 1024, seed=2)
    assert count_objects(five) == 5
    assert count_objects(cube) == 1 and torch.isfinite(cube.means).all()


@pytest.mark.heldout
def test_wide_captions_add_forms_but_keep_the_held_out_wording_out():
    from recon3d.generation.data import load_heldout

    rules = g.training_rules(load_heldout())
    rng = np.random.default_rng(6)
    templates, wrappers = set(), set()
    for _ in range(1500):
        scene = g.random_scene(rng, rules, weights=(0.1, 0.1, 0.2, 0.35, 0.25))
        cap = g.caption(scene, rng, rules, wide=True)
        templates.add(cap.template)
        wrappers.add(cap.wrapper)
        assert cap.template not in g.HELDOUT_OBJECT_TEMPLATES and cap.wrapper not in g.HELDOUT_WRAPPERS
        for word in (" that is ", " that are ", "a picture of", "can you make"):
            assert word not in f" {cap.text} "
        for t in scene.groups:  # every colour named still appears in the caption
            if t.colour:
                assert t.colour in cap.text
    assert set(g.WIDE_OBJECT_TEMPLATES) <= templates and set(g.WIDE_WRAPPERS) <= wrappers
    # the default draws none of the wider forms (the benchmark's prompt sets stay as they were)
    rng = np.random.default_rng(6)
    for _ in range(500):
        cap = g.caption(g.random_scene(rng, rules), rng, rules)
        assert cap.template in g.OBJECT_TEMPLATES and cap.wrapper in g.WRAPPERS
    thing = g.Thing("cube", "red")
    phrases = {t: g.object_phrase(thing, t, np.random.default_rng(0)) for t in g.WIDE_OBJECT_TEMPLATES}
    assert phrases["hued"].endswith("red-hued cube") and phrases["colour_colon"].endswith("cube (colour: red)")
