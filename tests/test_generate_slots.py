"""Object slots of the generator: prompt splitting, slot-wise equivariance, warm start, slot-aware data and OT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recon3d.generation.conditioning import (
    assemble,
    encode_conditioning,
    encode_phrases,
    slot_counts,
    slot_labels,
    split_prompt,
)
from recon3d.generation.data import RELATIONS, ObjectSpec, SceneSpec, compose
from recon3d.generation.flow import ot_pair_noise
from recon3d.generation.model import ModelConfig, SetFlowTransformer
from recon3d.generation.text import HashEncoder
from recon3d.generation.train import _warm_start, save_checkpoint

TINY = ModelConfig(width=32, heads=2, latents=8, blocks=1, latent_layers=1)
TINY_SLOTS = ModelConfig(width=32, heads=2, latents=8, blocks=1, latent_layers=1, slots=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread


def _randomise(model: torch.nn.Module) -> None:
    # zero-initialised gates and slot parameters would make any test of the map trivially pass
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)


@pytest.mark.parametrize("relation", RELATIONS)
def test_split_prompt_at_every_relation(relation):
    a, rel, b = split_prompt(f"a small red cube {relation} a large blue torus")
    assert (a, rel, b) == ("a small red cube", relation, "a large blue torus")


def test_split_prompt_without_a_second_object():
    assert split_prompt("a red cube") == ("a red cube", None, None)
    assert split_prompt("a red cube behind") == ("a red cube behind", None, None)
    assert split_prompt("  A Red   Cube ON TOP OF a Blue Sphere ") == ("A Red Cube", "on top of", "a Blue Sphere")
    # "to the left of" is one relation, not "left" inside something else
    assert split_prompt("a cone to the left of a cube")[1] == "to the left of"
    assert slot_counts("a red cube", 101) == [101]
    assert slot_counts("a red cube next to a cone", 101) == [50, 51]
    assert slot_labels([2, 3]).tolist() == [0, 0, 1, 1, 1]


def _seeded_slot_model() -> SetFlowTransformer:
    """A tiny two-slot model with random (non-zero-initialised) weights, seeded."""
    torch.manual_seed(0)
    model = SetFlowTransformer(TINY_SLOTS).eval()
    _randomise(model)
    return model


def _pair_inputs(n0: int = 12, n1: int = 9):
    enc = HashEncoder()
    prompts = ["a red cube on top of a blue sphere", "a green cone to the left of a gray torus"]
    cond = encode_conditioning(enc, prompts)
    slots = slot_labels([n0, n1])[None].expand(2, -1)
    return cond, slots


def test_assemble_tags_each_phrase():
    enc = HashEncoder()
    prompts = ["a red cube on top of a blue sphere", "a cone"]
    table = encode_phrases(enc, ["a red cube", "on top of", "a blue sphere", "a cone"])
    cond = assemble(prompts, table, enc.encode(prompts)[2])
    # hash encoder: one token per word
    assert cond.tags[0, cond.mask[0]].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert cond.tags[1, cond.mask[1]].tolist() == [0, 0]
    torch.testing.assert_close(cond.phrase_pooled[0, 2], enc.encode(["a blue sphere"])[2][0], atol=1e-3, rtol=1e-3)
    assert cond.phrase_pooled[1, 1:].abs().max() == 0
    torch.testing.assert_close(cond.tokens[0, 6], enc.encode(["a"])[0][0, 0], atol=1e-3, rtol=1e-3)


def test_slot_model_is_equivariant_within_slots_and_slots_matter():
    model = _seeded_slot_model()
    cond, slots = _pair_inputs()
    x, t = torch.randn(2, 21, 14), torch.tensor([0.3, 0.7])
    perm = torch.cat([torch.randperm(12), 12 + torch.randperm(9)])
    with torch.no_grad():
        v = model(x, t, cond.tokens, cond.mask, cond.pooled, slots=slots, **cond.extra())
        v_perm = model(x[:, perm], t, cond.tokens, cond.mask, cond.pooled, slots=slots, **cond.extra())
        swapped = model(x, t, cond.tokens, cond.mask, cond.pooled, slots=1 - slots, **cond.extra())
    assert v.abs().mean() > 1e-3
    torch.testing.assert_close(v_perm, v[:, perm], atol=1e-5, rtol=1e-4)
    assert (swapped - v).abs().max() > 1e-3


def test_slot_tokens_read_only_their_own_phrase_and_the_relation():
    # with the latents' path cut, a slot-0 token's velocity must not depend on phrase B at all
    model = _seeded_slot_model()
    with torch.no_grad():
        for block in model.blocks:
            block.write.out.weight.zero_()
            block.write.out.bias.zero_()
    cond, slots = _pair_inputs()
    x, t = torch.randn(2, 21, 14), torch.tensor([0.3, 0.7])
    other = copy.deepcopy(cond)
    b_tokens = other.tags == 2
    other.tokens[b_tokens] = torch.randn(int(b_tokens.sum()), 384)
    other.phrase_pooled[:, 2] = torch.randn(2, 384)
    with torch.no_grad():
        v = model(x, t, cond.tokens, cond.mask, cond.pooled, slots=slots, **cond.extra())
        w = model(x, t, other.tokens, other.mask, other.pooled, slots=slots, **other.extra())
    torch.testing.assert_close(w[:, :12], v[:, :12], atol=1e-5, rtol=1e-4)
    assert (w[:, 12:] - v[:, 12:]).abs().max() > 1e-3


def test_dropped_caption_ignores_every_phrase():
    model = _seeded_slot_model()
    cond, slots = _pair_inputs()
    x, t = torch.randn(2, 21, 14), torch.tensor([0.5, 0.5])
    drop = torch.tensor([True, True])
    with torch.no_grad():
        a = model(x, t, cond.tokens, cond.mask, cond.pooled, drop, slots=slots, **cond.extra())
        b = model(
            x, t, torch.randn_like(cond.tokens), cond.mask, torch.randn_like(cond.pooled), drop, slots=slots,
            text_tags=torch.randint(0, 3, cond.tags.shape), phrase_pooled=torch.randn_like(cond.phrase_pooled),
        )
        c = model(x, t, cond.tokens, cond.mask, cond.pooled, slots=slots, **cond.extra())
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4


def test_warm_started_slot_model_equals_the_slotless_one_on_a_single_object(tmp_path):
    torch.manual_seed(0)
    old = SetFlowTransformer(TINY).eval()
    _randomise(old)
    save_checkpoint(tmp_path / "old.pt", {"weights": old.state_dict()})
    new = SetFlowTransformer(TINY_SLOTS)
    ema = copy.deepcopy(new)
    _warm_start(new, ema, tmp_path / "old.pt")
    enc = HashEncoder()
    tokens, mask, pooled = enc.encode(["a small red cube"])
    cond = encode_conditioning(enc, ["a small red cube"])
    x, t = torch.randn(1, 30, 14), torch.tensor([0.4])
    with torch.no_grad():
        a = old(x, t, tokens, mask, pooled)
        b = new.eval()(x, t, cond.tokens, cond.mask, cond.pooled, slots=torch.zeros(1, 30, dtype=torch.long), **cond.extra())
        c = ema.eval()(x, t, tokens, mask, pooled)  # no slot inputs: everything in slot 0, whole caption = phrase A
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)
    # a checkpoint of another shape is refused with the file named
    save_checkpoint(tmp_path / "wide.pt", {"weights": SetFlowTransformer(ModelConfig(width=64, heads=2, latents=8, blocks=1, latent_layers=1)).state_dict()})
    from recon3d.errors import InputError

    with pytest.raises(InputError, match="wide.pt"):
        _warm_start(new, ema, tmp_path / "wide.pt")


def test_ot_pairing_stays_within_each_slot():
    g = torch.Generator().manual_seed(0)
    data, noise = torch.randn(2, 30, 14, generator=g), torch.randn(2, 30, 14, generator=g)
    slots = slot_labels([13, 17])[None].expand(2, -1)
    paired = ot_pair_noise(noise, data, slots=slots)
    for b in range(2):
        for s in (0, 1):
            sel = slots[b] == s
            assert torch.equal(paired[b, sel].sort(0).values, noise[b, sel].sort(0).values)
        assert (data[b, :, :3] - paired[b, :, :3]).pow(2).sum() < (data[b, :, :3] - noise[b, :, :3]).pow(2).sum()


def test_compose_with_counts_puts_the_first_object_first():
    spec = SceneSpec([ObjectSpec("cube", "red", "small"), ObjectSpec("sphere", "blue", "large")], "on top of")
    f = compose(spec, 100, np.random.default_rng(0), counts=[50, 50])
    assert f.shape == (100, 14)
    first, second = f[:50, 11:14].mean(0), f[50:, 11:14].mean(0)
    assert first[0] > 0.6 and first[2] < 0.3  # red
    assert second[2] > 0.6 and second[0] < 0.3  # blue
    assert f[:50, 2].min() > f[50:, 2].mean()  # the cube rests on top of the sphere
    with pytest.raises(ValueError):
        compose(spec, 100, np.random.default_rng(0), counts=[50, 40])


@pytest.mark.heldout
@pytest.mark.slow
def test_slot_training_warm_starts_exports_and_samples_a_pair(tmp_path):
    from recon3d.generation.data import build_dataset, load_heldout
    from recon3d.generation.sample import load_generator, sample_scene
    from recon3d.generation.train import export_weights, load_config, train

    data = build_dataset(
        tmp_path / "data", num_pairs=20, heldout=load_heldout(), encoder=HashEncoder(), stats_scenes=8, progress=False
    )
    base = {"data": {"dir": str(data), "num_gaussians": 32}, "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 3}}
    first = load_config("tiny", base | {"train": base["train"] | {"out": str(tmp_path / "v1")}})
    train(first, progress=False)
    over = {"model": {"slots": 2}, "train": base["train"] | {"out": str(tmp_path / "v2"), "init_from": str(tmp_path / "v1" / "last.pt")}}
    second = load_config("tiny", base | over)
    train(second, progress=False)
    assert (data / "phrases.pt").is_file()
    state = torch.load(tmp_path / "v2" / "last.pt", weights_only=True)
    assert state["step"] == 3 and "slot_embed" in state["model"]
    assert state["model"]["slot_embed"].abs().max() > 0  # the new parameters trained from their zero start
    gen = load_generator(export_weights(tmp_path / "v2", tmp_path / "w.pt"))
    assert gen.model.cfg.slots == 2
    scene = sample_scene(gen, HashEncoder(), "a red cube on top of a blue sphere", num_gaussians=21, steps=2, guidance=2.0)
    assert scene.means.shape == (21, 3) and torch.isfinite(scene.means).all()
