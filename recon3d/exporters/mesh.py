"""Mesh extraction: render depth and colour, fuse them in a TSDF volume, extract, clean, write.

Each view is rendered with :func:`recon3d.render`. Its depth is by default the *median* depth (the depth
of the Gaussian whose blend first takes transmittance to 1/2): a reconstruction from a few minutes of
training is hazy, with Gaussians' depths along a pixel spread over metres, and the alpha-weighted mean
(``depth="expected"``) then lies in free space; the median lands on the first surface that hides what is
behind. Where the expected depth agrees with the median to within ``expected_within_voxels`` (a clean
surface) it is used instead, as the median takes a Gaussian's centre depth and so sits a fraction of a
Gaussian in front. Before that, Gaussians wider than ``split_voxels`` voxels are split into narrower pieces
(a wide flat Gaussian's centre depth is wrong everywhere but at its centre), and afterwards each view's
depth is kept only where its neighbouring views see the same surface (``consistent_views``): floaters and
see-through haze are seen at one depth by one view only; and only where some view at least
``min_parallax_deg`` round sees it too: near views agree on the depth of a haze as on a surface's, so far
regions that only near views confirm (the far wall and outer ground of an orbit capture, seen across the
scene) are left out rather than meshed as a layer in front of the truth. The colour is the un-composited ``rgb / alpha``
of the scene as trained (rendered over black), where the accumulated alpha reaches ``alpha_threshold``.
open3d's tensor ``VoxelBlockGrid`` (sparse blocks of voxels; ``ScalableTSDFVolume`` returns an empty mesh
in open3d 0.20.0) fuses the views; marching cubes extracts the surface; connected components smaller than
``min_component_fraction`` of the largest are removed, and so are smaller pieces that the views see past
(a floater: where a view sees it unoccluded, the scene's depth there mostly lies behind it). The checks keep
only depth that views far apart agree on, which leaves a short reconstruction's surface with holes (a third
of the garden's ground) and sometimes in patches: screened Poisson from the fused surface's oriented
vertices closes them, kept only within ``fill_reach_voxels`` of the fused surface (so holes up to about twice
that wide close and nothing is added elsewhere), and each vertex is coloured from the views that see it.
trimesh writes GLB, OBJ or PLY with per-vertex colours, chosen by the file extension.

Views are the training cameras when the source has them, else an automatic set of views on a sphere
around the scene (Fibonacci-spaced, so every side is seen about equally), as for a generated scene.
Measured on the shipped garden against its true geometry: benchmarks/mesh_garden.py.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, look_at_world_to_camera
from ..errors import BackendUnavailable, BuildError, InputError
from ..io_utils import atomic_write_bytes
from ..render import DEPTH_MODES
from ..scene import GaussianScene, quat_to_rotmat

MESH_FORMATS = {".glb": "glb", ".obj": "obj", ".ply": "ply"}


@dataclass
class MeshOptions:
    """Settings of :func:`extract_mesh` (all have working defaults)."""

    resolution: int = 256  # voxels along the longest side of the scene's robust bounds
    voxel_size: float | None = None  # overrides resolution when given (world units)
    truncation_voxels: float = 4.0  # TSDF truncation distance, in voxels
    alpha_threshold: float = 0.5  # pixels less opaque than this carry no depth
    erode_pixels: int = 1  # also drop depth this many pixels from the edge of the opaque region
    max_grazing_deg: float = 75.0  # drop depth where the surface is seen more obliquely than this
    max_depth_outlier: float = 2.0  # drop depth farther than this many voxels from its 5×5 median
    min_views: int = 1  # voxels seen (within the truncation band) by fewer views are left empty
    min_component_fraction: float = 0.05  # drop pieces with fewer triangles than this × the largest
    num_views: int = 48  # automatic views when the source has no cameras
    image_size: int = 512  # longest image side of the fused views (cameras are scaled down to it)
    fov: float = 0.8  # horizontal field of view (radians) of automatic views
    backend: str = "auto"  # render backend; falls back to "reference" if the kernels are unavailable
    consistent_views: int = 2  # keep depth only where this many neighbouring views agree with it (0: off)
    neighbour_views: int = 6  # views compared with each view by the consistency check
    consistency_tolerance: float = 0.01  # relative depth difference within which two views agree
    # keep depth only where a view at least this far round agrees with it (0: off; needs consistent_views > 0)
    min_parallax_deg: float = 25.0
    split_voxels: float = 2.0  # split Gaussians wider than this many voxels (0: never) before rendering depth
    expected_within_voxels: float = 1.0  # median depth: use the expected depth where it is this close to it
    depth: str = "median"  # "median": z where transmittance first reaches 1/2; "expected": alpha-weighted mean z
    close_holes: bool = True  # close the fused surface's holes (screened Poisson from its points and normals)
    poisson_depth: int | None = None  # octree depth of the closing; None: the depth whose cells are at most a voxel
    fill_reach_voxels: float = 5.0  # keep the closed surface only this near the fused one (holes up to ~2× closed)
    # drop pieces (but the largest) that the views see past in more than this share of their sightings (1: never)
    max_see_through: float = 0.15
    # drop pieces (but the largest) with more than this share of their vertices where the cameras stand: nearer a
    # camera's centre than the near end (5th percentile) of its rendered depth, space its own view shows empty (1:
    # never). Garden haze pieces: 1.0; the true surface: 0.01 (a ground meshed out under an orbit's ring: ~0.5)
    max_in_camera_space: float = 0.9
    # at most this many of the fused views, evenly picked, colour the closed surface and test its pieces: each costs a
    # ray cast per vertex (a hazy 40-step lego run's 1.3M vertices: ~1.5 s a view on one core)
    max_colour_views: int = 32
    bounds_quantile: float = 0.01  # robust bounds ignore this fraction of outlying centres per side
    progress: bool = True


def robust_bounds(scene: GaussianScene, quantile: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis quantile bounds of the Gaussian centres, widened by 3σ of the typical Gaussian."""
    means = scene.means.detach().float().cpu()
    if len(means) == 0:
        raise InputError(None, "the scene has no Gaussians, so there is no surface to extract")
    if len(means) > 200_000:  # torch.quantile caps its input size; a random subset gives the same bounds
        means = means[torch.randperm(len(means), generator=torch.Generator().manual_seed(0))[:200_000]]
    lo = torch.quantile(means, quantile, dim=0)
    hi = torch.quantile(means, 1.0 - quantile, dim=0)
    pad = 3.0 * float(torch.exp(scene.scales.detach().float().cpu()).max(dim=1).values.median())
    return lo - pad, hi + pad


