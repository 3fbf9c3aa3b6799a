"""Camera refinement: a learnable SE(3) correction per training camera, optimised with the scene.

Structure from motion leaves each pose slightly wrong, and a photo seen from a slightly wrong place blurs
the scene. Each camera gets a twist ξ = (ω, v) (6 numbers, zero at the start); its corrected pose is
``world_to_camera' = exp(ξ^) · world_to_camera`` (the correction acts in the camera's own frame, so ω is a
rotation about the camera centre and v a shift along the camera's axes). A small learning rate and an L2
pull towards ξ = 0 damp the corrections; what keeps the cameras from drifting together with the scene (the
pair is only defined up to a common similarity, the gauge) is ``CameraRefinement.remove_gauge``, which takes
the corrections' common similarity out every few steps.

Two ways to the gradient. Where the render backend differentiates ``Cameras.world_to_camera`` (the
``reference`` backend), the corrected camera is rendered directly (``apply``). Elsewhere the same image
comes from moving the scene instead of the camera (``apply_to_scene``): camera ``E·W`` sees point x where
camera ``W`` sees ``M·x`` with ``M = W⁻¹·E·W``, so the Gaussians' means and rotations are moved rigidly by
M (scales and opacities are unchanged) and ξ gets its gradient through the backend's gradients with
respect to the means and rotations, which every backend has. The one difference: the view-dependent colour
is evaluated along a direction turned by the correction's rotation (SH coefficients are not rotated), a
fraction of a degree for the corrections this is meant for.

Units (``parametrisation``). Adam takes steps of about one learning rate in each coordinate whatever its
gradient, so the units of ξ decide how far a step moves the image. ``"twist"`` (the first version) steps ω
in radians and v in training-frame units: 1e-3 rad moves a 270 px-focal photo by 0.27 px but an 8,900 px
telephoto by 9 px, and a turn about the camera centre (the image shifts) and a shift across the view (the
image shifts alike) are two nearly equal, strongly coupled directions, while their difference (an orbit about
the scene, seen only through parallax) is the one that converges slowly. ``"pixels"`` steps a parameter u
(C×6) with ω = u_ω / f and v = u_v · d / f (f the focal length in training pixels, d the scene's depth in
front of the camera): a unit of any coordinate moves the image by about one pixel whatever the lens.
``"orbit"`` also turns about a pivot at depth d on the optical axis, E = T(p)·exp((ω, v)^)·T(−p), p = (0, 0,
d): u_v then shifts the image (strong gradient) and u_ω orbits the camera about the scene point in front of
it (parallax only), so Adam's per-coordinate normalisation scales up the weak direction (measured on the
garden: it scales up its noise too, docs/real_captures.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..cameras import Cameras
from ..scene import GaussianScene
from .appearance import RowAdam, SmallAdam


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


def se3_log(matrix: torch.Tensor) -> torch.Tensor:
    """The twist ξ = (ω, v) with ``twist_matrix(ξ) = matrix`` (…×4×4 rigid motions, rotations under 180°)."""
    m = matrix.double()
    rot, trans = m[..., :3, :3], m[..., :3, 3]
    cos = ((rot.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    skew = torch.stack([rot[..., 2, 1] - rot[..., 1, 2], rot[..., 0, 2] - rot[..., 2, 0],
                        rot[..., 1, 0] - rot[..., 0, 1]], -1)
    small = theta < 1e-4
    sin = torch.sin(theta)
    # ω = θ/(2 sin θ)·(R − Rᵀ)^∨, its series 1/2 + θ²/12 near zero
    factor = torch.where(small, 0.5 + theta**2 / 12, theta / (2 * torch.where(small, torch.ones_like(sin), sin)))
    omega = factor[..., None] * skew
    # v = V⁻¹·t with V⁻¹ = I − ½ω^ + (1/θ² − (1 + cos θ)/(2θ sin θ))·ω^², the last factor 1/12 + θ²/720 near zero
    safe = torch.where(small, torch.ones_like(theta), theta)
    c2 = torch.where(small, 1 / 12 + theta**2 / 720,
                     1 / safe**2 - (1 + cos) / (2 * safe * torch.where(small, torch.ones_like(sin), sin)))
    zero = torch.zeros_like(theta)
    hat = torch.stack([torch.stack([zero, -omega[..., 2], omega[..., 1]], -1),
                       torch.stack([omega[..., 2], zero, -omega[..., 0]], -1),
                       torch.stack([-omega[..., 1], omega[..., 0], zero], -1)], -2)
    eye = torch.eye(3, dtype=torch.float64).expand_as(hat)
    v_inv = eye - 0.5 * hat + c2[..., None, None] * (hat @ hat)
    return torch.cat([omega, (v_inv @ trans[..., None])[..., 0]], -1)


def similarity_fit(src: torch.Tensor, dst: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Umeyama's least-squares similarity (s, R, t) with ``s·R·src + t ≈ dst`` for N×3 point sets (float64)."""
    src, dst = src.double(), dst.double()
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = torch.linalg.svd(b.T @ a / len(src))
    d = torch.ones(3, dtype=torch.float64)
    if float(torch.linalg.det(u @ vt)) < 0:  # a reflection would fit better: take the nearest rotation
        d[2] = -1.0
    rot = u @ torch.diag(d) @ vt
    var = float((a * a).sum(1).mean())
    scale = float((sig * d).sum()) / var if var > 0 else 1.0
    return scale, rot, mu_d - scale * rot @ mu_s


