"""The training step's fast paths compute what the plain implementations compute.

- the fused C SSIM (value and gradient) against a dense 11×11-window SSIM in float64 and against
  ``recon3d.metrics.ssim`` differentiated by autograd;
- the training loss built on it against the same loss built on ``recon3d.metrics.ssim``;
- the fused Adam kernel against the reference per-tensor Adam loop;
- the cheap finiteness check against ``isfinite().all()``, including sums that overflow.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recon3d.metrics import ssim
from recon3d.train import cpu_ops
from recon3d.train.loss import image_loss
from recon3d.train.loss import params_finite as _params_finite
from recon3d.train.optim import GaussianAdam
from recon3d.train.profile import StepProfile

pytestmark = pytest.mark.skipif(not cpu_ops.fused_available(), reason="no C compiler for the fused SSIM")


def dense_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of H×W×C images with a dense (non-separable) 11×11 Gaussian window, valid region, float64."""
    r = torch.arange(11, dtype=torch.float64) - 5.0
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = torch.outer(g, g)
    c = x.shape[-1]
    k = window.expand(c, 1, 11, 11)

    def blur(img):
        return F.conv2d(img.permute(2, 0, 1)[None], k, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean()


def _pair(h: int, w: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.rand(h, w, c, generator=gen)
    # partly correlated, as a render and its photo are; a few pixels outside [0, 1] as renders can be
    x = 0.6 * y + 0.4 * torch.rand(h, w, c, generator=gen) + 0.05 * torch.randn(h, w, c, generator=gen)
    return x, y


@pytest.mark.parametrize("shape", [(11, 11, 3), (23, 41, 3), (64, 48, 3), (37, 29, 1), (20, 33, 4)])
def test_fused_ssim_matches_dense_window_in_float64(shape):
    x, y = _pair(*shape, seed=sum(shape))
    value, grad = cpu_ops.fused_ssim(x, y)
    x64 = x.double().requires_grad_(True)
    ref = dense_ssim(x64, y.double())
    ref.backward()
    assert value == pytest.approx(float(ref.detach()), abs=2e-6)
    scale = float(x64.grad.abs().max())
    assert float((grad.double() - x64.grad).abs().max()) <= 2e-5 * scale


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_fused_loss_bands_match_one_band_and_the_dense_reference(threads):
    # the C loss cuts the rows into one band per thread, each recomputing a 10-row halo: every band count
    # (including bands that end inside the last 10 rows, which have no SSIM row) gives the same bits
    x, y = _pair(113, 47, 3, seed=21)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_ops._image_loss_sums(x, y, -0.2, 1.0 / x.numel(), True)
        torch.set_num_threads(threads)
        many = cpu_ops._image_loss_sums(x, y, -0.2, 1.0 / x.numel(), True)
    finally:
        torch.set_num_threads(before)
    assert one[0] == many[0]
    assert torch.equal(one[1], many[1])
    x64 = x.double().requires_grad_(True)
    ref = dense_ssim(x64, y.double())
    ref.backward()
    n_map = 3 * (113 - 10) * (47 - 10)
    assert many[0][0] / n_map == pytest.approx(float(ref.detach()), abs=2e-6)


def test_fused_ssim_matches_the_metric_and_its_autograd_in_float32():
    x, y = _pair(120, 90, 3, seed=7)
    xa = x.clone().requires_grad_(True)
    old = ssim(xa, y)
    old.backward()
    xb = x.clone().requires_grad_(True)
    new = cpu_ops.ssim_loss_term(xb, y)
    new.backward()
    assert new.grad_fn is not None and "FusedSSIM" in type(new.grad_fn).__name__
    assert float(new.detach()) == pytest.approx(float(old.detach()), abs=1e-6)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4 * float(xa.grad.abs().max()))


def test_fused_ssim_gradient_scales_with_the_upstream_gradient():
    x, y = _pair(30, 31, 3, seed=3)
    xa = x.clone().requires_grad_(True)
    (-0.2 * cpu_ops.ssim_loss_term(xa, y)).backward()
    _, grad = cpu_ops.fused_ssim(x, y)
    torch.testing.assert_close(xa.grad, -0.2 * grad)


def test_training_loss_value_and_gradient_match_the_plain_formula():
    x, y = _pair(200, 300, 3, seed=11)
    xa = x.clone().requires_grad_(True)
    loss_new = image_loss(xa, y, 0.2)
    loss_new.backward()
    xb = x.clone().requires_grad_(True)
    loss_old = (xb - y).abs().mean() + 0.2 * (1.0 - ssim(xb, y))
    loss_old.backward()
    assert float(loss_new.detach()) == pytest.approx(float(loss_old.detach()), rel=1e-6)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5 * float(xb.grad.abs().max()))


