"""Opaque scenes from photos: PSNR over black and over white, the see-through share, the growth schedule
that reaches the Gaussian cap early, and the initial points that fill what SfM left empty."""

from __future__ import annotations

import math

import pytest
import torch

from recon3d.metrics import PROTOCOL_COMPOSITED, PROTOCOL_OPAQUE, SEE_THROUGH_ALPHA, psnr, ssim, view_metrics
from recon3d.train.optim import GaussianAdam
from recon3d.train.strategy import MCMCStrategy


def _psnr_np(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10 * math.log10(float(((a.double() - b.double()) ** 2).mean()))


def test_opaque_protocol_composites_one_render_over_black_and_white():
    torch.manual_seed(0)
    h, w = 24, 20
    color = torch.rand(h, w, 3)
    alpha = torch.ones(h, w, 1)
    alpha[:, :5] = 0.4  # a quarter of the image is haze
    rgb_black = color * alpha
    target = torch.rand(h, w, 3)
    got = view_metrics(rgb_black, alpha, target, protocol=PROTOCOL_OPAQUE)
    over_black = rgb_black.clamp(0, 1)
    over_white = (rgb_black + (1 - alpha)).clamp(0, 1)
    assert got["psnr_black"] == pytest.approx(_psnr_np(over_black, target), abs=1e-9)
    assert got["psnr_white"] == pytest.approx(_psnr_np(over_white, target), abs=1e-9)
    assert got["psnr"] == min(got["psnr_black"], got["psnr_white"])
    worse = over_black if got["psnr_black"] <= got["psnr_white"] else over_white
    assert got["ssim"] == pytest.approx(float(ssim(worse, target)), abs=1e-6)
    assert got["see_through"] == pytest.approx(5 / 20)


def test_opaque_scene_scores_the_same_over_black_and_white():
    color = torch.rand(16, 16, 3)
    got = view_metrics(color, torch.ones(16, 16, 1), color, protocol=PROTOCOL_OPAQUE)
    assert got["psnr_black"] == got["psnr_white"] == float("inf")
    assert got["see_through"] == 0.0


def test_see_through_threshold():
    alpha = torch.full((12, 12, 1), SEE_THROUGH_ALPHA)
    alpha[0, 0] = SEE_THROUGH_ALPHA - 1e-3
    got = view_metrics(torch.zeros(12, 12, 3), alpha, torch.zeros(12, 12, 3))
    assert got["see_through"] == pytest.approx(1 / 144)


def test_mask_restricts_every_figure_to_the_kept_pixels():
    torch.manual_seed(1)
    h, w = 30, 30
    target = torch.rand(h, w, 3)
    pred = target.clone()
    alpha = torch.ones(h, w, 1)
    pred[:, 15:] = 1 - target[:, 15:]  # the right half is wrong and see-through ...
    alpha[:, 15:] = 0.0
    mask = torch.zeros(h, w, 1)
    mask[:, :15] = 1  # ... but masked out
    got = view_metrics(pred * alpha, alpha, target, mask=mask)
    assert got["psnr_black"] == got["psnr_white"] == float("inf")
    assert got["see_through"] == 0.0
    # SSIM over the windows centred on kept pixels: those entirely inside the kept half are perfect
    assert got["ssim"] < 1.0
    nomask = view_metrics(pred * alpha, alpha, target)
    assert nomask["see_through"] == pytest.approx(0.5)


def test_composited_protocol_keeps_the_data_background():
    torch.manual_seed(2)
    h, w = 16, 16
    obj = torch.rand(h, w, 3)
    ta = (torch.rand(h, w, 1) > 0.5).float()
    white = torch.ones(3)
    target = obj * ta + (1 - ta) * white  # the loader composited the RGBA image on white
    pred_black = obj * ta * 0.9
    got = view_metrics(pred_black, ta, target, protocol=PROTOCOL_COMPOSITED, background=white, target_alpha=ta)
    assert got["psnr"] == pytest.approx(psnr((pred_black + (1 - ta)).clamp(0, 1), target), abs=1e-9)
    assert got["psnr_black"] == pytest.approx(psnr(pred_black, obj * ta), abs=1e-9)
    assert got["psnr_white"] == pytest.approx(got["psnr"], abs=1e-9)


def _optimizer(n: int) -> GaussianAdam:
    params = {
        "means": torch.randn(n, 3), "scales": torch.full((n, 3), -3.0), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        "opacities": torch.zeros(n), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3),
    }
    return GaussianAdam({k: v.requires_grad_(True) for k, v in params.items()},
                        {"means": 1e-3, "scales": 1e-3, "quats": 1e-3, "opacities": 1e-2, "sh0": 1e-3, "shN": 1e-3})


