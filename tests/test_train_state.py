"""``TrainState`` and its one serialisation: every field survives a checkpoint, in the layout runs have always had."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recon3d.errors import Recon3dError
from recon3d.train.checkpoint import state_from_dict, state_to_dict
from recon3d.train.frame import WorldTransform
from recon3d.train.optim import GaussianAdam
from recon3d.train.state import Clock, TrainState


def _state() -> TrainState:
    g = torch.Generator().manual_seed(0)
    params = {k: torch.randn(6, 3, generator=g).requires_grad_(True) for k in ("means", "scales")}
    optimizer = GaussianAdam(params, {"means": 1e-3, "scales": 1e-2})
    for p in params.values():
        p.grad = torch.randn(6, 3, generator=g)
    optimizer.step()
    rng_cpu = torch.Generator().manual_seed(4)
    torch.rand(3, generator=rng_cpu)  # a generator part-way through its stream
    return TrainState(step=7, total_steps=90, optimizer=optimizer, strategy_state={"grad2d": torch.arange(6.0)},
                      rng_cpu=rng_cpu, rng_device=torch.Generator().manual_seed(5), order=torch.tensor([3, 1, 2]),
                      order_pos=2, transform=WorldTransform(torch.tensor([1.0, 2.0, 3.0]), 0.25),
                      clock=Clock(offset=12.5), lr_factor=0.5, nan_events=1, step_time_ema=0.03,
                      curve=[{"step": 5.0, "psnr": 20.0}], init_kind="points")


def test_every_field_survives_the_checkpoint():
    state = _state()
    saved = state_to_dict(state)
    # the layout earlier runs wrote (so they resume, and tools reading checkpoints keep working)
    assert {"params", "optimizer", "train_seconds", "rng_cpu", "rng_device", "strategy_state", "order"} <= set(saved)
    assert saved["optimizer"]["step_count"] == 1 and torch.equal(saved["params"]["means"], state.params["means"])
    back = state_from_dict(saved, torch.device("cpu"))
    for f in dataclasses.fields(TrainState):
        a, b = getattr(state, f.name), getattr(back, f.name)
        if f.name == "optimizer":
            assert a.step_count == b.step_count and a.lrs == b.lrs
            for k in a.params:
                assert torch.equal(a.params[k], b.params[k]) and torch.equal(a.exp_avg_sq[k], b.exp_avg_sq[k])
                assert b.params[k].requires_grad and b.params[k].data_ptr() != saved["params"][k].data_ptr()
        elif isinstance(a, torch.Generator):
            assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))  # the same stream onwards
        elif f.name == "clock":
            assert b.seconds() >= 12.5 and abs(b.offset - a.seconds()) < 1.0
        elif f.name == "transform":
            assert torch.equal(a.center, b.center) and a.scale == b.scale
        elif f.name == "strategy_state":
            assert torch.equal(a["grad2d"], b["grad2d"])
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        else:
            assert a == b, f.name


def test_a_foreign_or_newer_checkpoint_is_refused_in_one_line():
    saved = state_to_dict(_state())
    with pytest.raises(Recon3dError, match="not a recon3d training checkpoint"):
        state_from_dict({**saved, "format": "other"}, torch.device("cpu"))
    with pytest.raises(Recon3dError, match="version 9"):
        state_from_dict({**saved, "version": 9}, torch.device("cpu"))
    with pytest.raises(Recon3dError, match="lacks 'order'"):
        state_from_dict({k: v for k, v in saved.items() if k != "order"}, torch.device("cpu"))
