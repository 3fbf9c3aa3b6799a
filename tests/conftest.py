"""Shared test fixtures and marker handling.

Markers: ``slow`` (seconds to minutes, still run in CI), ``data`` (needs ../shared/data, skipped with a
message when absent), ``heldout`` (needs ../shared/generation/heldout.txt), ``gpu`` (needs CUDA, skipped without it), ``browser`` (headless Chromium).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
HELDOUT = PROJECT_ROOT.parent / "shared" / "generation" / "heldout.txt"


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_data = SHARED_DATA.is_dir()
    has_heldout = HELDOUT.is_file()
    has_chromium = shutil.which("chromium") is not None or Path("/usr/bin/chromium").exists()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none found by torch.cuda.is_available())"))
        if "data" in item.keywords and not has_data:
            item.add_marker(pytest.mark.skip(reason=f"needs the shared data sets at {SHARED_DATA}, which is absent"))
        if "heldout" in item.keywords and not has_heldout:
            item.add_marker(pytest.mark.skip(reason=f"needs the held-out concepts file {HELDOUT}, which is absent"))
        if "browser" in item.keywords and not has_chromium:
            item.add_marker(pytest.mark.skip(reason="needs chromium (apt-get install -y chromium)"))


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data (tests using it carry the ``data`` marker)."""
    return SHARED_DATA


@pytest.fixture
def project_root() -> Path:
    """The repository root."""
    return PROJECT_ROOT


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch thread: tiny networks on a shared 2-core machine thrash with two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def kernel_backend() -> str:
    """``cpu`` when the native kernels build and render here, else the dense ``reference`` backend."""
    from recon3d import Cameras, GaussianScene
    from recon3d.render import render

    try:
        render(GaussianScene.empty(), Cameras.look_at((0, 0, 3), (0, 0, 0), width=16, height=16), backend="cpu")
        return "cpu"
    except Exception:  # the kernels cannot build here: the dense reference is slower but equivalent
        return "reference"
