"""The radiance field: a hash-grid encoding, a density MLP, a colour MLP with the view direction, the
occupancy grid that lets the ray marcher skip empty space, and the renderer of rays and whole cameras.

Geometry of the field (``FieldBounds``): the field lives in the unit cube of the hash grid. A bounded
scene (RGBA object data) maps an axis-aligned box of the training frame onto it; an unbounded one (photos,
video) uses the L∞ scene contraction about the cameras' centre (inside the cube of half-size ``radius`` the
map is linear, outside it squeezes all of space into the cube's outer shell), so the far background has
somewhere to live without a separate model. Samples step at constant length in a bounded scene and at a
length growing with distance (``cone``) in an unbounded one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..cameras import Cameras
from ..sh import sh_basis
from . import kernels
from .reference import HashGridSpec


class _TruncExp(torch.autograd.Function):
    """exp with its gradient's argument clamped at 15 (instant-ngp's density activation): a large density
    early on does not blow the step up."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) with a clamped gradient."""
    return _TruncExp.apply(x)


@dataclass
class FieldBounds:
    """Where the field lives in the training frame and how the marcher steps through it."""

    contracted: bool
    center: torch.Tensor  # 3: box centre, or the contraction's centre
    half: float  # box half-size, or the contraction's inner radius
    near: float  # rays start this far from the camera
    far: float  # and end here (unbounded scenes; a box clips rays itself)
    dt_min: float
    dt_max: float
    cone: float
    shell_step: float = 0.0  # contracted: a step beyond the inner cube moves the contracted L∞ coordinate >= this

    def params(self, grid_res: int, max_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The marcher's float and int parameter arrays."""
        c = self.center.float().cpu()
        lo = c - self.half if not self.contracted else c
        hi = c + self.half if not self.contracted else c
        f = torch.tensor([*lo.tolist(), *hi.tolist(), self.half, self.dt_min, self.dt_max, self.cone,
                          self.shell_step if self.contracted else 0.0], dtype=torch.float32)
        i = torch.tensor([int(self.contracted), grid_res, max_samples], dtype=torch.int32)
        return f, i

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Training-frame points -> the field's unit cube (may fall outside for a box)."""
        from .reference import contract_unit

        c = self.center.to(x)
        if self.contracted:
            return contract_unit(x, c, self.half)
        return (x - (c - self.half)) / (2 * self.half)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Unit-cube points -> training frame (the inverse of ``to_unit``; the shell maps to far points)."""
        c = self.center.to(u)
        if not self.contracted:
            return u * (2 * self.half) + (c - self.half)
        y = u * 4 - 2
        m = y.abs().amax(-1, keepdim=True).clamp_min(1e-12)
        outer = m > 1
        inv = torch.where(outer, 1 / (2 - m).clamp_min(1e-6) / m, torch.ones_like(m))  # |x|∞ = 1/(2 − m)
        return c + y * inv * self.half

    def state(self) -> dict:
        """Checkpointable form."""
        return {"contracted": self.contracted, "center": self.center.clone(), "half": self.half, "near": self.near,
                "far": self.far, "dt_min": self.dt_min, "dt_max": self.dt_max, "cone": self.cone,
                "shell_step": self.shell_step}

    @classmethod
    def from_state(cls, s: dict) -> FieldBounds:
        """Inverse of ``state``."""
        return cls(bool(s["contracted"]), s["center"].float(), float(s["half"]), float(s["near"]), float(s["far"]),
                   float(s["dt_min"]), float(s["dt_max"]), float(s["cone"]),
                   float(s.get("shell_step", 0.0)))  # runs saved before the shell step: off, as they trained


def bounds_for(cameras: Cameras, *, bounded: bool, box_scale: float = 0.4, steps_across: int = 1024,
               shell_step: float = 1.0 / 128) -> FieldBounds:
    """The field's bounds for training-frame ``cameras``: a box about their focus point (object data, half-size
    ``box_scale`` × the median camera distance), or a contraction about their centre (photos)."""
    from ..train.frame import focus_point

    centers = cameras.centers().float().cpu()
    if bounded:
        focus = focus_point(cameras.to("cpu")).float()
        half = box_scale * float((centers - focus).norm(dim=-1).median())
        step = 2 * half * math.sqrt(3) / steps_across
        return FieldBounds(False, focus, half, 0.0, 1e10, step, step, 0.0)
    center = centers.mean(0)
    radius = max(float((centers - center).norm(dim=-1).max()), 1e-3)
    step = 2 * radius * math.sqrt(3) / steps_across
    return FieldBounds(True, center, radius, 0.02 * radius, 1e3 * radius, step, 1e10, 1.0 / 256, shell_step)


class NerfField(nn.Module):
    """Hash grid (``spec``) -> density MLP (σ and geometry features) -> colour MLP (+ SH of the view direction)."""

    kind = "ours"  # the hash encoding's implementation (``nerf.field``; tcnn_field.TcnnField is "tcnn")
    # the MLPs' implementation (``nerf.mlp``): fused (fused_mlp.py: one native pass), torch (PyTorch's layers), or
    # auto: fused on the CPU, torch on a GPU (the fused CUDA driver compiles but has not run on a GPU yet)
    mlp = "auto"

    def _fused(self, x: torch.Tensor) -> bool:
        return self.mlp == "fused" or (self.mlp == "auto" and x.device.type == "cpu")

    def __init__(self, spec: HashGridSpec, hidden: int = 64, geo_features: int = 15, dir_degree: int = 3) -> None:
        super().__init__()
        self.spec = spec
        self.dir_degree = dir_degree
        # tiny uniform init (instant-ngp): every cell starts near zero, the MLP's bias sets the start density
        self.table = nn.Parameter(torch.empty(spec.rows, 2).uniform_(-1e-4, 1e-4))
        self.density_mlp = nn.Sequential(nn.Linear(spec.output_dim, hidden), nn.ReLU(),
                                         nn.Linear(hidden, 1 + geo_features))
        dirs = (dir_degree + 1) ** 2
        self.color_mlp = nn.Sequential(nn.Linear(geo_features + dirs, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                       nn.ReLU(), nn.Linear(hidden, 3))

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        """Unit-cube points -> hash features (our kernels: the CPU build, or the CUDA build on a GPU)."""
        return kernels.hash_encode(u, self.table, self.spec)

    def encode_given(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``features`` (= ``encode(u)`` computed without a graph) with the encoding's gradient into the table."""
        return kernels.hash_encode_given(u, self.table, self.spec, features)

    def density(self, u: torch.Tensor) -> torch.Tensor:
        """σ at unit-cube points (N)."""
        return trunc_exp(self.raw_density(self.encode(u)) - 1.0)

    def raw_density(self, features: torch.Tensor) -> torch.Tensor:
        """The density MLP's σ output before its activation (N), from hash features."""
        if self._fused(features):
            from .fused_mlp import density_raw

            return density_raw(self, features)
        return self.density_mlp(features)[:, 0]

    def forward(self, u: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ N, colour N×3) at unit-cube points seen along unit directions."""
        return self.from_features(self.encode(u), dirs)

    def from_features(self, features: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ N, colour N×3) from hash features (``encode``) seen along unit directions."""
        if self._fused(features):
            from .fused_mlp import field_mlp

            h0, logits = field_mlp(self, features, dirs)
            return trunc_exp(h0 - 1.0), torch.sigmoid(logits)
        h = self.density_mlp(features)
        sigma = trunc_exp(h[:, 0] - 1.0)
        color = torch.sigmoid(self.color_mlp(torch.cat([h[:, 1:], sh_basis(dirs, self.dir_degree)], dim=-1)))
        return sigma, color


