"""``recon3d export RUN --format mesh`` on a NeRF run: marching cubes on the field's density, vertex colours
from the field.

The density is sampled at the corners of a ``resolution``³ lattice over the field's unit cube (a bounded
scene's box; for a contracted scene, its inner cube, where the cameras' surroundings live: the shell holds
the far background at ever coarser resolution). Lattice points in occupancy-grid cells that are empty (and
not next to an occupied one) are not evaluated: they are empty space to the marcher too. The iso-surface is
where σ equals the threshold; marching cubes runs on v = (σ₀ − σ)/(σ₀ + σ) (in (−1, 1), positive in empty
space, zero on the surface: the signed field open3d's ``VoxelBlockGrid`` extracts from). Each vertex is
coloured by the colour MLP at that point, seen along the surface normal from outside.

``density_mesh`` is the generic part (any density and colour functions on a box), so an analytic density
checks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..errors import InputError

# the default iso-level: a layer 1/256 of the box thick that stops half the light is surface
LAYER_FRACTION = 1.0 / 256


def density_mesh(density: Callable[[torch.Tensor], torch.Tensor], lo: np.ndarray, hi: np.ndarray, resolution: int,
                 level: float, *, skip: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 chunk: int = 1 << 16, progress: bool = False):
    """Marching cubes of ``density`` (N×3 points -> N) on the box [lo, hi] at ``resolution`` cells along its
    longest side, iso-level ``level``; returns an uncoloured ``trimesh.Trimesh`` (None if nothing crosses).
    ``skip`` (N×3 -> bool N) marks lattice points known empty (not evaluated)."""
    import open3d as o3d
    import open3d.core as o3c
    import trimesh

    from ..progress import track

    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    voxel = float((hi - lo).max()) / resolution
    block = 8
    nblocks = np.ceil((hi - lo) / (voxel * block)).astype(int) + 1
    # open3d's lattice sits on multiples of the voxel size from the origin: work relative to ``lo``
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in nblocks], indexing="ij"), -1).reshape(-1, 3)
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight"), attr_dtypes=(o3c.float32, o3c.float32), attr_channels=((1), (1)),
        voxel_size=voxel, block_resolution=block, block_count=max(64, len(coords)), device=o3c.Device("CPU:0"))
    grid.hashmap().activate(o3c.Tensor(coords.astype(np.int32)))
    points, index = grid.voxel_coordinates_and_flattened_indices()
    pts = torch.from_numpy(points.numpy().astype(np.float64) + lo).float()
    idx = torch.from_numpy(index.numpy().astype(np.int64))
    inside = ((pts >= torch.from_numpy(lo).float() - 1e-6) & (pts <= torch.from_numpy(hi).float() + 1e-6)).all(-1)
    sigma = torch.zeros(len(pts))
    todo = inside.clone()
    if skip is not None:
        todo &= ~skip(pts)
    where = torch.nonzero(todo)[:, 0]
    with torch.no_grad():
        for i in track(range(0, len(where), chunk), description="sampling the density", disable=not progress,
                       transient=True, unit="chunks"):
            sel = where[i:i + chunk]
            sigma[sel] = density(pts[sel]).float().reshape(-1)
    value = (level - sigma) / (level + sigma)
    value[~inside] = 1.0  # outside the box is empty: the surface closes at its walls
    tsdf = grid.attribute("tsdf").reshape((-1, 1))
    weight = grid.attribute("weight").reshape((-1, 1))
    tsdf[o3c.Tensor(idx.numpy())] = o3c.Tensor(value.numpy()[:, None].astype(np.float32))
    weight[o3c.Tensor(idx.numpy())] = o3c.Tensor(np.ones((len(idx), 1), np.float32))
    legacy = grid.extract_triangle_mesh(weight_threshold=0.5).to_legacy()
    verts = np.asarray(legacy.vertices, dtype=np.float64) + lo
    faces = np.asarray(legacy.triangles, dtype=np.int64)
    if len(faces) == 0:
        return None
    mesh = trimesh.Trimesh(verts, faces, process=True)
    return mesh


def field_mesh(model, *, resolution: int = 256, layer_opacity: float = 0.5, min_component_fraction: float = 0.0,
               progress: bool = True):
    """The NeRF ``model``'s surface as a vertex-coloured ``trimesh.Trimesh`` in the world frame."""
    if not 0.0 < layer_opacity < 1.0:
        raise InputError(None, f"the mesh's layer opacity must lie in (0, 1), not {layer_opacity}")
    if resolution < 8:
        raise InputError(None, f"--resolution must be at least 8, got {resolution}")
    bounds, field, grid = model.bounds, model.field, model.grid
    lo, hi = (np.full(3, 0.25), np.full(3, 0.75)) if bounds.contracted else (np.zeros(3), np.ones(3))
    # σ₀: a layer LAYER_FRACTION of the box (training-frame units) thick stops ``layer_opacity`` of the light
    side = 2 * bounds.half
    level = -math.log(1 - layer_opacity) / (LAYER_FRACTION * side)
    occ = grid.mask.reshape(grid.res, grid.res, grid.res).bool()  # indexed [z, y, x]
    # a lattice point next to an occupied cell is evaluated: dilate the occupancy by one cell
    near = torch.nn.functional.max_pool3d(occ.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0

    def skip(u: torch.Tensor) -> torch.Tensor:
        c = (u.clamp(0, 1 - 1e-6) * grid.res).long()
        return ~near[c[:, 2], c[:, 1], c[:, 0]]

    mesh = density_mesh(field.density, lo, hi, resolution, level, skip=skip, progress=progress)
    if mesh is None:
        raise InputError(None, f"the field's density never reaches the mesh threshold ({level:.3g} per training-frame "
                         "unit) inside its box, so there is no surface (is the run trained?)")
    if min_component_fraction > 0:
        mesh = _drop_small_components(mesh, min_component_fraction)
    unit = torch.from_numpy(np.asarray(mesh.vertices)).float()
    normals = torch.from_numpy(np.asarray(mesh.vertex_normals)).float()
    colors = vertex_colors(model, unit, normals)
    x_train = bounds.from_unit(unit)
    world = x_train.double() / model.transform.scale + model.transform.center.double()
    import trimesh

    rgba = np.concatenate([(colors.numpy() * 255).round(), np.full((len(colors), 1), 255)], 1).astype(np.uint8)
    return trimesh.Trimesh(world.numpy(), np.asarray(mesh.faces), vertex_colors=rgba, process=False)


@torch.no_grad()
def vertex_colors(model, unit: torch.Tensor, normals: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """The field's colour at unit-cube points, seen from outside along the (unit-cube) normal: looking in
    along −normal."""
    out = []
    for i in range(0, len(unit), chunk):
        n = torch.nn.functional.normalize(normals[i:i + chunk], dim=-1)
        _, c = model.field(unit[i:i + chunk], -n)
        out.append(c.float().clamp(0, 1))
    return torch.cat(out) if out else torch.zeros(0, 3)


def _drop_small_components(mesh, fraction: float):
    """Keep the connected pieces with at least ``fraction`` of the largest one's faces."""
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    biggest = max(len(p.faces) for p in parts)
    import trimesh

    return trimesh.util.concatenate([p for p in parts if len(p.faces) >= fraction * biggest])
