"""The ``cpu`` kernels against the dense ``reference`` rasterizer: forward and backward parity on seeded
random scenes that cover the edge cases (N = 0, behind the camera, near plane, off-screen, tiny and huge
scales, unnormalised and zero quaternions, odd and non-square image sizes, several cameras, SH degrees)."""

from __future__ import annotations

import math

import pytest
import torch

import recon3d
from recon3d.cameras import look_at_world_to_camera
from recon3d.errors import BackendUnavailable, BuildError

PARAMS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def random_scene(n: int, sh_degree: int, seed: int, dtype: torch.dtype = torch.float32) -> recon3d.GaussianScene:
    """Gaussians around the origin with random anisotropic shapes, unnormalised quaternions and colours."""
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2 - 1
    quats = torch.randn(n, 4, generator=g) * (torch.rand(n, 1, generator=g) * 2.8 + 0.2)
    return recon3d.GaussianScene(
        means=torch.rand(n, 3, generator=g) * 2.0 - 1.0,
        scales=math.log(0.08) + 0.5 * torch.randn(n, 3, generator=g),
        quats=quats,
        opacities=1.5 * torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=0.3 * torch.randn(n, k, 3, generator=g),
    ).to(dtype=dtype)


def edge_case_scene(sh_degree: int, seed: int, camera_eye, camera_target, dtype=torch.float32) -> recon3d.GaussianScene:
    """A random scene whose first Gaussians are the edge cases, placed relative to the first camera."""
    scene = random_scene(40, sh_degree, seed, dtype)
    w2c = look_at_world_to_camera(camera_eye, camera_target).to(dtype)
    c2w = torch.linalg.inv(w2c)

    def at_view(x: float, y: float, z: float) -> torch.Tensor:
        return (c2w @ torch.tensor([x, y, z, 1.0], dtype=dtype))[:3]

    means, scales, quats, opac = scene.means.clone(), scene.scales.clone(), scene.quats.clone(), scene.opacities.clone()
    quats[0] = 0.0  # zero quaternion -> identity
    scales[1] = -9.0  # tiny: below a pixel, the low-pass filter dominates
    scales[2] = torch.tensor([4.0, -1.0, 0.5], dtype=dtype)  # huge along one axis
    means[3] = at_view(0.1, 0.0, -0.5)  # behind the camera
    means[4] = at_view(0.0, 0.0, 0.012)  # just in front of the near plane (0.01)
    scales[4] = -7.0
    means[5] = at_view(0.0, 0.0, 0.009)  # just behind the near plane: culled
    means[6] = at_view(40.0, 0.0, 2.0)  # far off-screen
    means[7] = at_view(1.9, 0.2, 1.5)  # straddles the image border (outside the frustum clamp)
    opac[8] = -8.0  # opacity below 1/255: culled
    opac[9] = 9.0  # saturates at ALPHA_MAX
    scales[9] = -1.5
    quats[10] *= 1e-3  # tiny but non-zero norm
    return recon3d.GaussianScene(means, scales, quats, opac, scene.sh0, scene.shN)


def cameras(width: int, height: int, eyes, fov_x: float = 0.9) -> recon3d.Cameras:
    """One camera per eye looking at the origin."""
    return recon3d.Cameras.cat(
        [recon3d.Cameras.look_at(e, (0.0, 0.0, 0.0), fov_x=fov_x, width=width, height=height) for e in eyes]
    )


EYES = [(3.0, 0.5, 0.8), (-1.0, 2.8, 1.2), (0.3, -2.5, -1.5)]


def render_both(scene, cams, **kwargs):
    """Render with the reference and the cpu kernels (independent copies of the parameters)."""
    ref = recon3d.render(scene, cams, backend="reference", **kwargs)
    cpu = recon3d.render(scene, cams, backend="cpu", **kwargs)
    return ref, cpu


def assert_forward_parity(ref, cpu, tol: float = 1e-4) -> None:
    for name in ("rgb", "alpha", "depth"):
        a, b = getattr(ref, name), getattr(cpu, name)
        assert a.shape == b.shape, name
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        assert diff <= tol, f"{name}: max abs diff {diff:.3g} > {tol}"
    assert torch.equal(ref.radii, cpu.radii), f"radii differ at {(ref.radii != cpu.radii).nonzero().tolist()[:10]}"


