"""CPU fast paths of the training step in plain C (``csrc/train_ops.c``), with PyTorch fallbacks.

Fused loss: the value and gradient of the training loss L1 + λ·(1 − SSIM), and the MSE for PSNR, in one call.
``recon3d.metrics.ssim`` builds SSIM from depthwise ``conv2d`` calls and lets autograd differentiate
every intermediate; on a CPU that forward + backward costs more than rendering the image. Here the same
value and gradient (tests/test_train_fastpath.py compares both with a dense-window float64 SSIM) come
from five blurred moments, the SSIM map, three per-pixel derivative maps and their adjoint blurs.
The C file has no torch headers, so it compiles with the system C compiler in about a second; the
library is cached under ``~/.cache/recon3d/train_ops`` (or ``$RECON3D_CACHE/train_ops``) keyed by a hash
of the source, the compiler and its flags (which follow the CPU's SIMD support, capped by
``RECON3D_CPU_ISA=avx2|generic`` as for the rasterizer: ``recon3d.native`` holds those rules). Where it cannot be
built (no compiler) or does not apply (GPU tensors, float64, batches) the PyTorch formulas run instead.

``RECON3D_CPU_OPS=0`` turns every fast path off (the PyTorch code runs instead), for A/B measurements.

Adam: ``adam_step_`` updates every parameter tensor in one parallel pass with torch's fused Adam formula,
and can leave out the trailing columns of a tensor whose gradients and moments are all zero (SH
coefficients above the degree rendered so far, where Adam changes nothing). ``all_finite`` checks many
tensors for NaN/Inf in one pass.

MCMC noise: ``mcmc_noise_`` adds the MCMC strategy's covariance-shaped position noise in one pass over
the Gaussians (the same formula as the PyTorch code in ``strategy.py``, which remains the fallback).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .. import native
from ..errors import BuildError
from ..metrics import SSIM_C1, SSIM_C2, SSIM_SIGMA, SSIM_WINDOW, _gaussian_1d, ssim

_SOURCE = Path(__file__).with_name("csrc") / "train_ops.c"
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed: str | None = None
_workspace = torch.empty(0)  # reused between calls (one training loop; guarded by _lock)


def _flags() -> list[str]:
    # -ffp-contract=fast: -std=c99 alone turns FMA contraction off, and the window sums are chains of FMAs.
    # The SIMD flags follow the CPU, capped by RECON3D_CPU_ISA (recon3d.native); the cache key includes them.
    return ["-O3", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-std=c99",
            "-ffp-contract=fast", *native.simd_flags()]


def _cache_dir() -> Path:
    return native.cache_root() / "train_ops"


def _build() -> ctypes.CDLL:
    compiler = native.find_compiler("c")
    flags = _flags()
    link = native.link_flags(flags)
    # the key holds the source, the flags and the compiler's name (as given: PATH does not enter it)
    digest = hashlib.sha256(_SOURCE.read_bytes())
    digest.update(" ".join(flags + link).encode())
    digest.update(compiler.encode())
    out_dir = _cache_dir()
    lib = out_dir / f"recon3d_train_ops_{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        with native.build_lock(out_dir):
            if not lib.exists():  # another process may have built it while this one waited
                _compile(compiler, flags, link, lib)
    try:
        handle = ctypes.CDLL(str(lib))
    except OSError as exc:
        raise BuildError(f"loading {lib} failed: {exc}") from None
    fn = handle.recon3d_image_loss
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                   ctypes.c_float, ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                   ctypes.c_float, ctypes.c_float, ctypes.POINTER(ctypes.c_double)]
    noise = handle.recon3d_mcmc_noise
    noise.restype = None
    noise.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_float, ctypes.c_long, ctypes.c_int]
    adam = handle.recon3d_adam
    adam.restype = None
    adam.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 8 + [ctypes.c_float] * 5 + [ctypes.c_int]
    finite = handle.recon3d_all_finite
    finite.restype = ctypes.c_int
    finite.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    handle.recon3d_ssim_workspace.restype = ctypes.c_size_t
    handle.recon3d_ssim_workspace.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return handle


def _compile(compiler: str, flags: list[str], link: list[str], lib: Path) -> None:
    # build beside the target and rename: a second process never loads a half-written library
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *flags, str(_SOURCE), *link, "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"compiling {_SOURCE} failed: {native.last_line(RuntimeError(proc.stderr))}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fused_available() -> bool:
    """Whether the C library is built (building it on first call); False where it cannot be."""
    global _lib, _failed
    if _lib is not None:
        return True
    if _failed is not None or os.environ.get("RECON3D_CPU_OPS", "1") == "0":
        return False
    with _lock:
        if _lib is None and _failed is None:
            try:
                _lib = _build()
            except (BuildError, OSError, AttributeError) as exc:  # no compiler, a failed build, a missing symbol
                _failed = str(exc)
    return _lib is not None


@functools.lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    return _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA, torch.float32, "cpu").contiguous()


def _image_loss_sums(prediction: torch.Tensor, target: torch.Tensor, ssim_coef: float, l1_coef: float,
                     need_grad: bool) -> tuple[tuple[float, float, float], torch.Tensor | None]:
    """(Σ SSIM map, Σ|x − y|, Σ(clamp(x) − y)²) and d(ssim_coef·mean SSIM + l1_coef·Σ|x − y|)/dx."""
    if not fused_available():
        raise RuntimeError(f"the C training ops are unavailable: {_failed}")
    x = prediction.detach().contiguous()
    y = target.detach().to(x.dtype).contiguous()
    h, w, c = x.shape
    window = _window()
    grad = torch.empty_like(x) if need_grad else None
    sums = (ctypes.c_double * 3)()
    threads = max(1, torch.get_num_threads())
    global _workspace
    with _lock:
        size = int(_lib.recon3d_ssim_workspace(h, w, c, threads))
        if _workspace.numel() < size:
            _workspace = torch.empty(size, dtype=torch.float32)
        _lib.recon3d_image_loss(
            x.data_ptr(), y.data_ptr(), h, w, c, window.data_ptr(), SSIM_C1, SSIM_C2,
            grad.data_ptr() if grad is not None else None, threads, _workspace.data_ptr(),
            ssim_coef, l1_coef, sums,
        )
    return (sums[0], sums[1], sums[2]), grad


def fused_ssim(prediction: torch.Tensor, target: torch.Tensor, need_grad: bool = True) -> tuple[float, torch.Tensor | None]:
    """Mean SSIM of two float32 H×W×C CPU images and, if ``need_grad``, its gradient w.r.t. ``prediction``."""
    h, w, c = prediction.shape
    sums, grad = _image_loss_sums(prediction, target, 1.0, 0.0, need_grad)
    return sums[0] / (c * (h - SSIM_WINDOW + 1) * (w - SSIM_WINDOW + 1)), grad


class _FusedSSIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value, grad = fused_ssim(prediction, target, need_grad=prediction.requires_grad)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return torch.tensor(value, dtype=prediction.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None


class _FusedImageLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prediction: torch.Tensor, target: torch.Tensor, ssim_weight: float, stats: dict) -> torch.Tensor:
        h, w, c = prediction.shape
        n = prediction.numel()
        n_map = c * (h - SSIM_WINDOW + 1) * (w - SSIM_WINDOW + 1)
        # L = mean|x − y| + λ(1 − mean S): coefficients of Σ|x − y| and of mean S in its gradient
        (s_sum, l1_sum, sq_sum), grad = _image_loss_sums(prediction, target, -ssim_weight, 1.0 / n,
                                                         prediction.requires_grad)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        ssim_value = s_sum / n_map
        stats.update(l1=l1_sum / n, ssim=ssim_value, mse=sq_sum / n)
        ctx.mse = sq_sum / n  # readable from the loss as loss.grad_fn.mse (see loss_mse)
        return torch.tensor(l1_sum / n + ssim_weight * (1.0 - ssim_value), dtype=prediction.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        # the training loss is summed with the regularisers, so the upstream gradient is exactly 1: hand the
        # saved gradient on as it is (a fresh image-sized product otherwise)
        if grad_out.numel() == 1 and float(grad_out) == 1.0:
            return grad, None, None, None
        return grad_out * grad, None, None, None


def _fused_applies(prediction: torch.Tensor, target: torch.Tensor) -> bool:
    return (prediction.device.type == "cpu" and prediction.dtype == torch.float32 and prediction.ndim == 3
            and prediction.shape == target.shape and min(prediction.shape[:2]) >= SSIM_WINDOW
            and not target.requires_grad and fused_available())


def fused_image_loss(prediction: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> tuple[torch.Tensor, float] | None:
    """L1 + ssim_weight·(1 − SSIM) of H×W×3 images and the MSE of the clamped prediction (for PSNR), in one
    C pass; None where the fused path does not apply (the caller then uses the PyTorch formula)."""
    if not _fused_applies(prediction, target):
        return None
    stats: dict = {}
    loss = _FusedImageLoss.apply(prediction, target, float(ssim_weight), stats)
    return loss, stats["mse"]


def loss_mse(loss: torch.Tensor) -> float | None:
    """The MSE the fused loss computed along with ``loss`` (None if ``loss`` did not come from it directly)."""
    value = getattr(loss.grad_fn, "mse", None)
    return float(value) if value is not None else None


def ssim_loss_term(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of H×W×3 images as in ``recon3d.metrics.ssim``, via the fused C pass where it applies."""
    if _fused_applies(prediction, target):
        return _FusedSSIM.apply(prediction, target)
    return ssim(prediction, target)


