"""The NeRF field's two MLPs fused into one native pass (``nerf.mlp=fused``): ``cuda/src/nerf_mlp_cpu.cpp`` (and
``nerf_mlp_cuda.cu`` on a GPU) over the shared maths ``cuda/include/recon3d/nerf_mlp.h``, through ctypes.

A block of 16 samples (their hash features and view directions) goes through the SH basis, the density MLP and
the colour MLP without its activations leaving the
core (tiny-cuda-nn's "fully fused MLP" idea, on the CPU's vector lanes). The CPU backward runs the forward
again per chunk of 128 samples (cheaper than storing 208 activations per sample and reading them back), backs
the gradient through every layer and sums the weight gradients while the chunk is in cache. Float32 for training,
float64 for the tests' checks; same arithmetic as ``torch.nn.Linear`` + ReLU up to the summation order.

Only the default shape is fused (16 levels × 2 features, hidden 64, 15 geometry features, SH degree 3);
``unsupported(field)`` says why another field is not, and the field then keeps its PyTorch MLPs.
Built like ``kernels.py`` (``_compile_cached``: same flags, cache and lock); the library's name also carries a
hash of ``nerf_mlp.h``, which ``kernels._HEADERS`` does not list.
"""

from __future__ import annotations

import ctypes
import hashlib

import torch

from ..constants import kernel_source_dir
from ..errors import BuildError
from ..sh import sh_basis
from . import kernels

IN, HIDDEN, GEO, SH, OUT = 32, 64, 16, 16, 3
_HEADER = "include/recon3d/nerf_mlp.h"
_SOURCE = "src/nerf_mlp_cpu.cpp"
_CUDA_SOURCE = "src/nerf_mlp_cuda.cu"


def _stem(name: str) -> str:
    digest = hashlib.sha256((kernel_source_dir() / _HEADER).read_bytes()).hexdigest()[:8]
    return f"{name}_{digest}"


def _build() -> ctypes.CDLL:
    from .. import native

    lib = kernels._compile_cached(native.find_compiler("c++"), kernels._flags(), _SOURCE, _stem("recon3d_nerf_mlp"))
    handle = kernels.open_library(lib)
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for dtype in ("f32", "f64"):
        getattr(handle, f"r3d_nerf_mlp_density_{dtype}").argtypes = [i64, p, p, p, i32]
        getattr(handle, f"r3d_nerf_mlp_forward_{dtype}").argtypes = [i64] + [p] * 5 + [i32]
        getattr(handle, f"r3d_nerf_mlp_backward_fused_{dtype}").argtypes = [i64] + [p] * 7 + [i32]
    handle.r3d_nerf_mlp_params.restype = i32
    if handle.r3d_nerf_mlp_params() != PARAMS:
        raise BuildError(f"{lib}: the fused MLP's parameter layout differs from fused_mlp.py's")
    return handle


def build_cuda_library(arch: str | None = None):
    """Compile (once; cached by content) the CUDA driver into a shared library; its path. Needs nvcc, not a GPU."""
    nvcc = kernels.find_nvcc()
    if nvcc is None:
        raise BuildError("cannot build the fused MLP's CUDA driver: nvcc not found (set CUDA_HOME)")
    return kernels._compile_cached(nvcc, kernels.cuda_flags(arch or kernels.cuda_arch()), _CUDA_SOURCE,
                                   _stem("recon3d_nerf_mlp_cuda"))


CUDA_LAUNCHERS = ("density_f32", "forward_f32", "backward_f32")


def declare_cuda_launchers(handle):
    """Set the argument and return types of the CUDA driver's ``extern "C"`` launchers on ``handle``."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    handle.r3d_nerf_mlp_cuda_density_f32.argtypes = [i64, p, p, p, p]
    handle.r3d_nerf_mlp_cuda_forward_f32.argtypes = [i64] + [p] * 9 + [p]
    handle.r3d_nerf_mlp_cuda_backward_f32.argtypes = [i64] + [p] * 11 + [p]
    for name in CUDA_LAUNCHERS:
        getattr(handle, f"r3d_nerf_mlp_cuda_{name}").restype = ctypes.c_int
    return handle


_cpu = kernels.LazyLibrary(_build)
_cuda = kernels.LazyLibrary(lambda: kernels.open_library(build_cuda_library(), declare_cuda_launchers),
                            torch.cuda.is_available)


def available() -> bool:
    """Whether the CPU build is there (building it on first call)."""
    return _cpu.available()


def cuda_available() -> bool:
    """Whether the CUDA driver is there (building it on first call); False without a GPU or nvcc."""
    return _cuda.available()


def build_error() -> str | None:
    """Why the CPU (or CUDA) build is unavailable (None if it is available or was not tried)."""
    return _cpu.error or _cuda.error


# the packed parameter buffer: (W, b) of density layers 1-2 then colour layers 1-3 (nn.Linear's layout)
SHAPES = ((HIDDEN, IN), (GEO, HIDDEN), (HIDDEN, GEO - 1 + SH), (HIDDEN, HIDDEN), (OUT, HIDDEN))
PARAMS = sum(o * i + o for o, i in SHAPES)


def layers(field) -> list[torch.nn.Linear]:
    """The field's five linear layers in the packed order."""
    return [field.density_mlp[0], field.density_mlp[2], field.color_mlp[0], field.color_mlp[2], field.color_mlp[4]]