@pytest.mark.parametrize("weight", [0.2, 0.8])
def test_fused_training_loss_and_mse_match_the_plain_formulas(weight):
    x, y = _pair(150, 170, 3, seed=13)
    x[0, :5] = y[0, :5]  # equal pixels: |x − y| has gradient 0 there, as torch's abs
    xa = x.clone().requires_grad_(True)
    loss_new, mse = cpu_ops.fused_image_loss(xa, y, weight)
    loss_new.backward()
    xb = x.clone().requires_grad_(True)
    xd = x.double().requires_grad_(True)
    loss_old = (xd - y.double()).abs().mean() + weight * (1.0 - dense_ssim(xd, y.double()))
    loss_old.backward()
    assert float(loss_new.detach()) == pytest.approx(float(loss_old.detach()), abs=2e-6)
    assert mse == pytest.approx(float(((x.double().clamp(0, 1) - y.double()) ** 2).mean()), rel=1e-9)
    torch.testing.assert_close(xa.grad.double(), xd.grad, rtol=1e-4, atol=2e-5 * float(xd.grad.abs().max()))
    assert cpu_ops.loss_mse(loss_new) == mse and cpu_ops.loss_mse(loss_new * 1.0) is None
    # and the PyTorch formula in float32 (recon3d.metrics.ssim through autograd) gives the same gradient
    ((xb - y).abs().mean() + weight * (1.0 - ssim(xb, y))).backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=2e-5 * float(xb.grad.abs().max()))


def test_fallback_where_the_fused_path_does_not_apply():
    x, y = _pair(20, 20, 3, seed=1)
    xd = x.double().requires_grad_(True)
    assert cpu_ops.fused_image_loss(xd, y.double(), 0.2) is None
    out = cpu_ops.ssim_loss_term(xd, y.double())  # float64: the autograd implementation
    assert "FusedSSIM" not in type(out.grad_fn).__name__
    assert float(out.detach()) == pytest.approx(float(dense_ssim(x.double(), y.double())), abs=1e-12)


def _params(n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3), "shN": (n, 15, 3)}
    return {k: torch.randn(*s, generator=gen).requires_grad_(True) for k, s in shapes.items()}


def _give_same_grads(a: GaussianAdam, b: GaussianAdam, gen: torch.Generator, scale: float) -> None:
    """One random gradient per tensor, times ``scale``, handed to both optimisers' parameters."""
    for name in a.params:
        g = torch.randn(a.params[name].shape, generator=gen) * scale
        a.params[name].grad = g.clone()
        b.params[name].grad = g.clone()


def test_fused_adam_matches_the_reference_loop():
    lrs = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 1e-2, "shN": 5e-4}
    fused, loop = GaussianAdam(_params(500, 0), lrs), GaussianAdam(_params(500, 0), lrs)
    loop.fused = False
    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        _give_same_grads(fused, loop, gen, 10.0 ** (step % 3 - 1))
        fused.step(lr_scale=0.5 if step > 20 else 1.0)
        loop.step(lr_scale=0.5 if step > 20 else 1.0)
    for name in fused.params:
        torch.testing.assert_close(fused.params[name], loop.params[name], rtol=1e-5, atol=1e-6)
        # the kernel updates m by lerp, the loop by mul + add: equal up to float32 rounding of m's scale
        m_scale = float(loop.exp_avg[name].abs().max())
        torch.testing.assert_close(fused.exp_avg[name], loop.exp_avg[name], rtol=1e-5, atol=1e-6 * m_scale)
        torch.testing.assert_close(fused.exp_avg_sq[name], loop.exp_avg_sq[name], rtol=1e-5, atol=1e-9)
    moved = float((fused.params["means"] - _params(500, 0)["means"]).detach().abs().max())
    assert moved > 1e-3  # the updates did something


