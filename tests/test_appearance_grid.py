"""The bilateral-grid appearance model: slicing against an explicit per-pixel loop, its gradients by finite
differences, the identity start, the regulariser, the row-wise Adam and the NeRF-W grid fit."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import kernel_backend

from recon3d.bilateral import LUMA, grid_total_variation, identity_grid, slice_grid
from recon3d.train.appearance import BilateralGridAppearance, RowAdam, SmallAdam


def _slice_by_loop(grid: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Independent reference: for every pixel, the eight surrounding cells' transforms weighted trilinearly by
    hand (float64 scalars), corners on the corner pixels and on luminance 0 and 1, clamped outside."""
    _, levels, gy, gx = grid.shape
    h, w = rgb.shape[:2]
    out = torch.zeros(h, w, 3, dtype=torch.float64)
    for v in range(h):
        for u in range(w):
            r, g, b = (float(c) for c in rgb[v, u])
            lum = LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
            pos = [u / (w - 1) * (gx - 1), v / (h - 1) * (gy - 1), min(max(lum, 0.0), 1.0) * (levels - 1)]
            sizes = [gx, gy, levels]
            lo = [min(int(math.floor(p)), n - 1) for p, n in zip(pos, sizes)]
            frac = [p - lo_ for p, lo_ in zip(pos, lo)]
            matrix = [[0.0] * 4 for _ in range(3)]
            for dx in (0, 1):
                for dy in (0, 1):
                    for dz in (0, 1):
                        wgt = ((frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
                               * (frac[2] if dz else 1 - frac[2]))
                        if wgt == 0.0:
                            continue
                        ix, iy, iz = lo[0] + dx, lo[1] + dy, lo[2] + dz
                        for row in range(3):
                            for col in range(4):
                                matrix[row][col] += wgt * float(grid[row * 4 + col, iz, iy, ix])
            for row in range(3):
                out[v, u, row] = matrix[row][0] * r + matrix[row][1] * g + matrix[row][2] * b + matrix[row][3]
    return out


def test_slicing_matches_an_explicit_per_pixel_trilinear_loop():
    torch.manual_seed(0)
    grid = identity_grid((3, 4, 5), dtype=torch.float64)[0] + 0.2 * torch.randn(12, 5, 4, 3, dtype=torch.float64)
    rgb = torch.rand(6, 7, 3, dtype=torch.float64)
    rgb[0, 0] = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)  # luminance exactly 1: the top level
    rgb[1, 1] = 0.0  # luminance 0: the bottom level
    got = slice_grid(grid, rgb)
    assert torch.allclose(got, _slice_by_loop(grid, rgb), atol=1e-12)


