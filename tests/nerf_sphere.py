"""A NeRF model of a known scene for the distillation, mesh and viewer tests: a small hash-grid field regressed
(point-wise, no rendering) onto an analytic ball, its colour a smooth function of position.

The ball: centre ``CENTER`` (world), radius ``RADIUS``; density ``DENSITY`` inside (per world unit: a ray
through the ball keeps e^-(2 · R · DENSITY) ≈ 0 of its light), ~0 outside; colour ``ball_color(x)``. The
model's training frame is a non-trivial ``WorldTransform`` (shifted and scaled), so frame conversions are
exercised. ``ball_render`` draws the analytic ball itself (ray-sphere intersection), the independent reference.
"""

from __future__ import annotations

import math

import torch

from recon3d.cameras import Cameras
from recon3d.nerf.field import FieldBounds, NerfField, OccupancyGrid
from recon3d.nerf.reference import HashGridSpec
from recon3d.nerf.trainer import NerfModel
from recon3d.train.frame import WorldTransform

CENTER = torch.tensor([1.0, -2.0, 0.5])
RADIUS = 0.6
DENSITY = 400.0  # per world unit (above the mesh export's default threshold: ~70 per world unit here)
SCALE = 0.8  # world -> training frame scale


def ball_color(x: torch.Tensor) -> torch.Tensor:
    """The ball's colour at world points (N×3 in [0.15, 0.85]): a smooth pattern over its surface."""
    y = (x - CENTER) / RADIUS
    return 0.5 + 0.35 * torch.stack([torch.sin(2.5 * y[:, 0]), torch.cos(2.0 * y[:, 1]), y[:, 2].clamp(-1, 1)], -1)


def fit_ball_model(steps: int = 600, seed: int = 0) -> NerfModel:
    """A field regressed onto the ball (density pre-activation and colour), with its occupancy grid."""
    torch.manual_seed(seed)
    transform = WorldTransform(torch.tensor([0.7, -1.5, 0.2]), SCALE)
    half = 1.0  # training-frame box half-size about the ball's centre
    center_t = transform.points_to_train(CENTER[None])[0]
    step = 2 * half * math.sqrt(3) / 256
    bounds = FieldBounds(False, center_t, half, 0.0, 1e10, step, step, 0.0)
    field = NerfField(HashGridSpec(8, 14, 8, 128), hidden=32, dir_degree=1)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    density_t = DENSITY / SCALE  # per training-frame unit
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        # half the points anywhere in the box, half near the ball's surface (where the renders look)
        u_any = torch.rand(2048, 3, generator=gen)
        shell = torch.nn.functional.normalize(torch.randn(2048, 3, generator=gen), dim=-1)
        x_near = CENTER + shell * (RADIUS + 0.05 * torch.randn(2048, 1, generator=gen))
        u = torch.cat([u_any, bounds.to_unit(transform.points_to_train(x_near)).clamp(0, 1)])
        x = transform_from_unit(bounds, transform, u)
        r = (x - CENTER).norm(dim=-1)
        inside = torch.sigmoid(-(r - RADIUS) / 0.01)
        # pre-activation target: log density inside, about e^-6 outside (σ = exp(h - 1))
        target_h = 1.0 + torch.log(torch.tensor(density_t)) * inside - 7.0 * (1 - inside)
        h = field.density_mlp(field.encode(u))
        dirs = torch.nn.functional.normalize(torch.randn(len(u), 3, generator=gen), dim=-1)
        from recon3d.sh import sh_basis

        color = torch.sigmoid(field.color_mlp(torch.cat([h[:, 1:], sh_basis(dirs, field.dir_degree)], -1)))
        near = torch.exp(-((r - RADIUS) / 0.15) ** 2)  # colour matters on and near the surface
        loss = ((h[:, 0] - target_h) ** 2).mean() + 10 * (near[:, None] * (color - ball_color(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    field.requires_grad_(False)
    grid = OccupancyGrid(32)
    for _ in range(3):
        grid.update(field, 0.01 / bounds.dt_min, gen)
    return NerfModel(field, bounds, grid, transform)


def transform_from_unit(bounds: FieldBounds, transform: WorldTransform, u: torch.Tensor) -> torch.Tensor:
    """Unit-cube points -> world points."""
    return bounds.from_unit(u) / transform.scale + transform.center


def ball_cameras(n: int, size: int = 48, distance: float = 2.6, offset: float = 0.0) -> Cameras:
    """``n`` cameras on a sphere about the ball, looking at its centre (``offset`` turns the ring)."""
    cams = []
    for k in range(n):
        a = 2 * math.pi * (k + offset) / n
        el = 0.5 * math.sin(3 * a + offset)
        eye = CENTER + distance * torch.tensor([math.cos(a) * math.cos(el), math.sin(a) * math.cos(el), math.sin(el)])
        cams.append(Cameras.look_at(eye, CENTER, fov_x=0.9, width=size, height=size))
    return Cameras.cat(cams)


def ball_render(cameras: Cameras, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The analytic ball from camera ``index``: colour over black (H×W×3) and coverage (H×W×1)."""
    from recon3d.nerf.field import camera_rays

    w, h = int(cameras.width[index]), int(cameras.height[index])
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    o, d = camera_rays(cameras, index, torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    oc = o - CENTER
    b = (oc * d).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + RADIUS**2
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    rgb = torch.where(hit[:, None], ball_color(o + t[:, None] * d), torch.zeros(len(o), 3))
    return rgb.reshape(h, w, 3), hit.float().reshape(h, w, 1)
