"""Dense PyTorch twins of the NeRF kernels (``cuda/include/recon3d/nerf.h``): the tests' oracle and the
PyTorch-only baseline of ``benchmarks/nerf.py``. Autograd differentiates them; nothing here is fused.

- ``hash_encode``: the multiresolution hash encoding (Müller et al. 2022): per level, the point's cell in a
  grid of ``res`` cells per side, the 8 corner rows of the level's table (dense where the grid's vertices fit
  the table, else the spatial hash), trilinear weights.
- ``composite``: front-to-back volume compositing of packed rays (samples of ray r at
  ``start[r]:start[r + 1]``), with the kernels' early stop (a sample reached with transmittance below
  ``TRANSMITTANCE_MIN`` is not composited).
- ``march``: the ray marcher's sample placement, as a plain Python loop per ray (small inputs only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

import torch

from ..constants import kernel_source_dir


def _nerf_constants() -> dict[str, float]:
    text = (kernel_source_dir() / "include" / "recon3d" / "nerf.h").read_text()
    found = re.findall(r"constexpr\s+(?:int|double|uint32_t)\s+k(\w+)\s*=\s*([-+0-9.eE]+)u?\s*;", text)
    return {name: float(value) for name, value in found}


_C = _nerf_constants()
HASH_FEATURES = int(_C["HashFeatures"])
TRANSMITTANCE_MIN = _C["NerfTransmittanceMin"]
HASH_PRIMES = (1, int(_C["HashPrime1"]), int(_C["HashPrime2"]))


@dataclass(frozen=True)
class HashGridSpec:
    """The hash grid's shape: ``levels`` resolutions from ``base_resolution`` to ``max_resolution`` (a
    geometric series), each with a table of at most ``2**log2_table`` rows of ``HASH_FEATURES`` features."""

    levels: int = 16
    log2_table: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048

    @cached_property
    def resolutions(self) -> tuple[int, ...]:
        """Cells per side of each level."""
        if self.levels == 1:
            return (self.base_resolution,)
        growth = math.exp((math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.levels - 1))
        return tuple(int(math.floor(self.base_resolution * growth**level)) for level in range(self.levels))

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Row offset of each level's table in the one parameter tensor (``levels + 1`` entries)."""
        out, total = [0], 0
        for res in self.resolutions:
            total += min(2**self.log2_table, (res + 1) ** 3)
            out.append(total)
        return tuple(out)

    @property
    def rows(self) -> int:
        """Rows of the whole table."""
        return self.offsets[-1]

    @property
    def output_dim(self) -> int:
        """Features per point."""
        return self.levels * HASH_FEATURES


def level_rows(cell: torch.Tensor, res: int, size: int) -> torch.Tensor:
    """Table rows of the grid vertices ``cell`` (…×3 int64) of a level: dense index or spatial hash."""
    x, y, z = cell.unbind(-1)
    side = res + 1
    if side**3 <= size:
        return x + side * (y + side * z)
    mask = 0xFFFFFFFF
    h = (x * HASH_PRIMES[0]) ^ ((y * HASH_PRIMES[1]) & mask) ^ ((z * HASH_PRIMES[2]) & mask)
    return (h & mask) % size


def hash_encode(positions: torch.Tensor, table: torch.Tensor, spec: HashGridSpec) -> torch.Tensor:
    """N×3 points in [0, 1]³ (clamped) -> N×(levels·F) features, differentiable in ``table`` (rows×F)."""
    out = []
    pos = positions.clamp(0, 1)
    for level, res in enumerate(spec.resolutions):
        start, size = spec.offsets[level], spec.offsets[level + 1] - spec.offsets[level]
        p = pos * res
        cell = p.floor().clamp(max=res - 1)
        frac = p - cell
        cell = cell.long()
        acc = torch.zeros(len(positions), HASH_FEATURES, dtype=table.dtype, device=table.device)
        for k in range(8):
            bits = [(k >> d) & 1 for d in range(3)]
            # the kernel's order of the product: 1·w_x·w_y·w_z
            w = torch.ones_like(frac[:, 0])
            for d in range(3):
                w = w * (frac[:, d] if bits[d] else 1 - frac[:, d])
            rows = level_rows(cell + torch.tensor(bits, device=positions.device), res, size) + start
            acc = acc + w[:, None] * table[rows]
        out.append(acc)
    return torch.cat(out, dim=-1)


