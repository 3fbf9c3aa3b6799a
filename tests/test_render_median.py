"""``depth="median"``: the view-space z of the Gaussian during whose blend the transmittance first falls to
<= 1/2 (0 where it never does). The cpu kernels against the dense reference on the edge-case scenes, two
closed-form cases, and checks that asking for it changes nothing else (and that not asking changes nothing)."""

from __future__ import annotations

import math

import pytest
import torch
from test_render_cpu import EYES, PARAMS, cameras, edge_case_scene, random_scene

import recon3d
from recon3d.backends import reference
from recon3d.constants import SH_C0
from recon3d.errors import BackendUnavailable

# pixels whose transmittance passes within this of 1/2 may pick a neighbouring Gaussian (a rounding tie)
TIE = 1e-5


def reference_median(scene, cams, bg, sh_degree):
    """The reference's median depth and, per pixel, how close any of its transmittances came to 1/2."""
    height, width = cams.image_size()
    with torch.no_grad():
        proj = reference.project(scene, cams, sh_degree)
        comp = reference.rasterize(proj, height, width, bg.to(scene.means.dtype), median=True)
    return comp.median_depth, comp.median_margin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "sh_stored, sh_used, size, n_cams",
    [(0, 0, (37, 23), 1), (1, 1, (64, 48), 2), (3, 3, (40, 40), 3), (3, 0, (17, 33), 2)],
)
def test_median_depth_matches_reference(dtype, sh_stored, sh_used, size, n_cams):
    scene = edge_case_scene(sh_stored, seed=10 * sh_stored + n_cams, camera_eye=EYES[0], camera_target=(0, 0, 0),
                            dtype=dtype)
    scene.opacities = scene.opacities + 1.0  # more pixels cross T = 1/2
    cams = cameras(*size, EYES[:n_cams]).to(dtype=dtype)
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(3), dtype=dtype)
    want, margin = reference_median(scene, cams, bg, sh_used)
    out = recon3d.render(scene, cams, background=bg, sh_degree=sh_used, backend="cpu", depth="median")
    assert out.depth.shape == want.shape == (n_cams, size[1], size[0], 1)
    clear = margin > TIE  # no transmittance near 1/2: both must choose the very same Gaussian
    diff = (out.depth - want).abs()
    bad = clear & (diff > 1e-5 * want.abs().clamp_min(1.0))
    assert not bad.any(), f"{int(bad.sum())} pixels differ, max {float(diff[clear].max()):.3g}"
    # the comparison is not vacuous: most pixels are clear, and both cases (a crossing, none) occur
    assert float(clear.float().mean()) > 0.95
    assert (want[clear] > 0).any() and (want[clear] == 0).any()


def layer(z: float, opacity: float, half: float = 4.0, step: float = 0.2) -> recon3d.GaussianScene:
    """A flat square of isotropic-in-plane Gaussians at view depth z (camera at the origin looking down +z)."""
    ticks = torch.arange(-half, half + 1e-9, step, dtype=torch.float64)
    xs, ys = torch.meshgrid(ticks, ticks, indexing="ij")
    n = xs.numel()
    means = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((n,), z, dtype=torch.float64)], -1)
    scales = torch.tensor([math.log(step), math.log(step), math.log(1e-4)], dtype=torch.float64).expand(n, 3)
    colour = torch.tensor([0.8, 0.3, 0.2], dtype=torch.float64)
    return recon3d.GaussianScene(
        means=means,
        scales=scales.clone(),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64).expand(n, 4).clone(),
        opacities=torch.logit(torch.full((n,), opacity, dtype=torch.float64)),
        sh0=((colour - 0.5) / SH_C0).expand(n, 1, 3).clone(),
    )


def head_on_camera(width: int = 32, height: int = 24) -> recon3d.Cameras:
    f = 20.0
    return recon3d.Cameras(
        torch.eye(4, dtype=torch.float64)[None], fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height
    )


