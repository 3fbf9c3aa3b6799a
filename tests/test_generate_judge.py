"""The independent judge: it must score the composer's ground-truth scenes (nearly) perfectly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon3d.generation.data import COLOURS, PRIMITIVES, RELATIONS, ObjectSpec, SceneSpec, compose_scene
from recon3d.generation.grammar import COLOUR_RGB, delta_e
from recon3d.generation.judge import (
    canonical_surfaces,
    classify_shape,
    colour_matches,
    judge,
    kmeans2,
    nearest_colour,
    relation_from_centroids,
    relation_matches,
)
from recon3d.scene import GaussianScene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_canonical_surfaces_classify_themselves():
    for name, pts in canonical_surfaces().items():
        # a rescaled, shifted copy is still recognised (the judge normalises position and scale)
        assert classify_shape(pts * 2.7 + np.array([1.0, -2.0, 0.5]))[0] == name


@pytest.mark.parametrize("shape", PRIMITIVES)
def test_judge_recognises_composed_primitives(shape):
    colours = list(COLOURS)
    for k, size in enumerate((None, "small", "large")):
        colour = colours[(PRIMITIVES.index(shape) * 3 + k) % len(colours)]
        spec = SceneSpec([ObjectSpec(shape, colour, size)])
        v = judge(compose_scene(spec, num_gaussians=384, seed=k), spec.caption)
        assert v.shape_ok and v.colour_ok, (spec.caption, v.objects)


@pytest.mark.slow
def test_judge_scores_ground_truth_pairs():
    rng = np.random.default_rng(5)
    colours = list(COLOURS)
    ok = 0
    n = 18
    for i in range(n):
        a = ObjectSpec(PRIMITIVES[rng.integers(7)], colours[rng.integers(12)])
        b = ObjectSpec(PRIMITIVES[rng.integers(7)], colours[rng.integers(12)])
        spec = SceneSpec([a, b], RELATIONS[i % len(RELATIONS)])
        v = judge(compose_scene(spec, num_gaussians=384, seed=i), spec.caption)
        ok += v.all_ok
    # ~100 %: at most two misses in 18 (seen: two same-coloured touching objects split wrongly, and a
    # cone read as a pyramid); benchmarks/generate.py --ground-truth-only measures it on more scenes
    assert ok >= n - 2


def test_every_named_colour_matches_itself_when_shaded_and_not_a_distinct_one():
    for name, rgb in COLOUR_RGB.items():
        assert colour_matches(np.array(rgb) * 0.94, name), name  # shading darkens a little
        assert delta_e(np.array(COLOUR_RGB[nearest_colour(np.array(rgb))]), np.array(rgb)) < 1e-6
    assert not colour_matches(np.array(COLOUR_RGB["red"]), "blue")
    assert not colour_matches(np.array(COLOUR_RGB["green"]), "lime green")  # ΔE 21.6: distinct names
    assert nearest_colour(np.array([np.nan, 0, 0])) == "none"


def test_relation_reading_follows_the_world_convention():
    b = np.zeros(3)
    assert relation_from_centroids(np.array([-1.0, 0.1, 0.2]), b) == "to the left of"
    assert relation_from_centroids(np.array([1.0, 0.1, 0.2]), b) == "to the right of"
    assert relation_from_centroids(np.array([0.1, -1.0, 0.2]), b) == "in front of"
    assert relation_from_centroids(np.array([0.1, 1.0, 0.2]), b) == "behind"
    assert relation_from_centroids(np.array([0.1, 0.1, 1.0]), b) == "on top of"
    assert relation_matches("next to", "behind") and not relation_matches("next to", "on top of")


def test_kmeans_separates_two_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 3)), rng.normal(2, 0.1, (70, 3))])
    labels = kmeans2(x)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[-1]


def test_judge_rejects_wrong_scenes():
    spec = SceneSpec([ObjectSpec("cube", "red")])
    scene = compose_scene(spec, num_gaussians=384, seed=0)
    v = judge(scene, "a blue sphere")
    assert not v.shape_ok and not v.colour_ok and not v.all_ok
    empty = GaussianScene.from_points(torch.zeros(3, 3))
    assert not judge(empty, "a red cube").all_ok
    with pytest.raises(ValueError):
        judge(scene, "a dog riding a bicycle")
