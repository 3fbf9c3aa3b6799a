"""The time budget's step-cost model: seconds per step = a + b·N, fitted on the run's own steps."""

import numpy as np
import pytest

from recon3d.train.budget import MIN_SAMPLES, PRE_FIT_GROWTH, StepCost


def _grown(a: float, b: float, counts, noise: float = 0.0, seed: int = 0) -> StepCost:
    rng = np.random.default_rng(seed)
    cost = StepCost()
    for n in counts:
        cost.add(n, a + b * n + noise * rng.standard_normal())
    return cost


def test_fit_recovers_fixed_and_per_gaussian_parts():
    cost = _grown(0.08, 2e-6, np.linspace(10_000, 20_000, 200).astype(int), noise=1e-4)
    a, b = cost.fit()
    assert a == pytest.approx(0.08, rel=0.05)
    assert b == pytest.approx(2e-6, rel=0.05)


def test_outlier_steps_do_not_move_the_fit():
    cost = _grown(0.05, 1e-6, np.linspace(10_000, 30_000, 300).astype(int))
    for n in range(10_000, 30_000, 1000):  # a refinement or a checkpoint now and then: much slower steps
        cost.add(n, 2.0)
    a, b = cost.fit()
    assert a == pytest.approx(0.05, rel=0.02) and b == pytest.approx(1e-6, rel=0.02)


def test_no_fit_without_enough_steps_or_spread():
    assert _grown(0.05, 1e-6, [10_000] * (MIN_SAMPLES - 1) + [20_000]).fit() is None  # too few steps
    assert _grown(0.05, 1e-6, [10_000] * 200).fit() is None  # one count: a and b cannot be told apart
    assert _grown(0.05, 1e-6, np.linspace(10_000, 11_000, 200).astype(int)).fit() is None  # 10 % apart


def test_affordable_count():
    a, b = 0.02, 1e-6
    cost = _grown(a, b, np.linspace(10_000, 20_000, 200).astype(int))
    # room: 1,000 s for 10,000 steps = 0.1 s a step -> (0.1 - a) / b Gaussians
    assert cost.affordable(20_000, a + b * 20_000, 1000.0, 10_000) == pytest.approx((0.1 - a) / b, rel=0.02)
    # no room even at zero Gaussians (0.01 s a step < a): the Gaussians may cost as much as the pixels
    assert cost.affordable(20_000, a + b * 20_000, 100.0, 10_000) == pytest.approx(a / b, rel=0.02)


def test_affordable_before_a_fit_lets_the_count_grow():
    cost = _grown(0.05, 1e-6, [10_000] * 100)
    dt = 0.05 + 1e-6 * 10_000
    # proportional estimate: 10,000 × (10 s / 1,000 steps) / 0.06 s ≈ 1,667, yet growth stays possible
    assert cost.affordable(10_000, dt, 10.0, 1000) == int(PRE_FIT_GROWTH * 10_000)
    # plenty of time: the proportional estimate, above the growth floor
    assert cost.affordable(10_000, dt, 1000.0, 1000) == int(10_000 * 1.0 / dt)