def merged(*scenes: recon3d.GaussianScene) -> recon3d.GaussianScene:
    return recon3d.GaussianScene(*(torch.cat([getattr(s, p) for s in scenes]) for p in PARAMS))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_two_opaque_layers_median_is_the_front_layer(backend):
    # the back layer comes first in the list: the order the Gaussians are stored in must not matter
    scene = merged(layer(4.0, 0.99), layer(2.0, 0.99))
    cams = head_on_camera()
    out = recon3d.render(scene, cams, backend=backend, depth="median")
    # the front layer covers the whole image (it reaches past the edges of the view)
    assert bool((out.alpha > 0.99).all())
    assert torch.equal(out.depth, torch.full_like(out.depth, 2.0))
    # alone, the back layer gives its own depth: the median follows the surface actually in front
    back = recon3d.render(layer(4.0, 0.99), cams, backend=backend, depth="median")
    assert torch.equal(back.depth, torch.full_like(back.depth, 4.0))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_faint_layer_has_no_median(backend):
    # one Gaussian of opacity 0.45 (alpha <= 0.45 < 1/2): T never falls to 1/2, so the median is 0 everywhere
    scene = recon3d.GaussianScene(
        means=torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64),
        scales=torch.full((1, 3), math.log(0.3), dtype=torch.float64),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64),
        opacities=torch.logit(torch.tensor([0.45], dtype=torch.float64)),
        sh0=torch.zeros(1, 1, 3, dtype=torch.float64),
    )
    cams = head_on_camera()
    out = recon3d.render(scene, cams, backend=backend, depth="median")
    expected = recon3d.render(scene, cams, backend=backend)
    assert bool((out.alpha > 0.3).any())  # it is drawn, with an expected depth there...
    assert torch.allclose(expected.depth[out.alpha > 0], torch.tensor(2.0, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((out.depth == 0).all())  # ...but no median depth


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_median_changes_nothing_else(backend, one_torch_thread):
    """rgb, alpha, radii, means2d and every gradient of rgb/alpha are bit-identical with and without it, the
    default is the expected depth, and the median depth carries no gradient. One thread: with two, the
    backward's per-thread sums depend on which thread took which tile, so gradients vary in the last bits."""
    scene = random_scene(120, 2, seed=11)
    scene.opacities = scene.opacities + 1.5
    cams = cameras(40, 30, EYES[:2])
    bg = torch.tensor([0.1, 0.5, 0.9])
    outs, grads = {}, {}
    for mode in (None, "expected", "median"):
        s = scene.clone().requires_grad_()
        kwargs = {} if mode is None else {"depth": mode}
        out = recon3d.render(s, cams, background=bg, backend=backend, **kwargs)
        g = torch.Generator().manual_seed(5)
        w = [torch.rand(t.shape, generator=g) for t in (out.rgb, out.alpha)]
        ((out.rgb * w[0]).sum() + (out.alpha * w[1]).sum()).backward()
        outs[mode] = out
        grads[mode] = {p: getattr(s, p).grad for p in PARAMS} | {"means2d": out.means2d.grad}
    for mode in ("expected", "median"):
        for name in ("rgb", "alpha", "radii", "means2d"):
            assert torch.equal(getattr(outs[mode], name), getattr(outs[None], name)), (mode, name)
        for name, g in grads[None].items():
            assert torch.equal(grads[mode][name], g), (mode, name)
    assert torch.equal(outs["expected"].depth, outs[None].depth)
    assert outs[None].depth.requires_grad and not outs["median"].depth.requires_grad
    assert not torch.equal(outs["median"].depth, outs[None].depth)


def test_bad_depth_mode_is_a_clear_error():
    scene = random_scene(5, 0, seed=1)
    cams = cameras(8, 8, EYES[:1])
    with pytest.raises(ValueError, match="depth mode 'mean'.*expected, median"):
        recon3d.render(scene, cams, backend="cpu", depth="mean")


def test_gsplat_has_no_median_depth():
    scene = random_scene(5, 0, seed=1)
    cams = cameras(8, 8, EYES[:1])
    with pytest.raises(BackendUnavailable, match="gsplat backend has no median depth"):
        recon3d.render(scene, cams, backend="gsplat", depth="median")


def test_contribution_count_only_when_asked_and_changes_nothing(one_torch_thread):
    """The per-pixel count of Gaussians composited (benchmarks' return_stats) comes from its own kernel
    variant: the images are bit-identical with and without it, and it counts what was drawn."""
    from recon3d.backends import kernels

    scene = random_scene(200, 1, seed=31)
    cams = cameras(37, 29, EYES[:2])
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    with torch.no_grad():
        plain = kernels.render(scene, cams, bg, 1)
        stats = kernels.render(scene, cams, bg, 1, return_stats=True)
        one = kernels.render(scene[:1], cams, bg, 1, return_stats=True)
    for name in ("rgb", "alpha", "depth", "radii"):
        assert torch.equal(getattr(plain, name), getattr(stats, name)), name
    n = stats.n_contrib
    assert n.shape == (2, 29, 37) and n.dtype == torch.int32
    drawn = stats.alpha[..., 0] > 0
    assert bool((n[drawn] >= 1).all()) and bool((n[~drawn] == 0).all())
    assert int(n.max()) > 3  # overlapping Gaussians are counted one by one
    # a single Gaussian: exactly the pixels it reaches
    assert bool((one.alpha > 0).any())
    assert torch.equal(one.n_contrib, (one.alpha[..., 0] > 0).to(torch.int32))
