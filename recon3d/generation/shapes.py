"""Surface samplers for the procedural composer: primitives and composite objects built from parts.

Every sampler returns points, unit outward normals and the colour-part index of each point, for an object
of unit size resting on z = 0 and centred on x = y = 0 (world convention: Z up). Points are spread
uniformly by area, so the local sampling density is ``count / area``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PRIMITIVES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "capsule")
COMPOSITES = ("table", "chair", "lamp", "tree", "snowman", "house")


@dataclass
class Part:
    """One analytic surface of an object: a sampler of ``n`` points and its area."""

    area: float
    sample: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
    part: int = 0  # which colour slot of the object the part takes (0 = main colour)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def sphere_part(radius: float, center: tuple[float, float, float], part: int = 0) -> Part:
    """A sphere surface."""
    c = np.asarray(center, dtype=np.float64)

    def sample(rng: np.random.Generator, n: int):
        d = _unit(rng.normal(size=(n, 3)))
        return c + radius * d, d

    return Part(4 * np.pi * radius**2, sample, part)


def disk_part(radius: float, z: float, up: bool, center_xy=(0.0, 0.0), part: int = 0) -> Part:
    """A horizontal disk (a cap) facing up or down."""

    def sample(rng: np.random.Generator, n: int):
        r = radius * np.sqrt(rng.random(n))
        a = rng.random(n) * 2 * np.pi
        p = np.stack([center_xy[0] + r * np.cos(a), center_xy[1] + r * np.sin(a), np.full(n, z)], -1)
        nrm = np.zeros((n, 3))
        nrm[:, 2] = 1.0 if up else -1.0
        return p, nrm

    return Part(np.pi * radius**2, sample, part)


def tube_part(radius: float, z0: float, z1: float, center_xy=(0.0, 0.0), part: int = 0) -> Part:
    """The side of a vertical cylinder."""

    def sample(rng: np.random.Generator, n: int):
        a = rng.random(n) * 2 * np.pi
        z = z0 + (z1 - z0) * rng.random(n)
        d = np.stack([np.cos(a), np.sin(a), np.zeros(n)], -1)
        p = np.stack([center_xy[0] + radius * d[:, 0], center_xy[1] + radius * d[:, 1], z], -1)
        return p, d

    return Part(2 * np.pi * radius * (z1 - z0), sample, part)


def cone_side_part(r0: float, r1: float, z0: float, z1: float, center_xy=(0.0, 0.0), part: int = 0) -> Part:
    """The side of a vertical (truncated) cone with radius r0 at z0 and r1 at z1."""
    h = z1 - z0
    slant = np.hypot(r0 - r1, h)
    area = np.pi * (r0 + r1) * slant

    def sample(rng: np.random.Generator, n: int):
        # area density grows linearly with the radius: invert the CDF of r along the slant
        u = rng.random(n)
        if abs(r0 - r1) < 1e-9:
            s = u
        else:
            r = np.sqrt(r0**2 + u * (r1**2 - r0**2))
            s = (r - r0) / (r1 - r0)
        r = r0 + (r1 - r0) * s
        z = z0 + h * s
        a = rng.random(n) * 2 * np.pi
        d = np.stack([np.cos(a), np.sin(a)], -1)
        p = np.stack([center_xy[0] + r * d[:, 0], center_xy[1] + r * d[:, 1], z], -1)
        nrm = _unit(np.stack([h * d[:, 0], h * d[:, 1], np.full(n, r0 - r1)], -1))
        return p, nrm

    return Part(area, sample, part)


def box_parts(size: tuple[float, float, float], center: tuple[float, float, float], part: int = 0) -> list[Part]:
    """The six faces of an axis-aligned box."""
    sx, sy, sz = size
    c = np.asarray(center, dtype=np.float64)
    parts = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        extent = [size[a] for a in others]
        for sign in (-1.0, 1.0):

            def sample(rng, n, axis=axis, others=others, extent=extent, sign=sign):
                p = np.zeros((n, 3))
                p[:, axis] = sign * size[axis] / 2
                p[:, others[0]] = (rng.random(n) - 0.5) * extent[0]
                p[:, others[1]] = (rng.random(n) - 0.5) * extent[1]
                nrm = np.zeros((n, 3))
                nrm[:, axis] = sign
                return p + c, nrm

            parts.append(Part(extent[0] * extent[1], sample, part))
    del sx, sy, sz
    return parts


def torus_part(major: float, minor: float, center_z: float, part: int = 0) -> Part:
    """A torus lying flat (axis along z)."""

    def sample(rng: np.random.Generator, n: int):
        # rejection sampling by the area element (R + r cos v)
        out_p, out_n, have = [], [], 0
        while have < n:
            m = 2 * (n - have) + 8
            u = rng.random(m) * 2 * np.pi
            v = rng.random(m) * 2 * np.pi
            keep = rng.random(m) * (major + minor) < major + minor * np.cos(v)
            u, v = u[keep], v[keep]
            nrm = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], -1)
            ring = np.stack([major * np.cos(u), major * np.sin(u), np.full(len(u), center_z)], -1)
            out_p.append(ring + minor * nrm)
            out_n.append(nrm)
            have += len(u)
        return np.concatenate(out_p)[:n], np.concatenate(out_n)[:n]

    return Part(4 * np.pi**2 * major * minor, sample, part)


def triangle_part(a, b, c, part: int = 0) -> Part:
    """A flat triangle with its normal by the right-hand rule."""
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (a, b, c))
    nrm = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(nrm)
    nrm = nrm / (2 * area)

    def sample(rng: np.random.Generator, n: int):
        u, v = rng.random(n), rng.random(n)
        flip = u + v > 1
        u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
        p = a + u[:, None] * (b - a) + v[:, None] * (c - a)
        return p, np.broadcast_to(nrm, (n, 3)).copy()

    return Part(area, sample, part)


def pyramid_parts(base: float, height: float, z0: float = 0.0, part: int = 0) -> list[Part]:
    """A square pyramid: four sides and the base."""
    h = base / 2
    corners = [(-h, -h, z0), (h, -h, z0), (h, h, z0), (-h, h, z0)]
    apex = (0.0, 0.0, z0 + height)
    parts = [triangle_part(corners[i], corners[(i + 1) % 4], apex, part) for i in range(4)]
    parts += [triangle_part(corners[0], corners[2], corners[1], part), triangle_part(corners[0], corners[3], corners[2], part)]
    return parts


def hemisphere_part(radius: float, center_z: float, up: bool, part: int = 0) -> Part:
    """A half sphere (the caps of a capsule)."""
    c = np.array([0.0, 0.0, center_z])

    def sample(rng: np.random.Generator, n: int):
        d = _unit(rng.normal(size=(n, 3)))
        d[:, 2] = np.abs(d[:, 2]) * (1 if up else -1)
        return c + radius * d, d

    return Part(2 * np.pi * radius**2, sample, part)


# ---------------------------------------------------------------- objects at unit size
def primitive_parts(shape: str) -> list[Part]:
    """Parts of a primitive about 1 across, resting on z = 0."""
    if shape == "sphere":
        return [sphere_part(0.5, (0, 0, 0.5))]
    if shape == "cube":
        return box_parts((0.8, 0.8, 0.8), (0, 0, 0.4))
    if shape == "cylinder":
        return [tube_part(0.4, 0, 0.9), disk_part(0.4, 0.9, True), disk_part(0.4, 0.0, False)]
    if shape == "cone":
        return [cone_side_part(0.5, 0.0, 0.0, 1.0), disk_part(0.5, 0.0, False)]
    if shape == "torus":
        return [torus_part(0.35, 0.15, 0.15)]
    if shape == "pyramid":
        return pyramid_parts(0.9, 0.9)
    if shape == "capsule":
        return [tube_part(0.25, 0.25, 0.75), hemisphere_part(0.25, 0.75, True), hemisphere_part(0.25, 0.25, False)]
    raise KeyError(shape)


def composite_parts(shape: str) -> list[Part]:
    """Parts of a composite object; part index 0 takes the named colour, others a natural colour."""
    if shape == "table":
        parts = box_parts((1.0, 0.7, 0.08), (0, 0, 0.66))
        for x in (-0.42, 0.42):
            for y in (-0.27, 0.27):
                parts.append(tube_part(0.04, 0.0, 0.62, (x, y)))
        return parts
    if shape == "chair":
        parts = box_parts((0.55, 0.55, 0.06), (0, 0, 0.45))
        parts += box_parts((0.55, 0.06, 0.5), (0, 0.245, 0.73))
        for x in (-0.23, 0.23):
            for y in (-0.23, 0.23):
                parts.append(tube_part(0.035, 0.0, 0.42, (x, y)))
        return parts
    if shape == "lamp":
        return [
            tube_part(0.22, 0.0, 0.05, part=1),
            disk_part(0.22, 0.05, True, part=1),
            tube_part(0.03, 0.05, 0.75, part=1),
            cone_side_part(0.3, 0.15, 0.65, 1.0),
        ]
    if shape == "tree":
        return [tube_part(0.09, 0.0, 0.4, part=1), cone_side_part(0.45, 0.0, 0.35, 1.2), disk_part(0.45, 0.35, False)]
    if shape == "snowman":
        return [
            sphere_part(0.3, (0, 0, 0.3)),
            sphere_part(0.22, (0, 0, 0.78)),
            sphere_part(0.15, (0, 0, 1.12)),
            Part(0.02, _nose_sampler, 1),  # a carrot nose pointing at the default camera (−y)
        ]
    if shape == "house":
        parts = box_parts((0.8, 0.8, 0.55), (0, 0, 0.275))
        parts += pyramid_parts(1.0, 0.45, z0=0.55, part=1)[:4]
        return parts
    raise KeyError(shape)


def _nose_sampler(rng: np.random.Generator, n: int):
    p, nrm = cone_side_part(0.04, 0.0, 0.0, 0.18).sample(rng, n)
    # rotate the +z cone to point along −y, then move it to the head
    p = np.stack([p[:, 0], -p[:, 2], p[:, 1]], -1) + np.array([0.0, -0.14, 1.12])
    nrm = np.stack([nrm[:, 0], -nrm[:, 2], nrm[:, 1]], -1)
    return p, nrm


# natural colours of composite parts when the caption names none: (main, second)
NATURAL_COLOURS = {
    "table": ("brown", "brown"),
    "chair": ("brown", "brown"),
    "lamp": ("yellow", "gray"),
    "tree": ("green", "brown"),
    "snowman": ("white", "orange"),
    "house": ("white", "red"),
}
