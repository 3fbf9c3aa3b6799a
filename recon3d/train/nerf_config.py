"""The NeRF method's settings: the ``nerf`` section of the config tree (``--set nerf.log2_table=18``).

They live in ``train/`` because ``TrainConfig`` holds them and ``recon3d.nerf`` builds on ``recon3d.train``
(a ``train -> nerf`` import would close a package cycle)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NerfConfig:
    """Hash grid, MLPs, occupancy grid, ray batches and the optimiser of ``--method nerf``."""

    field: str = "ours"  # ours (our kernels, CPU or CUDA) | tcnn (tiny-cuda-nn's hash encoding, GPU, --field tcnn)
    # auto (fused on the CPU, torch on a GPU) | fused (one native pass through both MLPs: nerf/fused_mlp.py) |
    # torch (PyTorch's layers). A/B on lego, 1 thread, 120 CPU s each: fused 510 steps 23.52 dB, torch 385 / 22.41
    mlp: str = "auto"
    levels: int = 16  # hash-grid levels
    log2_table: int = 19  # rows per level's table: 2^19 (instant-ngp's default)
    base_resolution: int = 16  # cells per side of the coarsest level
    max_resolution: int = 2048  # and of the finest (relative to the field's unit cube)
    hidden: int = 64  # width of both MLPs
    dir_degree: int = 3  # spherical-harmonic degree of the view direction fed to the colour MLP (0-4)
    samples_per_step: int = 1 << 16  # samples a step aims at; the ray count adapts to reach it
    initial_rays: int = 256  # rays of the first step
    max_samples: int = 1024  # per ray
    steps_across: int = 1024  # marching steps across the box (bounded) or the inner cube (contracted)
    shell_step: float = 1.0 / 128  # contracted scenes: a step beyond the inner cube moves the contracted L∞
    # coordinate (1 at the inner cube, 2 at infinity) by at least this (0: steps of t/256 out to 1000 radii)
    box_scale: float = 0.4  # object data: the box's half-size as a fraction of the median camera distance
    grid_res: int = 64  # occupancy grid cells per side
    grid_every: int = 16  # steps between occupancy-grid updates
    grid_warmup: int = 32  # steps before the grid starts to prune (every cell occupied until then)
    grid_cell_steps: bool = False  # contracted scenes: each cell's emptiness threshold from the marching step there
    lr: float = 1e-2  # Adam, table and MLPs
    lr_final: float = 1e-3  # exponential decay to this over the run
    weight_decay: float = 1e-6  # on the MLP weights
    distill_gaussians: int = 200_000  # export --format ply: Gaussians seeded on the surface
    distill_steps: int = 500  # and splat fine-tune steps against renders of the field

    def problems(self) -> list[str]:
        """Settings out of range, as messages."""
        out = []
        if self.field not in ("ours", "tcnn"):
            out.append(f"nerf.field must be ours or tcnn, not {self.field!r}")
        if self.mlp not in ("auto", "torch", "fused"):
            out.append(f"nerf.mlp must be auto, torch or fused, not {self.mlp!r}")
        if not 1 <= self.levels <= 32:
            out.append(f"nerf.levels must be 1..32, not {self.levels}")
        if not 10 <= self.log2_table <= 24:
            out.append(f"nerf.log2_table must be 10..24, not {self.log2_table}")
        if not 0 <= self.dir_degree <= 4:
            out.append(f"nerf.dir_degree must be 0..4, not {self.dir_degree}")
        if self.base_resolution < 2 or self.max_resolution < self.base_resolution:
            out.append("nerf.base_resolution must be at least 2 and at most nerf.max_resolution")
        for name in ("hidden", "samples_per_step", "initial_rays", "max_samples", "steps_across", "grid_res",
                     "grid_every"):
            if getattr(self, name) < 1:
                out.append(f"nerf.{name} must be at least 1")
        if not 0.0 <= self.shell_step <= 0.5:
            out.append(f"nerf.shell_step must lie in [0, 0.5], not {self.shell_step}")
        if not self.lr > 0 or not self.lr_final > 0:
            out.append("nerf.lr and nerf.lr_final must be positive")
        return out