def padded(start: torch.Tensor, values: torch.Tensor, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed per-sample ``values`` (S×…) as rays × max samples (×…), and the mask of real samples."""
    counts = start[1:] - start[:-1]
    width = int(counts.max()) if len(counts) else 0
    j = torch.arange(width, device=values.device)
    mask = j[None, :] < counts[:, None]
    index = (start[:-1, None] + j[None, :]).clamp(max=max(len(values) - 1, 0))
    out = values[index] if len(values) else values.new_zeros((len(counts), width, *values.shape[1:]))
    fill_value = torch.full_like(out, fill)
    shape = mask.shape + (1,) * (values.ndim - 1)
    return torch.where(mask.reshape(shape), out, fill_value), mask


def composite(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, dt: torch.Tensor,
              start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(colour R×3, opacity R, depth R, weights S) of packed rays; the kernels' early stop included."""
    s_pad, mask = padded(start, sigma * dt)
    decay = torch.exp(-s_pad)
    trans = torch.cumprod(torch.cat([torch.ones_like(decay[:, :1]), decay[:, :-1]], dim=1), dim=1)
    reached = (trans >= TRANSMITTANCE_MIN) & mask
    w_pad = torch.where(reached, trans * (1 - decay), torch.zeros_like(trans))
    rgb_pad, _ = padded(start, rgb)
    t_pad, _ = padded(start, t)
    color = (w_pad[..., None] * rgb_pad).sum(1)
    weights = w_pad[mask]
    return color, w_pad.sum(1), (w_pad * t_pad).sum(1), weights


def contract_unit(x: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """Training-frame points -> [0, 1]³ by the L∞ scene contraction about ``center`` (``radius``: the inner cube)."""
    y = (x - center) / radius
    m = y.abs().amax(-1, keepdim=True)
    scale = torch.where(m <= 1, torch.ones_like(m), (2 - 1 / m.clamp_min(1e-12)) / m.clamp_min(1e-12))
    return (y * scale + 2) * 0.25


def march_ray(origin: list[float], direction: list[float], near: float, far: float, *, box_min: list[float],
              box_max: list[float], contracted: bool, radius: float, grid: torch.Tensor, grid_res: int, dt_min: float,
              dt_max: float, cone: float, max_samples: int, shell_step: float = 0.0) -> list[tuple[float, float]]:
    """(t, dt) of one ray's samples as the kernels' marcher places them, in plain Python (float64)."""
    if contracted:
        t0, t1 = near, far
    else:
        t0, t1 = near, far
        for k in range(3):
            d = direction[k] if abs(direction[k]) > 1e-12 else (-1e-12 if direction[k] < 0 else 1e-12)
            ta, tb = (box_min[k] - origin[k]) / d, (box_max[k] - origin[k]) / d
            t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    out: list[tuple[float, float]] = []
    if t1 <= t0:
        return out
    center = torch.tensor(box_min, dtype=torch.float64)
    t = t0
    while t < t1 and len(out) < max_samples:
        dt = t * cone
        if contracted and shell_step > 0:  # beyond the inner cube: >= shell_step of the contracted coordinate
            s = max(abs(origin[k] + t * direction[k] - box_min[k]) for k in range(3)) / radius
            if s > 1:
                q = shell_step * s
                dinf = max(abs(v) for v in direction)
                dt = max(dt, shell_step * s * s * radius / ((1 - q) * dinf) if q < 1 else t1 - t)
        dt = min(max(dt, dt_min), dt_max)
        mid = t + 0.5 * dt
        x = torch.tensor([origin[k] + mid * direction[k] for k in range(3)], dtype=torch.float64)
        if contracted:
            u = contract_unit(x[None], center, radius)[0]
        else:
            u = (x - torch.tensor(box_min, dtype=torch.float64)) / (torch.tensor(box_max, dtype=torch.float64)
                                                                      - torch.tensor(box_min, dtype=torch.float64))
        if bool(((u >= 0) & (u <= 1)).all()):
            cell = (u * grid_res).long().clamp(0, grid_res - 1)
            if grid[int(cell[0] + grid_res * (cell[1] + grid_res * cell[2]))]:
                out.append((mid, dt))
        t += dt
    return out
