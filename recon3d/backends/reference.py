"""The dense pure-PyTorch rasterizer: every Gaussian against every pixel, autograd for the backward.

It is the oracle the kernels are tested against, not a product path. It states the maths the kernels in
``cuda/`` implement, step for step:

Projection, per camera and Gaussian
    p = R·μ + t (OpenCV view space); culled unless NEAR_PLANE ≤ p.z ≤ FAR_PLANE.
    Σ = R_q S Sᵀ R_qᵀ with S = diag(exp(scales)) and R_q from the normalised quaternion (zero → identity).
    J = [[fx/z, 0, −fx·x'/z], [0, fy/z, −fy·y'/z]] where x' = clamp(x/z, −cx/fx − m_x, (W−cx)/fx + m_x),
    m_x = (FRUSTUM_CLAMP − 1)·W/(2fx) (likewise y); the clamp only affects the Jacobian, not the mean.
    Σ2D = J R Σ Rᵀ Jᵀ + LOW_PASS·I; culled when det(Σ2D) ≤ 0; conic = Σ2D⁻¹ stored as (a, b, c).
    mean2d = (fx·x/z + cx, fy·y/z + cy).
    o = sigmoid(opacity logit); culled when o < ALPHA_MIN (it can never reach the threshold).
    Anti-aliased mode (``antialiased=True``, Mip-Splatting's 2D filter, gsplat's "antialiased"): o is also
    multiplied by sqrt(max(det(Σ2D − LOW_PASS·I) / det Σ2D, 0)), and everything below uses that o.
    Support: Mahalanobis² ≤ r² = 2·ln(o/ALPHA_MIN), i.e. exactly where o·exp(−m²/2) ≥ ALPHA_MIN; its
    screen extents are e_x = sqrt(r²·Σ2D_xx), e_y = sqrt(r²·Σ2D_yy); culled when the box mean2d ± e lies
    off the image; radius = ceil(max(e_x, e_y)) pixels (0 for culled Gaussians).
    colour = max(SH(d)·coeffs + 0.5, 0) with d = normalise(μ − camera centre).
Compositing, per pixel with centre (u + 0.5, v + 0.5), Gaussians in ascending view depth
    m² = a·dx² + 2b·dx·dy + c·dy² with dx = mean2d − centre; α = min(ALPHA_MAX, o·exp(−m²/2));
    skipped when α < ALPHA_MIN; compositing stops before the first Gaussian that would bring the
    transmittance T below TRANSMITTANCE_MIN. rgb = Σ cᵢαᵢTᵢ + T·background, alpha = 1 − T,
    depth = Σ zᵢαᵢTᵢ / alpha (0 where alpha = 0): the expected depth, the default.
Median depth (``depth="median"``), per pixel: the view-space z of the Gaussian i during whose blend the
    transmittance first falls to ≤ MEDIAN_TRANSMITTANCE (½), i.e. Tᵢ > ½ ≥ Tᵢ(1 − αᵢ), among the Gaussians
    that blend above (same order, skips and stop); 0 where T never falls that far. T only falls, so at most
    one Gaussian qualifies. It is a selection, not a sum, so it carries no gradient.
Because the support is defined by the same threshold that skips a contribution, a tiled rasterizer that
only visits the tiles a Gaussian's box overlaps gives the same image as this dense one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..constants import (
    ALPHA_MAX,
    ALPHA_MIN,
    FAR_PLANE,
    FRUSTUM_CLAMP,
    LOW_PASS,
    MEDIAN_TRANSMITTANCE,
    NEAR_PLANE,
    TRANSMITTANCE_MIN,
)
from ..sh import eval_sh
from .base import RenderOptions, RenderOutput, check_depth_mode, expected_depth

if TYPE_CHECKING:
    from ..cameras import Cameras
    from ..scene import GaussianScene


@dataclass
class Projection:
    """Per-camera, per-Gaussian screen-space quantities (C×N…)."""

    means2d: torch.Tensor  # C×N×2 pixels
    conics: torch.Tensor  # C×N×3 (a, b, c) of the inverse 2D covariance
    colors: torch.Tensor  # C×N×3
    opacities: torch.Tensor  # C×N (sigmoid applied)
    depths: torch.Tensor  # C×N view-space z
    radii: torch.Tensor  # C×N int32, 0 when culled
    visible: torch.Tensor  # C×N bool


def project(scene: GaussianScene, cameras: Cameras, sh_degree: int, antialiased: bool = False) -> Projection:
    """Project every Gaussian into every camera (dense, differentiable); see the module docstring."""
    dtype = scene.means.dtype
    w2c = cameras.world_to_camera.to(dtype)
    rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]  # C×3×3, C×3
    fx, fy, cx, cy = (getattr(cameras, k).to(dtype)[:, None] for k in ("fx", "fy", "cx", "cy"))
    width, height = cameras.width.to(dtype)[:, None], cameras.height.to(dtype)[:, None]

    p = torch.einsum("cij,nj->cni", rot, scene.means) + trans[:, None, :]  # C×N×3
    x, y, z = p.unbind(-1)
    z_ok = (z >= NEAR_PLANE) & (z <= FAR_PLANE)
    z_safe = torch.where(z_ok, z, torch.ones_like(z))

    quat_norm = scene.quats.norm(dim=-1, keepdim=True)
    identity = torch.zeros_like(scene.quats)
    identity[:, 0] = 1.0
    q = torch.where(quat_norm > 0, scene.quats / quat_norm.clamp_min(1e-12), identity)
    from ..scene import quat_to_rotmat

    rs = quat_to_rotmat(q) * torch.exp(scene.scales)[:, None, :]
    cov3d = rs @ rs.transpose(1, 2)  # N×3×3
    cov_view = torch.einsum("cij,njk,clk->cnil", rot, cov3d, rot)  # C×N×3×3

    margin_x = (FRUSTUM_CLAMP - 1.0) * 0.5 * width / fx
    margin_y = (FRUSTUM_CLAMP - 1.0) * 0.5 * height / fy
    tx = torch.minimum(torch.maximum(x / z_safe, -cx / fx - margin_x), (width - cx) / fx + margin_x)
    ty = torch.minimum(torch.maximum(y / z_safe, -cy / fy - margin_y), (height - cy) / fy + margin_y)
    zero = torch.zeros_like(z_safe)
    jac = torch.stack(
        [
            torch.stack([fx / z_safe, zero, -fx * tx / z_safe], dim=-1),
            torch.stack([zero, fy / z_safe, -fy * ty / z_safe], dim=-1),
        ],
        dim=-2,
    )  # C×N×2×3
    cov2d = jac @ cov_view @ jac.transpose(-1, -2)
    a = cov2d[..., 0, 0] + LOW_PASS
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + LOW_PASS
    det = a * c - b * b
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    opac = torch.sigmoid(scene.opacities)[None, :].expand_as(z)
    if antialiased:
        # sqrt(max(det Σ2D / det(Σ2D + LOW_PASS·I), 0)); the where keeps sqrt's infinite slope at 0 out of the graph
        ratio = ((a - LOW_PASS) * (c - LOW_PASS) - b * b) / det_safe
        positive = ratio > 0
        opac = opac * torch.where(positive, torch.sqrt(torch.where(positive, ratio, torch.ones_like(ratio))), torch.zeros_like(ratio))
    opac_ok = opac >= ALPHA_MIN
    with torch.no_grad():
        r2 = 2.0 * torch.log(torch.clamp(opac / ALPHA_MIN, min=1.0))
        ext_x = torch.sqrt(r2 * a.clamp_min(0))
        ext_y = torch.sqrt(r2 * c.clamp_min(0))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_screen = (mx + ext_x > 0) & (mx - ext_x < width) & (my + ext_y > 0) & (my - ext_y < height)
        visible = z_ok & det_ok & opac_ok & on_screen
        radii = torch.where(visible, torch.ceil(torch.maximum(ext_x, ext_y)), torch.zeros_like(ext_x)).to(torch.int32)

    centers = cameras.centers().to(dtype)  # C×3
    dirs = scene.means[None, :, :] - centers[:, None, :]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    coeffs = torch.cat([scene.sh0, scene.shN], dim=1)  # N×K×3
    colors = eval_sh(coeffs[None].expand(len(cameras), -1, -1, -1), dirs, sh_degree)

    return Projection(
        means2d=means2d,
        conics=conics,
        colors=colors,
        opacities=opac,
        depths=z,
        radii=radii,
        visible=visible,
    )


@dataclass
class Composited:
    """Per-camera images of ``rasterize`` (C×H×W×…)."""

    rgb: torch.Tensor  # C×H×W×3
    alpha: torch.Tensor  # C×H×W×1
    acc_depth: torch.Tensor  # C×H×W×1, Σ zᵢαᵢTᵢ
    median_depth: torch.Tensor  # C×H×W×1, no gradient (zeros unless asked for)
    median_margin: torch.Tensor  # C×H×W×1, min over the pixel's transmittances (1 and after each blend) of |T − ½|
    features: torch.Tensor | None = None  # C×H×W×K, Σ fᵢαᵢTᵢ (when features are given)


def rasterize(
    proj: Projection,
    height: int,
    width: int,
    background: torch.Tensor,
    pixel_chunk: int = 4096,
    median: bool = False,
    features: torch.Tensor | None = None,
) -> Composited:
    """Composite every visible Gaussian over every pixel (and the median depth when ``median``, the N×K
    ``features`` with the same weights when given)."""
    num_cams, n = proj.depths.shape
    dtype = proj.means2d.dtype
    device = proj.means2d.device
    if n == 0:
        rgb = background[:, None, None, :].expand(num_cams, height, width, 3).to(dtype)
        zeros = torch.zeros(num_cams, height, width, 1, dtype=dtype, device=device)
        feats = None
        if features is not None:
            feats = features.new_zeros(num_cams, height, width, features.shape[1]) + 0 * features.sum()
        return Composited(rgb.clone(), zeros, zeros.clone(), zeros.clone(), zeros + (1.0 - MEDIAN_TRANSMITTANCE), feats)

    order = torch.argsort(torch.where(proj.visible, proj.depths, torch.full_like(proj.depths, float("inf"))), dim=1)

    def take(t: torch.Tensor) -> torch.Tensor:
        idx = order if t.ndim == 2 else order[..., None].expand(-1, -1, t.shape[-1])
        return torch.gather(t, 1, idx)

    means2d, conics, colors = take(proj.means2d), take(proj.conics), take(proj.colors)
    opac, depths, visible = take(proj.opacities), take(proj.depths), take(proj.visible)
    feats = None if features is None else take(features[None].expand(num_cams, -1, -1))

    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # P×2

    chunks: dict[str, list[torch.Tensor]] = {k: [] for k in ("rgb", "alpha", "acc", "med", "margin", "feat")}
    for start in range(0, pixels.shape[0], pixel_chunk):
        pix = pixels[start : start + pixel_chunk]  # P×2
        d = means2d[:, None, :, :] - pix[None, :, None, :]  # C×P×N×2
        dx, dy = d[..., 0], d[..., 1]
        a, b, c = conics[:, None, :, 0], conics[:, None, :, 1], conics[:, None, :, 2]
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = torch.clamp(opac[:, None, :] * torch.exp(power), max=ALPHA_MAX)
        keep = visible[:, None, :] & (alpha >= ALPHA_MIN) & (power <= 0)
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        with torch.no_grad():
            stop = torch.cumprod(1.0 - alpha, dim=-1) < TRANSMITTANCE_MIN
        alpha = torch.where(stop, torch.zeros_like(alpha), alpha)
        one_minus = 1.0 - alpha
        trans_before = torch.cumprod(
            torch.cat([torch.ones_like(one_minus[..., :1]), one_minus[..., :-1]], dim=-1), dim=-1
        )
        weights = alpha * trans_before  # C×P×N
        t_final = trans_before[..., -1] * one_minus[..., -1]  # C×P
        rgb = torch.einsum("cpn,cnk->cpk", weights, colors) + t_final[..., None] * background[:, None, :].to(dtype)
        chunks["rgb"].append(rgb)
        chunks["alpha"].append(1.0 - t_final)
        chunks["acc"].append(torch.einsum("cpn,cn->cp", weights, depths))
        if feats is not None:
            chunks["feat"].append(torch.einsum("cpn,cnk->cpk", weights, feats))
        if median:
            with torch.no_grad():
                trans_after = trans_before * one_minus
                # alpha = 0 leaves T as it was, so a skipped or stopped Gaussian can never be the crossing
                crossing = (trans_before > MEDIAN_TRANSMITTANCE) & (trans_after <= MEDIAN_TRANSMITTANCE)
                chunks["med"].append(torch.where(crossing, depths[:, None, :], torch.zeros_like(alpha)).sum(-1))
                margin = (trans_after - MEDIAN_TRANSMITTANCE).abs().amin(-1).clamp_max(1.0 - MEDIAN_TRANSMITTANCE)
                chunks["margin"].append(margin)

    def image(key: str) -> torch.Tensor:
        return torch.cat(chunks[key], dim=1).reshape(num_cams, height, width, -1)

    rgb, alpha, acc_depth = image("rgb"), image("alpha"), image("acc")
    if median:
        med, margin = image("med"), image("margin")
    else:
        med, margin = torch.zeros_like(alpha.detach()), torch.full_like(alpha.detach(), float("nan"))
    return Composited(rgb, alpha, acc_depth, med, margin, image("feat") if feats is not None else None)


def render(
    scene: GaussianScene,
    cameras: Cameras,
    background: torch.Tensor,
    sh_degree: int,
    depth: str = "expected",
    antialiased: bool = False,
    features: torch.Tensor | None = None,
) -> RenderOutput:
    """Dense reference render; see the module docstring for the maths."""
    check_depth_mode(depth)
    height, width = cameras.image_size()
    proj = project(scene, cameras, sh_degree, antialiased=antialiased)
    means2d = proj.means2d
    if means2d.requires_grad:
        means2d.retain_grad()
    comp = rasterize(proj, height, width, background, median=depth == "median", features=features)
    return RenderOutput(
        rgb=comp.rgb,
        alpha=comp.alpha,
        depth=comp.median_depth if depth == "median" else expected_depth(comp.acc_depth, comp.alpha),
        radii=proj.radii,
        means2d=means2d,
        features=comp.features,
    )


class ReferenceBackend:
    """The dense PyTorch oracle as a registry entry (``backend="reference"``)."""

    name = "reference"

    def available_for(self, device: torch.device) -> bool:
        """Any device torch runs on."""
        return True

    def render(
        self, scene: GaussianScene, cameras: Cameras, background: torch.Tensor, sh_degree: int, options: RenderOptions
    ) -> RenderOutput:
        """Dense reference render with the call's options."""
        return render(scene, cameras, background, sh_degree, options.depth, options.antialiased, options.features)


REFERENCE = ReferenceBackend()
