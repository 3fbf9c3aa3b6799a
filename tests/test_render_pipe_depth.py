"""The kernels' expected depth (one C++ pass, binding.cpp) against the torch expression it replaces
(recon3d.render.expected_depth) and that expression's autograd gradients."""

from __future__ import annotations

import pytest
import torch

from recon3d.render import expected_depth


@pytest.fixture(scope="module")
def ext():
    from recon3d.backends.kernels import load_kernels

    return load_kernels()


def _inputs(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulated depth and alpha with the edge cases: alpha 0, below and at the 1e-10 floor, 1."""
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(2, 37, 53, generator=g, dtype=dtype)
    acc = alpha * (torch.rand(alpha.shape, generator=g, dtype=dtype) * 9 + 0.5)
    flat_a, flat_d = alpha.view(-1), acc.view(-1)
    flat_a[:50] = 0
    flat_d[:25] = 0
    flat_a[50:60] = 1e-12  # under the clamp: the division uses the floor, alpha gets no depth gradient
    flat_d[50:60] = 3e-12
    flat_a[60:70] = torch.tensor(1e-10, dtype=dtype)  # at the floor (in the tensor's own rounding)
    flat_d[60:70] = 2e-10
    flat_a[70:80] = 1
    return acc, alpha


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expected_depth_forward_matches_torch(ext, dtype):
    acc, alpha = _inputs(dtype, 0)
    assert torch.equal(ext.expected_depth_forward(acc, alpha), expected_depth(acc, alpha))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_g_alpha", [True, False])
def test_expected_depth_backward_matches_autograd(ext, dtype, with_g_alpha):
    acc, alpha = _inputs(dtype, 1)
    g = torch.Generator().manual_seed(2)
    g_depth = torch.randn(alpha.shape, generator=g, dtype=dtype)
    g_alpha = torch.randn(alpha.shape, generator=g, dtype=dtype) if with_g_alpha else None
    a, d = alpha.clone().requires_grad_(), acc.clone().requires_grad_()
    loss = (expected_depth(d, a) * g_depth).sum() + ((a * g_alpha).sum() if with_g_alpha else 0)
    loss.backward()
    got_alpha, got_acc = ext.expected_depth_backward(acc, alpha, g_alpha, g_depth)
    assert torch.equal(got_acc, d.grad)
    assert torch.allclose(got_alpha, a.grad, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)
    # below the floor alpha gets no gradient from the depth, only its own
    want_low = g_alpha.view(-1)[50:60] if with_g_alpha else torch.zeros(10, dtype=dtype)
    assert torch.equal(got_alpha.view(-1)[50:60], want_low)


def test_expected_depth_backward_without_depth_gradient(ext):
    """No gradient reaches the depth (a loss on rgb alone): alpha's passes through, acc's is zero."""
    acc, alpha = _inputs(torch.float32, 3)
    g_alpha = torch.randn(alpha.shape)
    got_alpha, got_acc = ext.expected_depth_backward(acc, alpha, g_alpha, None)
    assert torch.equal(got_alpha, g_alpha)
    assert torch.equal(got_acc, torch.zeros_like(acc))
    got_alpha, got_acc = ext.expected_depth_backward(acc, alpha, None, None)
    assert torch.equal(got_alpha, torch.zeros_like(alpha)) and torch.equal(got_acc, torch.zeros_like(acc))


def test_render_gradients_with_and_without_a_depth_loss():
    """A loss on rgb only (depth, alpha unused: their gradients arrive as None) gives the same scene gradients
    as the same loss with a zero-weighted depth and alpha term (zero-filled gradients). One thread: with two,
    the backward's per-thread sums meet in a scheduling-dependent order (equal only to rounding)."""
    import recon3d

    g = torch.Generator().manual_seed(4)
    n = 300
    scene = recon3d.GaussianScene(
        means=torch.rand(n, 3, generator=g) * 2 - 1, scales=-2.5 + 0.5 * torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g), opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g), shN=0.3 * torch.randn(n, 3, 3, generator=g),
    ).to(dtype=torch.float64)
    cams = recon3d.Cameras.cat(
        [recon3d.Cameras.look_at(e, (0.0, 0.0, 0.0), fov_x=0.9, width=37, height=29) for e in ((3, 0.5, 0.8), (-1, 2.8, 1.2))]
    ).to(dtype=torch.float64)
    grads = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _two_renders(recon3d, scene, cams, grads)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def _two_renders(recon3d, scene, cams, grads) -> None:
    """Scene gradients of an rgb-only loss, then of the same loss plus zero-weighted depth and alpha terms."""
    for with_zero_terms in (False, True):
        s = scene.detach().requires_grad_()
        out = recon3d.render(s, cams, backend="cpu")
        loss = (out.rgb * out.rgb.detach()).sum()
        if with_zero_terms:
            loss = loss + 0 * out.depth.sum() + 0 * out.alpha.sum()
        loss.backward()
        grads.append([t.grad.clone() for t in s.tensors()])