def test_c_adam_matches_torch_fused_adam():
    from recon3d.train.optim import _FUSED_ADAM

    if _FUSED_ADAM is None:
        pytest.skip("this torch has no fused Adam kernel")
    lrs = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 1e-2, "shN": 5e-4}
    ours, torchs = GaussianAdam(_params(700, 4), lrs), GaussianAdam(_params(700, 4), lrs)
    gen = torch.Generator().manual_seed(2)
    for step in range(12):
        _give_same_grads(ours, torchs, gen, 10.0 ** (step % 3 - 2))
        ours.step(lr_scale=0.7)
        torchs.step_count += 1
        torchs._fused_step(0.7)  # torch's kernel, tensor by tensor
    for name in ours.params:
        # float32 rounding (with or without FMA contraction, as the build's SIMD level decides): m cancels
        # towards zero, so its error is relative to its scale, as in the loop comparison above
        m_scale = float(torchs.exp_avg[name].abs().max())
        torch.testing.assert_close(ours.params[name], torchs.params[name], rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(ours.exp_avg[name], torchs.exp_avg[name], rtol=2e-6, atol=1e-6 * m_scale)
        torch.testing.assert_close(ours.exp_avg_sq[name], torchs.exp_avg_sq[name], rtol=2e-6, atol=1e-12)


def test_adam_skips_only_columns_where_it_changes_nothing():
    # SH degree 0 for 5 steps, then 1 (3 of 15 coefficients), then 2: with the promise of zero gradients
    # above the rendered degree, the skipping optimiser must give the same bits as the full update
    lrs = {"means": 1e-3, "scales": 1e-3, "quats": 1e-3, "opacities": 1e-3, "sh0": 1e-3, "shN": 1e-3}
    skip, full = GaussianAdam(_params(300, 6), lrs), GaussianAdam(_params(300, 6), lrs)
    gen = torch.Generator().manual_seed(8)
    for step in range(15):
        used = 3 * (0 if step < 5 else 3 if step < 10 else 8)
        for name in skip.params:
            g = torch.randn(skip.params[name].shape, generator=gen)
            if name == "shN":
                g.reshape(g.shape[0], -1)[:, used:] = 0.0
            skip.params[name].grad = g.clone()
            full.params[name].grad = g.clone()
        skip.used_columns["shN"] = used
        skip.step()
        full.step()
        if step == 7:  # row edits keep the untouched columns' moments at zero
            keep = torch.arange(300) % 7 != 0
            skip.keep(keep)
            full.keep(keep)
            rows = {k: v[:20].detach().clone() for k, v in skip.params.items()}
            skip.append(rows)
            full.append(rows)
    for name in skip.params:
        assert torch.equal(skip.params[name], full.params[name])
        assert torch.equal(skip.exp_avg_sq[name], full.exp_avg_sq[name])
    assert skip._active["shN"] == 24
    # a resumed optimiser finds the columns with moments from the moments themselves
    again = GaussianAdam({k: v.detach().clone() for k, v in skip.params.items()}, lrs)
    again.load_state_dict(skip.state_dict())
    assert again._active["shN"] == 24 and again._active["means"] == 3


def test_finite_check_agrees_with_isfinite():
    params = {k: v.detach() for k, v in _params(100, 2).items()}
    assert _params_finite(params)
    for bad in (math.nan, math.inf, -math.inf):
        broken = {k: v.clone() for k, v in params.items()}
        broken["shN"][7, 3, 1] = bad
        assert not _params_finite(broken)
    both = {k: v.clone() for k, v in params.items()}
    both["means"][0, 0], both["means"][1, 0] = math.inf, -math.inf  # sums to NaN
    assert not _params_finite(both)
    # large finite values whose float32 sum overflows: still finite
    huge = {k: v.clone() for k, v in params.items()}
    huge["scales"][:] = 3e38
    assert not bool(torch.isfinite(huge["scales"].sum()))
    assert _params_finite(huge)
    assert _params_finite({"means": torch.zeros(0, 3)})
    # the C pass and the torch fallback (float64) agree
    assert cpu_ops.all_finite(list(broken.values())) is False and cpu_ops.all_finite(list(huge.values())) is True
    assert not _params_finite({k: v.double() for k, v in broken.items()})
    assert _params_finite({k: v.double() for k, v in huge.items()})


def test_step_profile_charges_time_to_phases():
    prof = StepProfile(torch.device("cpu"), enabled=True)
    for _ in range(3):
        prof.start()
        sum(range(1000))
        prof.mark("a")
        prof.mark("b")
        prof.end()
    summary = prof.summary()
    assert set(summary) == {"a", "b"} and prof.steps == 3
    assert all(v >= 0 for v in summary.values())
    assert "step profile over 3 steps" in prof.table()
    off = StepProfile(torch.device("cpu"), enabled=False)
    off.start()
    off.mark("a")
    off.end()
    assert off.summary() == {} and off.steps == 0


def test_mcmc_noise_in_c_matches_the_tensor_formula(monkeypatch):
    from recon3d.train.strategy import MCMCStrategy

    params = {k: v.detach() for k, v in _params(3000, 5).items()}
    params["scales"] -= 3.0
    params["opacities"] = torch.linspace(-9, 4, 3000)  # from dead (gate ≈ 1) to opaque (gate ≈ 0)
    params["quats"][:5] = 0.0  # zero quaternions take the identity rotation
    strategy = MCMCStrategy()

    def run(use_c: bool) -> torch.Tensor:
        opt = GaussianAdam({k: v.clone() for k, v in params.items()}, {k: 1e-3 for k in params})
        if not use_c:
            monkeypatch.setattr(cpu_ops, "mcmc_noise_applies", lambda *a: False)
        strategy.step_post_optimizer(opt, {}, 10, 1.6e-4, generator=torch.Generator().manual_seed(3))
        monkeypatch.undo()
        return opt.params["means"] - params["means"]

    moved_c, moved_torch = run(True), run(False)
    assert float(moved_torch.abs().max()) > 1e-4  # the noise is not vanishing
    torch.testing.assert_close(moved_c, moved_torch, rtol=1e-4, atol=1e-6 * float(moved_torch.abs().max()))


def test_mcmc_noise_in_c_is_the_same_for_any_thread_count_and_alignment():
    # every Gaussian goes through the same (vector) code path: a resumed run, whose tensors sit at other
    # addresses, and a run on another thread count add the same noise bit for bit
    n = 1000 + 7  # a short last block
    gen = torch.Generator().manual_seed(9)
    means, scales = torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen) - 3.0
    quats, opacities = torch.randn(n, 4, generator=gen), torch.linspace(-9, 4, n)
    quats[:3] = 0.0
    noise = torch.randn(n, 3, generator=gen)

    def shifted(t: torch.Tensor) -> torch.Tensor:  # the same values one float further in memory
        return torch.empty(t.numel() + 1)[1:].view(t.shape).copy_(t)

    results = []
    before = torch.get_num_threads()
    try:
        for threads, move in ((1, False), (3, False), (2, True)):
            torch.set_num_threads(threads)
            args = [means.clone(), scales, quats, opacities, noise]
            if move:
                args = [shifted(a) for a in args]
            cpu_ops.mcmc_noise_(*args, 3e-3)
            results.append(args[0])
    finally:
        torch.set_num_threads(before)
    assert float((results[0] - means).abs().max()) > 1e-4
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_relocation_values_with_mixed_copy_counts_match_the_formula():
    from recon3d.train.strategy import relocation_values

    copies = torch.tensor([1, 2, 3, 7, 51, 60, 2])
    o = torch.tensor([0.3, 0.9, 0.5, 0.99, 0.7, 0.2, 1e-3], dtype=torch.float64)
    s = torch.rand(7, 3, dtype=torch.float64) + 0.1
    new_o, new_s = relocation_values(o, s, copies)
    for g in range(7):
        n = min(int(copies[g]), 51)
        o2 = 1 - (1 - float(o[g])) ** (1 / n)
        denom = sum(math.comb(i - 1, k) * (-1) ** k * o2 ** (k + 1) / math.sqrt(k + 1)
                    for i in range(1, n + 1) for k in range(i))
        assert float(new_o[g]) == pytest.approx(o2, rel=1e-12)
        torch.testing.assert_close(new_s[g], float(o[g]) / denom * s[g], rtol=1e-9, atol=0)


def test_fused_loss_is_the_same_for_any_thread_count():
    x, y = _pair(97, 131, 3, seed=21)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xa = x.clone().requires_grad_(True)
            loss, mse = cpu_ops.fused_image_loss(xa, y, 0.2)
            loss.backward()
            results.append((float(loss.detach()), mse, xa.grad))
    finally:
        torch.set_num_threads(before)
    for loss, mse, grad in results[1:]:
        assert loss == results[0][0] and mse == results[0][1]
        assert torch.equal(grad, results[0][2])

