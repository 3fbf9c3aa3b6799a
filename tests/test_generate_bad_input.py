"""Bad prompts and images: nothing dropped silently, one-line errors, only drawable concepts offered."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from recon3d.errors import InputError
from recon3d.generation import image as image_mod
from recon3d.generation.api import DEFAULT_CHECKPOINT, PromptError, _unhonoured, capabilities
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


@pytest.mark.parametrize("prompt", ["six red cubes", "a dozen balls", "12 cones", "three cubes and three balls"])
def test_more_than_five_objects_is_a_one_line_error(prompt):
    with pytest.raises(PromptError, match="at most 5 objects") as err:
        _unhonoured(prompt, LEGACY)
    assert "\n" not in str(err.value)


def test_closest_concepts_are_only_drawable_ones():
    concepts = set(capabilities(DEFAULT_CHECKPOINT).concepts)
    assert "kitten" not in concepts and "stanford bunny" not in concepts
    assert {"cube", "torus", "red", "small", "on top of"} <= concepts


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
