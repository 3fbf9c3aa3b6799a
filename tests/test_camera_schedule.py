"""Camera refinement's schedule in training: the poses stay put for the warm-up, then their learning rate
decays log-linearly from ``camera_lr`` to ``camera_lr · camera_lr_end`` (optim.camera_lr_end).

Reference: the stated formula, evaluated independently of ``exponential_lr``.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import kernel_backend

from recon3d.train import camera_opt


@pytest.mark.parametrize("end", [0.01, 0.1])
def test_the_camera_learning_rate_decays_to_the_configured_fraction(tmp_path, monkeypatch, end):
    from recon3d.api import reconstruct
    from recon3d.train.synthetic import make_synthetic_data

    scales: list[float] = []
    original = camera_opt.CameraRefinement.step

    def recording(self, lr_scale: float = 1.0) -> None:
        scales.append(lr_scale)
        original(self, lr_scale)

    monkeypatch.setattr(camera_opt.CameraRefinement, "step", recording)
    data = make_synthetic_data(tmp_path / "data", num_views=6, size=24, backend=kernel_backend())
    photos = dataclasses.replace(data, background=None, _cache={}, _alpha={})
    steps, warmup = 20, 0.25
    reconstruct(photos, tmp_path / "run", steps=steps, preset="fast", quiet=True, threads=1, backend=kernel_backend(),
                appearance="none", refine_cameras=True,
                **{"optim.camera_warmup": warmup, "optim.camera_lr_end": end})
    first = int(warmup * steps)
    assert len(scales) == steps - first  # no camera step during the warm-up
    for k, got in enumerate(scales):
        assert got == pytest.approx(end ** (k / (steps - first)), rel=1e-9)
