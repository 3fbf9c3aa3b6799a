"""The set flow transformer: equivariance, training, sampling determinism, checkpoints and DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from recon3d.generation.data import build_dataset, load_heldout
from recon3d.generation.flow import flow_matching_loss, ot_pair_noise, sample_flow
from recon3d.generation.model import ModelConfig, SetFlowTransformer
from recon3d.generation.sample import load_generator
from recon3d.generation.text import HashEncoder
from recon3d.generation.train import export_weights, load_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: one thread


TINY = ModelConfig(width=32, heads=2, latents=8, blocks=1, latent_layers=1)


def _text(b: int, t: int = 5):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(b, t, 384, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, -1] = False
    pooled = torch.nn.functional.normalize(torch.randn(b, 384, generator=g), dim=-1)
    return tokens, mask, pooled


def _randomise(model: torch.nn.Module) -> None:
    # zero-initialised gates/outputs would make any test of the map trivially pass
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)


def test_network_is_permutation_equivariant():
    torch.manual_seed(0)
    model = SetFlowTransformer(TINY).eval()
    _randomise(model)
    x = torch.randn(2, 50, 14)
    t = torch.tensor([0.3, 0.8])
    tokens, mask, pooled = _text(2)
    perm = torch.randperm(50)
    with torch.no_grad():
        v = model(x, t, tokens, mask, pooled)
        v_perm = model(x[:, perm], t, tokens, mask, pooled)
    assert v.abs().mean() > 1e-3
    torch.testing.assert_close(v_perm, v[:, perm], atol=1e-5, rtol=1e-4)
    # padding tokens of the caption are ignored
    tokens2 = tokens.clone()
    tokens2[:, -1] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, tokens2, mask, pooled), v, atol=1e-5, rtol=1e-4)


def test_dropped_caption_ignores_the_text():
    torch.manual_seed(0)
    model = SetFlowTransformer(TINY).eval()
    _randomise(model)
    x, t = torch.randn(2, 20, 14), torch.tensor([0.5, 0.5])
    tokens, mask, pooled = _text(2)
    drop = torch.tensor([True, True])
    with torch.no_grad():
        a = model(x, t, tokens, mask, pooled, drop)
        b = model(x, t, torch.randn_like(tokens), mask, torch.randn_like(pooled), drop)
        c = model(x, t, tokens, mask, pooled)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4


def test_ot_pairing_is_a_permutation_that_lowers_the_cost():
    g = torch.Generator().manual_seed(0)
    data, noise = torch.randn(2, 40, 14, generator=g), torch.randn(2, 40, 14, generator=g)
    paired = ot_pair_noise(noise, data)
    for b in range(2):
        assert torch.equal(paired[b].sort(0).values, noise[b].sort(0).values)
        before = (data[b, :, :3] - noise[b, :, :3]).pow(2).sum()
        after = (data[b, :, :3] - paired[b, :, :3]).pow(2).sum()
        assert after < before


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = SetFlowTransformer(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.randn(4, 32, 14) * 0.3 + torch.linspace(-1, 1, 14)
    tokens, mask, pooled = _text(4)
    losses = []
    for _ in range(40):
        loss = flow_matching_loss(model, data, tokens, mask, pooled, generator=torch.Generator().manual_seed(7), cond_drop=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_sampling_shapes_and_seed_determinism():
    torch.manual_seed(0)
    model = SetFlowTransformer(TINY).eval()
    _randomise(model)
    tokens, mask, pooled = _text(1)
    a = sample_flow(model, tokens, mask, pooled, num_gaussians=40, steps=4, guidance=2.0, seed=3)
    b = sample_flow(model, tokens, mask, pooled, num_gaussians=40, steps=4, guidance=2.0, seed=3)
    c = sample_flow(model, tokens, mask, pooled, num_gaussians=40, steps=4, guidance=2.0, seed=4)
    h = sample_flow(model, tokens, mask, pooled, num_gaussians=40, steps=4, guidance=2.0, seed=3, solver="heun")
    assert a.shape == (1, 40, 14) and torch.isfinite(a).all() and torch.isfinite(h).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError):
        sample_flow(model, tokens, mask, pooled, num_gaussians=4, steps=0)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A small training set built with the hash encoder (no MiniLM load)."""
    return build_dataset(
        tmp_path_factory.mktemp("gen-data"), num_pairs=60, heldout=load_heldout(), encoder=HashEncoder(),
        stats_scenes=16, progress=False,
    )


@pytest.mark.heldout
@pytest.mark.slow
def test_train_checkpoints_resumes_and_exports(tiny_data, tmp_path):
    cfg = load_config("tiny", {"data": {"dir": str(tiny_data)}, "train": {"out": str(tmp_path / "run"), "steps": 6, "checkpoint_every": 3}})
    train(cfg, progress=False)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["step"] == 6
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [3, 6]
    cfg.train.steps = 9
    train(cfg, progress=False)  # resumes at 6
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 9
    out = export_weights(tmp_path / "run", tmp_path / "w.pt")
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["step"] == 9 and meta["encoder"] == HashEncoder.name
    gen = load_generator(out)
    enc = HashEncoder()
    tokens, mask, pooled = enc.encode(["a red cube"])
    f = gen.sample_features(tokens, mask, pooled, num_gaussians=30, steps=3, guidance=2.0, seed=0)
    assert f.shape == (1, 30, 14) and torch.isfinite(f).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.heldout
@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tiny_data, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from recon3d.generation.train import load_config, train
        torch.set_num_threads(1)
        # the shipped architecture (object slots), so the slot parameters are checked under DDP too
        cfg = load_config("tiny", {{"model": {{"slots": 2}}, "data": {{"dir": {str(tiny_data)!r}}},
                                    "train": {{"out": {str(tmp_path / 'ddp')!r}, "steps": 3, "checkpoint_every": 3,
                                               "save_rank_weights": True}}}})
        train(cfg, progress=False)
        torch.distributed.destroy_process_group()
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    w1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
    torch.manual_seed(0)
    init = SetFlowTransformer(ModelConfig(**(load_config("tiny").to_dict()["model"] | {"slots": 2}))).state_dict()
    assert "slot_embed" in w0
    moved = any(not torch.equal(init[k], w0[k]) for k in w0)
    assert moved  # the ranks trained, and agree


def test_generator_config_tree_presets_overrides_and_bad_keys(tmp_path):
    from recon3d.errors import InputError
    from recon3d.generation.config import GeneratorConfig, as_config

    cfg = load_config("small", {"train": {"steps": 7}}, ["train.lr=3e-4", "sample.guidance=2.5", "model.blocks=1"])
    assert (cfg.train.steps, cfg.train.lr, cfg.sample.guidance, cfg.model.blocks, cfg.model.slots) == (7, 3e-4, 2.5, 1, 2)
    assert as_config(cfg.to_dict()) == cfg and isinstance(cfg, GeneratorConfig)  # what checkpoints store reads back
    with pytest.raises(InputError, match="unknown config key 'train.lrr'"):
        load_config("small", assignments=["train.lrr=1"])
    (tmp_path / "bad.yaml").write_text("model: {width: wide}\n")
    with pytest.raises(InputError, match="bad.yaml: config key 'model.width' expects int"):
        load_config(tmp_path / "bad.yaml")
