"""Feature channels (render(features=F), F N×K, K ≤ 64): composited with the colour weights, cpu against the
dense reference (forward and backward), finite differences (float64 gradcheck), features equal to the
colours reproduce the colour image, and bad arguments raise one-line ValueErrors naming ``features``."""

from __future__ import annotations

import pytest
import torch
from test_render_cpu import EYES, cameras, edge_case_scene, random_scene
from test_render_gradients import tiny_cameras, tiny_scene

import recon3d

PARAMS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def _scene(dtype):
    return recon3d.GaussianScene.cat(
        [edge_case_scene(1, seed=6, camera_eye=EYES[0], camera_target=(0.0, 0.0, 0.0), dtype=dtype),
         random_scene(250, 1, seed=7, dtype=dtype)]
    )


@pytest.mark.parametrize("k", [1, 5, 64])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_features_cpu_match_reference(k, dtype, tol):
    scene = _scene(dtype)
    cams = cameras(37, 26, EYES)
    feats = torch.randn(len(scene.means), k, generator=torch.Generator().manual_seed(k)).to(dtype)
    results = {}
    for backend in ("reference", "cpu"):
        params = {p: getattr(scene, p).detach().clone().requires_grad_() for p in PARAMS}
        f = feats.clone().requires_grad_()
        out = recon3d.render(recon3d.GaussianScene(**params), cams, backend=backend, features=f)
        g = torch.Generator().manual_seed(3)
        w_f = torch.randn(out.features.shape, generator=g).to(dtype)
        w_rgb = torch.randn(out.rgb.shape, generator=g).to(dtype)
        ((out.features * w_f).sum() + (out.rgb * w_rgb).sum()).backward()
        results[backend] = (out, f.grad, {p: v.grad for p, v in params.items()})
    (ref, ref_fg, ref_g), (cpu, cpu_fg, cpu_g) = results["reference"], results["cpu"]
    assert cpu.features.shape == (3, 26, 37, k)
    assert torch.allclose(ref.features, cpu.features, atol=tol, rtol=tol)
    assert torch.allclose(ref_fg, cpu_fg, atol=10 * tol, rtol=10 * tol)
    for p in PARAMS:
        scale = max(1.0, float(ref_g[p].abs().max()))
        assert torch.allclose(ref_g[p], cpu_g[p], atol=10 * tol * scale, rtol=10 * tol), p
    assert float(cpu.features.detach().abs().max()) > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_features_equal_to_colours_reproduce_the_image(dtype):
    """SH degree 0 colours are per-Gaussian constants: as features they give rgb − T·background exactly
    (the same weights; the same sums in the same order)."""
    scene = _scene(dtype)
    cams = cameras(45, 31, EYES[:2])
    colors = (scene.sh0[:, 0, :] * 0.28209479177387814 + 0.5).clamp_min(0)
    out = recon3d.render(scene, cams, backend="cpu", sh_degree=0, features=colors)
    assert torch.allclose(out.features, out.rgb, atol=1e-6 if dtype == torch.float32 else 1e-13, rtol=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_features_gradcheck(backend):
    scene = tiny_scene(seed=4, sh_degree=0)
    cams = tiny_cameras(2).to(dtype=torch.float64)
    feats = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    inputs = (*[t.detach().clone().requires_grad_() for t in scene.tensors()], feats.requires_grad_())

    def fn(means, scales, quats, opacities, sh0, shN, f):
        s = recon3d.GaussianScene(means, scales, quats, opacities, sh0, shN)
        return recon3d.render(s, cams, sh_degree=0, backend=backend, features=f).features

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_features_with_antialiased_and_median():
    scene = _scene(torch.float64)
    cams = cameras(23, 19, EYES[:1])
    feats = torch.rand(len(scene.means), 2, dtype=torch.float64)
    ref = recon3d.render(scene, cams, backend="reference", features=feats, antialiased=True, depth="median")
    cpu = recon3d.render(scene, cams, backend="cpu", features=feats, antialiased=True, depth="median")
    assert torch.allclose(ref.features, cpu.features, atol=1e-10)


@pytest.mark.parametrize(
    "features, message",
    [
        (torch.zeros(7, 2), "shape"),
        (torch.zeros(10), "shape"),
        (torch.zeros(10, 0), "1 to 64"),
        (torch.zeros(10, 65), "1 to 64"),
        (torch.full((10, 2), float("nan")), "NaN"),
        (torch.tensor([[float("inf")]] * 10), "NaN or Inf"),
        ([[0.0]] * 10, "torch.Tensor"),
    ],
)
def test_bad_features_raise_one_line(features, message):
    scene = random_scene(10, 0, seed=2)
    with pytest.raises(ValueError, match="features") as info:
        recon3d.render(scene, cameras(8, 8, EYES[:1]), backend="cpu", features=features)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_no_features_no_output():
    out = recon3d.render(random_scene(10, 0, seed=2), cameras(8, 8, EYES[:1]), backend="cpu")
    assert out.features is None and out.n_contrib is None