def sphere_views(
    scene: GaussianScene, num_views: int = 48, image_size: int = 256, fov: float = 0.8, quantile: float = 0.01
) -> Cameras:
    """``num_views`` cameras spread evenly on a sphere around the scene, each seeing all of it."""
    lo, hi = robust_bounds(scene, quantile)
    center = (lo + hi) / 2
    # The bounding sphere of the robust centres frames an object tighter than the box's corners would.
    means = scene.means.detach().float().cpu()
    inside = ((means >= lo) & (means <= hi)).all(dim=1)
    pad = 3.0 * float(torch.exp(scene.scales.detach().float().cpu()).max(dim=1).values.median())
    reach = (means[inside] - center).norm(dim=1)
    radius = (float(reach.max()) if len(reach) else float((hi - lo).norm()) / 2) + pad
    distance = max(radius, 1e-6) / math.sin(fov / 2) * 1.05
    golden = math.pi * (3.0 - math.sqrt(5.0))
    w2cs = []
    for k in range(num_views):
        z = 1.0 - 2.0 * (k + 0.5) / num_views  # never exactly ±1, so "up" is never parallel to the view
        r = math.sqrt(max(0.0, 1.0 - z * z))
        direction = torch.tensor([r * math.cos(golden * k), r * math.sin(golden * k), z])
        w2cs.append(look_at_world_to_camera(center + distance * direction, center, (0.0, 0.0, 1.0)))
    return Cameras.from_fov(torch.stack(w2cs), fov, image_size, image_size)


