"""Initial points beyond structure from motion: points on the training cameras' rays, coloured by their pixels.

SfM triangulates textured surfaces; textureless walls, floors, sky and far background get few or no points,
and growth from the SfM points alone reaches them late or never. ``frustum_points`` spreads extra points
over the images instead: each is a random pixel of a random training camera, placed along that pixel's ray
at a depth drawn uniformly in inverse depth between the 5th and 95th percentile of the depths the SfM
points have in that camera, and coloured by the pixel. Points at wrong depths start faint (the trainer
gives them a low opacity) and die or move where they are not needed (MCMC relocates dead Gaussians).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..cameras import Cameras


def frustum_points(cameras: Cameras, indices: Sequence[int], images: Mapping[int, torch.Tensor],
                   sfm_points: torch.Tensor, count: int, generator: torch.Generator,
                   masks: Mapping[int, torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` points (N×3, same frame as ``cameras`` and ``sfm_points``) and their colours (N×3).

    With ``masks`` (H×W or H×W×1, 1 = keep), only kept pixels get points.
    """
    if count <= 0 or not len(indices):
        return torch.zeros(0, 3), torch.zeros(0, 3)
    per_cam = torch.bincount(torch.randint(len(indices), (count,), generator=generator), minlength=len(indices))
    out_pts, out_cols = [], []
    sfm = sfm_points.double().cpu()
    for k, i in enumerate(indices):
        m = int(per_cam[k])
        if m == 0:
            continue
        w2c = cameras.world_to_camera[i].double().cpu()
        depth = (sfm @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
        depth = depth[depth > 1e-6]
        if len(depth) < 8:  # too few points in front of this camera to know its depth range
            continue
        near, far = torch.quantile(depth, torch.tensor([0.05, 0.95], dtype=depth.dtype)).tolist()
        w, h = int(cameras.width[i]), int(cameras.height[i])
        u = torch.rand(m, generator=generator, dtype=torch.float64) * w
        v = torch.rand(m, generator=generator, dtype=torch.float64) * h
        mask = None if masks is None else masks.get(i)
        if mask is not None:
            kept = torch.nonzero(mask.reshape(h, w).cpu() > 0.5)
            if len(kept) == 0:
                continue
            pick = kept[torch.randint(len(kept), (m,), generator=generator)].double()
            v, u = pick[:, 0] + v / h, pick[:, 1] + u / w  # a random point inside each picked pixel
        inverse = 1 / far + torch.rand(m, generator=generator, dtype=torch.float64) * (1 / near - 1 / far)
        z = 1 / inverse
        x = (u - float(cameras.cx[i])) / float(cameras.fx[i]) * z
        y = (v - float(cameras.cy[i])) / float(cameras.fy[i]) * z
        world = (torch.stack([x, y, z], -1) - w2c[:3, 3]) @ w2c[:3, :3]  # Rᵀ(p − t)
        image = images[i].cpu()
        out_pts.append(world.float())
        out_cols.append(image[v.long().clamp(0, h - 1), u.long().clamp(0, w - 1)].float())
    if not out_pts:
        return torch.zeros(0, 3), torch.zeros(0, 3)
    return torch.cat(out_pts), torch.cat(out_cols)
