"""GaussianScene: the one representation that reconstruction optimises, the generator samples,
the viewer draws and export writes.

Parameters are stored raw and unconstrained, exactly as the standard 3DGS PLY stores them:

=========  =========  ==========================  ==========================
field      shape      stored as                   used as
=========  =========  ==========================  ==========================
means      N×3        world position              same
scales     N×3        log σ                       exp
quats      N×4        w, x, y, z (any norm)       normalised
opacities  N          logit                       sigmoid
sh0        N×1×3      SH DC coefficient           colour = SH·dir + 0.5
shN        N×K×3      SH rest, K ∈ {0, 3, 8, 15}  (degree 0–3)
=========  =========  ==========================  ==========================
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from .constants import SH_C0

PARAMETER_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def num_sh_rest(degree: int) -> int:
    """Number of non-DC SH coefficients per channel for an SH degree (0, 3, 8 or 15)."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"SH degree must be 0, 1, 2 or 3, got {degree}")
    return (degree + 1) ** 2 - 1


def sh_degree_from_rest(k: int) -> int:
    """SH degree for K non-DC coefficients per channel."""
    for degree in range(4):
        if num_sh_rest(degree) == k:
            return degree
    raise ValueError(f"{k} higher-order SH coefficients per channel do not match any degree 0-3 (0, 3, 8, 15)")


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """Convert colours in [0,1] (…×3) to DC coefficients (the inverse of ``sh0·C0 + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Convert DC coefficients to the view-independent colour (not clamped)."""
    return sh0 * SH_C0 + 0.5


