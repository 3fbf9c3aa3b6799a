"""Camera refinement: a learnable SE(3) correction per training camera, optimised with the scene.

Structure from motion leaves each pose slightly wrong, and a photo seen from a slightly wrong place blurs
the scene. Each camera gets a twist ξ = (ω, v) (6 numbers, zero at the start); its corrected pose is
``world_to_camera' = exp(ξ^) · world_to_camera`` (the correction acts in the camera's own frame, so ω is a
rotation about the camera centre and v a shift along the camera's axes). A small learning rate and an L2
pull towards ξ = 0 keep the cameras from drifting together with the scene (the pair is only defined up
to a common motion).

Two ways to the gradient. Where the render backend differentiates ``Cameras.world_to_camera`` (the
``reference`` backend), the corrected camera is rendered directly (``apply``). Elsewhere the same image
comes from moving the scene instead of the camera (``apply_to_scene``): camera ``E·W`` sees point x where
camera ``W`` sees ``M·x`` with ``M = W⁻¹·E·W``, so the Gaussians' means and rotations are moved rigidly by
M (scales and opacities are unchanged) and ξ gets its gradient through the backend's gradients with
respect to the means and rotations, which every backend has. The one difference: the view-dependent colour
is evaluated along a direction turned by the correction's rotation (SH coefficients are not rotated), a
fraction of a degree for the corrections this is meant for.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..cameras import Cameras
from ..scene import GaussianScene
from .appearance import SmallAdam


def rotmat_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """(w, x, y, z) of a rotation matrix with trace > −1 (rotations under 180°, as corrections are); differentiable."""
    w = 0.5 * torch.sqrt((1.0 + rot[0, 0] + rot[1, 1] + rot[2, 2]).clamp_min(1e-12))
    x = (rot[2, 1] - rot[1, 2]) / (4 * w)
    y = (rot[0, 2] - rot[2, 0]) / (4 * w)
    z = (rot[1, 0] - rot[0, 1]) / (4 * w)
    return torch.stack([w, x, y, z])


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of (w, x, y, z) quaternions; ``a`` (4,) applied to every row of ``b`` (N×4)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def twist_matrix(xi: torch.Tensor) -> torch.Tensor:
    """The 4×4 matrix exp(ξ^) of a twist ξ = (ω, v), ω the rotation vector (radians), v the translation part."""
    w, v = xi[..., :3], xi[..., 3:]
    zero = torch.zeros_like(w[..., 0])
    hat = torch.stack([
        torch.stack([zero, -w[..., 2], w[..., 1], v[..., 0]], -1),
        torch.stack([w[..., 2], zero, -w[..., 0], v[..., 1]], -1),
        torch.stack([-w[..., 1], w[..., 0], zero, v[..., 2]], -1),
        torch.stack([zero, zero, zero, zero], -1),
    ], -2)
    return torch.linalg.matrix_exp(hat)


class CameraRefinement:
    """Per-camera SE(3) corrections (``delta``: C×6 twists) with their own Adam optimiser."""

    def __init__(self, num_cameras: int, device: torch.device | str = "cpu", *, lr: float = 1e-4,
                 weight: float = 1e-3) -> None:
        self.delta = torch.zeros(num_cameras, 6, device=device, requires_grad=True)
        self.lr = lr
        self.weight = weight
        self.optimizer = SmallAdam(self.delta, lr)
        self.active = True

    def apply(self, camera: Cameras, index: int) -> Cameras:
        """``camera`` (one camera) with correction ``index`` applied; differentiable in ``delta``."""
        w2c = twist_matrix(self.delta[index].to(camera.world_to_camera.dtype)) @ camera.world_to_camera[0]
        return Cameras(w2c[None], camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height,
                       camera.distortion)

    def apply_to_scene(self, scene: GaussianScene, camera: Cameras, index: int) -> GaussianScene:
        """``scene`` moved so that ``camera`` sees it as the corrected camera ``index`` sees the original."""
        w2c = camera.world_to_camera[0].to(scene.means.dtype)
        correction = twist_matrix(self.delta[index].to(w2c.dtype))
        motion = torch.linalg.inv(w2c) @ correction @ w2c  # M = W⁻¹·E·W, a rigid motion
        rot, trans = motion[:3, :3], motion[:3, 3]
        means = scene.means @ rot.T + trans
        quats = quat_multiply(rotmat_to_quat(rot), scene.quats)
        return GaussianScene(means, scene.scales, quats, scene.opacities, scene.sh0, scene.shN)

    def regulariser(self, index: int) -> torch.Tensor:
        """L2 pull of this step's camera correction towards zero."""
        return self.weight * self.delta[index].square().sum()

    def has_gradient(self) -> bool:
        """Whether the last backward pass reached the corrections (the backend differentiates cameras)."""
        g = self.delta.grad
        return g is not None and bool(g.abs().sum() > 0)

    def step(self, lr_scale: float = 1.0) -> None:
        """One Adam step on the corrections, then clear their gradient."""
        self.optimizer.step(self.lr * lr_scale)

    @torch.no_grad()
    def corrected_world_to_camera(self, world_to_camera: torch.Tensor, translation_scale: float = 1.0) -> torch.Tensor:
        """C×4×4 corrected poses; ``translation_scale`` converts v to the poses' units (1/scale of the training frame)."""
        xi = self.delta.detach().double().cpu().clone()
        xi[:, 3:] *= translation_scale
        return (twist_matrix(xi) @ world_to_camera.detach().double().cpu()).to(world_to_camera.dtype)

    def magnitudes(self) -> tuple[float, float]:
        """The largest rotation (degrees) and translation (training-frame units) of the corrections."""
        with torch.no_grad():
            d = self.delta.detach()
            if len(d) == 0:
                return 0.0, 0.0
            return float(d[:, :3].norm(dim=-1).max()) * 180 / math.pi, float(d[:, 3:].norm(dim=-1).max())

    def state(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"delta": self.delta.detach().cpu().clone(), "optimizer": self.optimizer.state_dict(),
                "active": self.active}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""
        with torch.no_grad():
            self.delta.copy_(state["delta"].to(self.delta.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.active = bool(state.get("active", True))