def split_large_gaussians(scene: GaussianScene, max_sigma: float, max_pieces: int = 4) -> GaussianScene:
    """Replace each Gaussian wider than ``max_sigma`` along an axis by a grid of narrower ones along that axis.

    A rasterizer reports a Gaussian's depth as its centre's: a pixel that sees a wide, flat Gaussian (the
    ground, a wall) away from its centre gets the centre's depth, not that of the point the ray meets, and
    the further the pixel lies from the centre the larger the error. Pieces on a grid spanning ±2σ, each
    with the original's alpha at its centre, keep the shape and put a centre near every pixel's surface
    point. An axis gets ⌈σ / max_sigma⌉ pieces, at most ``max_pieces``, each 0.6 of its cell (4σ/n) wide.
    (Measured on the garden: narrower, more numerous pieces, n = ⌈2.4σ / max_sigma⌉ up to 8, left more
    holes and a worse 95th percentile: benchmarks/results/mesh_garden.json.)
    """
    sigma = torch.exp(scene.scales)
    pieces = torch.clamp(torch.ceil(sigma / max_sigma), 1, max_pieces).long()  # N×3 pieces per axis
    if bool((pieces == 1).all()):
        return scene
    rot = quat_to_rotmat(scene.quats / scene.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    opacity = torch.sigmoid(scene.opacities)
    parts = [scene[(pieces == 1).all(dim=1)]]
    for shape in torch.unique(pieces, dim=0).tolist():
        if shape == [1, 1, 1]:
            continue
        sel = (pieces == torch.tensor(shape, device=pieces.device)).all(dim=1)
        # Offsets (in σ units) of the pieces' centres along each axis: n cells spanning [-2, 2].
        axes = [
            (-2.0 + 4.0 * (torch.arange(n, dtype=sigma.dtype) + 0.5) / n) if n > 1 else torch.zeros(1) for n in shape
        ]
        grid = torch.cartesian_prod(*axes).reshape(-1, 3).to(sigma.device)  # K×3
        sub = scene[sel]
        s = sigma[sel]
        # A piece is as wide as ~0.6 of its cell, so neighbouring pieces overlap into a smooth sheet.
        shrink = torch.tensor([min(1.0, 0.6 * 4.0 / n) if n > 1 else 1.0 for n in shape], dtype=s.dtype)
        offsets = torch.einsum("nij,nkj->nki", rot[sel], grid[None] * s[:, None, :])  # N×K×3 world
        k = len(grid)
        alpha = opacity[sel][:, None] * torch.exp(-0.5 * (grid**2).sum(-1))[None]  # N×K
        alpha = alpha.clamp(1e-6, 1 - 1e-6)
        parts.append(
            GaussianScene(
                means=(sub.means[:, None] + offsets).reshape(-1, 3),
                scales=torch.log(s[:, None] * shrink.to(s.device)).expand(-1, k, -1).reshape(-1, 3),
                quats=sub.quats[:, None].expand(-1, k, -1).reshape(-1, 4),
                opacities=torch.logit(alpha).reshape(-1),
                sh0=sub.sh0[:, None].expand(-1, k, -1, -1).reshape(-1, 1, 3),
                shN=sub.shN[:, None].expand(-1, k, -1, -1).reshape(len(sub) * k, sub.shN.shape[1], 3),
            )
        )
    return GaussianScene.cat(parts)


def _render_view(scene: GaussianScene, camera: Cameras, backend: str, depth: str = "expected"):
    from ..render import render

    with torch.no_grad():
        return render(scene, camera.to(scene.device), background=torch.zeros(3), backend=backend, depth=depth)


def _pick_backend(scene: GaussianScene, camera: Cameras, backend: str, depth: str = "expected") -> str:
    """Use ``backend``, or the dense reference rasterizer when the compiled kernels cannot run here."""
    if backend != "auto":
        return backend
    try:
        _render_view(scene[:1], camera, "auto", depth)
        return "auto"
    except (BackendUnavailable, BuildError) as exc:
        print(f"warning: {exc}; using the slow reference rasterizer for the mesh views", file=sys.stderr)
        return "reference"


def _depth_consistent(depth: torch.Tensor, tolerance: float, window: int = 5) -> torch.Tensor:
    """Pixels whose depth lies within ``tolerance`` of the median of its ``window``² neighbourhood (H×W bool).

    Expected depth averages everything a ray meets: where a surface's Gaussians leave a gap, the far side
    shows through and the pixel reports a depth behind the surface, which would carve a hole in it. Such
    gaps are thin, so they stand out from their neighbourhood's median; on a smooth surface, even a steep
    one, the median of the window is the centre's own depth.
    """
    h, w = depth.shape
    patches = torch.nn.functional.unfold(depth[None, None], window, padding=window // 2)[0]  # window²×(H·W)
    median = patches.median(dim=0).values.reshape(h, w)
    return (depth - median).abs() <= tolerance


def _grazing_ok(depth: torch.Tensor, cam: Cameras, max_deg: float) -> torch.Tensor:
    """Pixels whose depth-map surface normal is within ``max_deg`` of the viewing ray (H×W bool).

    Depth seen at a grazing angle, as at silhouettes where a ray skims many thin Gaussians, lies off
    the surface; every such spot is seen face-on from some other view.
    """
    h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype), torch.arange(w, dtype=depth.dtype), indexing="ij")
    rays = torch.stack([(u + 0.5 - cam.cx[0]) / cam.fx[0], (v + 0.5 - cam.cy[0]) / cam.fy[0], torch.ones_like(u)], -1)
    points = rays * depth[..., None]
    valid = depth > 0
    ok = torch.zeros_like(valid)
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    normal = torch.linalg.cross(du, dv)
    ray = rays[1:-1, 1:-1]
    cos = (normal * ray).sum(-1).abs() / (normal.norm(dim=-1) * ray.norm(dim=-1)).clamp_min(1e-12)
    neighbours = valid[1:-1, 2:] & valid[1:-1, :-2] & valid[2:, 1:-1] & valid[:-2, 1:-1] & valid[1:-1, 1:-1]
    ok[1:-1, 1:-1] = neighbours & (cos >= math.cos(math.radians(max_deg)))
    return ok


