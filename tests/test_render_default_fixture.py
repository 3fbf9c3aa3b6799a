"""The default render mode stays bit-identical: cpu renders and gradients against a fixture that the code at
main's commit 2f85565 wrote (before the anti-aliased mode, camera gradients and feature channels existed);
see tests/fixtures/make_default_render_fixture.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from recon3d.backends.kernels import _cpu_flags

FIXTURES = Path(__file__).parent / "fixtures"


def _maker():
    spec = importlib.util.spec_from_file_location("make_default_render_fixture", FIXTURES / "make_default_render_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_default_mode_bit_identical_to_fixture(dtype):
    data = torch.load(FIXTURES / "default_render.pt", weights_only=True)
    if data["cpu_flags"] != " ".join(_cpu_flags()):
        pytest.skip(f"fixture recorded with other CPU flags ({data['cpu_flags']}); bitwise equality holds per build")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture's thread count: gradient sums are per-thread buffers
    try:
        now = _maker().render_record(getattr(torch, dtype))
    finally:
        torch.set_num_threads(before)
    for key, expected in data[dtype].items():
        assert torch.equal(now[key], expected), f"{dtype} {key} differs from the fixture"