@pytest.mark.parametrize("reach", [0.3, 0.6])
def test_mcmc_reaches_the_cap_at_the_scheduled_point(reach):
    cap, start, stop, every = 50_000, 100, 2100, 100
    strategy = MCMCStrategy(cap=cap, refine_start=start, refine_stop=stop, refine_every=every, growth=0.05,
                            reach_cap_at=reach, seed_generator=torch.Generator().manual_seed(0), noise_lr=0)
    opt = _optimizer(1000)
    reach_step = start + reach * (stop - start)
    counts = {}
    for step in range(0, stop + 1, every):
        strategy.step_post_backward(opt, {}, step, {})
        counts[step] = opt.params["means"].shape[0]
    first_full = min(s for s, c in counts.items() if c == cap)
    assert first_full <= reach_step < first_full + every  # the cap, on time: not before, not later
    before = [c for s, c in sorted(counts.items()) if start <= s < first_full]  # from the count before refining
    assert all(b < a for b, a in zip(before, before[1:]))  # grew at every refinement on the way


def test_mcmc_without_a_reach_point_grows_five_percent():
    strategy = MCMCStrategy(cap=10**6, refine_start=100, refine_stop=2100, refine_every=100, growth=0.05,
                            seed_generator=torch.Generator().manual_seed(0), noise_lr=0)
    opt = _optimizer(1000)
    strategy.step_post_backward(opt, {}, 200, {})
    assert opt.params["means"].shape[0] == 1050


