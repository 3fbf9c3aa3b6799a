"""The CPU binning's tile lists (count_tiles + bin_and_sort): each list in depth order (ties by index), the
same lists on 1 and 2 threads, cameras that see nothing, and renders of other sizes and dtypes in between
(the driver keeps its buffers across calls)."""

from __future__ import annotations

import pytest
import torch
from test_render_cpu import cameras, random_scene

import recon3d
from recon3d.backends import kernels


def _bin(scene, cams, threads: int):
    ext = kernels.load_kernels()
    height, width = cams.image_size()
    viewmats = cams.world_to_camera.contiguous()
    intr = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], -1).contiguous()
    proj = ext.project_forward(
        *[t.contiguous() for t in scene.tensors()], viewmats, intr, cams.centers().contiguous(), width, height,
        scene.sh_degree, threads,
    )
    bg = torch.zeros(len(cams), 3, dtype=scene.means.dtype)
    outs = ext.rasterize_forward(*proj, bg, width, height, threads, 0)
    return proj, outs[6], outs[7]


def _lists(isect_ids, tile_ranges):
    return [isect_ids[int(s):int(e)].tolist() for s, e in tile_ranges]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tile_lists_depth_ordered_and_thread_independent(dtype):
    scene = random_scene(600, 1, seed=3, dtype=dtype)
    # the third camera looks away from every Gaussian: no visible ones, empty lists
    cams = recon3d.Cameras.cat([
        cameras(70, 53, [(3.0, 0.5, 0.8), (-1.0, 2.8, 1.2)]),
        recon3d.Cameras.look_at((0.0, 0.0, 40.0), (0.0, 0.0, 80.0), fov_x=0.3, width=70, height=53),
    ]).to(dtype=dtype)
    proj, ids1, ranges1 = _bin(scene, cams, 1)
    _, ids2, ranges2 = _bin(scene, cams, 2)
    assert torch.equal(ranges1, ranges2)
    n_tiles = ranges1.shape[0]
    assert torch.equal(ids1[: int(ranges1[-1, 1])], ids2[: int(ranges2[-1, 1])])
    depths, radii = proj[4], proj[5]
    per_cam = n_tiles // len(cams)
    assert int(ranges1[-1, 1]) > 1000  # a real workload
    assert int(ranges1[2 * per_cam, 0]) == int(ranges1[-1, 1])  # camera 2: nothing listed
    for tile, lst in enumerate(_lists(ids1, ranges1)):
        cam = tile // per_cam
        assert all(bool(radii[cam, g] > 0) for g in lst)
        keys = [(float(depths[cam, g]), g) for g in lst]
        assert keys == sorted(keys), f"tile {tile} not in depth order"
        assert len(set(lst)) == len(lst)


def test_buffers_kept_across_calls_of_other_sizes_and_dtypes():
    """Binning a big float32 scene, then a small float64 one, then a mid-size float32 one (in one thread,
    the driver reuses its buffers): each gives the lists a fresh process would (compared with a second
    call of the same scene, after the other sizes)."""
    scenes = [
        (random_scene(900, 0, seed=5, dtype=torch.float32), cameras(90, 64, [(3.0, 0.5, 0.8), (0.3, -2.5, -1.5)])),
        (random_scene(40, 0, seed=6, dtype=torch.float64), cameras(33, 17, [(-1.0, 2.8, 1.2)]).to(dtype=torch.float64)),
        (random_scene(300, 0, seed=7, dtype=torch.float32), cameras(48, 48, [(3.0, 0.5, 0.8)] * 3)),
    ]
    first = [_bin(s, c, 2)[1:] for s, c in scenes]
    again = [_bin(s, c, 2)[1:] for s, c in reversed(scenes)][::-1]
    for (ids_a, ranges_a), (ids_b, ranges_b) in zip(first, again):
        total = int(ranges_a[-1, 1])
        assert torch.equal(ranges_a, ranges_b)
        assert torch.equal(ids_a[:total], ids_b[:total])
