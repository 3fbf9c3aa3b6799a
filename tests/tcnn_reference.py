"""A dense PyTorch stand-in for tiny-cuda-nn's ``HashGrid`` encoding, written from its documented conventions
(``recon3d/nerf/tcnn_field.py`` lists them): level scale ``base·b^l − 1``, lattice coordinate ``x·scale + 0.5``,
``ceil(scale) + 1`` vertices per side, dense index while the vertices fit the level's table else the xor-prime
hash, tables of ``min(next8(vertices³), 2^log2)`` rows in one flat ``params`` vector. It lets the CPU tests run
``--field tcnn``'s code paths and check the coordinate mapping that the ``gpu`` test uses against the real tcnn."""

from __future__ import annotations

import math

import torch
from torch import nn

from recon3d.nerf.tcnn_field import tcnn_level_layout

PRIMES = (1, 2654435761, 805459861)


class StandInEncoding(nn.Module):
    """``tinycudann.Encoding(3, {"otype": "HashGrid", ...}, dtype=torch.float32)`` in plain PyTorch (CPU)."""

    def __init__(self, n_input_dims: int, config: dict, seed: int = 1337, dtype=None) -> None:
        super().__init__()
        assert n_input_dims == 3 and config["otype"] == "HashGrid" and config["n_features_per_level"] == 2
        self.levels, self.log2 = int(config["n_levels"]), int(config["log2_hashmap_size"])
        self.scales, self.sides, self.offsets = tcnn_level_layout(self.levels, self.log2, int(config["base_resolution"]),
                                                                  float(config["per_level_scale"]))
        g = torch.Generator().manual_seed(seed)
        self.params = nn.Parameter(torch.empty(self.offsets[-1] * 2).uniform_(-1e-4, 1e-4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.params.view(-1, 2)
        out = []
        for level in range(self.levels):
            scale, side = self.scales[level], self.sides[level]
            size = self.offsets[level + 1] - self.offsets[level]
            p = x.float() * scale + 0.5
            cell = p.floor()
            frac = p - cell
            cell = cell.long()
            acc = torch.zeros(len(x), 2, dtype=table.dtype)
            for k in range(8):
                corner = cell + torch.tensor([(k >> d) & 1 for d in range(3)])
                w = torch.ones(len(x))
                for d in range(3):
                    w = w * (frac[:, d] if (k >> d) & 1 else 1 - frac[:, d])
                if side**3 <= size:
                    idx = corner[:, 0] + side * (corner[:, 1] + side * corner[:, 2])
                else:
                    h = torch.zeros(len(x), dtype=torch.int64)
                    for d in range(3):
                        h = h ^ ((corner[:, d] * PRIMES[d]) & 0xFFFFFFFF)
                    idx = h
                acc = acc + w[:, None] * table[self.offsets[level] + idx % size]
            out.append(acc)
        return torch.cat(out, -1)


def level_scales(levels: int, base: int, growth: float) -> list[float]:
    """The scales tcnn_level_layout gives (for tests that want them alone)."""
    return [2.0 ** (level * math.log2(growth)) * base - 1 for level in range(levels)]
