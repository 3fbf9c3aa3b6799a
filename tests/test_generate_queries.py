"""The round-2 slot-query generator: object queries read the whole prompt (and an image); no parser."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon3d.generation.flow import ot_pair_noise, sample_slot_flow, slot_flow_loss
from recon3d.generation.model import ModelConfig, SlotQueryFlow, build_model

TINY_Q = ModelConfig(width=32, heads=2, latents=8, blocks=1, latent_layers=1, object_queries=3, query_layers=1, image=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread


def _randomise(model: torch.nn.Module) -> None:
    # zero-initialised gates and outputs would make any test of the map trivially pass
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)


def _model() -> SlotQueryFlow:
    torch.manual_seed(0)
    m = build_model(TINY_Q).eval()
    assert isinstance(m, SlotQueryFlow)
    _randomise(m)
    return m


def _text(b: int, t: int = 6):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(b, t, 384, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, -1] = False
    return tokens, mask


def _inputs(b: int = 2, per: int = 10, k: int = 2):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(b, per * k, 14, generator=g)
    slots = torch.arange(k).repeat_interleave(per)[None].expand(b, -1).clone()
    return x, torch.tensor([0.3, 0.7])[:b], slots, torch.full((b,), k)


def test_equivariant_within_the_set_and_the_slots_matter():
    model = _model()
    x, t, slots, n = _inputs()
    tokens, mask = _text(2)
    perm = torch.randperm(x.shape[1])
    with torch.no_grad():
        v, exists = model(x, t, slots, n, tokens, mask)
        v_perm, _ = model(x[:, perm], t, slots[:, perm], n, tokens, mask)
        v_swapped, _ = model(x, t, 1 - slots, n, tokens, mask)
    assert v.abs().mean() > 1e-3 and exists.shape == (2, 3)
    torch.testing.assert_close(v_perm, v[:, perm], atol=1e-5, rtol=1e-4)
    assert (v_swapped - v).abs().max() > 1e-3  # which object a Gaussian belongs to changes its velocity


def test_padding_tokens_and_dead_slots_are_ignored():
    model = _model()
    x, t, slots, n = _inputs()
    tokens, mask = _text(2)
    with torch.no_grad():
        v, e = model(x, t, slots, n, tokens, mask)
        tokens2 = tokens.clone()
        tokens2[:, -1] = 50.0  # a padding position
        v2, e2 = model(x, t, slots, n, tokens2, mask)
        ctx, cmask = model.context(tokens, mask, None, 2)
        states, _ = model.slot_states(ctx, cmask)
        states2 = states.clone()
        states2[:, 2] = 99.0  # the third query: not one of the scene's two objects
        a = model.velocity(x, t, slots, states, ctx, cmask, n)
        b = model.velocity(x, t, slots, states2, ctx, cmask, n)
    torch.testing.assert_close(v2, v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e2, e, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dropped_context_ignores_text_and_image_and_switches_work():
    model = _model()
    x, t, slots, n = _inputs()
    tokens, mask = _text(2)
    images = torch.rand(2, 3, 64, 64)
    drop = torch.tensor([True, True])
    with torch.no_grad():
        a, _ = model(x, t, slots, n, tokens, mask, images, drop)
        b, _ = model(x, t, slots, n, torch.randn_like(tokens), mask, torch.rand_like(images), drop)
        c, _ = model(x, t, slots, n, tokens, mask, images)
        # image switched off for every sample == no image given; text switched off == image only
        off = torch.tensor([False, False])
        on = torch.tensor([True, True])
        d, _ = model(x, t, slots, n, tokens, mask, images, use_text=on, use_image=off)
        e, _ = model(x, t, slots, n, tokens, mask)
        f, _ = model(x, t, slots, n, tokens, mask, images, use_text=off, use_image=on)
        g, _ = model(x, t, slots, n, None, None, images)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4
    torch.testing.assert_close(d, e, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f, g, atol=1e-5, rtol=1e-4)


def test_ot_pairing_stays_within_each_object():
    gen = torch.Generator().manual_seed(0)
    data, noise = torch.randn(2, 30, 14, generator=gen), torch.randn(2, 30, 14, generator=gen)
    slots = torch.arange(3).repeat_interleave(10)[None].expand(2, -1)
    paired = ot_pair_noise(noise, data, slots=slots)
    for b in range(2):
        for s in range(3):
            sel = slots[b] == s
            assert torch.equal(paired[b, sel].sort(0).values, noise[b, sel].sort(0).values)


def test_slot_loss_falls_and_learns_the_object_count():
    torch.manual_seed(0)
    model = build_model(TINY_Q)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, _, slots, _ = _inputs(4, 8, 2)
    x = x * 0.3 + torch.linspace(-1, 1, 14)
    n = torch.full((4,), 2)
    tokens, mask = _text(4)
    first = None
    for _ in range(60):
        loss, flow, exist = slot_flow_loss(model, x, slots, n, generator=torch.Generator().manual_seed(7),
                                           text_tokens=tokens, text_mask=mask, cond_drop=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else (float(flow.detach()), float(exist.detach()))
    assert float(flow.detach()) < 0.6 * first[0]
    assert float(exist.detach()) < 0.5 * first[1]
    with torch.no_grad():
        ctx, cmask = model.context(tokens[:1], mask[:1], None, 1)
        _, e = model.slot_states(ctx, cmask)
    assert (e[0, :2] > 0).all() and e[0, 2] < 0  # two live slots, the third off


def test_sampling_is_seeded_and_the_network_decides_the_count():
    model = _model()
    tokens, mask = _text(1)
    torch.nn.init.zeros_(model.exists.weight)
    with torch.no_grad():
        model.exists.bias.fill_(1.0)  # every slot live: three objects
    a, s, k = sample_slot_flow(model, text_tokens=tokens, text_mask=mask, images=None, per_object=7, steps=3, seed=3)
    b, _, _ = sample_slot_flow(model, text_tokens=tokens, text_mask=mask, images=None, per_object=7, steps=3, seed=3)
    c, _, _ = sample_slot_flow(model, text_tokens=tokens, text_mask=mask, images=None, per_object=7, steps=3, seed=4)
    assert k == 3 and a.shape == (21, 14) and torch.equal(s, torch.arange(3).repeat_interleave(7))
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.allclose(a, c)
    with torch.no_grad():
        model.exists.bias.fill_(-1.0)  # none live: still one object
    _, _, k = sample_slot_flow(model, text_tokens=tokens, text_mask=mask, images=None, per_object=7, steps=2)
    assert k == 1
    x, _, k = sample_slot_flow(model, text_tokens=None, text_mask=None, images=torch.rand(1, 3, 64, 64),
                               per_object=5, steps=2, num_objects=2)
    assert k == 2 and x.shape == (10, 14)
    with pytest.raises(ValueError):
        sample_slot_flow(model, text_tokens=tokens, text_mask=mask, images=None, per_object=4, steps=0)


@pytest.mark.heldout
@pytest.mark.slow
def test_bank_training_resumes_exports_and_generates(tmp_path):
    from recon3d.generation.api import capabilities, generate
    from recon3d.generation.bank import build_bank, load_bank
    from recon3d.generation.data import load_heldout
    from recon3d.generation.grammar import training_rules
    from recon3d.generation.sample import SlotGenerator, load_generator
    from recon3d.generation.text import HashEncoder
    from recon3d.generation.train import export_weights, load_config, train

    bank_dir = build_bank(tmp_path / "bank", num_scenes=40, encoder=HashEncoder(), stats_scenes=8, progress=False)
    bank = load_bank(bank_dir)
    rules = training_rules(load_heldout())
    assert len(bank.scenes) == 40 and all(rules.allows(s) for s in bank.scenes)
    batch = bank.sample(3, 16, np.random.default_rng(0), image_share=1.0)
    n = int(batch["num_objects"][0])
    assert batch["x"].shape == (3, 16 * n, 14) and batch["images"].shape == (3, 3, 64, 64)
    assert torch.equal(batch["slots"][0], torch.arange(n).repeat_interleave(16))
    # a rendered view shows a coloured object on white: not all white, not all one value
    assert batch["images"].min() < 0.9 and batch["images"].std() > 0.01

    over = {
        "model": TINY_Q.to_dict(),
        "data": {"dir": str(bank_dir), "num_gaussians": 16},
        "train": {"out": str(tmp_path / "run"), "steps": 3, "batch_size": 2, "checkpoint_every": 2, "image_share": 0.5},
    }
    train(load_config("tiny", over), progress=False)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 3
    train(load_config("tiny", over | {"train": over["train"] | {"steps": 5}}), progress=False)  # resumes at 3
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 3, 4, 5]
    w = export_weights(tmp_path / "run", tmp_path / "w.pt")
    gen = load_generator(w)
    assert isinstance(gen, SlotGenerator)
    caps = capabilities(str(w))
    assert caps.max_objects == 3 and caps.image and "crimson" in caps.concepts
    scene, drawn = gen.generate(HashEncoder(), "two red cubes", None, None, per_object=9, steps=2, guidance=2.0, seed=0)
    assert len(scene) == 9 * drawn and torch.isfinite(scene.means).all()
    img = np.full((40, 50, 3), 255, dtype=np.uint8)
    img[10:30, 20:30] = (200, 0, 0)
    scene2 = generate(image=img, checkpoint=w, num_gaussians=9, steps=2)
    assert len(scene2) % 9 == 0 and torch.isfinite(scene2.means).all()


@pytest.mark.slow
def test_shipped_slot_checkpoint_draws_several_objects_and_reads_images():
    import warnings

    from recon3d.generation.api import WEIGHTS_DIR, UnfamiliarPromptWarning, capabilities, generate

    ckpt = WEIGHTS_DIR / "generator-slots.pt"
    assert ckpt.stat().st_size <= 50 * 1024 * 1024
    caps = capabilities(str(ckpt))
    assert caps.max_objects == 5 and caps.image and len(caps.relations) >= 12
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfamiliarPromptWarning)  # a grammar prompt is familiar to this checkpoint
        scene = generate("two red cubes and a blue ball", checkpoint=ckpt, num_gaussians=32, steps=4, seed=0)
    assert len(scene) % 32 == 0 and 32 <= len(scene) <= 5 * 32 and torch.isfinite(scene.means).all()
    img = np.full((64, 64, 3), 255, dtype=np.uint8)
    img[20:44, 20:44] = (30, 60, 220)
    scene = generate(image=img, checkpoint=ckpt, num_gaussians=32, steps=4)
    assert len(scene) % 32 == 0 and torch.isfinite(scene.means).all()
    # the shipped sampling defaults (bfloat16 net, guidance until t = 0.5) against float32, full guidance
    fast = generate("a red cube", checkpoint=ckpt, num_gaussians=64, steps=6, seed=1)
    full = generate("a red cube", checkpoint=ckpt, num_gaussians=64, steps=6, seed=1,
                    sampler={"precision": "float32", "guidance_until": 1.0})
    other = generate("a red cube", checkpoint=ckpt, num_gaussians=64, steps=6, seed=2)
    assert (fast.means - full.means).abs().mean() < 0.5 * (other.means - full.means).abs().mean()
    from recon3d.generation.api import PromptError

    with pytest.raises(PromptError, match="unknown sampler settings"):
        generate("a red cube", checkpoint=ckpt, num_gaussians=8, sampler={"solvr": "heun"})


def test_blocked_layout_is_the_one_hot_path():
    # the sampler's broadcast over blocks of per-object Gaussians must equal the general one-hot gather
    model = _model()
    x, t, slots, n = _inputs(b=2, per=10, k=2)  # 2 live objects of the 3 queries
    tokens, mask = _text(2)
    with torch.no_grad():
        ctx, cmask = model.context(tokens, mask, None, 2)
        states, _ = model.slot_states(ctx, cmask)
        ref = model.velocity(x, t, slots, states, ctx, cmask, n)
        fast = model.velocity(x, t, slots, states, ctx, cmask, n, per_object=10)
    assert ref.abs().mean() > 1e-3
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="blocks of 7"):
        model.velocity(x, t, slots, states, ctx, cmask, n, per_object=7)


def test_fast_sampler_settings_against_their_references():
    model = _model()
    tokens, mask = _text(1)
    kw = dict(text_tokens=tokens, text_mask=mask, images=None, per_object=12, steps=4, guidance=2.0, seed=3,
              num_objects=2)
    ref, slots, _ = sample_slot_flow(model, blocked=False, **kw)
    fast, slots2, _ = sample_slot_flow(model, **kw)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(slots, slots2)
    # guidance from t = 0.5 on: steps at t = 0, 0.25 guided, the rest conditional only; at 0 it is no guidance
    no_cfg, _, _ = sample_slot_flow(model, **{**kw, "guidance": 1.0})
    torch.testing.assert_close(sample_slot_flow(model, guidance_until=0.0, **kw)[0], no_cfg)
    half = sample_slot_flow(model, guidance_until=0.5, **kw)[0]
    assert (half - ref).abs().max() > 1e-4 and (half - no_cfg).abs().max() > 1e-4
    # bfloat16: the same scene up to rounding, i.e. far closer to the float32 sample than another seed's is
    # (this randomised net has large gains, so rounding grows more than in the trained one)
    low, _, n_low = sample_slot_flow(model, precision="bfloat16", **{**kw, "num_objects": None})
    full, _, n_full = sample_slot_flow(model, **{**kw, "num_objects": None})
    other, _, _ = sample_slot_flow(model, **{**kw, "num_objects": None, "seed": 4})
    assert n_low == n_full  # the object count is decided in float32
    assert low.dtype == torch.float32 and (low - full).abs().mean() < 0.05 * (other - full).abs().mean()
    with pytest.raises(ValueError, match="precision"):
        sample_slot_flow(model, precision="float16", **kw)


def test_attribute_targets_read_the_composed_objects():
    from recon3d.generation import grammar as g
    from recon3d.generation.bank import ATTRIBUTE_DIM, ATTRIBUTE_SHAPES, attribute_targets
    from recon3d.generation.composer import compose_grammar

    scene = g.Scene([g.Thing("cube", "crimson"), g.Thing("sphere", "teal", "large"), g.Thing("chair", None)],
                    [g.Relation(0, "left", (1,)), g.Relation(2, "right", (1,))])
    feats, slots, layout = compose_grammar(scene, 400, np.random.default_rng(5), order=[1, 0, 2])
    shape, values = attribute_targets(layout)
    assert ATTRIBUTE_DIM == len(ATTRIBUTE_SHAPES) + values.shape[1] == 22
    assert [ATTRIBUTE_SHAPES[i] for i in shape] == ["sphere", "cube", "chair"]  # slot (caption) order
    for k in range(3):  # checked against the Gaussians of each slot, not the layout the targets came from
        pts = feats[slots == k, :3]
        assert np.allclose(values[k, 3:6] * 1.5, (pts.min(0) + pts.max(0)) / 2, atol=0.05)
        assert np.allclose(values[k, 6:9] * 1.5, pts.max(0) - pts.min(0), atol=0.1)
    assert np.allclose((values[0, :3] + 1) / 2, g.colour_rgb("teal"), atol=1e-6)
    assert np.allclose((values[1, :3] + 1) / 2, g.colour_rgb("crimson"), atol=1e-6)
    assert values[1, 3] < values[0, 3] < values[2, 3]  # cube left of the sphere, chair right of it
    assert values[0, 8] > values[1, 8]  # the large sphere is taller than the unit cube


def test_attribute_loss_against_a_dense_reference_and_it_binds_slots():
    from recon3d.generation.flow import attribute_loss

    g = torch.Generator().manual_seed(3)
    pred = torch.randn(4, 3, 5 + 2, generator=g)
    shape = torch.randint(0, 5, (4, 2), generator=g)
    values = torch.randn(4, 2, 2, generator=g)
    keep = torch.tensor([True, False, True, True])
    want, count = 0.0, 0
    for b in range(4):
        if not keep[b]:
            continue
        for k in range(2):  # only the live slots (the first two of three)
            logp = torch.log_softmax(pred[b, k, :5], 0)
            want += float(-logp[shape[b, k]] + (pred[b, k, 5:] - values[b, k]).pow(2).mean())
            count += 1
    assert abs(float(attribute_loss(pred, shape, values, keep)) - want / count) < 1e-5

    # trained through slot_flow_loss, the head tells two objects apart by what the caption says of each
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY_Q.to_dict(), "attributes": 4 + 1})
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, _, slots, _ = _inputs(4, 8, 2)
    tokens, mask = _text(4)
    shapes = torch.tensor([[0, 1], [1, 0], [2, 3], [3, 2]])
    tokens[:, 0] += shapes[:, :1] * 2.0  # token 0 names the first object, token 1 the second
    tokens[:, 1] += shapes[:, 1:] * 2.0
    vals = shapes[..., None].float() / 3
    parts: dict = {}
    for _ in range(150):
        loss, _, _ = slot_flow_loss(model, x, slots, torch.full((4,), 2), generator=torch.Generator().manual_seed(7),
                                    text_tokens=tokens, text_mask=mask, cond_drop=0.0,
                                    attributes={"attr_shape": shapes, "attr_values": vals}, attribute_weight=1.0,
                                    parts=parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["attributes"] < 0.1
    with torch.no_grad():
        _, _, a = model(x, torch.full((4,), 0.5), slots, torch.full((4,), 2), tokens, mask, with_attributes=True)
    assert torch.equal(a[:, :2, :4].argmax(-1), shapes)
    with pytest.raises(ValueError, match="attribute head"):
        slot_flow_loss(build_model(TINY_Q), x, slots, torch.full((4,), 2), generator=torch.Generator().manual_seed(7),
                       text_tokens=tokens, text_mask=mask, attributes={"attr_shape": shapes, "attr_values": vals},
                       attribute_weight=1.0)


@pytest.mark.heldout
def test_a_bank_extends_its_base_and_keeps_its_units(tmp_path):
    from recon3d.generation.bank import build_bank, load_bank
    from recon3d.generation.text import HashEncoder

    base = load_bank(build_bank(tmp_path / "a", num_scenes=20, encoder=HashEncoder(), stats_scenes=4, progress=False))
    more = load_bank(build_bank(tmp_path / "b", num_scenes=30, seed=1, encoder=HashEncoder(), stats_scenes=4,
                                progress=False, base=tmp_path / "a", wide=True, kind_weights=(0, 0, 0, 1, 0)))
    assert more.captions[:20] == base.captions and len(set(more.captions)) == 50
    assert all(torch.equal(a, b) for a, b in zip(more.tokens[:20], base.tokens))
    assert torch.equal(more.mean, base.mean) and torch.equal(more.std, base.std)
    assert all(len(s.relations) >= 1 for s in more.scenes[20:])  # all drawn as three-object (triple) scenes
    batch = more.sample(4, 8, np.random.default_rng(0), object_mix=(0, 0, 1, 0, 0))
    assert batch["num_objects"].tolist() == [3] * 4
    assert batch["attr_shape"].shape == (4, 3) and batch["attr_values"].shape == (4, 3, 9)


def test_attribute_loss_with_colour_classes_against_a_dense_reference():
    from recon3d.generation import grammar as g
    from recon3d.generation.bank import ATTRIBUTE_COLOURS, ATTRIBUTE_DIM_COLOURS, attribute_colours
    from recon3d.generation.composer import compose_grammar
    from recon3d.generation.flow import attribute_loss

    scene = g.Scene([g.Thing("cube", "crimson"), g.Thing("tree", None)], [g.Relation(0, "left", (1,))])
    _, _, layout = compose_grammar(scene, 50, np.random.default_rng(1))
    idx = attribute_colours(layout)
    assert ATTRIBUTE_COLOURS[idx[0]] == "crimson" and layout[1]["colour"] == ATTRIBUTE_COLOURS[idx[1]]  # natural
    assert ATTRIBUTE_DIM_COLOURS == 13 + len(g.COLOUR_NAMES) + 9

    gen = torch.Generator().manual_seed(4)
    pred = torch.randn(3, 2, 4 + 6 + 2, generator=gen)  # 4 shape logits, 6 colour logits, 2 values
    shape, colour = torch.randint(0, 4, (3, 2), generator=gen), torch.randint(0, 6, (3, 2), generator=gen)
    values = torch.randn(3, 2, 2, generator=gen)
    keep = torch.tensor([True, True, False])
    want = []
    for b in range(2):
        for k in range(2):
            ce_s = -torch.log_softmax(pred[b, k, :4], 0)[shape[b, k]]
            ce_c = -torch.log_softmax(pred[b, k, 4:10], 0)[colour[b, k]]
            want.append(float(ce_s + ce_c + (pred[b, k, 10:] - values[b, k]).pow(2).mean()))
    got = float(attribute_loss(pred, shape, values, keep, colour=colour, colour_classes=6))
    assert abs(got - float(np.mean(want))) < 1e-5


def _own_model(token_context: str = "own") -> SlotQueryFlow:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY_Q.to_dict(), "token_context": token_context})
    m = build_model(cfg).eval()
    _randomise(m)
    return m


@pytest.mark.parametrize("with_image", [False, True])
def test_own_state_gaussians_read_no_words_and_no_other_object(with_image):
    # token_context "own": a Gaussian's cross-attention reads its own object's state and the image tokens only.
    # With the latents' write-back cut (their only other route to a token), words and a neighbour's state must
    # not move a Gaussian; the same cut on an "all" model shows the check is not vacuous.
    x, t, slots, n = _inputs(b=2, per=10, k=2)
    tokens, mask = _text(2)
    images = torch.rand(2, 3, 64, 64) if with_image else None
    moved = {}
    for mode in ("own", "all"):
        model = _own_model(mode)
        with torch.no_grad():
            for block in model.blocks:
                block.write.out.weight.zero_()
                block.write.out.bias.zero_()
            ctx, cmask = model.context(tokens, mask, images, 2)
            states, _ = model.slot_states(ctx, cmask)
            ref = model.velocity(x, t, slots, states, ctx, cmask, n, words=tokens.shape[1])
            ctx2 = ctx.clone()
            ctx2[:, : tokens.shape[1]] = torch.randn_like(ctx2[:, : tokens.shape[1]])  # other words, same states
            other_words = model.velocity(x, t, slots, states, ctx2, cmask, n, words=tokens.shape[1])
            states2 = states.clone()
            states2[:, 1] = torch.randn_like(states2[:, 1]) * 3  # object 1's state only
            other_state = model.velocity(x, t, slots, states2, ctx, cmask, n, words=tokens.shape[1])
        assert ref.abs().mean() > 1e-3
        moved[mode] = ((other_words - ref).abs().max(), (other_state - ref)[:, :10].abs().max(),
                       (other_state - ref)[:, 10:].abs().max())
    words_own, neighbour_own, self_own = moved["own"]
    assert words_own == 0 and neighbour_own == 0 and self_own > 1e-3
    words_all, neighbour_all, _ = moved["all"]
    assert words_all > 1e-3 and neighbour_all > 1e-3


def test_own_state_blocked_layout_is_the_one_hot_path_and_needs_words():
    model = _own_model()
    x, t, slots, n = _inputs(b=2, per=10, k=2)
    tokens, mask = _text(2)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for imgs in (None, images):
            ctx, cmask = model.context(tokens, mask, imgs, 2)
            states, _ = model.slot_states(ctx, cmask)
            ref = model.velocity(x, t, slots, states, ctx, cmask, n, words=tokens.shape[1])
            fast = model.velocity(x, t, slots, states, ctx, cmask, n, per_object=10, words=tokens.shape[1])
            assert ref.abs().mean() > 1e-3
            torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        # a training batch (forward) and the sampler agree on which context tokens are words
        v, _ = model(x, t, slots, n, tokens, mask, images)
        ctx, cmask = model.context(tokens, mask, images, 2)
        states, _ = model.slot_states(ctx, cmask)
        torch.testing.assert_close(v, model.velocity(x, t, slots, states, ctx, cmask, n, words=tokens.shape[1]))
        with pytest.raises(ValueError, match="words="):
            model.velocity(x, t, slots, states, ctx, cmask, n)
        a, _, k = sample_slot_flow(model, text_tokens=tokens[:1], text_mask=mask[:1], images=None, per_object=6,
                                   steps=2, seed=0, num_objects=2)
    assert a.shape == (12, 14) and torch.isfinite(a).all()


def test_word_positions_start_neutral_and_let_the_queries_see_word_order():
    torch.manual_seed(0)
    plain = build_model(TINY_Q).eval()
    _randomise(plain)
    cfg = ModelConfig(**{**TINY_Q.to_dict(), "word_positions": 8})
    pos = build_model(cfg).eval()
    missing = pos.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["word_pos"]  # the only new tensor, zero-initialised: a warm start begins as the old model
    tokens, mask = _text(2)
    mask[:] = True
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        states = {}
        for name, m in (("plain", plain), ("pos", pos)):
            ctx, cmask = m.context(tokens, mask, None, 2)
            a, _ = m.slot_states(ctx, cmask)
            ctx, cmask = m.context(tokens[:, perm], mask, None, 2)
            b, _ = m.slot_states(ctx, cmask)
            states[name] = (a, b)
        torch.testing.assert_close(states["pos"][0], states["plain"][0])
        # without positions the queries read a bag of words: shuffling them changes nothing
        torch.testing.assert_close(states["plain"][1], states["plain"][0], atol=1e-5, rtol=1e-4)
        pos.word_pos.normal_()
        ctx, cmask = pos.context(tokens, mask, None, 2)
        a, _ = pos.slot_states(ctx, cmask)
        ctx, cmask = pos.context(tokens[:, perm], mask, None, 2)
        b, _ = pos.slot_states(ctx, cmask)
        assert (a - b).abs().max() > 1e-3
        with pytest.raises(ValueError, match="at most 8"):
            pos.context(torch.randn(1, 9, 384), torch.ones(1, 9, dtype=torch.bool), None, 1)
