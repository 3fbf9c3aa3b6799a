"""The ``cuda`` kernels (marked gpu: skipped without a GPU) against the reference, the cpu kernels and
gsplat: the same edge-case scenes as tests/test_render_cpu.py."""

from __future__ import annotations

import pytest
import torch
from test_render_cpu import EYES, PARAMS, assert_forward_parity, cameras, edge_case_scene, random_scene

import recon3d

pytestmark = pytest.mark.gpu


def _on_gpu(scene, cams):
    return scene.to("cuda"), cams.to("cuda")


@pytest.mark.parametrize(
    "sh_stored, sh_used, size, n_cams",
    [(0, 0, (37, 23), 1), (1, 1, (64, 48), 2), (2, 1, (23, 37), 1), (3, 3, (40, 40), 3), (3, 0, (17, 33), 2)],
)
def test_cuda_forward_parity(sh_stored, sh_used, size, n_cams):
    scene = edge_case_scene(sh_stored, seed=10 * sh_stored + n_cams, camera_eye=EYES[0], camera_target=(0, 0, 0))
    cams = cameras(*size, EYES[:n_cams])
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(3))
    ref = recon3d.render(scene, cams, background=bg, sh_degree=sh_used, backend="reference")
    gscene, gcams = _on_gpu(scene, cams)
    out = recon3d.render(gscene, gcams, background=bg.cuda(), sh_degree=sh_used, backend="cuda")
    out_cpu = type(out)(*(t.detach().cpu() for t in (out.rgb, out.alpha, out.depth, out.radii, out.means2d)))
    assert_forward_parity(ref, out_cpu)


def test_cuda_empty_scene():
    scene = recon3d.GaussianScene.empty(sh_degree=1, device="cuda")
    cams = cameras(37, 23, EYES[:2]).to("cuda")
    out = recon3d.render(scene, cams, background=(0.2, 0.3, 0.4), backend="cuda")
    assert torch.allclose(out.rgb, torch.tensor([0.2, 0.3, 0.4], device="cuda").expand_as(out.rgb))


@pytest.mark.parametrize("sh_degree, size, n_cams", [(3, (37, 23), 2), (1, (64, 40), 1)])
def test_cuda_backward_parity(sh_degree, size, n_cams):
    scene = random_scene(80, sh_degree, seed=300 + sh_degree)
    cams = cameras(*size, EYES[:n_cams])
    grads = {}
    for backend, device in (("reference", "cpu"), ("cuda", "cuda")):
        s = scene.to(device).clone().requires_grad_()
        out = recon3d.render(s, cams.to(device), background=torch.tensor([0.2, 0.4, 0.6]), backend=backend)
        g = torch.Generator().manual_seed(5)
        w = [torch.rand(t.shape, generator=g).to(device) for t in (out.rgb, out.alpha, out.depth)]
        ((out.rgb * w[0]).sum() + (out.alpha * w[1]).sum() + 0.1 * (out.depth * w[2]).sum()).backward()
        grads[backend] = {p: getattr(s, p).grad.cpu() for p in PARAMS}
        grads[backend]["means2d"] = out.means2d.grad.cpu()
    for name, a in grads["reference"].items():
        b = grads["cuda"][name]
        rel = float((a - b).norm() / a.norm().clamp_min(1e-30))
        assert rel <= 1e-3, f"{name}: relative error {rel:.3g}"


def test_cuda_matches_cpu_on_a_larger_scene():
    scene = random_scene(3000, 3, seed=9)
    cams = cameras(160, 120, EYES[:2])
    cpu = recon3d.render(scene, cams, backend="cpu")
    gscene, gcams = _on_gpu(scene, cams)
    gpu = recon3d.render(gscene, gcams, backend="cuda")
    assert (cpu.rgb - gpu.rgb.cpu()).abs().max() <= 1e-4
    assert torch.equal(cpu.radii, gpu.radii.cpu())


def test_cuda_close_to_gsplat():
    pytest.importorskip("gsplat")
    scene = random_scene(2000, 3, seed=21)
    scene.quats = scene.quats + 0.1  # gsplat cannot take zero quaternions
    gscene, gcams = _on_gpu(scene, cameras(128, 96, EYES[:2]))
    ours = recon3d.render(gscene, gcams, backend="cuda")
    theirs = recon3d.render(gscene, gcams, backend="gsplat")
    # gsplat bins with its own radius rule, so Gaussians at the edge of the support may differ slightly
    assert (ours.rgb - theirs.rgb).abs().mean() <= 2e-3
    assert (ours.alpha - theirs.alpha).abs().mean() <= 2e-3