@dataclass
class GaussianScene:
    """A set of 3D Gaussians in raw 3DGS parameters (see the module docstring)."""

    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    opacities: torch.Tensor
    sh0: torch.Tensor
    shN: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        if self.shN is None:
            self.shN = self.sh0.new_zeros((self.sh0.shape[0], 0, 3))
        if self.opacities.ndim == 2 and self.opacities.shape[-1] == 1:
            self.opacities = self.opacities[:, 0]
        if self.sh0.ndim == 2 and self.sh0.shape[-1] == 3:
            self.sh0 = self.sh0[:, None, :]
        expected = {
            "means": (n, 3),
            "scales": (n, 3),
            "quats": (n, 4),
            "opacities": (n,),
            "sh0": (n, 1, 3),
        }
        for name, shape in expected.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"GaussianScene.{name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape or n < 0:
                raise ValueError(f"GaussianScene.{name} has shape {tuple(t.shape)}, expected {shape} (N={n})")
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise ValueError(f"GaussianScene.shN has shape {tuple(self.shN.shape)}, expected ({n}, K, 3)")
        sh_degree_from_rest(self.shN.shape[1])
        devices = {t.device for t in self.tensors()}
        if len(devices) != 1:
            raise ValueError(f"GaussianScene tensors are on several devices: {sorted(map(str, devices))}")

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, sh_degree: int = 0, device: str | torch.device = "cpu") -> GaussianScene:
        """A scene with no Gaussians."""
        z = torch.zeros
        return cls(
            means=z(0, 3, device=device),
            scales=z(0, 3, device=device),
            quats=z(0, 4, device=device),
            opacities=z(0, device=device),
            sh0=z(0, 1, 3, device=device),
            shN=z(0, num_sh_rest(sh_degree), 3, device=device),
        )

    @classmethod
    def from_points(
        cls,
        points: torch.Tensor,
        colors: torch.Tensor | None = None,
        *,
        scale: float | torch.Tensor = 0.01,
        opacity: float = 0.1,
        sh_degree: int = 0,
    ) -> GaussianScene:
        """Isotropic Gaussians at ``points`` (N×3) with colours in [0,1] (N×3, default grey)."""
        n = points.shape[0]
        points = points.float()
        if colors is None:
            colors = torch.full((n, 3), 0.5, device=points.device)
        scale_t = torch.as_tensor(scale, dtype=torch.float32, device=points.device)
        if scale_t.ndim < 2:  # a scalar or one σ per point: isotropic
            scale_t = scale_t.reshape(-1, 1).expand(n, 3)
        log_scale = torch.log(scale_t.clamp_min(1e-12))
        quats = torch.zeros(n, 4, device=points.device)
        quats[:, 0] = 1.0
        return cls(
            means=points.clone(),
            scales=log_scale.clone(),
            quats=quats,
            opacities=torch.full((n,), float(torch.logit(torch.tensor(opacity))), device=points.device),
            sh0=rgb_to_sh0(colors.float())[:, None, :],
            shN=torch.zeros(n, num_sh_rest(sh_degree), 3, device=points.device),
        )

    @staticmethod
    def cat(scenes: Sequence[GaussianScene]) -> GaussianScene:
        """Concatenate scenes; lower SH degrees are zero-padded to the highest."""
        if not scenes:
            raise ValueError("GaussianScene.cat needs at least one scene")
        k = max(s.shN.shape[1] for s in scenes)
        padded = []
        for s in scenes:
            shn = s.shN
            if shn.shape[1] < k:
                shn = torch.cat([shn, shn.new_zeros(shn.shape[0], k - shn.shape[1], 3)], dim=1)
            padded.append(shn)
        return GaussianScene(
            means=torch.cat([s.means for s in scenes]),
            scales=torch.cat([s.scales for s in scenes]),
            quats=torch.cat([s.quats for s in scenes]),
            opacities=torch.cat([s.opacities for s in scenes]),
            sh0=torch.cat([s.sh0 for s in scenes]),
            shN=torch.cat(padded),
        )

    # ---------------------------------------------------------------- container protocol
    def tensors(self) -> Iterator[torch.Tensor]:
        """The six parameter tensors in PARAMETER_NAMES order."""
        for name in PARAMETER_NAMES:
            yield getattr(self, name)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Parameters by name (the same tensor objects, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_gaussians(self) -> int:
        """Number of Gaussians N."""
        return len(self)

    @property
    def sh_degree(self) -> int:
        """The SH degree the stored coefficients support (0–3)."""
        return sh_degree_from_rest(self.shN.shape[1])

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.means.device

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> GaussianScene:
        """Select Gaussians by slice, index tensor or boolean mask."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return GaussianScene(**{name: t[index] for name, t in self.as_dict().items()})

    def map(self, fn) -> GaussianScene:
        """Apply ``fn`` to every parameter tensor and build a new scene."""
        return GaussianScene(**{name: fn(t) for name, t in self.as_dict().items()})

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> GaussianScene:
        """Move (and optionally cast) every parameter."""
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> GaussianScene:
        """Detached copy sharing storage."""
        return self.map(lambda t: t.detach())

    def clone(self) -> GaussianScene:
        """Deep copy."""
        return self.map(lambda t: t.detach().clone())

    def requires_grad_(self, requires_grad: bool = True) -> GaussianScene:
        """Turn gradients on for every parameter, in place; returns self."""
        for t in self.tensors():
            t.requires_grad_(requires_grad)
        return self

    def with_sh_degree(self, degree: int) -> GaussianScene:
        """Copy with SH truncated or zero-padded to ``degree``."""
        k = num_sh_rest(degree)
        shn = self.shN[:, :k]
        if shn.shape[1] < k:
            shn = torch.cat([shn, shn.new_zeros(shn.shape[0], k - shn.shape[1], 3)], dim=1)
        return GaussianScene(self.means, self.scales, self.quats, self.opacities, self.sh0, shn)

    # ---------------------------------------------------------------- activated values
    def activated_scales(self) -> torch.Tensor:
        """σ per axis (exp of the stored log-scales), N×3."""
        return torch.exp(self.scales)

    def activated_opacities(self) -> torch.Tensor:
        """Opacity in (0, 1) (sigmoid of the stored logits), N."""
        return torch.sigmoid(self.opacities)

    def normalized_quats(self) -> torch.Tensor:
        """Unit quaternions w, x, y, z; a zero quaternion becomes the identity."""
        norm = self.quats.norm(dim=-1, keepdim=True)
        identity = torch.zeros_like(self.quats)
        identity[:, 0] = 1.0
        return torch.where(norm > 0, self.quats / norm.clamp_min(1e-30), identity)

    def rotation_matrices(self) -> torch.Tensor:
        """Rotation matrices N×3×3 from the normalised quaternions."""
        return quat_to_rotmat(self.normalized_quats())

    def covariances(self) -> torch.Tensor:
        """World-space covariances N×3×3 = R S Sᵀ Rᵀ."""
        rs = self.rotation_matrices() * self.activated_scales()[:, None, :]
        return rs @ rs.transpose(1, 2)

    def base_colors(self) -> torch.Tensor:
        """View-independent colours (SH DC) clamped to [0,1], N×3."""
        return sh0_to_rgb(self.sh0[:, 0]).clamp(0.0, 1.0)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Axis-aligned bounds of the means (min, max); zeros when empty."""
        if len(self) == 0:
            z = torch.zeros(3, device=self.device)
            return z, z.clone()
        return self.means.min(dim=0).values, self.means.max(dim=0).values

    def is_finite(self) -> bool:
        """True when no parameter holds NaN or ±Inf."""
        return all(bool(torch.isfinite(t).all()) for t in self.tensors())

    def __repr__(self) -> str:
        return f"GaussianScene(N={len(self)}, sh_degree={self.sh_degree}, device={self.device})"


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices …×3×3 from unit quaternions …×4 (w, x, y, z)."""
    w, x, y, z = quats.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))