@pytest.mark.parametrize(
    "sh_stored, sh_used, size, n_cams",
    [(0, 0, (37, 23), 1), (1, 1, (64, 48), 2), (2, 1, (23, 37), 1), (3, 3, (40, 40), 3), (3, 0, (17, 33), 2)],
)
def test_forward_parity_edge_cases(sh_stored, sh_used, size, n_cams):
    scene = edge_case_scene(sh_stored, seed=10 * sh_stored + n_cams, camera_eye=EYES[0], camera_target=(0, 0, 0))
    cams = cameras(*size, EYES[:n_cams])
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(3))
    ref, cpu = render_both(scene, cams, background=bg, sh_degree=sh_used)
    assert cpu.rgb.shape == (n_cams, size[1], size[0], 3)
    assert_forward_parity(ref, cpu)
    # the edge cases really are exercised: some culled, some drawn
    assert (cpu.radii[0, 3] == 0) and (cpu.radii[0, 5] == 0) and (cpu.radii[0, 6] == 0) and (cpu.radii[0, 8] == 0)
    assert cpu.radii[0, 4] > 0 and (cpu.alpha > 0.5).any()


def test_empty_scene_gives_background():
    scene = recon3d.GaussianScene.empty(sh_degree=2)
    cams = cameras(37, 23, EYES[:2])
    bg = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.5, 0.0]])
    ref, cpu = render_both(scene, cams, background=bg)
    assert_forward_parity(ref, cpu, tol=0.0)
    assert torch.allclose(cpu.rgb, bg[:, None, None, :].expand_as(cpu.rgb))
    assert cpu.radii.shape == (2, 0)


def test_all_culled_scene():
    scene = random_scene(20, 0, seed=4)
    scene.means = scene.means + torch.tensor([0.0, 0.0, 100.0])  # far above: out of every view
    cams = cameras(32, 32, EYES[:1])
    ref, cpu = render_both(scene, cams, background=(0.3, 0.3, 0.3))
    assert_forward_parity(ref, cpu, tol=0.0)
    assert int(cpu.radii.sum()) == 0
    # the backward of an empty image still runs and gives zero gradients
    s = scene.clone().requires_grad_()
    out = recon3d.render(s, cams, backend="cpu")
    out.rgb.sum().backward()
    assert all(float(getattr(s, p).grad.abs().sum()) == 0.0 for p in PARAMS)