@pytest.mark.parametrize("sh_stored, size, n_cams", [(1, (64, 48), 2), (3, (40, 40), 3)])
def test_cuda_median_depth_parity(sh_stored, size, n_cams):
    """depth="median" on the GPU picks the same Gaussian as the reference except where T ties with 1/2."""
    from test_render_median import TIE, reference_median

    scene = edge_case_scene(sh_stored, seed=10 * sh_stored + n_cams, camera_eye=EYES[0], camera_target=(0, 0, 0))
    scene.opacities = scene.opacities + 1.0
    cams = cameras(*size, EYES[:n_cams])
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(3))
    want, margin = reference_median(scene, cams, bg, sh_stored)
    gscene, gcams = _on_gpu(scene, cams)
    out = recon3d.render(gscene, gcams, background=bg.cuda(), backend="cuda", depth="median")
    expected = recon3d.render(gscene, gcams, background=bg.cuda(), backend="cuda")
    assert torch.equal(out.rgb, expected.rgb) and torch.equal(out.alpha, expected.alpha)
    got = out.depth.cpu()
    clear = margin > TIE
    bad = clear & ((got - want).abs() > 1e-5 * want.abs().clamp_min(1.0))
    assert not bad.any(), f"{int(bad.sum())} pixels differ"
    assert float(clear.float().mean()) > 0.95 and (want[clear] > 0).any()


def test_cuda_antialiased_parity():
    """The anti-aliased mode: cuda forward and backward against the reference."""
    scene = random_scene(120, 2, seed=41)
    small = scene.scales.clone()
    small[:60] = -6.0  # far below a pixel
    scene = recon3d.GaussianScene(scene.means, small, scene.quats, scene.opacities, scene.sh0, scene.shN)
    cams = cameras(41, 29, EYES[:2])
    grads, outs = {}, {}
    for backend, device in (("reference", "cpu"), ("cuda", "cuda")):
        s = scene.to(device).clone().requires_grad_()
        out = recon3d.render(s, cams.to(device), backend=backend, antialiased=True)
        w = torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(2)).to(device)
        (out.rgb * w).sum().backward()
        outs[backend] = out.rgb.detach().cpu()
        grads[backend] = {p: getattr(s, p).grad.cpu() for p in PARAMS}
    assert torch.allclose(outs["reference"], outs["cuda"], atol=1e-4)
    for name, a in grads["reference"].items():
        rel = float((a - grads["cuda"][name]).norm() / a.norm().clamp_min(1e-30))
        assert rel <= 1e-3, f"{name}: relative error {rel:.3g}"


def test_cuda_camera_gradients_parity():
    """world_to_camera, fx, fy, cx, cy gradients: cuda against the reference."""
    scene = random_scene(100, 3, seed=42)
    cams = cameras(37, 23, EYES[:2])
    grads = {}
    for backend, device in (("reference", "cpu"), ("cuda", "cuda")):
        c = cams.to(device)
        leaves = [c.world_to_camera.clone().requires_grad_()] + [
            getattr(c, k).clone().requires_grad_() for k in ("fx", "fy", "cx", "cy")
        ]
        cc = recon3d.Cameras(*leaves, c.width, c.height)
        out = recon3d.render(scene.to(device), cc, backend=backend)
        w = torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(4)).to(device)
        ((out.rgb * w).sum() + out.depth.sum()).backward()
        grads[backend] = [t.grad.cpu() for t in leaves]
    for a, b in zip(grads["reference"], grads["cuda"]):
        rel = float((a - b).norm() / a.norm().clamp_min(1e-30))
        assert rel <= 1e-3, f"relative error {rel:.3g}"


@pytest.mark.parametrize("k", [1, 7, 64])
def test_cuda_features_parity(k):
    """Feature channels: cuda forward and backward against the reference."""
    scene = random_scene(90, 1, seed=43)
    cams = cameras(33, 27, EYES[:2])
    feats = torch.randn(90, k, generator=torch.Generator().manual_seed(k))
    res = {}
    for backend, device in (("reference", "cpu"), ("cuda", "cuda")):
        s = scene.to(device).clone().requires_grad_()
        f = feats.to(device).clone().requires_grad_()
        out = recon3d.render(s, cams.to(device), backend=backend, features=f)
        w = torch.rand(out.features.shape, generator=torch.Generator().manual_seed(6)).to(device)
        (out.features * w).sum().backward()
        res[backend] = (out.features.detach().cpu(), f.grad.cpu(), s.means.grad.cpu(), s.opacities.grad.cpu())
    assert torch.allclose(res["reference"][0], res["cuda"][0], atol=1e-4)
    for a, b in zip(res["reference"][1:], res["cuda"][1:]):
        rel = float((a - b).norm() / a.norm().clamp_min(1e-30))
        assert rel <= 1e-3, f"relative error {rel:.3g}"