def _backproject(cam: Cameras, depth: torch.Tensor) -> torch.Tensor:
    """World points (H×W×3) of a depth map seen by one camera."""
    h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype), torch.arange(w, dtype=depth.dtype), indexing="ij")
    rays = torch.stack([(u + 0.5 - cam.cx[0]) / cam.fx[0], (v + 0.5 - cam.cy[0]) / cam.fy[0], torch.ones_like(u)], -1)
    c2w = torch.linalg.inv(cam.world_to_camera[0].to(depth.dtype))
    return (rays * depth[..., None]) @ c2w[:3, :3].T + c2w[:3, 3]


def _agrees(points: torch.Tensor, view: tuple, tolerance: float) -> torch.Tensor:
    """Which world points (P×3) a view's depth map sees within ``tolerance`` (relative) of their depth in it."""
    cam, depth, _ = view
    p = points @ cam.world_to_camera[0, :3, :3].T.to(points.dtype) + cam.world_to_camera[0, :3, 3]
    z = p[:, 2]
    h, w = depth.shape
    u = torch.floor(cam.fx[0] * p[:, 0] / z.clamp_min(1e-9) + cam.cx[0]).long()
    v = torch.floor(cam.fy[0] * p[:, 1] / z.clamp_min(1e-9) + cam.cy[0]).long()
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    seen = torch.zeros_like(z)
    seen[inside] = depth[v[inside], u[inside]]
    return inside & (seen > 0) & ((seen - z).abs() <= tolerance * z)


def _multiview_consistent(views: list, options: MeshOptions) -> list[torch.Tensor]:
    """Each view's depth, kept only where enough of its neighbouring views see the same surface there.

    A pixel's surface point is projected into the ``neighbour_views`` views whose cameras are nearest; a
    neighbour agrees when its own depth at that spot lies within ``consistency_tolerance`` (relative) of
    the point's depth in it. Floaters, and the far side seen through a gap, are seen at one depth by one
    view only; a real surface is where the views' depths meet. ``min_parallax_deg`` then keeps only spots
    that some view at least that many degrees round (any view, not only a neighbour) confirms: near views
    agree on a haze's depth as well as on a surface's, as a small baseline cannot tell them apart.
    """
    centres = torch.stack([cam.centers()[0] for cam, _, _ in views])
    forward = torch.stack([cam.world_to_camera[0, 2, :3] for cam, _, _ in views])
    # With few views (a tiny test scene) no pixel could find more agreeing neighbours than there are.
    needed = min(options.consistent_views, options.neighbour_views, len(views) - 1)
    cos_parallax = math.cos(math.radians(options.min_parallax_deg))
    out = []
    for i, (cam, depth, _) in enumerate(views):
        valid = depth > 0
        points = _backproject(cam, depth)[valid]  # P×3
        # Neighbours: near in position and looking the same way (a view from behind sees other surfaces).
        score = (centres - centres[i]).norm(dim=1) * (2.0 - (forward @ forward[i]))
        score[i] = float("inf")
        order = torch.argsort(score).tolist()
        agree = torch.zeros(len(points), dtype=torch.int32)
        for j in order[: options.neighbour_views]:
            agree += _agrees(points, views[j], options.consistency_tolerance).int()
        ok = agree >= needed
        if options.min_parallax_deg > 0:
            # Ask the other views, nearest first, about the spots that passed and no wide view confirmed yet.
            todo = ok.nonzero()[:, 0]
            confirmed = torch.zeros_like(ok)
            for j in order[:-1]:
                if len(todo) == 0:
                    break
                p = points[todo]
                ray_i = p - centres[i].to(p.dtype)
                ray_j = p - centres[j].to(p.dtype)
                cos = (ray_i * ray_j).sum(1) / (ray_i.norm(dim=1) * ray_j.norm(dim=1)).clamp_min(1e-12)
                wide = cos <= cos_parallax
                if not bool(wide.any()):
                    continue
                hit = wide.clone()
                hit[wide] = _agrees(p[wide], views[j], options.consistency_tolerance)
                confirmed[todo[hit]] = True
                todo = todo[~hit]
            ok &= confirmed
        keep = torch.zeros_like(valid)
        # Measured on the garden: also keeping spots that one neighbour confirms and none looks through
        # (which closes a clean cube seen from a sparse ring) let haze through: 95th-percentile distance
        # 7.5 cm -> 60 cm. A sparse clean scene can ask for consistent_views=1.
        keep[valid] = ok
        out.append(torch.where(keep, depth, torch.zeros_like(depth)))
    return out