def test_dense_scene_parity_float64():
    """Many overlapping Gaussians so compositing stops early (transmittance cut-off) in many pixels."""
    scene = random_scene(300, 3, seed=7, dtype=torch.float64)
    scene.opacities = scene.opacities + 2.0
    cams = cameras(48, 40, EYES[:2])
    ref, cpu = render_both(scene, cams, background=(0.0, 0.5, 1.0))
    assert_forward_parity(ref, cpu, tol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_scene_backward_parity(dtype):
    """Backward where compositing stops early in many pixels: the kernel's per-row and per-tile early exits
    and its walk back from each pixel's last contributor must give the reference's gradients."""
    scene = random_scene(300, 3, seed=7, dtype=dtype)
    scene.opacities = scene.opacities + 2.0
    cams = cameras(48, 40, EYES[:2])
    kwargs = dict(background=torch.tensor([0.0, 0.5, 1.0]), sh_degree=3)
    ref = _grads(scene, cams, "reference", seed=9, **kwargs)
    cpu = _grads(scene, cams, "cpu", seed=9, **kwargs)
    out = recon3d.render(scene, cams, backend="cpu", **kwargs)
    assert float((out.alpha > 0.999).float().mean()) > 0.05  # compositing does stop early in some pixels
    for name, a in ref.items():
        rel = float((a - cpu[name]).norm() / a.norm())
        assert rel <= 1e-3, f"{name}: relative error {rel:.3g}"


def _loss_weights(out, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(t.shape, generator=g, dtype=t.dtype) for t in (out.rgb, out.alpha, out.depth)]


def _grads(scene, cams, backend: str, seed: int, **kwargs):
    s = scene.clone().requires_grad_()
    out = recon3d.render(s, cams, backend=backend, **kwargs)
    w_rgb, w_alpha, w_depth = _loss_weights(out, seed)
    loss = (out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum() + 0.1 * (out.depth * w_depth).sum()
    loss.backward()
    grads = {p: getattr(s, p).grad for p in PARAMS}
    grads["means2d"] = out.means2d.grad
    return grads


# The edge-case scenes run in float64: their huge (σ = e⁴) and near-plane Gaussians make the float32
# gradients ill-conditioned for any implementation (float32 reference vs float64 reference differ by
# O(1) on the huge Gaussian's quaternion), so float32 parity is checked on well-conditioned scenes.
@pytest.mark.parametrize(
    "dtype, kind, sh_stored, sh_used, size, n_cams",
    [
        (torch.float64, "edge", 3, 3, (37, 23), 2),
        (torch.float64, "edge", 2, 1, (40, 32), 1),
        (torch.float64, "edge", 1, 1, (29, 31), 3),
        (torch.float32, "random", 3, 3, (37, 23), 2),
        (torch.float32, "random", 2, 1, (40, 32), 1),
    ],
)
def test_backward_parity(dtype, kind, sh_stored, sh_used, size, n_cams):
    if kind == "edge":
        scene = edge_case_scene(sh_stored, 100 + sh_stored, camera_eye=EYES[0], camera_target=(0, 0, 0), dtype=dtype)
    else:
        scene = random_scene(60, sh_stored, seed=200 + sh_stored, dtype=dtype)
    cams = cameras(*size, EYES[:n_cams])
    kwargs = dict(background=torch.tensor([0.2, 0.4, 0.6]), sh_degree=sh_used)
    ref = _grads(scene, cams, "reference", seed=5, **kwargs)
    cpu = _grads(scene, cams, "cpu", seed=5, **kwargs)
    for name, a in ref.items():
        b = cpu[name]
        assert b is not None and b.shape == a.shape, name
        if float(a.norm()) == 0.0:
            assert float(b.norm()) == 0.0, name
            continue
        rel = float((a - b).norm() / a.norm())
        assert rel <= 1e-3, f"{name}: relative error {rel:.3g}"
    assert float(cpu["shN"].norm()) > 0 or sh_used == 0


def test_means2d_grad_only_for_visible():
    scene = edge_case_scene(0, seed=3, camera_eye=EYES[0], camera_target=(0, 0, 0))
    cams = cameras(32, 24, EYES[:1])
    g = _grads(scene, cams, "cpu", seed=1)
    out = recon3d.render(scene, cams, backend="cpu")
    culled = out.radii == 0
    assert float(g["means2d"][culled].abs().sum()) == 0.0
    assert float(g["means2d"][~culled].abs().sum()) > 0.0


def test_thread_count_does_not_change_results():
    scene = random_scene(200, 2, seed=11)
    cams = cameras(45, 30, EYES[:2])
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = recon3d.render(scene, cams, backend="cpu")
        g1 = _grads(scene, cams, "cpu", seed=2)
        torch.set_num_threads(2)
        two = recon3d.render(scene, cams, backend="cpu")
        g2 = _grads(scene, cams, "cpu", seed=2)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one.rgb, two.rgb)  # the forward does not depend on the split
    for name in PARAMS:  # per-thread gradient buffers are summed in another order: float32 rounding only
        rel = float((g1[name] - g2[name]).norm() / g1[name].norm())
        assert rel <= 1e-5, (name, rel)


def test_cuda_backend_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; tests/test_render_cuda.py covers it")
    scene = random_scene(5, 0, seed=0)
    with pytest.raises(BackendUnavailable, match="CUDA"):
        recon3d.render(scene, cameras(16, 16, EYES[:1]), backend="cuda")


def test_missing_compiler_is_a_build_error(monkeypatch):
    from recon3d.backends import kernels

    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    with pytest.raises(BuildError, match="g\\+\\+"):
        kernels.load_kernels()


def test_cpu_backend_rejects_gpu_only_settings():
    from recon3d.backends import kernels

    scene = random_scene(5, 0, seed=0)
    with pytest.raises(ValueError, match="device_kind"):
        kernels.render(scene, cameras(8, 8, EYES[:1]), torch.zeros(1, 3), 0, device_kind="tpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_row_masks_from_forward_match_recomputed(dtype):
    """The forward hands the backward each intersection's row mask (masked by rows still compositing); on a
    scene where compositing stops early the backward must give exactly what its own row test gives."""
    from recon3d.backends import kernels

    scene = random_scene(300, 3, seed=7, dtype=dtype)
    scene.opacities = scene.opacities + 2.0
    cams = cameras(48, 40, EYES[:2]).to(dtype=dtype)
    ext = kernels.load_kernels()
    height, width = cams.image_size()
    viewmats = cams.world_to_camera.contiguous()
    intr = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], -1).contiguous()
    proj = ext.project_forward(
        *[t.contiguous() for t in scene.tensors()], viewmats, intr, cams.centers().contiguous(), width, height, 3, 1
    )
    bg = torch.tensor([[0.0, 0.5, 1.0], [0.3, 0.2, 0.1]], dtype=dtype)
    rgb, alpha, depth, final_trans, last, _, isect_ids, tile_ranges, isect_rows, _ = ext.rasterize_forward(
        *proj, bg, width, height, 1, 0
    )
    assert float((alpha > 0.999).float().mean()) > 0.05  # compositing does stop early in some pixels
    g = torch.Generator().manual_seed(3)
    ups = [torch.rand(t.shape, generator=g, dtype=dtype) for t in (rgb, alpha, depth)]
    common = (*proj, bg, width, height, isect_ids, tile_ranges, final_trans, last)
    with_masks = ext.rasterize_backward(*common, isect_rows, *ups, 1)
    recomputed = ext.rasterize_backward(*common, torch.empty(0, dtype=torch.int32), *ups, 1)  # no masks given
    for a, b in zip(with_masks, recomputed):
        assert torch.equal(a, b)
    assert float(with_masks[0].abs().sum()) > 0
