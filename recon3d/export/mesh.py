"""Mesh extraction: render depth and colour, fuse them in a TSDF volume, extract, clean, write.

Each view is rendered with :func:`recon3d.render`; its expected depth (``out.depth``, the alpha-weighted
mean view-space z) is kept where the accumulated alpha reaches ``alpha_threshold``, and its colour is the
un-composited ``rgb / alpha`` (rendered over black). open3d's tensor ``VoxelBlockGrid`` (sparse blocks of
voxels; ``ScalableTSDFVolume`` returns an empty mesh in open3d 0.20.0) fuses the views; marching cubes
extracts the surface; connected components smaller than ``min_component_fraction`` of the largest are
removed; trimesh writes GLB, OBJ or PLY with per-vertex colours, chosen by the file extension.

Views are the training cameras when the source has them, else an automatic set of views on a sphere
around the scene (Fibonacci-spaced, so every side is seen about equally), as for a generated scene.
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
from ..scene import GaussianScene

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


def _render_view(scene: GaussianScene, camera: Cameras, backend: str):
    from ..render import render

    with torch.no_grad():
        return render(scene, camera.to(scene.device), background=torch.zeros(3), backend=backend)


def _pick_backend(scene: GaussianScene, camera: Cameras, backend: str) -> str:
    """Use ``backend``, or the dense reference rasterizer when the compiled kernels cannot run here."""
    if backend != "auto":
        return backend
    try:
        _render_view(scene[:1], camera, "auto")
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


def fuse_tsdf(scene: GaussianScene, cameras: Cameras, options: MeshOptions):
    """Render every camera and fuse depth + colour into an open3d VoxelBlockGrid; returns (grid, voxel size)."""
    import open3d as o3d
    import open3d.core as o3c
    from rich.progress import track

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
    backend = _pick_backend(scene, cameras[0], options.backend)
    fused = 0
    for i in track(range(len(cameras)), description="fusing views", disable=not options.progress, transient=True):
        cam = cameras[i]
        longest = max(int(cam.width[0]), int(cam.height[0]))
        if longest > options.image_size:
            cam = cam.scaled(options.image_size / longest)
        out = _render_view(scene, cam, backend)
        alpha = out.alpha[0, ..., 0].float().cpu()
        mask = alpha >= options.alpha_threshold
        if options.erode_pixels > 0:
            # Rays grazing a silhouette cross many thin Gaussians and report a depth outside the surface;
            # other views see those parts face-on, so their depth is not needed.
            k = 2 * options.erode_pixels + 1
            outside = (~mask).float()[None, None]
            mask = torch.nn.functional.max_pool2d(outside, k, stride=1, padding=options.erode_pixels)[0, 0] == 0
        if not bool(mask.any()):
            continue
        depth = torch.where(mask, out.depth[0, ..., 0].float().cpu(), torch.zeros_like(alpha))
        if options.max_depth_outlier > 0:
            keep = _depth_consistent(depth, options.max_depth_outlier * voxel)
            depth = torch.where(keep, depth, torch.zeros_like(depth))
        if options.max_grazing_deg < 90.0:
            depth = torch.where(_grazing_ok(depth, cam, options.max_grazing_deg), depth, torch.zeros_like(depth))
        if not bool((depth > 0).any()):  # every pixel filtered out: nothing to fuse from this view
            continue
        color = (out.rgb[0].float().cpu() / alpha.clamp_min(1e-6)[..., None]).clamp(0.0, 1.0)
        depth_max = float(depth.max()) + options.truncation_voxels * voxel * 2
        intrinsic = o3c.Tensor(cam.intrinsics()[0].double().numpy())
        extrinsic = o3c.Tensor(cam.world_to_camera[0].double().numpy())
        depth_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth.numpy()[..., None])))
        color_img = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(color.numpy())))
        coords = grid.compute_unique_block_coordinates(
            depth_img, intrinsic, extrinsic, 1.0, depth_max, options.truncation_voxels
        )
        grid.integrate(coords, depth_img, color_img, intrinsic, extrinsic, 1.0, depth_max, options.truncation_voxels)
        fused += 1
    if fused == 0:
        raise InputError(None, "no view saw any opaque part of the scene, so there is no surface to extract")
    return grid, voxel


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
    opts = MeshOptions(**options)
    if len(scene) == 0:
        raise InputError(None, "the scene has no Gaussians, so there is no surface to extract")
    if cameras is None:
        cameras = sphere_views(scene, opts.num_views, opts.image_size, opts.fov, opts.bounds_quantile)
    grid, _ = fuse_tsdf(scene, cameras, opts)
    # Each fused view adds 1 to a voxel's weight; the threshold is exclusive.
    mesh = grid.extract_triangle_mesh(weight_threshold=opts.min_views - 0.5).to_legacy()
    vertices = np.asarray(mesh.vertices)
    faces = np.asarray(mesh.triangles)
    if len(faces) == 0:
        raise InputError(None, "the fused volume holds no surface (try a lower --alpha-threshold or more views)")
    colors = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.full_like(vertices, 0.5)
    colors_u8 = np.clip(np.round(colors * 255.0), 0, 255).astype(np.uint8)
    rgba = np.concatenate([colors_u8, np.full((len(colors_u8), 1), 255, np.uint8)], axis=1)
    return _clean(vertices, faces, rgba, opts.min_component_fraction)


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