def fuse_tsdf(scene: GaussianScene, cameras: Cameras, options: MeshOptions):
    """Render every camera and fuse depth + colour into an open3d VoxelBlockGrid.

    Returns (grid, voxel size, colour views): the last are (camera, colour H×W×3, alpha H×W, depth H×W) of every
    view that saw some opaque depth, before the multi-view check, to colour a closed surface with and to test
    its pieces against.
    """
    import open3d as o3d
    import open3d.core as o3c

    from ..progress import track

    # Render where the backend runs fastest: on the GPU when there is one (and the backend can use it).
    on_gpu = torch.cuda.is_available() and options.backend in ("auto", "cuda", "gsplat")
    scene = scene.detach().to("cuda" if on_gpu else "cpu", torch.float32)
    lo, hi = robust_bounds(scene, options.bounds_quantile)
    voxel = options.voxel_size or float((hi - lo).max()) / options.resolution
    if not voxel > 0:
        raise InputError(None, "the scene has no extent (all Gaussians at one point), so no mesh can be extracted")
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=voxel,
        block_resolution=8,
        block_count=20_000,  # the hash map grows past this when a scene needs more
        device=o3c.Device("CPU:0"),
    )
    cameras = cameras.to("cpu")
    colour_scene = scene  # colour comes from the scene as trained; the split pieces only approximate its look
    if options.split_voxels > 0:
        scene = split_large_gaussians(scene, options.split_voxels * voxel)
    if options.depth not in DEPTH_MODES:
        raise InputError(None, f"unknown depth mode {options.depth!r}; choose one of {', '.join(DEPTH_MODES)}")
    backend = _pick_backend(scene, cameras[0], options.backend, options.depth)
    views = []  # (camera, depth H×W, colour H×W×3) of every view that kept some depth
    # (camera, colour H×W×3, alpha H×W, depth H×W) of every view, whatever depth the checks kept: to colour the
    # surface and to find pieces the views see through (depth: as rendered, 0 where less opaque than alpha_threshold)
    colour_views = []
    for i in track(range(len(cameras)), description="rendering views", disable=not options.progress, transient=True, unit="views"):
        cam = cameras[i]
        longest = max(int(cam.width[0]), int(cam.height[0]))
        if longest > options.image_size:
            cam = cam.scaled(options.image_size / longest)
        out = _render_view(scene, cam, backend, options.depth)
        alpha = out.alpha[0, ..., 0].float().cpu()
        mask = alpha >= options.alpha_threshold
        seen_depth = torch.where(mask, out.depth[0, ..., 0].float().cpu(), torch.zeros_like(alpha))
        if options.erode_pixels > 0:
            # Rays grazing a silhouette cross many thin Gaussians and report a depth outside the surface;
            # other views see those parts face-on, so their depth is not needed.
            k = 2 * options.erode_pixels + 1
            outside = (~mask).float()[None, None]
            mask = torch.nn.functional.max_pool2d(outside, k, stride=1, padding=options.erode_pixels)[0, 0] == 0
        if not bool(mask.any()):
            continue
        depth = torch.where(mask, out.depth[0, ..., 0].float().cpu(), torch.zeros_like(alpha))
        plain = None  # the trained scene's own render (expected depth, colour), when the depth came from another
        if colour_scene is not scene or (options.depth == "median" and options.expected_within_voxels > 0):
            plain = _render_view(colour_scene, cam, backend)
        if options.depth == "median" and options.expected_within_voxels > 0:
            # The median reports the crossing Gaussian's centre depth, which on a surface tiled by overlapping
            # discs sits a fraction of their size in front; where the blend is a clean surface the expected
            # depth agrees with it closely and has no such bias, so take the expected depth there.
            expected = plain.depth[0, ..., 0].float().cpu()
            close = (expected - depth).abs() <= options.expected_within_voxels * voxel
            depth = torch.where(mask & close, expected, depth)
        if options.max_depth_outlier > 0:
            keep = _depth_consistent(depth, options.max_depth_outlier * voxel)
            depth = torch.where(keep, depth, torch.zeros_like(depth))
        if options.max_grazing_deg < 90.0:
            depth = torch.where(_grazing_ok(depth, cam, options.max_grazing_deg), depth, torch.zeros_like(depth))
        if not bool((depth > 0).any()):  # every pixel filtered out: nothing to fuse from this view
            continue
        if plain is not None:
            out = plain
            alpha = out.alpha[0, ..., 0].float().cpu()
        color = (out.rgb[0].float().cpu() / alpha.clamp_min(1e-6)[..., None]).clamp(0.0, 1.0)
        views.append((cam, depth, color))
        colour_views.append((cam, color, alpha, seen_depth))
    if options.consistent_views > 0 and len(views) > 1:
        depths = _multiview_consistent(views, options)
        views = [(cam, d, c) for (cam, _, c), d in zip(views, depths) if bool((d > 0).any())]
        if not views and options.min_parallax_deg > 0:
            # Cameras all close together (a short forward-facing sweep) can confirm nothing from that far round.
            raise InputError(
                None,
                f"no depth is confirmed by views {options.min_parallax_deg:g} degrees apart (are the cameras closer "
                "together than that?); lower --min-parallax (0 turns the check off)",
            )
    fused = 0
    for cam, depth, color in track(views, description="fusing views", disable=not options.progress, transient=True, unit="views"):
        depth_max = float(depth.max()) + options.truncation_voxels * voxel * 2
        intrinsic = o3c.Tensor(cam.intrinsics()[0].double().numpy())
        extrinsic = o3c.Tensor(cam.world_to_camera[0].double().numpy())
        depth_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth.numpy()[..., None])))
        color_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(color.numpy())))
        try:
            coords = grid.compute_unique_block_coordinates(
                depth_img, intrinsic, extrinsic, 1.0, depth_max, options.truncation_voxels
            )
        except RuntimeError as exc:
            # open3d samples every few pixels when it looks for blocks: a view that kept only a handful of
            # isolated depth pixels (after the multi-view check) can touch none, and open3d refuses it.
            if "No block is touched" not in str(exc):
                raise
            continue
        grid.integrate(coords, depth_img, color_img, intrinsic, extrinsic, 1.0, depth_max, options.truncation_voxels)
        fused += 1
    if fused == 0:
        raise InputError(None, "no view saw any opaque part of the scene, so there is no surface to extract")
    return grid, voxel, colour_views