def _procrustes(h: torch.Tensor) -> torch.Tensor:
    """The rotation R maximising ⟨R, h⟩ (3×3)."""
    u, _, vt = torch.linalg.svd(h)
    d = torch.ones(3, dtype=torch.float64)
    if float(torch.linalg.det(u @ vt)) < 0:
        d[2] = -1.0
    return u @ torch.diag(d) @ vt


def pose_similarity_fit(base: torch.Tensor, moved: torch.Tensor, reach: float,
                        iterations: int = 50) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The world similarity x' = s·R·x + t that best maps the C camera poses ``base`` onto ``moved`` (C×4×4
    world-to-camera, C ≥ 2).

    It minimises Σ|s·R·cᵢ + t − cᵢ'|² + (s·reach)²·Σ‖R·Aᵢ − Aᵢ'‖² over the centres c and orientations A
    (camera-to-world rotations): the centres fix the motion where they spread, the orientations where they
    do not (cameras on a line). Weighting the orientations by (s·reach)² makes the fit commute with any
    similarity G applied to ``moved`` (fit(base, G∘X) = G∘fit(base, X)), so removing the fitted motion
    takes out a common motion exactly and is idempotent. Alternates the exact minimisers: R by Procrustes
    for fixed s, s in closed form for fixed R; t = mean(c') − s·R·mean(c).
    """
    b2w, m2w = rigid_inverse(base), rigid_inverse(moved)
    c, c2 = b2w[:, :3, 3], m2w[:, :3, 3]
    a, a2 = b2w[:, :3, :3], m2w[:, :3, :3]
    mu, mu2 = c.mean(0), c2.mean(0)
    x, y = c - mu, c2 - mu2
    h_c = y.T @ x  # Σ y xᵀ
    h_a = (a2 @ a.transpose(1, 2)).sum(0)  # Σ A' Aᵀ
    var = float((x * x).sum())
    rho2 = reach * reach
    scale, rot = 1.0, _procrustes(h_c + rho2 * h_a)
    for _ in range(iterations):
        misfit = 6 * len(a) - 2 * float((rot * h_a).sum())  # Σ‖R·A − A'‖²
        new_scale = float((rot * h_c).sum()) / (var + rho2 * misfit)
        new_rot = _procrustes(h_c + new_scale * rho2 * h_a)
        done = abs(new_scale - scale) <= 1e-15 * abs(scale) and bool((new_rot - rot).abs().max() <= 1e-15)
        scale, rot = new_scale, new_rot
        if done:
            break
    return scale, rot, mu2 - scale * rot @ mu


def rigid_inverse(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of …×4×4 rigid motions [R t; 0 1]: [Rᵀ −Rᵀt; 0 1] (float64; cheaper than a general inverse)."""
    m = matrix.double()
    out = torch.zeros_like(m)
    rot_t = m[..., :3, :3].transpose(-1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ m[..., :3, 3:])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def pivot_depths(cameras: Cameras, points: torch.Tensor | None, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Per camera, the median depth of ``points`` in front of it and inside its image (C,), the scene's
    distance along its view; where fewer than 8 points fall in view, the depth of ``fallback`` (a point the
    cameras look at) or, behind the camera, the median over the cameras that have one (1.0 if none)."""
    w2c = cameras.world_to_camera.double().cpu()
    depths = torch.full((len(w2c),), float("nan"), dtype=torch.float64)
    pts = None if points is None or len(points) == 0 else points.double().cpu()
    for i in range(len(w2c)):
        if pts is not None:
            cam = pts @ w2c[i, :3, :3].T + w2c[i, :3, 3]
            z = cam[:, 2]
            front = z > 1e-6
            u = float(cameras.fx[i]) * cam[:, 0] / z.clamp_min(1e-6) + float(cameras.cx[i])
            v = float(cameras.fy[i]) * cam[:, 1] / z.clamp_min(1e-6) + float(cameras.cy[i])
            inside = front & (u >= 0) & (u < float(cameras.width[i])) & (v >= 0) & (v < float(cameras.height[i]))
            if int(inside.sum()) >= 8:
                depths[i] = float(z[inside].median())
                continue
        if fallback is not None:
            z = float((w2c[i, :3, :3] @ fallback.double().cpu() + w2c[i, :3, 3])[2])
            if z > 1e-6:
                depths[i] = z
    known = depths[~torch.isnan(depths)]
    depths[torch.isnan(depths)] = float(known.median()) if len(known) else 1.0
    return depths


def _rigid(rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """The 4×4 matrix of x' = R·x + t."""
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3], m[:3, 3] = rot.double(), trans.double()
    return m


def invert_similarity(scale: float, rot: torch.Tensor, trans: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The similarity undoing x' = s·R·x + t."""
    rot_t = rot.double().T
    return 1.0 / scale, rot_t, -(rot_t @ trans.double()) / scale


def apply_similarity(world_to_camera: torch.Tensor, scale: float, rot: torch.Tensor,
                     trans: torch.Tensor) -> torch.Tensor:
    """C×4×4 poses of the same cameras in the world mapped by x' = s·R·x + t (they see the mapped scene alike)."""
    c2w = rigid_inverse(world_to_camera)
    out = c2w.clone()
    out[:, :3, :3] = rot.double() @ c2w[:, :3, :3]
    out[:, :3, 3] = scale * c2w[:, :3, 3] @ rot.double().T + trans.double()
    return rigid_inverse(out).to(world_to_camera.dtype)


def remove_common_motion(base: torch.Tensor, moved: torch.Tensor,
                         reach: float) -> tuple[torch.Tensor, tuple[float, torch.Tensor, torch.Tensor]]:
    """``moved`` (C×4×4) with the similarity that best maps ``base`` onto it undone, and that similarity."""
    fit = pose_similarity_fit(base, moved, reach)
    return apply_similarity(moved.double(), *invert_similarity(*fit)), fit


class CameraRefinement:
    """Per-camera SE(3) corrections (``delta``: C×6 twists) with their own Adam optimiser.

    The gauge: the scene and all its cameras can move together by any similarity without changing a single
    image, so the photometric loss cannot stop the corrections from sharing a common motion while the scene
    follows them, and a weak pull towards zero does not either. Given the cameras' poses and which of them
    train (``poses``, ``train``), every ``gauge_every`` steps the similarity that best maps the given
    training poses onto the corrected ones is taken out of the corrections (``remove_gauge``): the corrected
    cameras keep the given ones' frame, so the scene stays where the held-out cameras (not refined) and
    the input's world frame expect it, and scene.ply and the exported cameras agree.
    """

    def __init__(self, num_cameras: int, device: torch.device | str = "cpu", *, lr: float = 1e-4,
                 weight: float = 1e-3, poses: torch.Tensor | None = None, train: list[int] | None = None,
                 gauge_every: int = 0, focal: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                 pivot: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                 common_rotation: bool = False, row_adam: bool = False) -> None:
        self.delta = torch.zeros(num_cameras, 6, device=device, requires_grad=True)
        self.lr = lr
        self.weight = weight
        # row_adam: each camera's row moves only on the steps that rendered it, by about one learning rate per
        # step (RowAdam). Dense Adam keeps moving every row on its momentum, and its second moment is diluted by
        # the row's 1-in-C share of the steps: about √C learning rates per gradient (5.5 for C = 31), a jitter
        # that blurs the scene and lets the cameras drift (docs/real_captures.md)
        self.row_adam = row_adam
        self.optimizer: RowAdam | SmallAdam = (RowAdam(self.delta, lr, betas=betas) if row_adam
                                               else SmallAdam(self.delta, lr, betas=betas))
        # the units of ``delta`` (module docstring): ω = delta_ω·unit_rot, v = delta_v·unit_trans, about a pivot
        # at depth ``self.pivot`` on the optical axis (0: the camera centre). focal and depth given = "pixels"
        # ("orbit" with ``pivot``), else "twist" (1, 1, 0)
        if (focal is None) != (depth is None) or (pivot and focal is None):
            raise ValueError("CameraRefinement: give both focal and depth (pixel units) or neither; pivot needs them")
        ones = torch.ones(num_cameras, dtype=torch.float64)
        zeros = torch.zeros(num_cameras, dtype=torch.float64)
        self.parametrisation = "twist" if focal is None else "orbit" if pivot else "pixels"
        self.unit_rot = ones if focal is None else 1.0 / focal.detach().double().cpu().reshape(num_cameras)
        self.unit_trans = ones if depth is None else depth.detach().double().cpu().reshape(num_cameras) * self.unit_rot
        self.pivot = depth.detach().double().cpu().reshape(num_cameras) if pivot else zeros
        self.active = True
        self.gauge_every = gauge_every
        self.common_rotation = common_rotation
        self.poses = None if poses is None else poses.detach().double().cpu()
        self.train = list(range(num_cameras)) if train is None else list(train)
        if self.poses is not None:
            centres = rigid_inverse(self.poses[self.train])[:, :3, 3]
            self.reach = float((centres - centres.mean(0)).norm(dim=-1).mean()) if len(self.train) else 0.0
        # the common motion taken out so far (a drift the gauge would otherwise have let through)
        self.gauge_removed = {"count": 0, "rotation_deg": 0.0, "translation": 0.0, "log_scale": 0.0,
                              "camera_frame_rotation_deg": 0.0}

    def can_fix_gauge(self) -> bool:
        """Whether a common motion is defined: poses given, two or more training cameras apart."""
        return self.poses is not None and len(self.train) >= 2 and self.reach > 1e-12

    @torch.no_grad()
    def remove_gauge(self) -> tuple[float, torch.Tensor, torch.Tensor] | None:
        """Take the common similarity out of the training cameras' corrections; returns it (None: undefined).

        Each correction ξᵢ becomes log(S⁻¹(exp(ξᵢ)·Wᵢ)·Wᵢ⁻¹), Wᵢ the given pose and S the similarity fitted by
        ``pose_similarity_fit``; afterwards that fit is the identity.
        """
        if not self.can_fix_gauge():
            return None
        idx = torch.tensor(self.train)
        base = self.poses[idx]
        moved = self.matrices(self.train, detach=True) @ base
        fixed, fit = remove_common_motion(base, moved, self.reach)
        self._count_removed(fit)
        if self.common_rotation:
            # then the corrections' mean rotation in the cameras' frames: removing it leaves a trace of a
            # similarity and removing that a trace of a mean rotation (2/3 of it on a test orbit), so a few
            # rounds, ending on the similarity: the cameras keep the given frame exactly, and the mean rotation
            # left is taken out at the next gauge step
            for _ in range(self.ROUNDS):
                fixed = self._remove_common_rotation(fixed @ rigid_inverse(base)) @ base
                fixed, again = remove_common_motion(base, fixed, self.reach)
                if self._count_removed(again) < 1e-9:
                    break
        self.gauge_removed["count"] += 1
        self.delta[idx] = self.from_matrices(fixed @ rigid_inverse(base), self.train).to(self.delta.dtype).to(
            self.delta.device)
        return fit

    ROUNDS = 4  # rounds of the mean-rotation and similarity removals per gauge step (common_rotation; ~2 ms each)

    def _count_removed(self, fit: tuple[float, torch.Tensor, torch.Tensor]) -> float:
        """Add a removed similarity to ``gauge_removed``; returns its size (radians + |t|/reach + |log s|)."""
        scale, rot, trans = fit
        angle = float(se3_log(_rigid(rot, trans))[:3].norm())
        removed = self.gauge_removed
        removed["rotation_deg"] += math.degrees(angle)
        removed["translation"] += float(trans.norm())
        removed["log_scale"] += abs(math.log(scale))
        return angle + float(trans.norm()) / self.reach + abs(math.log(scale))

    def _remove_common_rotation(self, corrections: torch.Tensor) -> torch.Tensor:
        """``corrections`` (C×4×4, camera frame) turned about each camera centre by minus their mean rotation.

        A rotation shared by every camera in its own frame shifts every image alike (a common pitch is a shift of
        the principal point): on an orbit it is no similarity, so the gauge does not fix it, and the scene can
        follow it by moving (a vertical shift for a pitch) at little cost, so the loss barely resists it either.
        Where the scene and the corrections drift together that way, the held-out cameras (not refined) see the
        scene shifted. The given poses' errors have no common rotation of their own (SfM fits the principal
        point, shared by every photo, with the intrinsics), so it is taken out, and the scene follows."""
        out = corrections.double().clone()
        for _ in range(8):  # the mean of the rotation vectors, taken out until it is zero
            omega = se3_log(out)[:, :3].mean(0)
            turn = torch.eye(4, dtype=torch.float64)
            turn[:3, :3] = twist_matrix(torch.cat([-omega, torch.zeros(3, dtype=torch.float64)]))[:3, :3]
            out = turn @ out
            self.gauge_removed["camera_frame_rotation_deg"] += math.degrees(float(omega.norm()))
            if float(omega.norm()) < 1e-13:
                break
        return out

    def _units(self, index: int | list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.unit_rot[index], self.unit_trans[index], self.pivot[index]

    def matrices(self, index: int | list[int], detach: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The 4×4 correction(s) E (camera frame: corrected world_to_camera = E·world_to_camera) of camera(s)
        ``index``: T(p)·exp((ω, v)^)·T(−p) with ω, v the scaled ``delta`` rows; differentiable unless ``detach``
        (then float64 on the CPU); computed in ``dtype`` (default: delta's)."""
        delta = self.delta[index]
        if detach:
            delta = delta.detach().double().cpu()
        elif dtype is not None:
            delta = delta.to(dtype)
        rot_u, trans_u, pivot = (t.to(delta.device, delta.dtype) for t in self._units(index))
        if self.parametrisation == "twist":
            return twist_matrix(delta)
        xi = torch.cat([delta[..., :3] * rot_u[..., None], delta[..., 3:] * trans_u[..., None]], -1)
        m = twist_matrix(xi)
        # conjugating by the pivot shift T(p) adds p − R·p to the translation (p = (0, 0, d))
        p = torch.zeros(m.shape[:-2] + (3,), dtype=m.dtype, device=m.device)
        p[..., 2] = pivot
        shift = p - (m[..., :3, :3] @ p[..., None])[..., 0]
        top = torch.cat([m[..., :3, :3], (m[..., :3, 3] + shift)[..., None]], -1)
        return torch.cat([top, m[..., 3:, :]], -2)

    def from_matrices(self, matrices: torch.Tensor, index: list[int]) -> torch.Tensor:
        """The ``delta`` rows (float64) whose corrections are ``matrices`` (len(index)×4×4); inverse of ``matrices``."""
        m = matrices.double().cpu().clone()
        if self.parametrisation == "twist":
            return se3_log(m)
        rot_u, trans_u, pivot = self._units(index)
        p = torch.zeros(len(index), 3, dtype=torch.float64)
        p[:, 2] = pivot
        m[:, :3, 3] = m[:, :3, 3] - p + (m[:, :3, :3] @ p[..., None])[..., 0]  # T(−p)·E·T(p)
        xi = se3_log(m)
        return torch.cat([xi[:, :3] / rot_u[:, None], xi[:, 3:] / trans_u[:, None]], -1)

    def apply(self, camera: Cameras, index: int) -> Cameras:
        """``camera`` (one camera) with correction ``index`` applied; differentiable in ``delta``."""
        w2c = self.matrices(index, dtype=camera.world_to_camera.dtype) @ camera.world_to_camera[0]
        return Cameras(w2c[None], camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height,
                       camera.distortion)

    def apply_to_scene(self, scene: GaussianScene, camera: Cameras, index: int) -> GaussianScene:
        """``scene`` moved so that ``camera`` sees it as the corrected camera ``index`` sees the original."""
        w2c = camera.world_to_camera[0].to(scene.means.dtype)
        correction = self.matrices(index, dtype=w2c.dtype)
        motion = torch.linalg.inv(w2c) @ correction @ w2c  # M = W⁻¹·E·W, a rigid motion
        rot, trans = motion[:3, :3], motion[:3, 3]
        means = scene.means @ rot.T + trans
        quats = quat_multiply(rotmat_to_quat(rot), scene.quats)
        return GaussianScene(means, scene.scales, quats, scene.opacities, scene.sh0, scene.shN)

    def regulariser(self, index: int) -> torch.Tensor:
        """L2 pull of this step's camera correction towards zero (on the twist in radians and training units,
        whatever the parametrisation)."""
        d = self.delta[index]
        if self.parametrisation == "twist":
            return self.weight * d.square().sum()
        rot_u, trans_u, _ = (t.to(d.device, d.dtype) for t in self._units(index))
        return self.weight * ((d[..., :3] * rot_u).square().sum() + (d[..., 3:] * trans_u).square().sum())

    def has_gradient(self) -> bool:
        """Whether the last backward pass reached the corrections (the backend differentiates cameras)."""
        g = self.delta.grad
        return g is not None and bool(g.abs().sum() > 0)

    def step(self, lr_scale: float = 1.0) -> None:
        """One Adam step on the corrections, then clear their gradient; every ``gauge_every`` steps the
        common motion is taken out (``remove_gauge``)."""
        if self.row_adam:
            grad = self.delta.grad
            if grad is None:
                return
            rows = grad.ne(0).any(-1).nonzero()[:, 0].tolist()  # the cameras this step rendered
            self.optimizer.step(rows, self.lr * lr_scale)
        else:
            self.optimizer.step(self.lr * lr_scale)
        if self.gauge_every > 0 and self.optimizer.count % self.gauge_every == 0:
            self.remove_gauge()

    @torch.no_grad()
    def corrected_world_to_camera(self, world_to_camera: torch.Tensor, translation_scale: float = 1.0) -> torch.Tensor:
        """C×4×4 corrected poses; ``translation_scale`` converts v to the poses' units (1/scale of the training frame)."""
        e = self.matrices(list(range(len(self.delta))), detach=True)
        e[:, :3, 3] *= translation_scale  # the whole translation is in training units (exp's V·v is linear in v)
        return (e @ world_to_camera.detach().double().cpu()).to(world_to_camera.dtype)

    def magnitudes(self) -> tuple[float, float]:
        """The largest rotation (degrees) and translation (training-frame units) of the corrections."""
        if len(self.delta) == 0:
            return 0.0, 0.0
        e = self.matrices(list(range(len(self.delta))), detach=True)
        cos = ((e[:, :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
        return math.degrees(float(torch.arccos(cos).max())), float(e[:, :3, 3].norm(dim=-1).max())

    def state(self) -> dict[str, Any]:
        """Checkpointable form."""
        return {"delta": self.delta.detach().cpu().clone(), "optimizer": self.optimizer.state_dict(),
                "active": self.active, "gauge_removed": dict(self.gauge_removed),
                "units": {"parametrisation": self.parametrisation, "rot": self.unit_rot.clone(),
                          "trans": self.unit_trans.clone(), "pivot": self.pivot.clone()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""
        with torch.no_grad():
            self.delta.copy_(state["delta"].to(self.delta.device))
        saved = state["optimizer"]
        if self.row_adam and "counts" not in saved:  # dense Adam's state: every row counted as stepped each step
            saved = {**saved, "counts": torch.full((len(self.delta),), int(saved["count"]), dtype=torch.long)}
        self.optimizer.load_state_dict(saved)
        self.active = bool(state.get("active", True))
        self.gauge_removed.update(state.get("gauge_removed", {}))
        # the units the saved corrections were learnt in (a checkpoint from before them: twists)
        units = state.get("units", {"parametrisation": "twist", "rot": torch.ones(len(self.delta), dtype=torch.float64),
                                    "trans": torch.ones(len(self.delta), dtype=torch.float64),
                                    "pivot": torch.zeros(len(self.delta), dtype=torch.float64)})
        self.parametrisation = units["parametrisation"]
        self.unit_rot, self.unit_trans, self.pivot = (units[k].double().cpu() for k in ("rot", "trans", "pivot"))