def unsupported(field) -> str | None:
    """Why ``field``'s MLPs cannot be fused (None when they can)."""
    try:
        shapes = tuple(tuple(layer.weight.shape) for layer in layers(field))
    except (AttributeError, IndexError, TypeError):
        return "the field's MLPs are not the default density/colour pair"
    if shapes != SHAPES:
        return (f"the fused MLP supports the default shape only (16 levels × 2 features, hidden 64, SH degree 3), "
                f"not layers {shapes}")
    return None


def _usable(*tensors: torch.Tensor) -> bool:
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        return False
    if device.type == "cpu":
        return tensors[0].dtype in (torch.float32, torch.float64) and available()
    if device.type == "cuda":
        return tensors[0].dtype == torch.float32 and cuda_available()
    return False


def _pack(params: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).to(dtype).contiguous()


def _sfx(dtype: torch.dtype) -> str:
    return "f32" if dtype == torch.float32 else "f64"


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise BuildError(f"the fused MLP's CUDA kernel {what} failed (cudaError {rc})")


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _forward(x: torch.Tensor, dirs: torch.Tensor, packed: torch.Tensor, save: bool):
    n = len(x)
    kw = {"dtype": x.dtype, "device": x.device}
    h0, logits = torch.empty(n, **kw), torch.empty(n, OUT, **kw)
    saved = []
    if x.device.type == "cuda":
        saved = [torch.empty(rows, n, **kw) for rows in (HIDDEN, GEO, HIDDEN, HIDDEN)] if save else []
        ptrs = [s.data_ptr() for s in saved] if save else [None] * 4
        _check(_cuda.lib.r3d_nerf_mlp_cuda_forward_f32(n, packed.data_ptr(), x.data_ptr(), dirs.data_ptr(),
                                                       h0.data_ptr(), logits.data_ptr(), *ptrs, _stream(x)), "forward")
    else:
        getattr(_cpu.lib, f"r3d_nerf_mlp_forward_{_sfx(x.dtype)}")(n, packed.data_ptr(), x.data_ptr(), dirs.data_ptr(),
                                                               h0.data_ptr(), logits.data_ptr(), kernels._threads())
    return h0, logits, saved


class _FusedMlp(torch.autograd.Function):
    """(raw σ, colour logits) from hash features and unit view directions (the SH basis is made in the kernel;
    the directions get no gradient). CPU: the forward keeps nothing but its inputs; the backward runs the
    forward again chunk by chunk and sums the weight gradients in cache (``backward_fused``). CUDA: the forward
    keeps the activations (feature major), the backward writes each layer's output gradient and the weight
    gradients are cuBLAS GEMMs."""

    @staticmethod
    def forward(ctx, features, dirs, *params):
        dtype = features.dtype
        x = features.detach().contiguous()
        d = dirs.detach().to(dtype).contiguous()
        packed = _pack(params, dtype)
        h0, logits, saved = _forward(x, d, packed, save=x.device.type == "cuda")
        ctx.save_for_backward(x, d, packed, *saved)
        return h0, logits

    @staticmethod
    def backward(ctx, g_h0, g_logits):
        x, d, packed, *saved = ctx.saved_tensors
        n = len(x)
        kw = {"dtype": x.dtype, "device": x.device}
        g_h0 = (g_h0 if g_h0 is not None else torch.zeros(n, **kw)).to(x.dtype).contiguous()
        g_logits = (g_logits if g_logits is not None else torch.zeros(n, OUT, **kw)).to(x.dtype).contiguous()
        g_x = torch.empty(n, IN, **kw)
        if x.device.type == "cuda":
            grads = _cuda_backward(x, d, packed, saved, g_h0, g_logits, g_x)
        else:
            g_packed = torch.empty(PARAMS, dtype=x.dtype)
            getattr(_cpu.lib, f"r3d_nerf_mlp_backward_fused_{_sfx(x.dtype)}")(
                n, packed.data_ptr(), x.data_ptr(), d.data_ptr(), g_h0.data_ptr(), g_logits.data_ptr(),
                g_x.data_ptr(), g_packed.data_ptr(), kernels._threads())
            grads = _unpack(g_packed)
        return (g_x if ctx.needs_input_grad[0] else None, None,
                *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[2:])))


