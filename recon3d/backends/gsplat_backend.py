"""The ``gsplat`` backend: ``gsplat.rasterization`` on CUDA, for interop and side-by-side benchmarks.

Our raw parameters map onto gsplat's activated ones: ``scales`` -> exp, ``opacities`` -> sigmoid,
``quats`` as stored (gsplat normalises them), SH coefficients ``cat([sh0, shN])`` with ``sh_degree``;
``viewmats`` = ``world_to_camera`` (both OpenCV axes), ``Ks`` from fx, fy, cx, cy; ``packed=False`` and
``render_mode="RGB+ED"`` (expected depth) so the outputs line up with ours.

Known differences from our kernels (so images agree closely but not bit for bit):
- gsplat culls and bins with a radius of 3σ of the 2D covariance (newer versions also opacity-aware),
  not our exact opacity-aware support ``o·exp(-m²/2) ≥ 1/255``, so ``radii`` differ and Gaussians at the
  support's edge can be binned differently;
- gsplat's frustum culling, near-plane handling and its clamping of the Jacobian may differ at the image
  border; a zero quaternion gives NaN in gsplat, the identity in ours;
- ``means2d.grad`` is gsplat's (``meta["means2d"]``), the same quantity densification reads;
- gsplat has no median depth (only expected and accumulated depth), so ``depth="median"`` raises
  BackendUnavailable rather than return something else under that name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import BackendUnavailable
from .base import RenderOptions, RenderOutput

if TYPE_CHECKING:
    from ..cameras import Cameras
    from ..scene import GaussianScene


def _import_gsplat():
    try:
        import gsplat
    except ImportError as exc:
        raise BackendUnavailable(
            "the gsplat backend needs the optional package gsplat (pip install 'recon3d[gsplat]') and a CUDA GPU"
        ) from exc
    return gsplat


def render(
    scene: GaussianScene,
    cameras: Cameras,
    background: torch.Tensor,
    sh_degree: int,
    depth: str = "expected",
    antialiased: bool = False,
    features: torch.Tensor | None = None,
) -> RenderOutput:
    """Render with ``gsplat.rasterization``; see recon3d.render for the contract."""
    from ..constants import FAR_PLANE, LOW_PASS, NEAR_PLANE, TILE_SIZE

    if depth != "expected":
        raise BackendUnavailable(
            f"the gsplat backend has no {depth} depth (gsplat composites only expected/accumulated depth); "
            "use backend='cpu' or 'cuda' for depth='median'"
        )

    if not torch.cuda.is_available():
        raise BackendUnavailable("the gsplat backend needs a CUDA GPU; none is visible to torch")
    if scene.device.type != "cuda":
        raise BackendUnavailable(f"the gsplat backend renders scenes on a CUDA device; this scene is on {scene.device}")
    gsplat = _import_gsplat()
    height, width = cameras.image_size()
    dtype = scene.means.dtype
    coeffs = torch.cat([scene.sh0, scene.shN], dim=1)[:, : (sh_degree + 1) ** 2]
    common = dict(
        means=scene.means,
        quats=scene.quats,
        scales=torch.exp(scene.scales),
        opacities=torch.sigmoid(scene.opacities),
        viewmats=cameras.world_to_camera.to(dtype),
        Ks=cameras.intrinsics().to(dtype),
        width=width,
        height=height,
        near_plane=NEAR_PLANE,
        far_plane=FAR_PLANE,
        eps2d=LOW_PASS,
        packed=False,
        tile_size=TILE_SIZE,
        rasterize_mode="antialiased" if antialiased else "classic",
    )
    colors, alphas, meta = gsplat.rasterization(colors=coeffs, sh_degree=sh_degree, render_mode="RGB+ED", **common)
    out_features = None
    if features is not None:  # a second pass: gsplat composites any number of channels without SH
        out_features, _, _ = gsplat.rasterization(colors=features, sh_degree=None, render_mode="RGB", **common)
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]
    if radii.ndim == 3:  # gsplat >= 1.5 returns per-axis radii
        radii = radii.max(dim=-1).values
    return RenderOutput(
        # composited here: rgb + T·background, with T = 1 − alpha (gsplat's backgrounds must match the channels)
        rgb=colors[..., :3] + (1.0 - alphas) * background.to(dtype)[:, None, None, :],
        alpha=alphas,
        depth=colors[..., 3:4],
        radii=radii.to(torch.int32),
        means2d=means2d,
        features=out_features,
    )


class GsplatBackend:
    """gsplat's ``rasterization`` as a registry entry (optional package, CUDA only)."""

    name = "gsplat"

    def available_for(self, device: torch.device) -> bool:
        """CUDA devices (the package is imported on first render)."""
        return device.type == "cuda"

    def render(
        self, scene: GaussianScene, cameras: Cameras, background: torch.Tensor, sh_degree: int, options: RenderOptions
    ) -> RenderOutput:
        """Render through gsplat with the call's options."""
        return render(scene, cameras, background, sh_degree, options.depth, options.antialiased, options.features)


GSPLAT = GsplatBackend()