def mcmc_noise_applies(means: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether ``mcmc_noise_`` can run on these tensors (CPU, float32, contiguous) and the library is built."""
    tensors = (means, *others)
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
            and fused_available())


@torch.no_grad()
def mcmc_noise_(means: torch.Tensor, scales: torch.Tensor, quats: torch.Tensor, opacities: torch.Tensor,
                noise: torch.Tensor, factor: float) -> None:
    """means += factor·σ(−100(σ(opacity) − 0.005))·Σ·noise with Σ = R diag(exp(2·scale)) Rᵀ, in place."""
    n = means.shape[0]
    if not (scales.shape == (n, 3) and quats.shape == (n, 4) and opacities.shape == (n,) and noise.shape == (n, 3)):
        raise ValueError("mcmc_noise_: shapes must be N×3, N×3, N×4, N, N×3")
    _lib.recon3d_mcmc_noise(means.data_ptr(), scales.data_ptr(), quats.data_ptr(), opacities.data_ptr(),
                            noise.data_ptr(), float(factor), n, max(1, torch.get_num_threads()))


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _plain_f32(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def adam_applies(*tensors: torch.Tensor) -> bool:
    """Whether ``adam_step_`` can run on these tensors (CPU, float32, contiguous) and the library is built."""
    return all(_plain_f32(t) for t in tensors) and fused_available()


@torch.no_grad()
def adam_step_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
               exp_avg_sqs: list[torch.Tensor], lrs: list[float], step: int, beta1: float, beta2: float,
               eps: float, active: list[int] | None = None) -> None:
    """One Adam step (torch's fused formula) of every tensor, in place; tensor i is viewed as rows of its
    last dimensions, of which only the first ``active[i]`` columns are updated (all where None)."""
    nt = len(params)
    rows = (ctypes.c_long * nt)(*[p.shape[0] if p.ndim else 1 for p in params])
    widths = [p.numel() // max(r, 1) for p, r in zip(params, rows)]
    act = active if active is not None else widths
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    _lib.recon3d_adam(nt, _pointers(params), _pointers(grads), _pointers(exp_avgs), _pointers(exp_avg_sqs),
                      rows, (ctypes.c_int * nt)(*widths), (ctypes.c_int * nt)(*[min(a, w) for a, w in zip(act, widths)]),
                      (ctypes.c_float * nt)(*[lr / bc1 for lr in lrs]), 1.0 - beta1, beta2, 1.0 - beta2, bc2_sqrt, eps,
                      max(1, torch.get_num_threads()))


def all_finite(tensors: list[torch.Tensor]) -> bool | None:
    """Whether every value of ``tensors`` is finite, in one C pass; None where the C path does not apply."""
    tensors = [t.detach() for t in tensors if t.numel()]
    if not tensors:
        return True
    if not all(_plain_f32(t) for t in tensors) or not fused_available():
        return None
    sizes = (ctypes.c_long * len(tensors))(*[t.numel() for t in tensors])
    return bool(_lib.recon3d_all_finite(len(tensors), _pointers(tensors), sizes, max(1, torch.get_num_threads())))
