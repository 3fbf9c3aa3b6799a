"""The CPU forward records, per (tile, Gaussian), the rows where the Gaussian drew a pixel (isect_rows), and the
backward walks only those rows. The claim behind it: a row without a drawn pixel has no lane the backward
would use (alpha > 0 and j < last), so skipping it changes nothing. Checked exactly against the backward's
other path, which finds its rows from the Gaussian's support alone (taken when no row record is passed)."""

from __future__ import annotations

import pytest
import torch
from test_render_blend_batches import camera, striped_scene

from recon3d.backends import kernels


def _projected(scene, cams, sh_degree, ext):
    h, w = cams.image_size()
    dtype = scene.means.dtype
    viewmats = cams.world_to_camera.to(dtype).contiguous()
    intr = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], -1).to(dtype).contiguous()
    return ext.project_forward(scene.means, scene.scales, scene.quats, scene.opacities, scene.sh0, scene.shN,
                               viewmats, intr, cams.centers().to(dtype).contiguous(), w, h, sh_degree,
                               torch.get_num_threads())


def _backward_both_ways(scene, cams, threads):
    ext = kernels.load_kernels()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        h, w = cams.image_size()
        proj = _projected(scene, cams, 1, ext)
        dtype = scene.means.dtype
        bg = torch.tensor([[0.3, 0.6, 0.9]], dtype=dtype)
        out = ext.rasterize_forward(*proj[:7], bg, w, h, threads, 0)
        rgb, alpha, acc, final_trans, last, _n, ids, tile_ranges, rows, _med = out
        g = torch.Generator().manual_seed(7)
        g_rgb = torch.randn(rgb.shape, generator=g, dtype=dtype)
        g_alpha = torch.randn(alpha.shape, generator=g, dtype=dtype)
        g_depth = torch.randn(alpha.shape, generator=g, dtype=dtype)
        with_rows = ext.rasterize_backward(*proj[:7], bg, w, h, ids, tile_ranges, final_trans, last, rows, g_rgb,
                                           g_alpha, g_depth, threads)
        # an empty row record: the backward takes its rows from the support test instead
        no_rows = torch.empty(0, dtype=torch.int16)
        from_support = ext.rasterize_backward(*proj[:7], bg, w, h, ids, tile_ranges, final_trans, last, no_rows,
                                              g_rgb, g_alpha, g_depth, threads)
        return rows[: ids.numel()], with_rows, from_support
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_over_drawn_rows_equals_backward_over_support_rows(dtype):
    # one thread: with two, the per-thread sums meet in an order that depends on the tile hand-out
    # opaque stripes: pixels stop mid-batch, many Gaussians reach rows where nothing is drawn any more
    scene = striped_scene(500, seed=9, dtype=dtype)
    cams = camera(64, 56)
    rows, with_rows, from_support = _backward_both_ways(scene, cams, 1)
    for a, b in zip(with_rows, from_support):
        assert torch.equal(a, b)
    # the record is sparser than the support: some intersections keep no row at all
    assert int((rows == 0).sum()) > 0
    assert any(float(t.abs().max()) > 0 for t in with_rows)