def _clean(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, min_fraction: float):
    """Drop connected components with fewer than ``min_fraction`` × the largest one's triangles."""
    import trimesh

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=True)
    if len(mesh.faces) == 0:
        return mesh
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    counts = np.bincount(labels)
    keep = counts[labels] >= min_fraction * counts.max()
    if not keep.all():
        mesh.update_faces(keep)
        mesh.remove_unreferenced_vertices()
    # Marching cubes leaves the odd one-triangle gap where a surface crosses a block edge; close those.
    trimesh.repair.fill_holes(mesh)
    return mesh


def extract_mesh(scene: GaussianScene, cameras: Cameras | None = None, **options):
    """Fuse rendered depth into a TSDF and return the coloured, cleaned surface as a ``trimesh.Trimesh``."""
    import trimesh

    opts = MeshOptions(**options)
    if len(scene) == 0:
        raise InputError(None, "the scene has no Gaussians, so there is no surface to extract")
    if cameras is None:
        cameras = sphere_views(scene, opts.num_views, opts.image_size, opts.fov, opts.bounds_quantile)
    grid, voxel, colour_views = fuse_tsdf(scene, cameras, opts)
    standing = _camera_space(colour_views)
    if len(colour_views) > opts.max_colour_views > 0:
        pick = np.linspace(0, len(colour_views) - 1, opts.max_colour_views).round().astype(int)
        colour_views = [colour_views[i] for i in np.unique(pick)]
    # Each fused view adds 1 to a voxel's weight; the threshold is exclusive.
    mesh = grid.extract_triangle_mesh(weight_threshold=opts.min_views - 0.5).to_legacy()
    vertices = np.asarray(mesh.vertices)
    faces = np.asarray(mesh.triangles)
    if len(faces) == 0:
        raise InputError(None, "the fused volume holds no surface (try a lower --alpha-threshold or more views)")
    colors = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.full_like(vertices, 0.5)
    colors_u8 = np.clip(np.round(colors * 255.0), 0, 255).astype(np.uint8)
    rgba = np.concatenate([colors_u8, np.full((len(colors_u8), 1), 255, np.uint8)], axis=1)
    mesh = _clean(vertices, faces, rgba, opts.min_component_fraction)
    labels = None
    if opts.max_see_through < 1.0 and len(mesh.faces) > 0:
        labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    if labels is not None and labels.max() > 0:
        # Measured on five 700-step garden runs (all pieces down to 1 % of the largest): pieces on the true
        # surface were seen past in 3-8 % of their sightings; four of six haze pieces (0.6-0.9 m off) in 21-36 %,
        # the other two (1-3 % of the faces: the size rule drops them) in 3 %: a floater that hides nothing.
        fractions = _see_through_fractions(mesh, labels, colour_views, voxel)
        floater = fractions > opts.max_see_through
        if opts.max_in_camera_space < 1.0:
            floater |= _camera_space_fractions(mesh, labels, *standing) > opts.max_in_camera_space
        floater[np.argmax(np.bincount(labels))] = False
        if floater.any():
            mesh.update_faces(~floater[labels])
            mesh.remove_unreferenced_vertices()
    if opts.close_holes and len(mesh.faces) > 0:
        depth = opts.poisson_depth
        if depth is None:  # Poisson's octree spans 1.1 × the points' box
            extent = float((mesh.vertices.max(0) - mesh.vertices.min(0)).max())
            depth = int(np.clip(math.ceil(math.log2(max(1.1 * extent / voxel, 1.0))), 4, 10))
        closed = close_surface(mesh, depth, opts.fill_reach_voxels * voxel)
        if len(closed.faces) > 0:
            _colour_from_views(closed, colour_views, voxel)
            mesh = _clean(closed.vertices, closed.faces, closed.visual.vertex_colors, opts.min_component_fraction)
    return mesh


