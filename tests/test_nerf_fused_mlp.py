"""The fused native MLP of the NeRF field (``nerf.mlp=fused``: ``cuda/include/recon3d/nerf_mlp.h``, built by
``recon3d/nerf/fused_mlp.py``) against the field's PyTorch layers (autograd of the dense reference) and finite
differences.

Tolerances: float64 runs the same sums in another order than PyTorch's GEMMs, so it agrees to ~1e-15 and the
tests ask for 1e-10 relative; float32 agrees to a few 1e-7 relative (measured: ≤ 1e-6 on the weight
gradients, which sum 65,536 terms at the trainer's batch and ~1,000 here), so it is held to 1e-5 relative
to the largest entry. A sample whose pre-activation lies within float32 rounding of a ReLU's kink can take
the other branch in one implementation (seen: one sample of 1,000 with |pre-activation| = 7e-9 changed the
colour layers' weight gradients by 9e-4 relative), so the float32 comparisons drop samples within 1e-4 of a
kink (measured in float64); the float64 ones keep every sample.
"""

from __future__ import annotations

import pytest
import torch

from recon3d.nerf import fused_mlp
from recon3d.nerf.field import NerfField
from recon3d.nerf.reference import HashGridSpec
from recon3d.sh import sh_basis

pytestmark = pytest.mark.skipif(not fused_mlp.available(), reason="fused MLP CPU build unavailable (no C++ compiler)")

SPEC = HashGridSpec(levels=16, log2_table=10, base_resolution=4, max_resolution=64)  # 32 features, small table


def _field(dtype: torch.dtype, seed: int = 0, **kw) -> NerfField:
    torch.manual_seed(seed)
    field = NerfField(SPEC, **kw).to(dtype)
    with torch.no_grad():  # biases away from zero: some ReLUs off, some on, in every layer
        for p in field.parameters():
            if p.ndim == 1:
                p.uniform_(-0.3, 0.3)
    return field


def _inputs(n: int, dtype: torch.dtype, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Hash features and unit view directions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g, dtype=dtype)
    return x, torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=dtype), dim=-1)


def _off_kinks(field: NerfField, x: torch.Tensor, dirs: torch.Tensor, margin: float = 1e-4) -> torch.Tensor:
    """Samples whose every pre-activation (float64) is at least ``margin`` from a ReLU's kink."""
    f = NerfField(SPEC).double()
    f.load_state_dict(field.state_dict())
    with torch.no_grad():
        x, sh = x.double(), sh_basis(dirs.double(), 3)
        p1 = f.density_mlp[0](x)
        h = f.density_mlp[2](torch.relu(p1))
        q1 = f.color_mlp[0](torch.cat([h[:, 1:], sh], -1))
        q2 = f.color_mlp[2](torch.relu(q1))
        near = torch.cat([p1, q1, q2], 1).abs().amin(1)
    return near > margin


