"""The vector exp of the CPU pixel loops (common.h ``fast_exp``) against float64 exp: accurate well inside
the forward tolerance where alphas are decided, and never denormal after the opacity multiply."""

from __future__ import annotations

import torch

from recon3d.backends import kernels
from recon3d.constants import ALPHA_MAX, ALPHA_MIN


def test_fast_exp_accuracy_and_range():
    ext = kernels.load_kernels()
    x = torch.cat([torch.linspace(-120.0, 0.0, 400_001), torch.tensor([0.0, -1e-8, -80.0, -80.5, -1e4, -1e30])])
    got = ext.fast_exp_lanes(x.float()).double()
    want = torch.exp(x.float().double())  # the exact exp of the float inputs
    rel = ((got - want) / want.clamp_min(1e-300)).abs()
    # where an alpha can reach 1/255 (opacity <= 1: power >= ln(1/255)) the error is float rounding
    near = x >= torch.log(torch.tensor(ALPHA_MIN / ALPHA_MAX)).item() - 1.0
    assert float(rel[near].max()) < 5e-7
    wide = x >= -80.0
    assert float(rel[wide].max()) < 2e-6
    # below -80 it is clamped: still tiny (far below 1/255) and, times the least opacity drawn, a normal float
    far = got[~wide]
    assert float(far.max()) <= float(torch.exp(torch.tensor(-79.9, dtype=torch.float64)))
    smallest = (far.float() * ALPHA_MIN).min()
    assert float(smallest) >= torch.finfo(torch.float32).tiny
    assert bool(torch.isfinite(got).all()) and bool((got > 0).all())