def _unpack(packed: torch.Tensor) -> list[torch.Tensor]:
    """The packed buffer's (W, b) views in order."""
    sizes = [v for o, i in SHAPES for v in (o * i, o)]
    parts = packed.split(sizes)
    return [p.view(o, i) if k % 2 == 0 else p for k, (p, (o, i)) in
            enumerate(zip(parts, [s for s in SHAPES for _ in range(2)]))]


def _cuda_backward(x, dirs, packed, saved, g_h0, g_logits, g_x):
    """The CUDA driver's backward: per-layer output gradients, then the weight gradients as GEMMs over N."""
    h1t, dt, c1t, c2t = saved
    n = len(x)
    g_c2t, g_c1t, g_dt, g_h1t = (torch.empty(rows, n, dtype=x.dtype, device=x.device)
                                 for rows in (HIDDEN, HIDDEN, GEO, HIDDEN))
    _check(_cuda.lib.r3d_nerf_mlp_cuda_backward_f32(
        n, packed.data_ptr(), h1t.data_ptr(), c1t.data_ptr(), c2t.data_ptr(), g_h0.data_ptr(), g_logits.data_ptr(),
        g_c2t.data_ptr(), g_c1t.data_ptr(), g_dt.data_ptr(), g_h1t.data_ptr(), g_x.data_ptr(), _stream(x)), "backward")
    sh = sh_basis(dirs, 3)
    return [torch.mm(g_h1t, x), g_h1t.sum(1),
            torch.mm(g_dt, h1t.t()), g_dt.sum(1),
            torch.cat([torch.mm(g_c1t, dt[1:].t()), torch.mm(g_c1t, sh)], 1), g_c1t.sum(1),
            torch.mm(g_c2t, c1t.t()), g_c2t.sum(1),
            torch.mm(g_logits.t(), c2t.t()), g_logits.sum(0)]


def _params(field) -> tuple[torch.Tensor, ...]:
    return tuple(t for layer in layers(field) for t in (layer.weight, layer.bias))


def field_mlp(field, features: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw σ N, colour logits N×3) of ``field``'s density + colour MLPs from hash ``features`` (N×32) and unit
    view directions (N×3; their degree-3 SH basis feeds the colour MLP), fused; PyTorch's layers where the
    native build cannot take the tensors or the directions need a gradient."""
    params = _params(field)
    if unsupported(field) is not None or dirs.requires_grad or not _usable(features, dirs, *params):
        return _torch_mlp(field, features, dirs)
    needs_graph = torch.is_grad_enabled() and (features.requires_grad or any(p.requires_grad for p in params))
    if needs_graph:
        return _FusedMlp.apply(features, dirs, *params)
    x = features.detach().contiguous()
    h0, logits, _ = _forward(x, dirs.detach().to(x.dtype).contiguous(), _pack(params, x.dtype), save=False)
    return h0, logits


def density_raw(field, features: torch.Tensor) -> torch.Tensor:
    """Raw σ (N, before the activation) of the density MLP alone, without a graph (occupancy updates, the
    renderer's early-stop pass); PyTorch's layers where a graph is needed or the build cannot take the tensors."""
    if unsupported(field) is not None:
        return field.density_mlp(features)[:, 0]
    params = _params(field)[:4]
    if (torch.is_grad_enabled() and (features.requires_grad or any(p.requires_grad for p in params))) \
            or not _usable(features, *params):
        return field.density_mlp(features)[:, 0]
    x = features.detach().contiguous()
    packed = torch.cat([_pack(params, x.dtype), torch.zeros(PARAMS - sum(p.numel() for p in params), dtype=x.dtype,
                                                            device=x.device)])
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    if x.device.type == "cuda":
        _check(_cuda.lib.r3d_nerf_mlp_cuda_density_f32(len(x), packed.data_ptr(), x.data_ptr(), out.data_ptr(),
                                                       _stream(x)), "density")
    else:
        getattr(_cpu.lib, f"r3d_nerf_mlp_density_{_sfx(x.dtype)}")(len(x), packed.data_ptr(), x.data_ptr(),
                                                               out.data_ptr(), kernels._threads())
    return out


def _torch_mlp(field, features: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = field.density_mlp(features)
    return h[:, 0], field.color_mlp(torch.cat([h[:, 1:], sh_basis(dirs, field.dir_degree).to(h.dtype)], dim=-1))