def close_surface(mesh, depth: int, reach: float):
    """The surface through ``mesh``'s vertices, closed over its holes (screened Poisson), kept within ``reach``.

    The TSDF keeps only depth that views far apart agree on, so a short reconstruction's surface comes out
    full of holes (a third of the garden's ground) and sometimes in patches. Screened Poisson fits one smooth
    surface to the oriented points (the TSDF mesh's vertices and normals): it passes through them where they
    are and bridges the gaps between them. It also extrapolates a closed hull far past the data, so every
    vertex farther than ``reach`` from the fused surface is dropped: holes up to about twice that wide close,
    nothing else is added. Its points come from the checked depth only, so no haze comes back.
    """
    import open3d as o3d
    import trimesh
    from scipy.spatial import cKDTree

    points = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.array(mesh.vertices, dtype=np.float64)))
    points.normals = o3d.utility.Vector3dVector(np.array(mesh.vertex_normals, dtype=np.float64))
    # One thread: open3d's multithreaded Poisson crashes now and then (isl-org/Open3D#6828; seen here once in
    # about twenty garden exports); on one thread it takes a few seconds for the garden.
    poisson, _ = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(points, depth=depth, scale=1.1, n_threads=1)
    vertices = np.asarray(poisson.vertices)
    far = cKDTree(np.asarray(mesh.vertices)).query(vertices, distance_upper_bound=reach)[0] > reach
    poisson.remove_vertices_by_mask(far)
    vertices, faces = np.asarray(poisson.vertices), np.asarray(poisson.triangles)
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=True)


def _caster(mesh):
    """An open3d ray-casting scene of a trimesh mesh."""
    import open3d as o3d

    caster = o3d.t.geometry.RaycastingScene()
    caster.add_triangles(
        o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
        o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)),
    )
    return caster


def _visible(caster, vertices: np.ndarray, cam: Cameras, shape: tuple, voxel: float):
    """The vertices (P×3, float32) that a view sees unoccluded by the mesh: (indices, pixel u, pixel v, view z).

    A vertex counts when the view's ray towards it first hits the mesh within two voxels of it.
    """
    import open3d as o3d

    w2c = cam.world_to_camera[0].double().numpy()
    p = vertices @ w2c[:3, :3].T + w2c[:3, 3]
    z = p[:, 2]
    front = z > 1e-6
    u = np.floor(float(cam.fx[0]) * p[:, 0] / np.where(front, z, 1) + float(cam.cx[0])).astype(np.int64)
    v = np.floor(float(cam.fy[0]) * p[:, 1] / np.where(front, z, 1) + float(cam.cy[0])).astype(np.int64)
    h, w = shape
    idx = np.nonzero(front & (u >= 0) & (u < w) & (v >= 0) & (v < h))[0]
    if len(idx) == 0:
        return idx, idx, idx, z[idx]
    centre = (-w2c[:3, :3].T @ w2c[:3, 3]).astype(np.float32)
    ray = vertices[idx] - centre
    dist = np.linalg.norm(ray, axis=1)
    rays = np.concatenate([np.broadcast_to(centre, ray.shape), ray / dist[:, None]], 1).astype(np.float32)
    hit = caster.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    idx = idx[np.abs(hit - dist) <= 2.0 * voxel]
    return idx, u[idx], v[idx], z[idx]


def _colour_from_views(mesh, colour_views: list, voxel: float) -> None:
    """Set each vertex's colour to the mean of the rendered colour where views see it (visibility by ray cast).

    Each view's colour is weighted by the scene's opacity at that pixel (an almost transparent pixel's
    un-composited colour is noise). Vertices no view sees keep their nearest seen neighbour's colour.
    """
    from scipy.spatial import cKDTree

    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    caster = _caster(mesh)
    total = np.zeros((len(vertices), 3))
    weight = np.zeros(len(vertices))
    for cam, colour, alpha, _ in colour_views:
        idx, u, v, _ = _visible(caster, vertices, cam, tuple(alpha.shape), voxel)
        a = alpha.numpy()[v, u].astype(np.float64)
        total[idx] += colour.numpy()[v, u] * a[:, None]
        weight[idx] += a
    seen = weight > 1e-6
    rgb = np.full((len(vertices), 3), 0.5)
    if seen.any():
        rgb[seen] = total[seen] / weight[seen, None]
        if not seen.all():
            rgb[~seen] = rgb[seen][cKDTree(vertices[seen]).query(vertices[~seen])[1]]
    colours_u8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    mesh.visual.vertex_colors = np.concatenate([colours_u8, np.full((len(vertices), 1), 255, np.uint8)], axis=1)


