"""The NeRF kernels' CPU build against the dense PyTorch reference and finite differences.

Forward and backward of the hash encoding and of volume compositing (``cuda/include/recon3d/nerf.h``,
built by ``recon3d/nerf/kernels.py``) are compared with ``recon3d/nerf/reference.py``; the reference's own
gradients are checked by finite differences (float64), and the kernels' by torch.autograd.gradcheck.
"""

from __future__ import annotations

import math

import pytest
import torch

from recon3d.nerf import kernels, reference
from recon3d.nerf.field import FieldBounds
from recon3d.nerf.reference import HashGridSpec

pytestmark = pytest.mark.skipif(not kernels.available(), reason="NeRF CPU kernels unavailable (no C++ compiler)")

# two dense levels and two hashed ones (table of 2^10 rows < 17^3 vertices)
SMALL = HashGridSpec(levels=4, log2_table=10, base_resolution=4, max_resolution=32)


def _table(spec: HashGridSpec, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(spec.rows, 2, generator=g, dtype=dtype)


def _points(n: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g, dtype=dtype)
    pts[:4] = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0.5], [-0.1, 1.2, 0.3]], dtype=dtype)  # edges, clamping
    return pts


def test_spec_levels_dense_then_hashed():
    spec = HashGridSpec()
    assert spec.resolutions[0] == 16 and spec.resolutions[-1] == 2048
    sizes = [b - a for a, b in zip(spec.offsets, spec.offsets[1:])]
    assert max(sizes) == 2**19 and spec.output_dim == 32
    # a dense level indexes each of its vertices exactly once
    res = SMALL.resolutions[0]
    grid = torch.stack(torch.meshgrid(*[torch.arange(res + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rows = reference.level_rows(grid, res, (res + 1) ** 3)
    assert len(torch.unique(rows)) == (res + 1) ** 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hash_forward_matches_reference(dtype):
    table, pts = _table(SMALL, dtype), _points(500, dtype)
    ours = kernels.hash_encode(pts, table, SMALL)
    ref = reference.hash_encode(pts, table, SMALL)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert ours.shape == (500, SMALL.output_dim)
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)


def test_hash_forward_full_size_spec_matches_reference():
    spec = HashGridSpec()  # 16 levels, 2^19 rows: the hashed levels' 32-bit arithmetic at full size
    table, pts = _table(spec, torch.float32), _points(300, torch.float32)
    torch.testing.assert_close(kernels.hash_encode(pts, table, spec), reference.hash_encode(pts, table, spec),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hash_backward_matches_reference(dtype):
    pts = _points(400, dtype)
    g = torch.randn(400, SMALL.output_dim, dtype=dtype, generator=torch.Generator().manual_seed(3))
    grads = []
    for fn in (kernels.hash_encode, reference.hash_encode):
        table = _table(SMALL, dtype).requires_grad_(True)
        (fn(pts, table, SMALL) * g).sum().backward()
        grads.append(table.grad)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(grads[0], grads[1], atol=tol, rtol=tol)


def test_hash_encode_given_features_has_the_encodings_value_and_gradient():
    # the renderer's early-stop pass computes the features once; the gradient pass reuses them
    pts = _points(300, torch.float32)
    g = torch.randn(300, SMALL.output_dim, generator=torch.Generator().manual_seed(4))
    grads, values = [], []
    for given in (False, True):
        table = _table(SMALL, torch.float32).requires_grad_(True)
        if given:
            with torch.no_grad():
                features = kernels.hash_encode(pts, table, SMALL)
            out = kernels.hash_encode_given(pts, table, SMALL, features)
        else:
            out = kernels.hash_encode(pts, table, SMALL)
        (out * g).sum().backward()
        values.append(out.detach())
        grads.append(table.grad)
    assert torch.equal(values[0], values[1]) and torch.equal(grads[0], grads[1])


def test_hash_backward_finite_differences():
    spec = HashGridSpec(levels=2, log2_table=10, base_resolution=3, max_resolution=20)
    pts = _points(20, torch.float64)
    table = _table(spec, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: kernels.hash_encode(pts, t, spec), (table,), eps=1e-6, atol=1e-8)
    # and the reference's own gradient, by central differences on a few entries
    w = torch.randn(20, spec.output_dim, dtype=torch.float64)
    (reference.hash_encode(pts, table, spec) * w).sum().backward()
    used = torch.nonzero(table.grad.abs().sum(-1) > 0)[:5, 0]
    for row in used.tolist():
        for f in range(2):
            plus, minus = table.detach().clone(), table.detach().clone()
            plus[row, f] += 1e-6
            minus[row, f] -= 1e-6
            fd = ((reference.hash_encode(pts, plus, spec) - reference.hash_encode(pts, minus, spec)) * w).sum() / 2e-6
            assert math.isclose(float(fd), float(table.grad[row, f]), rel_tol=1e-6, abs_tol=1e-8)


def _rays(dtype: torch.dtype, seed: int = 0, dense: bool = False):
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([0, 1, 5, 40, 17, 3, 64])
    start = torch.zeros(len(counts) + 1, dtype=torch.int64)
    start[1:] = torch.cumsum(counts, 0)
    s = int(start[-1])
    scale = 30.0 if dense else 3.0  # dense: most rays stop early (transmittance below the cut)
    sigma = torch.rand(s, generator=g, dtype=dtype) * scale
    rgb = torch.rand(s, 3, generator=g, dtype=dtype)
    dt = 0.01 + 0.1 * torch.rand(s, generator=g, dtype=dtype)
    t = torch.cat([torch.cumsum(dt[a:b], 0) for a, b in zip(start[:-1].tolist(), start[1:].tolist())]) if s else dt
    return sigma, rgb, t.to(dtype), dt, start


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_composite_forward_matches_reference(dtype, dense):
    sigma, rgb, t, dt, start = _rays(dtype, dense=dense)
    ours = kernels.composite(sigma, rgb, t, dt, start)
    ref = reference.composite(sigma, rgb, t, dt, start)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    if dense:  # the early stop happened, and the same samples were left out
        assert bool((ours[3] == 0).any())


@pytest.mark.parametrize("dense", [False, True])
def test_composite_backward_matches_reference(dense):
    dtype = torch.float64
    g = torch.Generator().manual_seed(5)
    base = _rays(dtype, dense=dense)
    weights_c = torch.randn(7, 3, dtype=dtype, generator=g)
    weights_o = torch.randn(7, dtype=dtype, generator=g)
    weights_d = torch.randn(7, dtype=dtype, generator=g)
    grads = []
    for fn in (kernels.composite, reference.composite):
        sigma, rgb = base[0].clone().requires_grad_(True), base[1].clone().requires_grad_(True)
        color, opacity, depth, _ = fn(sigma, rgb, base[2], base[3], base[4])
        ((color * weights_c).sum() + (opacity * weights_o).sum() + (depth * weights_d).sum()).backward()
        grads.append((sigma.grad, rgb.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-11, rtol=1e-9)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-11, rtol=1e-9)


def test_composite_gradcheck():
    sigma, rgb, t, dt, start = _rays(torch.float64)
    sigma.requires_grad_(True)
    rgb.requires_grad_(True)

    def fn(s, c):
        color, opacity, depth, _ = kernels.composite(s, c, t, dt, start)
        return color, opacity, depth

    assert torch.autograd.gradcheck(fn, (sigma, rgb), eps=1e-6, atol=1e-7)


def test_composite_constant_density_is_analytic():
    # one ray, constant σ over length L in many steps: opacity 1 − exp(−σL), colour c·opacity
    n, length, sig = 200, 0.5, 3.0
    dt = torch.full((n,), length / n, dtype=torch.float64)
    t = torch.cumsum(dt, 0) - dt / 2
    rgb = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64).expand(n, 3).contiguous()
    start = torch.tensor([0, n])
    color, opacity, depth, _ = kernels.composite(torch.full((n,), sig, dtype=torch.float64), rgb, t, dt, start)
    assert math.isclose(float(opacity[0]), 1 - math.exp(-sig * length), rel_tol=1e-12)
    torch.testing.assert_close(color[0], rgb[0] * opacity[0])


@pytest.mark.parametrize("contracted,shell", [(False, 0.0), (True, 0.0), (True, 1 / 32)])
def test_march_matches_reference_loop(contracted, shell):
    g = torch.Generator().manual_seed(2)
    res = 8
    grid = (torch.rand(res**3, generator=g) > 0.5).to(torch.uint8)
    if contracted:  # shell > 0: steps beyond the inner cube at least 1/32 of the contracted coordinate
        bounds = FieldBounds(True, torch.tensor([0.1, -0.2, 0.0]), 1.0, 0.05, 50.0, 0.05, 1e10, 1 / 16, shell)
    else:
        bounds = FieldBounds(False, torch.tensor([0.1, -0.2, 0.0]), 0.5, 0.0, 1e10, 0.02, 0.02, 0.0)
    origins = torch.randn(12, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -2.0])
    dirs = torch.nn.functional.normalize(torch.randn(12, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    fparams, iparams = bounds.params(res, 64)
    near = torch.full((12,), bounds.near)
    far = torch.full((12,), bounds.far)
    start, t, dt, u = kernels.march(origins, dirs, near, far, grid, fparams, iparams)
    total = 0
    for r in range(12):
        expect = reference.march_ray(origins[r].tolist(), dirs[r].tolist(), bounds.near, bounds.far,
                                     box_min=fparams[:3].tolist(), box_max=fparams[3:6].tolist(), contracted=contracted,
                                     radius=bounds.half, grid=grid, grid_res=res, dt_min=bounds.dt_min,
                                     dt_max=bounds.dt_max, cone=bounds.cone, max_samples=64,
                                     shell_step=bounds.shell_step)
        got = list(zip(t[start[r]:start[r + 1]].tolist(), dt[start[r]:start[r + 1]].tolist()))
        # float32 stepping vs float64: the same samples at the same places (a cell-boundary sample may differ)
        assert abs(len(got) - len(expect)) <= 1
        matched = sum(any(abs(a - b) < 1e-3 for b, _ in expect) for a, _ in got)
        assert matched >= len(got) - 1
        total += len(got)
    assert total > 0
    # the unit-cube points are the field's own mapping of the sample positions
    ray = torch.repeat_interleave(torch.arange(12), start[1:] - start[:-1])
    x = origins[ray] + t[:, None] * dirs[ray]
    torch.testing.assert_close(u, bounds.to_unit(x), atol=1e-4, rtol=1e-4)


def test_contraction_round_trip():
    bounds = FieldBounds(True, torch.tensor([0.3, 0.0, -0.1]), 1.5, 0.01, 100.0, 0.01, 1e10, 1 / 256)
    x = torch.randn(1000, 3, dtype=torch.float64) * 4
    u = bounds.to_unit(x)
    assert bool(((u > 0) & (u < 1)).all())
    torch.testing.assert_close(bounds.from_unit(u), x, atol=1e-6, rtol=1e-6)


def test_shell_step_bounds_the_samples_beyond_the_inner_cube():
    # steps of t·cone out to 1000 radii put ~ln(1000)/cone samples in the shell; with a shell step of 1/32 of
    # the contracted coordinate (1 at the inner cube, 2 at infinity) a ray has at most ~32 there
    grid = torch.ones(8**3, dtype=torch.uint8)
    origins = torch.zeros(4, 3)
    dirs = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, 1, 1], [1, 1, 1], [0.3, -1, 0.2]]), dim=-1)
    counts = {}
    for shell in (0.0, 1 / 32):
        bounds = FieldBounds(True, torch.zeros(3), 1.0, 0.02, 1000.0, 0.01, 1e10, 1 / 64, shell)
        fparams, iparams = bounds.params(8, 4096)
        start, t, dt, u = kernels.march(origins, dirs, torch.full((4,), 0.02), torch.full((4,), 1000.0), grid,
                                        fparams, iparams)
        ray = torch.repeat_interleave(torch.arange(4), start[1:] - start[:-1])
        x = origins[ray] + t[:, None] * dirs[ray]
        outside = x.abs().amax(-1) > 1
        counts[shell] = torch.bincount(ray[outside], minlength=4)
        if shell:
            m = (u[outside] * 4 - 2).abs().amax(-1)  # the contracted L∞ coordinate of the shell's samples
            steps = m.reshape(-1)[1:] - m.reshape(-1)[:-1]
            same_ray = ray[outside][1:] == ray[outside][:-1]
            # a step moves m by at most 1/32; the samples sit mid-step, so neighbours are < 1.5 steps apart
            assert float(steps[same_ray].max()) < 1.5 / 32
    assert int(counts[0.0].min()) > 300  # ln(1000 / |x|∞ = 1) · 64 ≈ 440 along an axis
    assert int(counts[1 / 32].max()) <= 34
