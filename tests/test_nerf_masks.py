"""Masks with ``--method nerf``: a masked pixel gets no training ray and no say in the figures, as with splats
(``test_train_opaque.py``), and the run folder keeps every camera's mask for later evaluations."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recon3d.api import reconstruct
from recon3d.data.masks import save_mask
from recon3d.metrics import masked_psnr
from recon3d.nerf.trainer import _Targets
from recon3d.run import load_run
from recon3d.train.synthetic import make_synthetic_data

SMALL = ["nerf.levels=8", "nerf.log2_table=14", "nerf.max_resolution=128", "nerf.samples_per_step=8192",
         "nerf.initial_rays=128", "nerf.max_samples=128", "nerf.steps_across=128", "nerf.grid_res=32",
         "nerf.hidden=32", "nerf.dir_degree=1"]
SIZE = 32


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """A small analytic scene (RGBA on white); each view keeps its left 12 columns (the first training view
    keeps none)."""
    root = tmp_path_factory.mktemp("masked")
    data = make_synthetic_data(root / "data", num_views=12, size=SIZE, radius=1.0, backend="reference")
    paths, empty = [], data.train_indices()[0]
    for k in range(len(data)):
        mask = torch.zeros(SIZE, SIZE)
        if k != empty:
            mask[:, :12] = 1
        paths.append(root / "masks" / f"view_{k:03d}.png")
        save_mask(paths[-1], mask)
    return dataclasses.replace(data, _masks=paths, _mask_cache={})


def test_rays_are_drawn_from_kept_pixels_only_and_evenly(masked):
    train_idx = masked.train_indices()
    targets = _Targets(masked, train_idx, composited=False)
    cam, px, py, rgb, _ = targets.sample(60_000, masked.cameras, torch.Generator().manual_seed(0))
    assert int(px.max()) < 12 and int(px.min()) >= 0 and int(py.max()) < SIZE and int(py.min()) >= 0
    assert set(cam.tolist()) == set(train_idx[1:])  # a view whose mask keeps nothing gets no ray
    # the colour drawn is the image's colour at that pixel
    for c, x, y, v in list(zip(cam.tolist(), px.tolist(), py.tolist(), rgb))[:50]:
        expected = (masked.load_image(c)[y, x].clamp(0, 1) * 255).round() / 255
        assert torch.allclose(v, expected, atol=1e-6)
    # every kept pixel as likely as any other: 12 columns × 32 rows × views, each ~ the same count
    kept_views = len(train_idx) - 1
    counts = torch.bincount(cam * (SIZE * SIZE) + py * SIZE + px, minlength=len(masked) * SIZE * SIZE)
    counts = counts[counts > 0].float()
    expected = 60_000 / (kept_views * 12 * SIZE)
    assert len(counts) == kept_views * 12 * SIZE
    assert abs(float(counts.mean()) - expected) < 1e-6 and float(counts.std()) < 2.5 * expected**0.5


def test_nerf_run_keeps_masks_and_judges_kept_pixels(masked, tmp_path):
    _, _, metrics = reconstruct(masked, tmp_path / "run", preset="fast", steps=40, threads=1, quiet=True,
                                method="nerf", assignments=SMALL)
    assert metrics["per_view"] and all("mask" in v for v in metrics["per_view"])
    run = load_run(tmp_path / "run")
    assert sorted(run.masks()) == list(range(len(masked)))
    # the held-out figure, by hand: the field's render against the image over the kept pixels only
    for record in metrics["per_view"]:
        i = record["index"]
        out = run.render(run.cameras[i], background=torch.ones(3))  # RGBA data: its protocol is on white
        mask = masked.load_mask(i)[..., None]
        target = masked.load_image(i)
        assert record["psnr"] == pytest.approx(masked_psnr(out.rgb[0], target, mask), abs=0.05)
        assert abs(masked_psnr(out.rgb[0], target, mask) - masked_psnr(out.rgb[0], target)) > 0.1
