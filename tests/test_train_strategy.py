"""Densification strategies: clone/split/prune/reset do what they say and keep Adam's moments aligned;
MCMC relocates dead Gaussians, grows by 5 % and never exceeds its cap."""

from __future__ import annotations

import math

import pytest
import torch

from recon3d.train.optim import GaussianAdam
from recon3d.train.strategy import DefaultStrategy, MCMCStrategy, relocation_values


def make_params(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.full((n, 3), math.log(0.005)),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.full((n,), 2.0),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, 3, 3, generator=g),
    }


def tagged_optimizer(params: dict[str, torch.Tensor]) -> GaussianAdam:
    """An optimiser whose moments of Gaussian i hold the value i + 1 (to track rows through edits)."""
    opt = GaussianAdam({k: v.clone().requires_grad_(True) for k, v in params.items()}, {k: 1e-3 for k in params})
    n = params["means"].shape[0]
    for name in params:
        tag = (torch.arange(n, dtype=torch.float32) + 1).reshape(-1, *([1] * (params[name].ndim - 1)))
        opt.exp_avg[name] = tag.expand_as(params[name]).clone()
        opt.exp_avg_sq[name] = 2 * tag.expand_as(params[name]).clone()
    return opt


def assert_aligned(opt: GaussianAdam) -> None:
    n = opt.params["means"].shape[0]
    for name, p in opt.params.items():
        assert p.shape[0] == n and opt.exp_avg[name].shape == p.shape and opt.exp_avg_sq[name].shape == p.shape
        assert p.requires_grad and p.is_leaf


def test_default_grow_clones_small_splits_large_and_keeps_moments_aligned():
    params = make_params(4)
    params["scales"][1] = math.log(0.5)  # large: will be split
    opt = tagged_optimizer(params)
    strategy = DefaultStrategy(scene_scale=1.0, grow_grad2d=0.0002, grow_scale3d=0.01,
                               seed_generator=torch.Generator().manual_seed(0))
    # Gaussians 0 (small) and 1 (large) have a high mean gradient; 2 and 3 do not
    state = {"grad2d": torch.tensor([0.003, 0.004, 0.0001, 0.0]), "count": torch.tensor([3.0, 4.0, 1.0, 0.0])}
    report = strategy.grow(opt, state)
    assert report == {"cloned": 1, "split": 1}
    p = opt.params
    assert p["means"].shape[0] == 4 + 1 - 1 + 2
    assert_aligned(opt)
    tags = opt.exp_avg["means"][:, 0].tolist()
    # kept rows 0, 2, 3 keep their own moments; the clone and the two halves of the split start from zero
    assert tags == [1.0, 3.0, 4.0, 0.0, 0.0, 0.0]
    assert torch.equal(p["means"][3], params["means"][0])  # the clone is an exact copy of Gaussian 0
    assert torch.equal(p["sh0"][3], params["sh0"][0])
    # split halves: scale divided by 1.6, positions drawn from the parent Gaussian, other values copied
    assert torch.allclose(torch.exp(p["scales"][4:]), torch.full((2, 3), 0.5 / 1.6))
    assert torch.equal(p["sh0"][4], params["sh0"][1]) and torch.equal(p["quats"][5], params["quats"][1])
    assert ((p["means"][4:] - params["means"][1]).norm(dim=-1) < 0.5 * 5).all()
    assert not torch.equal(p["means"][4], p["means"][5])


def test_default_prune_by_opacity_and_size():
    params = make_params(5)
    params["opacities"][1] = -8.0  # sigmoid ≈ 0.0003 < 0.005
    params["scales"][3] = math.log(0.5)  # larger than 0.1 × scene scale
    opt = tagged_optimizer(params)
    strategy = DefaultStrategy(scene_scale=1.0, prune_opacity=0.005, prune_scale3d=0.1)
    assert strategy.prune(opt, prune_large=False) == 1
    assert opt.exp_avg["opacities"].tolist() == [1.0, 3.0, 4.0, 5.0]
    assert strategy.prune(opt, prune_large=True) == 1
    assert opt.exp_avg["opacities"].tolist() == [1.0, 3.0, 5.0]
    assert torch.equal(opt.params["means"], params["means"][[0, 2, 4]])
    assert_aligned(opt)


def test_default_opacity_reset_clamps_and_restarts_moments():
    params = make_params(3)
    params["opacities"] = torch.tensor([3.0, -6.0, 0.0])
    opt = tagged_optimizer(params)
    DefaultStrategy(prune_opacity=0.005).reset_opacities(opt)
    o = torch.sigmoid(opt.params["opacities"].detach())
    assert torch.allclose(o[[0, 2]], torch.tensor([0.01, 0.01]), atol=1e-6)
    assert o[1] == pytest.approx(torch.sigmoid(torch.tensor(-6.0)).item())  # already below: untouched
    assert (opt.exp_avg["opacities"] == 0).all() and (opt.exp_avg["means"] != 0).all()