def _reference(field: NerfField, x: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The field's PyTorch layers and recon3d.sh's basis: the independent oracle."""
    h = field.density_mlp(x)
    return h[:, 0], field.color_mlp(torch.cat([h[:, 1:], sh_basis(dirs, 3)], -1))


def _grads(fn, field, x, dirs, g_h0, g_logits):
    x = x.clone().requires_grad_(True)
    h0, logits = fn(field, x, dirs)
    params = [x, *fused_mlp._params(field)]
    return (h0, logits), torch.autograd.grad((h0 * g_h0).sum() + (logits * g_logits).sum(), params)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 128, 1000, 2053])  # lane-group and chunk tails
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_forward_and_backward_match_pytorch(n, dtype, tol):
    field = _field(dtype)
    x, dirs = _inputs(n, dtype)
    if dtype == torch.float32:
        keep = _off_kinks(field, x, dirs)
        x, dirs = x[keep], dirs[keep]
        n = len(x)
    g = torch.Generator().manual_seed(2)
    g_h0, g_logits = torch.randn(n, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)
    (h0, logits), grads = _grads(fused_mlp.field_mlp, field, x, dirs, g_h0, g_logits)
    (r0, rl), ref = _grads(_reference, field, x, dirs, g_h0, g_logits)
    assert _rel(h0, r0) < tol and _rel(logits, rl) < tol
    names = ["features"] + [f"{layer}.{p}" for layer in ("d1", "d2", "c1", "c2", "c3") for p in ("weight", "bias")]
    for name, a, b in zip(names, grads, ref):
        assert a.shape == b.shape, name
        assert b.abs().max() > 0, name  # the check is not vacuous: every gradient is non-zero
        assert _rel(a, b) < tol, (name, _rel(a, b))


def test_gradcheck_finite_differences():
    """float64 finite differences of the fused op itself (features and every parameter; the directions take no
    gradient: a direction that needs one sends the field to PyTorch's layers)."""
    field = _field(torch.float64, seed=3)
    x, dirs = _inputs(19, torch.float64, seed=4)
    x.requires_grad_(True)
    params = fused_mlp._params(field)

    def fn(x, *p):
        return fused_mlp._FusedMlp.apply(x, dirs, *p)

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-6)
    d = dirs.clone().requires_grad_(True)
    h0, logits = fused_mlp.field_mlp(field, x, d)
    (g,) = torch.autograd.grad(logits.sum(), d)
    (r,) = torch.autograd.grad(_reference(field, x, d)[1].sum(), d)
    assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)


def test_two_threads_agree_and_repeat_bit_for_bit():
    """Per-thread weight-gradient sums are added in thread order: a thread count gives the same bits each run."""
    field = _field(torch.float32)
    x, dirs = _inputs(3000, torch.float32)
    g = torch.Generator().manual_seed(6)
    g_h0, g_logits = torch.randn(3000, generator=g), torch.randn(3000, 3, generator=g)
    before = torch.get_num_threads()
    try:
        runs = {}
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            runs.setdefault(threads, []).append(_grads(fused_mlp.field_mlp, field, x, dirs, g_h0, g_logits)[1])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs[2]):
        assert torch.equal(a, b)
    for a, b in zip(runs[1][0], runs[2][0]):
        assert _rel(a, b) < 1e-5


def test_density_matches_the_density_mlp():
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        field = _field(dtype)
        x, _ = _inputs(333, dtype)
        with torch.no_grad():
            assert _rel(fused_mlp.density_raw(field, x), field.density_mlp(x)[:, 0]) < tol


def test_field_option_gives_the_same_field():
    """NerfField with mlp=fused: same σ and colour, same gradients into the table and the MLPs."""
    field = _field(torch.float32)
    g = torch.Generator().manual_seed(5)
    u, dirs = torch.rand(500, 3, generator=g), torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=-1)
    with torch.no_grad():
        keep = _off_kinks(field, field.encode(u), dirs)
    u, dirs = u[keep], dirs[keep]
    out = {}
    for mlp in ("torch", "fused"):
        field.mlp = mlp
        field.zero_grad(set_to_none=True)
        sigma, color = field(u, dirs)
        (sigma.sum() * 1e-3 + color.square().sum()).backward()
        with torch.no_grad():
            dens = field.density(u)
        out[mlp] = (sigma.detach(), color.detach(), dens, *(p.grad.clone() for p in field.parameters()))
    for a, b in zip(out["fused"], out["torch"]):
        assert _rel(a, b) < 1e-5


def test_other_shapes_keep_pytorch():
    field = _field(torch.float32, hidden=32)
    assert "default shape" in fused_mlp.unsupported(field)
    x, dirs = _inputs(40, torch.float32)
    h0, logits = fused_mlp.field_mlp(field, x, dirs)
    r0, rl = _reference(field, x, dirs)
    assert torch.equal(h0, r0) and torch.equal(logits, rl)


def test_config_rejects_an_unknown_mlp():
    from recon3d.train.nerf_config import NerfConfig

    assert any("nerf.mlp" in p for p in NerfConfig(mlp="cutlass").problems())
    assert not NerfConfig(mlp="fused").problems() and not NerfConfig().problems() and NerfConfig().mlp == "auto"


