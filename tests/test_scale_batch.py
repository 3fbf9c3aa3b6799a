"""Batches of cameras (``--batch-size``): gsplat's learning-rate rule, the batch's gradient is the mean of its
views' gradients, a batch draws the cameras (and backgrounds) that single steps would draw, a run trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recon3d
from recon3d.errors import InputError
from recon3d.render import render
from recon3d.train.checkpoint import state_from_dict, state_to_dict
from recon3d.train.config import apply_overrides, load_preset
from recon3d.train.step import batch_scaling, next_batch, train_step, upcoming
from recon3d.train.synthetic import make_synthetic_data
from recon3d.train.trainer import Trainer


def backend() -> str:
    try:
        render(recon3d.GaussianScene.empty(), recon3d.Cameras.look_at((0, 0, 3), (0, 0, 0), width=16, height=16),
               backend="cpu")
        return "cpu"
    except Exception:  # the kernels cannot build here: the dense reference is slower but equivalent
        return "reference"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_data(tmp_path_factory.mktemp("batch"), num_views=10, size=24, backend=backend())


def test_batch_scaling_follows_gsplat():
    assert batch_scaling(1) == (1.0, (0.9, 0.999), 1e-15)  # batch 1: the 3DGS constants, untouched
    scale, betas, eps = batch_scaling(4)
    assert scale == pytest.approx(2.0)
    assert betas == pytest.approx((0.6, 0.996))
    assert eps == pytest.approx(1e-15 / 2)
    assert batch_scaling(20)[1][0] == 0.0  # floored: a negative beta is no average


def _trainer(data, tmp_path: Path, **overrides) -> Trainer:
    cfg = apply_overrides(load_preset("fast"), {"steps": 20, "backend": backend(), "threads": 1,
                                                 "data.prefetch": False, **overrides})
    trainer = Trainer(data, cfg, tmp_path / "run", quiet=True)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    trainer.state = trainer._start()
    return trainer


def test_a_batch_gradient_is_the_mean_of_its_views_gradients(data, tmp_path):
    trainer = _trainer(data, tmp_path, **{"optim.batch_size": 2, "model.sh_degree": 1})
    snapshot = state_to_dict(trainer.state)
    a, b = trainer.train_idx[:2]

    def grads(indices: list[int]) -> list[torch.Tensor]:
        state = state_from_dict(snapshot, trainer.device)
        state.order, state.order_pos = torch.tensor(indices), 0
        batch = next_batch(state, trainer.views, len(indices))
        assert batch.indices == indices
        state.optimizer.zero_grad = lambda: None  # keep the gradients the step computed (before its update)
        train_step(state, batch, trainer.method, trainer.cfg)
        return [p.grad.clone() for p in state.params.values()]

    both, first, second = grads([a, b]), grads([a]), grads([b])
    assert len(both) == len(first) == 6
    assert all(float(both[k].abs().max()) > 0 for k in (0, 1, 3, 4))  # means, scales, opacities, sh0 (quats: isotropic)
    for g2, g0, g1 in zip(both, first, second):
        expected = (g0 + g1) / 2
        torch.testing.assert_close(g2, expected, rtol=1e-4, atol=1e-9 + 1e-4 * float(expected.abs().max()))


def test_a_batch_draws_what_single_steps_draw(data, tmp_path):
    trainer = _trainer(data, tmp_path, **{"data.background": "random"})
    views = trainer.views
    assert views.random_background
    snapshot = state_to_dict(trainer.state)
    together = state_from_dict(snapshot, trainer.device)
    single = state_from_dict(snapshot, trainer.device)
    for state in (together, single):  # two cameras left in this epoch: the batch crosses into the next one
        state.order, state.order_pos = torch.tensor(views.train_idx), len(views.train_idx) - 2
    ahead = upcoming(together, views, 4)
    whole = next_batch(together, views, 4)
    assert ahead == whole.indices and len(whole.indices) == 4
    assert whole.image.shape == (4, 24, 24, 3) and whole.background.shape == (4, 3)
    for k in range(4):
        one = next_batch(single, views, 1)
        assert one.indices == [whole.indices[k]]
        assert torch.equal(one.background, whole.background[k])
        assert torch.equal(one.image, whole.image[k])
    assert torch.equal(single.rng_cpu.get_state(), together.rng_cpu.get_state())


def test_batch_of_two_trains(data, tmp_path):
    from recon3d.api import reconstruct

    _, _, metrics = reconstruct(data, tmp_path / "b2", preset="fast", steps=30, backend=backend(), threads=1,
                                quiet=True, batch_size=2)
    assert metrics["batch_size"] == 2 and metrics["steps"] == 30
    assert metrics["psnr"] > 12


def test_batch_size_flag_and_refusals(data, tmp_path):
    from recon3d.cli import build_parser
    from recon3d.commands.reconstruct import _FLAG_KEYS

    args = build_parser().parse_args(["reconstruct", str(tmp_path), "-o", str(tmp_path / "r"), "--batch-size", "3"])
    overrides = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items() if getattr(args, flag) is not None}
    assert apply_overrides(load_preset("fast"), overrides).optim.batch_size == 3
    with pytest.raises(InputError, match="batch_size"):
        apply_overrides(load_preset("fast"), {"optim.batch_size": 0})
    with pytest.raises(InputError, match="--appearance grid trains one image's grid per step"):
        _trainer(data, tmp_path, **{"optim.batch_size": 2, "model.appearance": "grid"})