def test_slicing_gradients_match_finite_differences():
    torch.manual_seed(1)
    grid = (identity_grid((3, 2, 4), dtype=torch.float64)[0]
            + 0.1 * torch.randn(12, 4, 2, 3, dtype=torch.float64)).requires_grad_(True)
    # colours kept off the cells' luminance boundaries (multiples of 1/3), where trilinear weights have kinks
    rgb = (0.05 + 0.25 * torch.rand(4, 5, 3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(slice_grid, (grid, rgb), eps=1e-6, atol=1e-8)


def test_identity_grid_changes_nothing_and_costs_nothing():
    torch.manual_seed(2)
    app = BilateralGridAppearance(3, shape=(4, 4, 3))
    rgb = torch.rand(10, 13, 3)
    assert torch.allclose(app.apply(rgb, 1), rgb, atol=1e-6)
    assert float(app.regulariser().detach()) == 0.0


def test_total_variation_is_zero_for_a_constant_grid_and_grows_with_roughness():
    flat = identity_grid((4, 4, 3))[0] * 1.3
    assert float(grid_total_variation(flat)) == 0.0
    rough = flat.clone()
    rough[0, 1, 2, 2] += 0.5  # one cell off: four squared differences (0.25 each) along x, y, z
    expected = 0.25 * 2 / (12 * 3 * 4 * 3) + 0.25 * 2 / (12 * 3 * 3 * 4) + 0.25 * 2 / (12 * 2 * 4 * 4)
    assert float(grid_total_variation(rough)) == pytest.approx(expected, rel=1e-6)


def test_mean_term_pulls_a_common_change_back_and_forgives_opposite_ones():
    app = BilateralGridAppearance(2, shape=(2, 2, 2), tv_weight=0.0)
    app.apply(torch.rand(4, 4, 3), 0)
    with torch.no_grad():
        app.grids[0, 3] += 0.1  # image 0 brighter, image 1 darker by the same offset: mean is identity
        app.grids[1, 3] -= 0.1
        app._sum = app.grids.detach().sum(0)
    assert float(app.regulariser().detach()) == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        app.grids[1, 3] += 0.2  # both brighter: the scene's colour, not the images'
        app._sum = app.grids.detach().sum(0)
    assert float(app.regulariser().detach()) > 0


def test_row_adam_moves_a_row_as_a_dense_adam_on_that_row_alone():
    torch.manual_seed(3)
    rows = torch.zeros(3, 5, requires_grad=True)
    alone = torch.zeros(1, 5, requires_grad=True)
    sparse, dense = RowAdam(rows, 0.01), SmallAdam(alone, 0.01)
    targets = torch.randn(5)
    for _ in range(30):
        (rows[1] - targets).square().sum().backward()
        sparse.step(1)
        (alone[0] - targets).square().sum().backward()
        dense.step()
    assert torch.allclose(rows[1], alone[0], atol=1e-6)
    assert float(rows[0].detach().abs().sum()) == 0.0 and float(rows[2].detach().abs().sum()) == 0.0


def test_grid_learns_a_brightness_dependent_change_an_affine_cannot():
    """A gain falling with brightness (dark pixels lifted 1.4×, bright ones dimmed) and a left-right vignette:
    piecewise linear in luminance and linear across the image, so a grid holds it exactly."""
    torch.manual_seed(4)
    scene_rgb = torch.rand(24, 32, 3)
    lum = scene_rgb @ torch.tensor(LUMA)
    ramp = torch.linspace(0.8, 1.0, 32)[None, :, None]
    photo = scene_rgb * (1.4 - 0.6 * lum)[..., None] * ramp
    app = BilateralGridAppearance(1, shape=(4, 4, 6), lr=2e-2, tv_weight=0.0, mean_weight=0.0)
    for _ in range(400):
        loss = (app.apply(scene_rgb, 0) - photo).square().mean()
        loss.backward()
        app.step()
    residual = float((app.apply(scene_rgb, 0) - photo).detach().abs().mean())
    assert residual < 0.002
    # the best single affine transform is far worse on the same pair
    from recon3d.metrics import apply_affine, fit_affine

    affine = float((apply_affine(scene_rgb, fit_affine(scene_rgb, photo, ridge=0.0)) - photo).abs().mean())
    assert affine > 10 * residual


def test_state_round_trip_keeps_grids_moments_and_the_running_sum():
    torch.manual_seed(5)
    app = BilateralGridAppearance(3, shape=(2, 3, 2))
    rgb = torch.rand(5, 6, 3)
    for i in (0, 2, 2):
        ((app.apply(rgb, i) - rgb * 0.7).square().mean() + app.regulariser()).backward()
        app.step()
    copy = BilateralGridAppearance(3, shape=(2, 3, 2))
    copy.load_state(app.state())
    assert torch.equal(copy.grids, app.grids)
    assert torch.equal(copy.optimizer.counts, app.optimizer.counts)
    assert torch.allclose(copy._sum, app.grids.detach().sum(0), atol=1e-6)
    assert torch.allclose(app._sum, app.grids.detach().sum(0), atol=1e-6)


def test_luminance_grid_fit_recovers_a_known_tone_grid():
    """The closed-form fit (its own interpolation weights) against grid_sample's slicing of a known grid.

    Grids are compared by what they do (their slices): a luminance grid has a null space (a transform
    proportional to luminance minus each level's own luminance interpolates to zero), so only its slice is
    unique; a tiny ridge picks one grid.
    """
    from recon3d.bilateral import fit_luminance_grid

    torch.manual_seed(6)
    known = identity_grid((1, 1, 5))[0] + 0.15 * torch.randn(12, 5, 1, 1)
    pred = torch.rand(20, 24, 3)
    target = slice_grid(known, pred)
    fitted = fit_luminance_grid(pred, target, levels=5, ridge=1e-9, smooth=0.0)
    assert torch.allclose(slice_grid(fitted, pred), target, atol=1e-4)
    fresh = torch.rand(10, 12, 3)  # and on colours it was not fitted on
    assert torch.allclose(slice_grid(fitted, fresh), slice_grid(known, fresh), atol=1e-3)
    # masked pixels do not count
    mask = torch.ones(20, 24, 1)
    mask[:, :8] = 0
    spoiled = target.clone()
    spoiled[:, :8] = torch.rand(20, 8, 3)
    refit = fit_luminance_grid(pred, spoiled, mask, levels=5, ridge=1e-9, smooth=0.0)
    assert torch.allclose(slice_grid(refit, fresh), slice_grid(known, fresh), atol=1e-3)
    # an identity target gives the identity grid (the ridge pulls towards it, the data agree)
    assert torch.allclose(fit_luminance_grid(pred, pred, levels=5), identity_grid((1, 1, 5))[0], atol=1e-4)


def test_nerfw_grid_protocol_forgives_a_tone_curve_the_affine_protocol_does_not():
    from recon3d.metrics import nerfw_grid_psnr, nerfw_psnr, view_metrics

    torch.manual_seed(7)
    pred = torch.rand(24, 40, 3) * 0.6 + 0.05  # gains up to 1.5: no clamping
    lum = pred @ torch.tensor(LUMA)
    target = (pred * (1.5 - 0.8 * lum)[..., None]).clamp(0, 1)  # darks lifted, brights dimmed
    assert nerfw_grid_psnr(pred, target) > 45
    assert nerfw_psnr(pred, target) < nerfw_grid_psnr(pred, target) - 10
    # a difference on the right half alone is not fitted away
    damaged = target.clone()
    damaged[:, 20:] = 1 - damaged[:, 20:]
    assert nerfw_grid_psnr(pred, damaged) < 15
    values = view_metrics(pred, torch.ones(24, 40, 1), target, nerfw=True)
    assert values["psnr_nerfw_grid"] == pytest.approx(nerfw_grid_psnr(pred, target), abs=1e-6)


def test_config_and_cli_take_the_grid(tmp_path):
    from recon3d.cli import build_parser
    from recon3d.commands.reconstruct import _FLAG_KEYS
    from recon3d.errors import InputError
    from recon3d.train.config import resolve_config

    args = build_parser().parse_args(["reconstruct", "photos", "-o", str(tmp_path / "run"), "--appearance", "grid",
                                      "--set", "model.appearance_grid=[8, 6, 4]", "--set", "grid_tv=2.5"])
    overrides = {k: getattr(args, f) for f, k in _FLAG_KEYS.items() if getattr(args, f) is not None}
    cfg = resolve_config(tmp_path, preset="fast", overrides=overrides, assignments=args.assignments)
    assert (cfg.model.appearance, cfg.model.appearance_grid, cfg.optim.grid_tv) == ("grid", [8, 6, 4], 2.5)
    with pytest.raises(InputError, match="model.appearance must be auto, none, affine or grid"):
        resolve_config(tmp_path, preset="fast", overrides={"model.appearance": "bilateral"})
    with pytest.raises(InputError, match="model.appearance_grid"):
        resolve_config(tmp_path, preset="fast", overrides={"model.appearance_grid": [16, 16]})


_backend = kernel_backend


def test_training_with_grids_learns_per_image_exposure_and_exports_the_neutral_scene(tmp_path):
    """Photos (no alpha: the opaque protocol) whose exposure differs per image: the grids of the training
    images move away from the identity, held-out ones stay, the run reports the grid, and a resumed run
    restores the grids and their optimiser."""
    import dataclasses

    from recon3d.api import reconstruct
    from recon3d.train.checkpoint import load_latest_checkpoint
    from recon3d.train.synthetic import make_synthetic_data

    data = make_synthetic_data(tmp_path / "data", num_views=12, size=32, backend=_backend())
    gains = [0.7 + 0.05 * k for k in range(len(data))]
    photos = dataclasses.replace(data, images=[(im * g).clamp(0, 1) for im, g in zip(data.images, gains)],
                                 background=None, _cache={}, _alpha={})
    small = dict(preset="fast", quiet=True, threads=1, backend=_backend(), appearance="grid", refine_cameras=False,
                 checkpoint_every=20, **{"model.appearance_grid": [4, 4, 3]})
    _, _, metrics = reconstruct(photos, tmp_path / "run", steps=40, **small)
    assert metrics["appearance"] == "grid" and metrics["protocol"] == "opaque"
    assert math.isfinite(metrics["psnr"]) and math.isfinite(metrics["psnr_nerfw_grid"])
    checkpoint, _ = load_latest_checkpoint(tmp_path / "run" / "checkpoints")
    grids = checkpoint["appearance"]["grids"]
    assert grids.shape == (len(data), 12, 3, 4, 4)
    eye = identity_grid((4, 4, 3))[0]
    moved = [float((grids[i] - eye).abs().max()) for i in range(len(data))]
    train, test = data.train_indices(), data.test_indices()
    assert all(moved[i] > 1e-3 for i in train) and all(moved[i] == 0.0 for i in test)
    _, _, resumed = reconstruct(photos, tmp_path / "run", steps=50, resume=True, **small)
    assert resumed["steps"] == 50 and resumed["appearance"] == "grid"
