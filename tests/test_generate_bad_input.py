"""Bad prompts and images: nothing dropped silently, one-line errors, only drawable concepts offered."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from recon3d.errors import InputError
from recon3d.generation import image as image_mod
from recon3d.generation.api import DEFAULT_CHECKPOINT, WEIGHTS_DIR, PromptError, _unhonoured, capabilities
from recon3d.generation.image import ImagePromptError, load_image_prompt, prepare_image
from recon3d.generation.mentions import scan_prompt


def test_scan_finds_objects_counts_synonyms_and_relations():
    m = scan_prompt("three red cubes")
    assert [(o.shape, o.count) for o in m.objects] == [("cube", 3)]
    m = scan_prompt("a green cylinder beside a white cube")
    assert [o.shape for o in m.objects] == ["cylinder", "cube"] and m.relations == ["beside"]
    m = scan_prompt("a pair of pink donuts on a big box and a ball to the left of the box")
    assert [(o.shape, o.count, o.reference) for o in m.objects] == [
        ("torus", 2, False), ("cube", 1, False), ("sphere", 1, False), ("cube", 1, True)]
    assert m.num_objects == 4 and m.relations == ["left", "on"] or sorted(m.relations) == ["left", "on"]
    assert scan_prompt("a cube inside a sphere").unknown_relations == ["inside"]
    assert scan_prompt("5 balls in a row").objects[0].count == 5


LEGACY = capabilities(DEFAULT_CHECKPOINT)


def test_the_first_model_names_what_it_cannot_honour():
    assert LEGACY.max_objects == 2 and not LEGACY.image
    said = "; ".join(_unhonoured("a green cylinder beside a white cube", LEGACY))
    assert "'beside'" in said
    said = "; ".join(_unhonoured("three red cubes", LEGACY))
    assert "count 3" in said and "three red cubes" in said
    said = "; ".join(_unhonoured("a red cube, a blue ball and a green cone", LEGACY))
    assert "a green cone" in said and "beyond its 2" in said
    said = "; ".join(_unhonoured("a red cube on top of a blue ball to the left of a green cone", LEGACY))
    assert "a green cone" in said and "'to the left of'" in said
    assert _unhonoured("a red cube on top of a blue sphere", LEGACY) == []
    assert _unhonoured("a small green torus", LEGACY) == []


SLOTS = capabilities(WEIGHTS_DIR / "generator-slots.pt")


@pytest.mark.parametrize("caps", [LEGACY, SLOTS], ids=["legacy", "slots"])
@pytest.mark.parametrize("prompt", ["six red cubes", "a dozen balls", "12 cones", "a cube and seven balls"])
def test_a_count_above_five_is_a_one_line_error(prompt, caps):
    with pytest.raises(PromptError, match="at most 5 objects") as err:
        _unhonoured(prompt, caps)
    assert "\n" not in str(err.value)


def test_the_slot_model_names_a_sixth_object_a_relation_and_a_spatial_word_it_cannot_honour():
    assert SLOTS.max_objects == 5 and SLOTS.max_count == 5 and SLOTS.image
    six = "a red cube, a blue ball, a green cone, a pink torus, a white pyramid and a yellow capsule"
    said = "; ".join(_unhonoured(six, SLOTS))
    assert "beyond its 5 per scene: 'a yellow capsule'" in said and "white pyramid" not in said
    said = "; ".join(_unhonoured("three red cubes and three blue balls", SLOTS))
    assert "beyond its 5 per scene: 1 of 'three blue balls'" in said
    said = "; ".join(_unhonoured("a cube on a box beside a ball near a cone behind a tube", SLOTS))
    assert "relations after the first 3 ('behind')" in said
    assert "'inside'" in "; ".join(_unhonoured("a red cube inside a blue sphere", SLOTS))
    # what it can draw draws without a word
    for ok in ("three red cubes", "a green cylinder beside a white cube", "five balls in a row",
               "a red cube on a blue box above a green ball", six.replace(" and a yellow capsule", "")):
        assert _unhonoured(ok, SLOTS) == [], ok


@pytest.mark.parametrize("caps", [LEGACY, SLOTS], ids=["legacy", "slots"])
def test_closest_concepts_are_only_drawable_ones(caps):
    from recon3d.generation.grammar import COLOUR_RGB, RELATION_WORDS, SHAPE_WORDS, SIZE_SCALE

    concepts = set(caps.concepts)
    assert "kitten" not in concepts and "stanford bunny" not in concepts
    assert {"cube", "torus", "red", "small"} <= concepts
    # every concept is a shape word, a colour with an RGB, a size or a relation phrase of the grammar
    words = {w for ws in SHAPE_WORDS.values() for w in ws} | set(COLOUR_RGB) | {w for w in SIZE_SCALE if w}
    words |= {p for ps in RELATION_WORDS.values() for p in ps}
    assert sorted(concepts - words) == []


def test_image_prompt_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="not found"):
        load_image_prompt(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png: the image file is empty"):
        load_image_prompt(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(InputError, match="notes.png: not a readable image"):
        load_image_prompt(tmp_path / "notes.png")
    from PIL import Image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(image_mod, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match=r"big.png: the image is too large \(50×40 pixels"):
        load_image_prompt(tmp_path / "big.png")
    monkeypatch.setattr(image_mod, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(InputError, match="big.png: the image file is too large"):
        load_image_prompt(tmp_path / "big.png")


def test_image_arrays_are_checked_and_rgba_composites_on_white():
    with pytest.raises(ImagePromptError, match="empty"):
        load_image_prompt(np.zeros((0, 5, 3)))
    with pytest.raises(ImagePromptError, match="shape"):
        load_image_prompt(np.zeros((4, 4, 2)))
    with pytest.raises(ImagePromptError, match="NaN"):
        load_image_prompt(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImagePromptError, match=r"\[0, 1\]"):
        load_image_prompt(np.full((4, 4, 3), 3.0, np.float32))
    with pytest.raises(ImagePromptError, match="file path or an array"):
        load_image_prompt(42)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    x = load_image_prompt(rgba)
    assert np.allclose(x[0, 0].numpy(), [1, 0, 0]) and np.allclose(x[3, 0].numpy(), [1, 1, 1])
    sq = prepare_image(load_image_prompt(np.ones((30, 60), np.uint8) * 255))
    assert sq.shape == (3, 64, 64)


@pytest.mark.slow
def test_generate_warns_names_and_refuses(tmp_path, capsys):
    import recon3d
    from recon3d.cli import main
    from recon3d.generation.api import UnhonouredPromptWarning

    with pytest.warns(UnhonouredPromptWarning, match="'beside'"):
        recon3d.generate("a green cylinder beside a white cube", num_gaussians=64, steps=2)
    with pytest.raises(PromptError, match="at most 5 objects"):
        recon3d.generate("seven red cubes", num_gaussians=64, steps=2)
    with pytest.raises(PromptError, match="no image encoder"):
        recon3d.generate("a red cube", image=np.zeros((8, 8, 3), np.uint8), num_gaussians=64, steps=2)
    (tmp_path / "x.png").write_text("nope")
    code = main(["generate", "--image", str(tmp_path / "x.png"), "-o", str(tmp_path / "o.ply")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "x.png" in err[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recon3d.generate("a red cube on top of a blue sphere", num_gaussians=64, steps=2)
    code = main(["generate", "six red cubes", "-o", str(tmp_path / "six.ply")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at most 5 objects" in err[0] and not (tmp_path / "six.ply").exists()


@pytest.mark.slow
def test_the_slot_model_warns_about_a_sixth_object_and_offers_only_drawable_concepts():
    import re

    import recon3d
    from recon3d.generation.api import UnfamiliarPromptWarning, UnhonouredPromptWarning, check_prompt

    slots = WEIGHTS_DIR / "generator-slots.pt"
    six = "a red cube, a blue ball, a green cone, a pink torus, a white pyramid and a yellow capsule"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scene = recon3d.generate(six, checkpoint=slots, num_gaussians=16, steps=1)
    said = [str(w.message) for w in record if issubclass(w.category, UnhonouredPromptWarning)]
    assert any("beyond its 5 per scene: 'a yellow capsule'" in m for m in said), said
    assert 16 <= scene.num_gaussians <= 5 * 16
    with pytest.raises(PromptError, match="at most 5 objects"):
        recon3d.generate("six red cubes", checkpoint=slots, num_gaussians=16, steps=1)
    with pytest.warns(UnfamiliarPromptWarning) as record:
        check_prompt("a fluffy kitten playing a violin", slots)
    listed = re.search(r"can draw are: (.+)$", str(record[0].message)).group(1).split(", ")
    assert len(listed) == 5 and set(listed) <= set(SLOTS.concepts) and "kitten" not in listed