class OccupancyGrid:
    """res³ cells of the unit cube: a running maximum of the density seen in each and whether it is occupied."""

    def __init__(self, res: int = 64, decay: float = 0.95) -> None:
        self.res = res
        self.decay = decay
        # every cell occupied until the first update measures them; that update's densities then replace the
        # zeros outright (a large start value would take the 0.95 decay ~100 updates to forget, and the grid
        # would skip nothing for most of a short run)
        self.density = torch.zeros(res**3)
        self.mask = torch.ones(res**3, dtype=torch.uint8)

    def cell_points(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One jittered point per cell (x fastest), in the unit cube."""
        r = self.res
        idx = torch.arange(r**3)
        ijk = torch.stack([idx % r, (idx // r) % r, idx // (r * r)], -1).float()
        return (ijk + torch.rand(r**3, 3, generator=generator)) / r

    @torch.no_grad()
    def update(self, field: NerfField, threshold: float | torch.Tensor, generator: torch.Generator | None = None,
               chunk: int = 1 << 16) -> float:
        """Re-measure every cell's density (max with the decayed old value) and re-threshold (``threshold``: one
        density, or one per cell); the occupied share."""
        pts = self.cell_points(generator)
        device = field.table.device
        new = torch.cat([field.density(pts[i:i + chunk].to(device)).float().cpu() for i in range(0, len(pts), chunk)])
        self.density = torch.maximum(self.density * self.decay, new)
        # never stricter than the mean density (instant-ngp): early on most of the box is haze
        cut = torch.as_tensor(threshold, dtype=torch.float32).clamp(max=float(self.density.mean()))
        self.mask = (self.density > cut).to(torch.uint8).to(device)  # where the marcher runs (CPU or GPU)
        return float(self.mask.float().mean())

    def thresholds(self, bounds: FieldBounds, stop: float = 0.01) -> float | torch.Tensor:
        """The density below which a cell is empty: where one marching step through it stops less than ``stop``
        of the light. Constant steps (a box): one number. Steps growing with distance (a contracted scene): per
        cell, with the step at the cell centre's distance from the contraction's centre (the far shell's long
        steps make a thin density there opaque; one threshold from the shortest step would drop it)."""
        if not bounds.contracted or bounds.cone <= 0:
            return stop / bounds.dt_min
        r = self.res
        idx = torch.arange(r**3)
        ijk = torch.stack([idx % r, (idx // r) % r, idx // (r * r)], -1).float()
        offset = bounds.from_unit((ijk + 0.5) / r) - bounds.center.float()
        dt = offset.norm(dim=-1) * bounds.cone
        s = offset.abs().amax(-1) / bounds.half  # the marcher's shell step (march_step in nerf.h)
        q = bounds.shell_step * s
        shell = torch.where(q < 1, bounds.shell_step * s * s * bounds.half / (1 - q).clamp_min(1e-6),
                            torch.full_like(s, bounds.dt_max))
        dt = torch.where(s > 1, torch.maximum(dt, shell), dt)
        dt = dt.clamp(bounds.dt_min, bounds.dt_max)
        return stop / dt

    def to(self, device: torch.device | str) -> OccupancyGrid:
        """The mask on ``device`` (the marcher reads it there); the running densities stay on the CPU."""
        self.mask = self.mask.to(device)
        return self

    def state(self) -> dict:
        """Checkpointable form."""
        return {"res": self.res, "decay": self.decay, "density": self.density.cpu().clone(),
                "mask": self.mask.cpu().clone()}

    @classmethod
    def from_state(cls, s: dict) -> OccupancyGrid:
        """Inverse of ``state``."""
        grid = cls(int(s["res"]), float(s["decay"]))
        grid.density, grid.mask = s["density"].float(), s["mask"].to(torch.uint8)
        return grid


def camera_rays(cameras: Cameras, index: int, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions (training frame) of pixel (x, y) integer coordinates of one camera."""
    c2w = torch.linalg.inv(cameras.world_to_camera[index].double()).float()
    x = (pixels[:, 0].float() + 0.5 - float(cameras.cx[index])) / float(cameras.fx[index])
    y = (pixels[:, 1].float() + 0.5 - float(cameras.cy[index])) / float(cameras.fy[index])
    d = torch.stack([x, y, torch.ones_like(x)], -1) @ c2w[:3, :3].T
    d = d / d.norm(dim=-1, keepdim=True)
    return c2w[:3, 3].expand_as(d).contiguous(), d.contiguous()


