"""Make ``examples/scene.ply``: a small analytic splat scene (three spheres on a disc), seeded.

Run: python examples/make_scene_ply.py
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import recon3d
from recon3d.scene import GaussianScene


def sphere_surface(n: int, center, radius: float, color, gen: torch.Generator) -> GaussianScene:
    """Flat Gaussians tangent to a sphere's surface."""
    normals = torch.randn(n, 3, generator=gen)
    normals = normals / normals.norm(dim=1, keepdim=True)
    points = torch.tensor(center) + radius * normals
    sigma = radius * math.sqrt(4 * math.pi / n) * 0.6
    scene = GaussianScene.from_points(points, torch.tensor(color).expand(n, 3), scale=sigma, opacity=0.9)
    # rotate local z onto the normal, squash z: the quaternion between (0,0,1) and the normal
    z = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    axis = torch.linalg.cross(z, normals)
    w = 1.0 + (z * normals).sum(1, keepdim=True)
    quats = torch.cat([w, axis], dim=1)
    quats[w[:, 0] < 1e-6] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    scene.quats = quats / quats.norm(dim=1, keepdim=True)
    scene.scales[:, 2] = math.log(sigma * 0.1)
    shade = 0.1 * torch.randn(n, 1, 3, generator=gen)
    scene.sh0 = scene.sh0 + shade
    return scene


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    parts = [
        sphere_surface(4000, (0.0, 0.0, 0.5), 0.5, (0.85, 0.2, 0.15), gen),
        sphere_surface(2500, (1.1, 0.3, 0.35), 0.35, (0.2, 0.45, 0.9), gen),
        sphere_surface(2500, (-1.0, 0.4, 0.3), 0.3, (0.95, 0.8, 0.2), gen),
    ]
    # a disc on z = 0
    n = 6000
    r = 2.0 * torch.sqrt(torch.rand(n, generator=gen))
    t = 2 * math.pi * torch.rand(n, generator=gen)
    pts = torch.stack([r * torch.cos(t), r * torch.sin(t), torch.zeros(n)], dim=1)
    checker = ((torch.floor(pts[:, 0] * 2) + torch.floor(pts[:, 1] * 2)) % 2)[:, None]
    colors = 0.35 + 0.4 * checker.expand(n, 3)
    disc = GaussianScene.from_points(pts, colors, scale=0.04, opacity=0.95)
    disc.scales[:, 2] = math.log(0.004)
    parts.append(disc)
    scene = GaussianScene.cat(parts)
    out = Path(__file__).resolve().parent / "scene.ply"
    recon3d.save_ply(scene, out)
    print(f"wrote {out} ({len(scene)} Gaussians)")


if __name__ == "__main__":
    main()