def test_cuda_launcher_declarations_match_the_source():
    """The ctypes argument lists (fused_mlp.declare_cuda_launchers) against the extern "C" signatures (the
    CUDA driver runs only on a GPU machine; a mismatch would pass garbage pointers there)."""
    import ctypes
    import re
    import types

    from recon3d.constants import kernel_source_dir

    text = (kernel_source_dir() / "src" / "nerf_mlp_cuda.cu").read_text()
    found = dict(re.findall(r"int (r3d_nerf_mlp_cuda_\w+)\(([^)]*)\)", text))
    names = [f"r3d_nerf_mlp_cuda_{n}" for n in fused_mlp.CUDA_LAUNCHERS]
    handle = types.SimpleNamespace(**{n: types.SimpleNamespace() for n in names})
    fused_mlp.declare_cuda_launchers(handle)
    assert set(found) == set(names)
    for name, params in found.items():
        params = [q.strip() for q in params.replace("\n", " ").split(",")]
        declared = getattr(handle, name).argtypes
        assert len(declared) == len(params), name
        for ctype, param in zip(declared, params):
            expected = ctypes.c_void_p if "*" in param else ctypes.c_int64
            assert ctype is expected, (name, param)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_driver_matches_pytorch():
    assert fused_mlp.cuda_available(), fused_mlp.build_error()
    field = _field(torch.float32).cuda()
    x, dirs = (t.cuda() for t in _inputs(3001, torch.float32))
    g_h0, g_logits = torch.randn(3001, device="cuda"), torch.randn(3001, 3, device="cuda")
    (h0, logits), grads = _grads(fused_mlp.field_mlp, field, x, dirs, g_h0, g_logits)
    (r0, rl), ref = _grads(_reference, field, x, dirs, g_h0, g_logits)
    assert _rel(h0, r0) < 1e-5 and _rel(logits, rl) < 1e-5
    for a, b in zip(grads, ref):
        assert _rel(a, b) < 1e-5
    with torch.no_grad():
        assert _rel(fused_mlp.density_raw(field, x), field.density_mlp(x)[:, 0]) < 1e-5


def test_auto_is_fused_on_the_cpu_only():
    field = _field(torch.float32)
    assert field.mlp == "auto" and field._fused(torch.zeros(1)) and not field._fused(torch.zeros(1, device="meta"))
    field.mlp = "torch"
    assert not field._fused(torch.zeros(1))


@pytest.mark.slow
def test_training_with_the_fused_mlp_matches_pytorch_layers(tmp_path):
    """``--method nerf`` end to end at the fused shape (16 levels, hidden 64, SH degree 3) on the analytic scene:
    nerf.mlp=fused and nerf.mlp=torch from the same seed reach the same held-out PSNR (their float32 roundings
    differ, so the runs may drift apart a little: within 0.05 dB; measured 5e-5 dB), both well above the
    untrained field (12.0 dB after one step, 17.8 after 150)."""
    from recon3d.api import reconstruct
    from recon3d.train.synthetic import make_synthetic_data

    data = make_synthetic_data(tmp_path / "data", num_views=24, size=32, center=(5.0, -3.0, 2.0), radius=3.0,
                               backend="reference")
    small = ["nerf.log2_table=12", "nerf.max_resolution=128", "nerf.samples_per_step=8192", "nerf.initial_rays=128",
             "nerf.max_samples=128", "nerf.steps_across=128", "nerf.grid_res=32"]
    psnr = {}
    for mlp, steps in (("torch", 1), ("torch", 150), ("fused", 150)):
        _, _, metrics = reconstruct(data, tmp_path / f"{mlp}{steps}", preset="fast", steps=steps, threads=1,
                                    quiet=True, method="nerf", assignments=[*small, f"nerf.mlp={mlp}"])
        psnr[mlp, steps] = metrics["psnr"]
    assert abs(psnr["fused", 150] - psnr["torch", 150]) < 0.05, psnr  # measured: 17.8489 vs 17.8489 dB
    assert psnr["fused", 150] > psnr["torch", 1] + 3.0, psnr