def rays_of_pixels(cameras: Cameras, cam_index: torch.Tensor, px: torch.Tensor,
                   py: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of pixels of many cameras at once: ``cam_index``, ``px``, ``py`` (R each)."""
    c2w = torch.linalg.inv(cameras.world_to_camera.double()).float()[cam_index]
    x = (px.float() + 0.5 - cameras.cx.float()[cam_index]) / cameras.fx.float()[cam_index]
    y = (py.float() + 0.5 - cameras.cy.float()[cam_index]) / cameras.fy.float()[cam_index]
    d = (c2w[:, :3, :3] @ torch.stack([x, y, torch.ones_like(x)], -1)[..., None])[..., 0]
    d = d / d.norm(dim=-1, keepdim=True)
    return c2w[:, :3, 3].contiguous(), d.contiguous()


@dataclass
class RayBatchOutput:
    """Per-ray results of ``render_rays`` (colour over black, opacity, depth) and the sample count."""

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    samples: int


def march_samples(bounds: FieldBounds, grid: OccupancyGrid, origins: torch.Tensor, dirs: torch.Tensor,
                  max_samples: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The marcher's samples of each ray (start R+1, t, dt, unit-cube points)."""
    fparams, iparams = bounds.params(grid.res, max_samples)
    near = torch.full((len(origins),), bounds.near, device=origins.device)
    far = torch.full((len(origins),), bounds.far, device=origins.device)
    return kernels.march(origins, dirs, near, far, grid.mask, fparams, iparams)


def _reached(sigma: torch.Tensor, dt: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Samples a ray reaches before its transmittance falls below the kernels' cut (the early stop)."""
    from .reference import TRANSMITTANCE_MIN

    s = (sigma.double() * dt.double())
    cs = torch.cumsum(s, 0)
    ray = torch.repeat_interleave(torch.arange(len(start) - 1, device=s.device), start[1:] - start[:-1])
    before = torch.cat([torch.zeros(1, dtype=s.dtype, device=s.device), cs])[start[:-1]][ray]
    excl = cs - s - before
    return excl <= -math.log(TRANSMITTANCE_MIN) + 1e-6


def render_rays(field: NerfField, bounds: FieldBounds, grid: OccupancyGrid, origins: torch.Tensor,
                dirs: torch.Tensor, *, max_samples: int = 1024, early_stop: bool = True) -> RayBatchOutput:
    """Render rays (training frame): march, drop the samples behind an opaque front (densities first, no
    gradient), then the field with gradients on the rest and compositing. Colour is over black.

    Everything runs on the field's device (the rays move there): CPU kernels, or on a GPU the CUDA kernels."""
    device = field.table.device
    origins, dirs = origins.to(device), dirs.to(device)
    start, t, dt, u = march_samples(bounds, grid, origins, dirs, max_samples)
    ray = torch.repeat_interleave(torch.arange(len(origins), device=device), start[1:] - start[:-1])
    features = None
    if early_stop and len(t):
        with torch.no_grad():
            # the hash features of every sample, kept for the pass with gradients (the encoding's forward is
            # then not run twice; the kept rows are the same numbers it would compute)
            all_features = field.encode(u)
            sigma_all = trunc_exp(field.raw_density(all_features) - 1.0)
            keep = _reached(sigma_all, dt, start)
        if not bool(keep.all()):
            t, dt, u, ray = t[keep], dt[keep], u[keep], ray[keep]
            all_features = all_features[keep]
            counts = torch.bincount(ray, minlength=len(origins))
            start = torch.zeros(len(origins) + 1, dtype=torch.int64, device=device)
            torch.cumsum(counts, 0, out=start[1:])
        features = field.encode_given(u, all_features)
    if features is None:
        features = field.encode(u)
    sigma, color = field.from_features(features, dirs[ray])
    rgb, opacity, depth, _ = kernels.composite(sigma, color, t, dt, start)
    return RayBatchOutput(rgb, opacity, depth, len(t))


@torch.no_grad()
def render_camera(field: NerfField, bounds: FieldBounds, grid: OccupancyGrid, cameras: Cameras, index: int, *,
                  chunk: int = 1 << 14) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One camera's image over black (H×W×3), opacity (H×W×1) and ray depth (H×W×1), training frame."""
    w, h = int(cameras.width[index]), int(cameras.height[index])
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    origins, dirs = camera_rays(cameras.to("cpu"), index, pixels)
    rgb, alpha, depth = [], [], []
    for i in range(0, len(pixels), chunk):
        out = render_rays(field, bounds, grid, origins[i:i + chunk], dirs[i:i + chunk])
        rgb.append(out.rgb.float().cpu())
        alpha.append(out.opacity.float().cpu())
        depth.append(out.depth.float().cpu())
    return (torch.cat(rgb).reshape(h, w, 3), torch.cat(alpha).reshape(h, w, 1), torch.cat(depth).reshape(h, w, 1))