def test_default_gradient_accumulation_is_in_ndc_units():
    strategy = DefaultStrategy()
    state = strategy.initialize_state(3)
    means2d = torch.zeros(1, 3, 2, requires_grad=True)
    (means2d * torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])).sum().backward()
    info = {"means2d": means2d, "radii": torch.tensor([[1, 1, 0]]), "width": 100, "height": 50}
    strategy._accumulate(state, info)
    # pixel gradient (gx, gy) -> NDC gradient (gx·W/2, gy·H/2); invisible Gaussians are not counted
    assert state["grad2d"].tolist() == pytest.approx([50.0, 50.0, 0.0])
    assert state["count"].tolist() == [1.0, 1.0, 0.0]


def test_default_refinement_schedule_in_step_hook():
    params = make_params(3)
    opt = tagged_optimizer(params)
    strategy = DefaultStrategy(refine_start=10, refine_every=10, refine_stop=100, reset_every=1000,
                               grow_grad2d=1e9, seed_generator=torch.Generator().manual_seed(0))
    state = strategy.initialize_state(3)
    means2d = torch.zeros(1, 3, 2, requires_grad=True)
    means2d.sum().backward()
    info = {"means2d": means2d, "radii": torch.ones(1, 3, dtype=torch.int32), "width": 10, "height": 10}
    assert strategy.step_post_backward(opt, state, 15, info) == {}
    assert state["count"].tolist() == [1.0, 1.0, 1.0]
    report = strategy.step_post_backward(opt, state, 20, info)
    assert report["cloned"] == 0 and report["split"] == 0 and report["pruned"] == 0
    assert state["count"].tolist() == [0.0, 0.0, 0.0]  # accumulators restart after a refinement


def test_relocation_values_preserve_opacity_and_identity_for_one_copy():
    o = torch.tensor([0.9, 0.5, 0.2, 0.05])
    s = torch.rand(4, 3) + 0.1
    new_o, new_s = relocation_values(o, s, torch.ones(4, dtype=torch.long))
    assert torch.allclose(new_o, o, atol=1e-6) and torch.allclose(new_s, s, atol=1e-5)
    for n in (2, 3, 7):
        new_o, new_s = relocation_values(o, s, torch.full((4,), n))
        # n stacked copies composite to the original opacity: 1 − (1 − o')ⁿ = o
        assert torch.allclose(1 - (1 - new_o) ** n, o, atol=1e-5)
        assert (new_s <= s * 1.0001).all() or n == 1


def test_relocation_scale_matches_direct_sum():
    """σ' from eq. 9, evaluated independently with Python floats and math.comb."""
    o, s, n = 0.7, 0.3, 4
    new_o = 1 - (1 - o) ** (1 / n)
    denom = sum(math.comb(i - 1, k) * (-1) ** k * new_o ** (k + 1) / math.sqrt(k + 1)
                for i in range(1, n + 1) for k in range(i))
    _, got = relocation_values(torch.tensor([o]), torch.full((1, 3), s), torch.tensor([n]))
    assert got[0, 0].item() == pytest.approx(o / denom * s, rel=1e-5)


def test_mcmc_relocates_dead_onto_live_and_respects_cap():
    params = make_params(50)
    params["opacities"][:10] = -10.0  # dead
    opt = tagged_optimizer(params)
    strategy = MCMCStrategy(cap=60, growth=0.05, min_opacity=0.005, seed_generator=torch.Generator().manual_seed(0))
    moved = strategy.relocate(opt)
    assert moved == 10
    o = torch.sigmoid(opt.params["opacities"])
    assert (o > 0.005).all()
    # every relocated row now sits exactly on a live Gaussian's position, and their moments restarted
    live_means = params["means"][10:]
    for i in range(10):
        assert (opt.params["means"][i] - live_means).norm(dim=-1).min() == 0
        assert opt.exp_avg["means"][i].abs().sum() == 0
    assert_aligned(opt)
    counts = []
    for _ in range(10):
        strategy.add(opt)
        counts.append(opt.params["means"].shape[0])
        assert_aligned(opt)
    assert counts[0] == int(1.05 * 50)
    assert max(counts) == 60 and counts[-1] == 60  # grows by 5 % and stops at the cap


def test_mcmc_noise_moves_transparent_gaussians_only():
    params = make_params(2)
    params["scales"][:] = math.log(0.1)
    params["opacities"] = torch.tensor([-8.0, 4.0])  # ~0.0003 and ~0.98
    opt = tagged_optimizer(params)
    before = opt.params["means"].detach().clone()
    MCMCStrategy(noise_lr=5e5).step_post_optimizer(opt, {}, 1, 1e-4, generator=torch.Generator().manual_seed(1))
    moved = (opt.params["means"].detach() - before).norm(dim=-1)
    assert moved[0] > 1e-3
    assert moved[1] < 1e-6 * moved[0]


def test_adam_matches_torch_adam():
    torch.manual_seed(0)
    p0 = torch.randn(5, 3)
    ours = GaussianAdam({"means": p0.clone().requires_grad_(True)}, {"means": 0.01})
    ref_p = p0.clone().requires_grad_(True)
    ref = torch.optim.Adam([ref_p], lr=0.01, eps=1e-15)
    for _ in range(5):
        g = torch.randn(5, 3)
        ours.params["means"].grad = g.clone()
        ref_p.grad = g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(ours.params["means"], ref_p, atol=1e-6)