def test_frustum_points_lie_on_pixel_rays_within_the_sfm_depth_range():
    from recon3d.cameras import Cameras
    from recon3d.train.init import frustum_points

    cams = Cameras.cat([Cameras.look_at((3, 0, 0.5), (0, 0, 0), width=40, height=30),
                        Cameras.look_at((0, 3, 0.5), (0, 0, 0), width=40, height=30)])
    g = torch.Generator().manual_seed(0)
    sfm = torch.rand(500, 3, generator=g) * 2 - 1  # a cube around the origin
    images = {0: torch.rand(30, 40, 3, generator=g), 1: torch.rand(30, 40, 3, generator=g)}
    pts, cols = frustum_points(cams, [0, 1], images, sfm, 400, torch.Generator().manual_seed(1))
    assert pts.shape == (400, 3) and cols.shape == (400, 3)
    # every point projects inside one of the images, at a depth inside that camera's SfM depth range,
    # and carries the colour of the pixel it projects to
    matched = torch.zeros(400, dtype=torch.bool)
    for i in (0, 1):
        w2c = cams.world_to_camera[i]
        cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
        d = (sfm @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
        lo, hi = torch.quantile(d, 0.05) - 1e-4, torch.quantile(d, 0.95) + 1e-4
        u = cams.fx[i] * cam[:, 0] / cam[:, 2] + cams.cx[i]
        v = cams.fy[i] * cam[:, 1] / cam[:, 2] + cams.cy[i]
        inside = (u >= 0) & (u < 40) & (v >= 0) & (v < 30) & (cam[:, 2] >= lo) & (cam[:, 2] <= hi)
        colour = images[i][v.long().clamp(0, 29), u.long().clamp(0, 39)]
        matched |= inside & (colour - cols).abs().max(-1).values.lt(1e-6)
    assert bool(matched.all())


def test_masked_pixels_neither_train_nor_count(tmp_path):
    """Training images whose right half is noise: masked out, training is exactly that on clean images;
    unmasked, the noise changes it. The held-out figures count only kept pixels."""
    import dataclasses

    from recon3d.api import reconstruct
    from recon3d.data.masks import save_mask
    from recon3d.train.synthetic import make_synthetic_data

    clean = make_synthetic_data(tmp_path / "data", num_views=16, size=32, backend="reference")
    g = torch.Generator().manual_seed(3)
    noisy_images = [im.clone() for im in clean.images]
    for im in noisy_images:
        im[:, 16:] = torch.rand(im[:, 16:].shape, generator=g)
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1
    mask_paths = []
    for k in range(len(clean)):
        path = tmp_path / "masks" / f"view_{k:03d}.png"
        save_mask(path, mask)
        mask_paths.append(path)
    noisy = dataclasses.replace(clean, images=noisy_images, _cache={}, _alpha={})
    masked = dataclasses.replace(noisy, _masks=mask_paths, _mask_cache={})
    small = dict(preset="fast", steps=250, quiet=True, threads=1, refine_start=40, refine_every=40, refine_stop=200,
                 sh_degree_every=60, max_gaussians=800, backend="cpu", checkpoint_every=1000)
    from recon3d.render import render

    results, kept_half = {}, {}
    for name, data in (("clean", masked), ("masked", masked), ("unmasked", noisy)):
        if name == "clean":  # clean images, judged on the same kept half
            data = dataclasses.replace(masked, images=clean.images, _cache={}, _alpha={})
        scene, cameras, results[name] = reconstruct(data, tmp_path / name, **small)
        # every run judged alike: held-out views against the clean images, on the kept (left) half
        values = []
        for i in clean.test_indices():
            out = render(scene, cameras[i], background=torch.zeros(3), backend="cpu")
            values.append(view_metrics(out.rgb[0], out.alpha[0], clean.images[i], protocol=PROTOCOL_COMPOSITED,
                                       background=torch.ones(3), mask=mask[..., None])["psnr"])
        kept_half[name] = sum(values) / len(values)
    assert results["masked"]["masked"] and not results["unmasked"]["masked"]
    assert all("mask" in v for v in results["masked"]["per_view"])
    # the trainer's own figure for the masked run is the same kept-half measure (its test images are clean)
    assert results["masked"]["psnr"] == pytest.approx(kept_half["masked"], abs=0.05)
    # masked pixels have no influence at all: noise under the mask trains exactly what clean pixels do ...
    assert kept_half["masked"] == pytest.approx(kept_half["clean"], abs=1e-9), kept_half
    # ... while the same noise unmasked changes the result
    assert abs(kept_half["unmasked"] - kept_half["clean"]) > 0.05, kept_half
    # the run folder keeps every camera's mask, so a later evaluation of any split counts only kept pixels
    from recon3d.exporters.nerfstudio import export_nerfstudio as recon3d_export
    from recon3d.run import load_run

    run = load_run(tmp_path / "masked")
    assert sorted(run.masks()) == list(range(len(clean))) and all(p.is_file() for p in run.masks().values())
    train_idx = run.indices("train")
    got = run.evaluate("train", backend="cpu")
    by_hand = {}
    for name, m in (("kept", mask[..., None]), ("all", None)):  # the training images on disk (clean), by hand
        values = []
        for i in train_idx:
            out = render(run.scene, run.cameras[i], background=torch.zeros(3), backend="cpu")
            values.append(view_metrics(out.rgb[0], out.alpha[0], run.load_image(i)[0], protocol=PROTOCOL_COMPOSITED,
                                       background=torch.ones(3), mask=m)["psnr"])
        by_hand[name] = sum(values) / len(values)
    assert got["psnr"] == pytest.approx(by_hand["kept"], abs=0.05), (got["psnr"], by_hand)
    assert abs(by_hand["kept"] - by_hand["all"]) > 0.5, by_hand  # the masks make a difference to measure
    # and a nerfstudio export carries them (mask_path), read back by our own nerfstudio reader
    from recon3d.data import load_dataset

    exported = recon3d_export(tmp_path / "masked", tmp_path / "ns", copy_images=True)
    again = load_dataset(exported.parent)
    assert all(again.mask_path(i) is not None for i in range(len(clean)))
    assert all(torch.equal(again.load_mask(i), data_mask) for i, data_mask in
               ((i, masked.load_mask(i)) for i in range(len(clean))))


def test_frustum_points_only_on_kept_pixels():
    from recon3d.cameras import Cameras
    from recon3d.train.init import frustum_points

    cams = Cameras.look_at((3, 0, 0.5), (0, 0, 0), width=40, height=30)
    sfm = torch.rand(300, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(30, 40)
    mask[5:12, 20:33] = 1
    pts, _ = frustum_points(cams, [0], {0: torch.rand(30, 40, 3)}, sfm, 200, torch.Generator().manual_seed(1),
                            masks={0: mask})
    w2c = cams.world_to_camera[0]
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    u = cams.fx[0] * cam[:, 0] / cam[:, 2] + cams.cx[0]
    v = cams.fy[0] * cam[:, 1] / cam[:, 2] + cams.cy[0]
    assert len(pts) == 200
    assert bool(((u >= 20 - 1e-3) & (u <= 33 + 1e-3) & (v >= 5 - 1e-3) & (v <= 12 + 1e-3)).all())
