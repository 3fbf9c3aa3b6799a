"""The training frame: the input's world, centred on the cameras and scaled so the farthest is at distance 1.

Training happens in this frame (so the 3DGS learning rates and size thresholds fit every scene); the scene
goes back to the input's world frame for export, the viewer and every file a run writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..cameras import Cameras
from ..scene import GaussianScene


@dataclass
class WorldTransform:
    """Training frame x' = scale·(x − center); uniform, so images and SH directions are unchanged."""

    center: torch.Tensor
    scale: float

    @classmethod
    def from_cameras(cls, cameras: Cameras) -> WorldTransform:
        """Centre at the mean camera centre, unit = the largest camera distance from it (as 3DGS)."""
        centers = cameras.centers().double()
        center = centers.mean(0)
        radius = float((centers - center).norm(dim=-1).max()) if len(cameras) > 1 else 0.0
        if not math.isfinite(radius) or radius < 1e-8:  # one camera or all at one spot: keep the units
            radius = 1.0
        return cls(center.float(), 1.0 / radius)

    def points_to_train(self, points: torch.Tensor) -> torch.Tensor:
        """World points to the training frame."""
        return (points.double() - self.center.double().to(points.device)).mul(self.scale).to(points.dtype)

    def cameras_to_train(self, cameras: Cameras) -> Cameras:
        """The same cameras looking at the normalised world (view space scaled by the same factor)."""
        w2c = cameras.world_to_camera.double()
        rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
        new_t = self.scale * (trans + (rot @ self.center.double()[:, None])[..., 0])
        out = w2c.clone()
        out[:, :3, 3] = new_t
        return Cameras(out.float(), cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height)

    def scene_to_world(self, scene: GaussianScene) -> GaussianScene:
        """Undo the normalisation: positions and log-scales back to the input's world frame."""
        s = scene.detach()
        center = self.center.to(s.means.device, s.means.dtype)
        return GaussianScene(
            means=s.means / self.scale + center,
            scales=s.scales - math.log(self.scale),
            quats=s.quats,
            opacities=s.opacities,
            sh0=s.sh0,
            shN=s.shN,
        )

    def state(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"center": self.center.clone(), "scale": float(self.scale)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WorldTransform:
        """Inverse of ``state``."""
        return cls(state["center"].float(), float(state["scale"]))


def focus_point(cameras: Cameras) -> torch.Tensor:
    """The point nearest (least squares) to every camera's optical axis; the centre of the cameras if ill-posed."""
    c2w = cameras.camera_to_world().double()
    origins, dirs = c2w[:, :3, 3], c2w[:, :3, 2]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64) - dirs[:, :, None] * dirs[:, None, :]
    a = proj.sum(0)
    b = (proj @ origins[:, :, None]).sum(0)[:, 0]
    if len(cameras) < 2 or torch.linalg.cond(a) > 1e6:
        return (origins.mean(0) + dirs.mean(0)).float()
    point = torch.linalg.solve(a, b)
    # a focus behind most cameras means the axes diverge (e.g. a panorama): fall back to in front of them
    if ((point - origins) * dirs).sum(-1).median() <= 0:
        return (origins.mean(0) + dirs.mean(0)).float()
    return point.float()