def _camera_space(colour_views: list) -> tuple[np.ndarray, np.ndarray]:
    """Where the cameras stand: each view's camera centre (N×3) and the near end of its rendered depth (N,)."""
    centres, radii = [], []
    for cam, _, _, depth in colour_views:
        seen = depth[depth > 0]
        if len(seen) == 0:
            continue
        w2c = cam.world_to_camera[0].double().numpy()
        centres.append(-w2c[:3, :3].T @ w2c[:3, 3])
        radii.append(float(torch.quantile(seen.float(), 0.05)))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 3), np.asarray(radii, dtype=np.float64)


def _camera_space_fractions(mesh, labels: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Per connected piece of ``mesh``: the share of its vertices nearer some camera's centre than that camera's radius.

    A camera's view shows the space before it empty up to its nearest surface; the cameras of a capture stand
    together (an orbit's ring), so this space is where they are. Something opaque there is seen only from
    across the ring, in front of the far surface, by views that agree on it (an orbit's far side under a
    random training background: the garden's 700-step runs meshed a sheet 0.8-1 m off the truth, all of whose
    vertices lay in this space, with 1 % of the true surface's), while the cameras that stand in it look
    away and cannot see past it, so the see-through test keeps it.
    """
    if len(centres) == 0:
        return np.zeros(labels.max() + 1)
    from scipy.spatial import cKDTree

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    inside = np.zeros(len(vertices), dtype=bool)
    tree = cKDTree(vertices)
    for centre, radius in zip(centres, radii):
        inside[tree.query_ball_point(centre, radius)] = True
    vertex_label = np.zeros(len(vertices), dtype=np.int64)
    vertex_label[mesh.faces.reshape(-1)] = np.repeat(labels, 3)
    used = np.zeros(len(vertices), dtype=bool)
    used[mesh.faces.reshape(-1)] = True
    hits = np.bincount(vertex_label[used & inside], minlength=labels.max() + 1)
    total = np.bincount(vertex_label[used], minlength=labels.max() + 1)
    return hits / np.maximum(total, 1)


def _see_through_fractions(
    mesh, labels: np.ndarray, colour_views: list, voxel: float, margin_voxels: float = 3.0
) -> np.ndarray:
    """Per connected piece of ``mesh`` (``labels``: each face's piece): the share of (vertex, view) pairs in which the view sees past the vertex.

    A view that sees a vertex unoccluded by the mesh either sees the scene at about the vertex's depth, or in
    front of it (something the mesh left out hides it), or past it: its depth there lies more than
    ``margin_voxels`` behind, or the pixel is transparent. Of the pairs seen at or past the vertex, the share
    seen past it. A real surface is seen at its depth by most views; a floater is seen through by most.
    """
    vertex_label = np.zeros(len(mesh.vertices), dtype=np.int64)
    vertex_label[mesh.faces.reshape(-1)] = np.repeat(labels, 3)
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    caster = _caster(mesh)
    through = np.zeros(labels.max() + 1)
    on = np.zeros(labels.max() + 1)
    for cam, _, alpha, depth in colour_views:
        idx, u, v, z = _visible(caster, vertices, cam, tuple(alpha.shape), voxel)
        d = depth.numpy()[v, u].astype(np.float64)
        past = (d <= 0) | (d > z + margin_voxels * voxel)
        at = ~past & (d >= z - margin_voxels * voxel)
        np.add.at(through, vertex_label[idx[past]], 1)
        np.add.at(on, vertex_label[idx[at]], 1)
    return through / np.maximum(through + on, 1)


def save_mesh(mesh, path: str | Path) -> Path:
    """Write a trimesh mesh as GLB, OBJ or PLY (by the extension of ``path``) with vertex colours, atomically."""
    path = Path(path)
    kind = MESH_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(path, f"unknown mesh extension {path.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    if kind == "obj":
        from trimesh.exchange.obj import export_obj

        data = export_obj(mesh, include_color=True, include_normals=False, include_texture=False)
    else:
        data = mesh.export(file_type=kind)
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    return path


def export_mesh(scene: GaussianScene, path: str | Path, cameras: Cameras | None = None, **options) -> Path:
    """Extract the surface of ``scene`` (see :func:`extract_mesh`) and write it to ``path`` (.glb, .obj or .ply)."""
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:  # refuse before minutes of fusion
        raise InputError(path, f"unknown mesh extension {path.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    return save_mesh(extract_mesh(scene, cameras, **options), path)
