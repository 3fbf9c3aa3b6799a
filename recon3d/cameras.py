"""Cameras: a batch of pinhole cameras in the OpenCV convention.

Axes: x right, y down, z forward (the camera looks along +z). ``world_to_camera`` maps world points to
camera coordinates. Intrinsics are in pixels with pixel centres at +0.5: pixel (u, v) covers
[u, u+1) × [v, v+1) and the ray through its centre hits ``x/z = (u + 0.5 - cx) / fx``.

Readers of other conventions (COLMAP, nerfstudio/instant-ngp's OpenGL camera-to-world, Blender)
convert on load with the helpers at the bottom of this module; nothing downstream knows the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

# OpenGL / Blender camera axes (x right, y up, z back) to OpenCV (x right, y down, z forward).
OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def _as_batch(value, c: int, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.ndim == 0:
        t = t.expand(c).clone()
    if t.shape != (c,):
        raise ValueError(f"Cameras.{name} must be a scalar or have shape ({c},), got {tuple(t.shape)}")
    return t


@dataclass
class Cameras:
    """C pinhole cameras: ``world_to_camera`` C×4×4, ``fx fy cx cy`` (C,), ``width height`` (C,) int.

    ``distortion`` (optional, C×8) holds OpenCV coefficients k1 k2 p1 p2 k3 k4 k5 k6 of the images the
    cameras were read with; the rasterizer draws an undistorted pinhole image, so data loaders
    undistort images and then drop these.
    """

    world_to_camera: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    distortion: torch.Tensor | None = None

    def __post_init__(self) -> None:
        w2c = torch.as_tensor(self.world_to_camera)
        if not torch.is_floating_point(w2c):
            w2c = w2c.float()
        if w2c.ndim == 2:
            w2c = w2c[None]
        if w2c.ndim != 3 or w2c.shape[1:] not in ((4, 4), (3, 4)):
            raise ValueError(f"Cameras.world_to_camera must be C×4×4, got {tuple(w2c.shape)}")
        if w2c.shape[1] == 3:
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=w2c.dtype, device=w2c.device)
            w2c = torch.cat([w2c, bottom.expand(w2c.shape[0], 1, 4)], dim=1)
        c, dev = w2c.shape[0], w2c.device
        self.world_to_camera = w2c
        for name in ("fx", "fy", "cx", "cy"):
            setattr(self, name, _as_batch(getattr(self, name), c, name, w2c.dtype, dev))
        for name in ("width", "height"):
            t = _as_batch(getattr(self, name), c, name, torch.int64, dev)
            if (t <= 0).any():
                raise ValueError(f"Cameras.{name} must be positive, got {t.tolist()}")
            setattr(self, name, t)
        if self.distortion is not None:
            d = torch.as_tensor(self.distortion, dtype=w2c.dtype, device=dev)
            if d.ndim == 1:
                d = d.expand(c, d.shape[0])
            if d.shape[0] != c or d.shape[1] > 8:
                raise ValueError(f"Cameras.distortion must be C×(≤8), got {tuple(d.shape)}")
            if d.shape[1] < 8:
                d = torch.cat([d, d.new_zeros(c, 8 - d.shape[1])], dim=1)
            self.distortion = d
        if not torch.isfinite(self.world_to_camera).all():
            raise ValueError("Cameras.world_to_camera holds NaN or Inf")
        if (self.fx <= 0).any() or (self.fy <= 0).any():
            raise ValueError("Cameras.fx and fy must be positive")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_fov(
        cls,
        world_to_camera: torch.Tensor,
        fov_x: float,
        width: int,
        height: int,
        fov_y: float | None = None,
    ) -> Cameras:
        """Cameras with the principal point at the image centre and horizontal FOV ``fov_x`` (radians)."""
        w2c = torch.as_tensor(world_to_camera, dtype=torch.float32)
        if w2c.ndim == 2:
            w2c = w2c[None]
        fx = 0.5 * width / torch.tan(torch.tensor(fov_x / 2))
        fy = fx if fov_y is None else 0.5 * height / torch.tan(torch.tensor(fov_y / 2))
        return cls(w2c, fx, fy, width / 2.0, height / 2.0, width, height)

    @classmethod
    def look_at(
        cls,
        eye: Sequence[float] | torch.Tensor,
        target: Sequence[float] | torch.Tensor,
        up: Sequence[float] | torch.Tensor = (0.0, 0.0, 1.0),
        *,
        fov_x: float = 0.8,
        width: int = 256,
        height: int = 256,
    ) -> Cameras:
        """One camera at ``eye`` looking at ``target`` with ``up`` pointing up in the image."""
        return cls.from_fov(look_at_world_to_camera(eye, target, up), fov_x, width, height)

    @staticmethod
    def cat(cameras: Sequence[Cameras]) -> Cameras:
        """Concatenate camera batches."""
        if not cameras:
            raise ValueError("Cameras.cat needs at least one batch")
        dist = None
        if any(c.distortion is not None for c in cameras):
            dist = torch.cat(
                [c.distortion if c.distortion is not None else c.fx.new_zeros(len(c), 8) for c in cameras]
            )
        values = {
            f.name: torch.cat([getattr(c, f.name) for c in cameras]) for f in fields(Cameras) if f.name != "distortion"
        }
        return Cameras(**values, distortion=dist)

    # ---------------------------------------------------------------- container protocol
    def __len__(self) -> int:
        return int(self.world_to_camera.shape[0])

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> Cameras:
        """Select cameras by index, slice, index tensor or mask."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Cameras(**{k: (v[index] if v is not None else None) for k, v in values.items()})

    @property
    def device(self) -> torch.device:
        """Device of the camera tensors."""
        return self.world_to_camera.device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Cameras:
        """Move the cameras (float tensors may also be cast); ``self`` when nothing changes, as torch's ``to``."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                values[f.name] = None
            elif torch.is_floating_point(v):
                values[f.name] = v.to(device=device, dtype=dtype)
            else:
                values[f.name] = v.to(device=device)
        if all(values[f.name] is getattr(self, f.name) for f in fields(self)):
            return self  # (building new Cameras validates every field again: a cost on every render call)
        return Cameras(**values)

    # ---------------------------------------------------------------- derived values
    def camera_to_world(self) -> torch.Tensor:
        """Inverse of ``world_to_camera``, C×4×4."""
        return torch.linalg.inv(self.world_to_camera)

    def centers(self) -> torch.Tensor:
        """Camera centres in world coordinates, C×3."""
        r = self.world_to_camera[:, :3, :3]
        t = self.world_to_camera[:, :3, 3]
        return -(r.transpose(1, 2) @ t[..., None])[..., 0]

    def intrinsics(self) -> torch.Tensor:
        """3×3 intrinsic matrices K, C×3×3."""
        k = self.fx.new_zeros(len(self), 3, 3)
        k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = self.fx, self.fy, self.cx, self.cy, 1.0
        return k

    def image_size(self) -> tuple[int, int]:
        """(height, width) shared by all cameras; raises if the batch mixes sizes."""
        hs, ws = set(self.height.tolist()), set(self.width.tolist())
        if len(hs) != 1 or len(ws) != 1:
            raise ValueError(
                f"cameras in one render call must share an image size, got widths {sorted(ws)} and heights {sorted(hs)}"
            )
        return hs.pop(), ws.pop()

    def scaled(self, factor: float) -> Cameras:
        """Cameras for images resized by ``factor`` (e.g. 0.5 for half resolution)."""
        w = torch.clamp((self.width.double() * factor).round().long(), min=1)
        h = torch.clamp((self.height.double() * factor).round().long(), min=1)
        sx, sy = w.to(self.fx.dtype) / self.width, h.to(self.fy.dtype) / self.height
        return Cameras(
            self.world_to_camera, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, w, h, self.distortion
        )


def look_at_world_to_camera(
    eye: Sequence[float] | torch.Tensor,
    target: Sequence[float] | torch.Tensor,
    up: Sequence[float] | torch.Tensor = (0.0, 0.0, 1.0),
) -> torch.Tensor:
    """OpenCV world-to-camera 4×4 for a camera at ``eye`` looking at ``target``."""
    eye_t = torch.as_tensor(eye, dtype=torch.float32)
    forward = torch.as_tensor(target, dtype=torch.float32) - eye_t
    forward = forward / forward.norm()
    up_t = torch.as_tensor(up, dtype=torch.float32)
    right = torch.linalg.cross(forward, up_t)
    if right.norm() < 1e-6:  # looking along up: pick any perpendicular
        right = torch.linalg.cross(forward, torch.tensor([1.0, 0.0, 0.0]))
        if right.norm() < 1e-6:
            right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0]))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    rot = torch.stack([right, down, forward])  # rows: camera axes in world coordinates
    w2c = torch.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ eye_t
    return w2c


def opengl_camera_to_world_to_opencv_world_to_camera(c2w: torch.Tensor) -> torch.Tensor:
    """Convert camera-to-world matrices in OpenGL axes (nerfstudio, instant-ngp, Blender) to OpenCV world-to-camera."""
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    if c2w.shape[-2] == 3:
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype).expand(*c2w.shape[:-2], 1, 4)
        c2w = torch.cat([c2w, bottom], dim=-2)
    c2w_cv = c2w @ OPENGL_TO_OPENCV.to(c2w.dtype)
    return torch.linalg.inv(c2w_cv).float()
