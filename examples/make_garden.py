"""Make ``examples/garden/``: photo-like views of a small textured garden, ray traced on the CPU.

The scene: a paved and grassy ground, a crate, a marble ball, a printed column, a cone and a torus,
inside a brick wall. Every surface carries a solid (3D) procedural texture, so a point looks the same
from every view and SIFT finds plenty to match. Lighting: a sun with ray-traced shadows plus sky light.
36 views on a gently rising and falling orbit, 320×240, 2×2 supersampled, light sensor noise, JPEG.

Writes ``examples/garden/images/NNN.jpg`` and ``examples/garden/transforms.json`` (the ground-truth
cameras, nerfstudio format: OpenGL camera-to-world, pinhole intrinsics). Deterministic: the same
files on every run (fixed seeds, no timing-dependent work).

Run: python examples/make_garden.py [--out examples/garden] [--views 36]

Video mode (a benchmark input, not shipped): ``--video garden.mp4 [--seconds 40 --fps 30 --size 960x540]``
renders one smooth turn of the same wavy orbit, one frame per 1/fps second, and encodes it with
imageio-ffmpeg (H.264, yuv420p, CRF 20, a typical phone-video quality); the true camera of every frame
goes to ``garden.mp4.json`` (nerfstudio format). Frames are rendered without supersampling (a 960×540
frame costs ~2 s on one core; 1200 of them ~40 min).
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
import open3d as o3d
from PIL import Image

WIDTH, HEIGHT = 320, 240
FOV_X = math.radians(62.0)
SUPERSAMPLE = 2
TARGET = np.array([0.0, 0.0, 0.45])
SUN = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])


# ----------------------------------------------------------------------------------------- noise
def _hash(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (iz.astype(np.int64) * 83492791)
    h = (h ^ (seed * 2654435761)) & 0xFFFFFFFF
    h = h.astype(np.uint64)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    return (h & np.uint64(0xFFFFFF)).astype(np.float64) / float(1 << 24)


def value_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1]."""
    i = np.floor(p)
    f = p - i
    f = f * f * (3 - 2 * f)
    ix, iy, iz = (i[:, k].astype(np.int64) for k in range(3))
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (
                    (f[:, 0] if dx else 1 - f[:, 0])
                    * (f[:, 1] if dy else 1 - f[:, 1])
                    * (f[:, 2] if dz else 1 - f[:, 2])
                )
                out += w * _hash(ix + dx, iy + dy, iz + dz, seed)
    return out


def fbm(p: np.ndarray, seed: int, octaves: int = 4) -> np.ndarray:
    """Fractal noise in about [0, 1]."""
    total, amp, norm = np.zeros(len(p)), 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(p * (2.0**o), seed + 17 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def cell_random(p: np.ndarray, size: float, seed: int) -> np.ndarray:
    """A random value per cubic cell of side ``size``."""
    i = np.floor(p / size)
    return _hash(i[:, 0], i[:, 1], i[:, 2], seed)


def _mix(a, b, t):
    t = np.clip(t, 0, 1)[:, None]
    return np.asarray(a) * (1 - t) + np.asarray(b) * t


# ----------------------------------------------------------------------------------------- materials
def tex_ground(p: np.ndarray) -> np.ndarray:
    """Paving stones near the middle, grass further out."""
    n = fbm(p * 3.0, 1)
    grass = _mix([0.18, 0.32, 0.10], [0.42, 0.50, 0.18], fbm(p * 9.0, 2)) * (0.7 + 0.6 * n[:, None])
    tile = 0.35
    u, v = p[:, 0] / tile, p[:, 1] / tile + 0.5 * np.floor(p[:, 0] / tile)  # staggered rows
    fu, fv = u - np.floor(u), v - np.floor(v)
    mortar = (np.minimum(fu, 1 - fu) < 0.05) | (np.minimum(fv, 1 - fv) < 0.05)
    stone_id = _hash(np.floor(u), np.floor(v), np.zeros(len(p)), 3)
    stone = _mix([0.55, 0.50, 0.45], [0.75, 0.68, 0.58], stone_id)[:, :] * (0.75 + 0.5 * fbm(p * 14.0, 4))[:, None]
    stone[mortar] = [0.25, 0.24, 0.22]
    r = np.hypot(p[:, 0], p[:, 1])
    edge = r + 0.25 * (fbm(p * 2.0, 5) - 0.5)
    return np.where((edge < 2.2)[:, None], stone, grass)


def tex_crate(p: np.ndarray) -> np.ndarray:
    """Coloured checker with a random colour per cell and wood-like grain."""
    cell = 0.12
    c = np.stack([cell_random(p, cell, s) for s in (11, 12, 13)], axis=1)
    grain = 0.8 + 0.4 * fbm(p * np.array([30.0, 3.0, 3.0]), 14)
    checker = (np.floor(p[:, 0] / cell) + np.floor(p[:, 1] / cell) + np.floor(p[:, 2] / cell)) % 2
    base = 0.25 + 0.7 * c
    base[checker == 1] *= 0.45
    return base * grain[:, None]


def tex_marble(p: np.ndarray) -> np.ndarray:
    """Veined marble."""
    t = np.sin(9.0 * p[:, 0] + 7.0 * p[:, 2] + 6.0 * fbm(p * 3.0, 21)) * 0.5 + 0.5
    spots = fbm(p * 20.0, 22)
    col = _mix([0.85, 0.85, 0.90], [0.20, 0.22, 0.45], t**3)
    return col * (0.8 + 0.4 * spots)[:, None]


def tex_print(p: np.ndarray) -> np.ndarray:
    """Text-like print: rows of small dark glyph blocks on paper, in several inks."""
    ang = np.arctan2(p[:, 1] - 0.55, p[:, 0] + 0.95)
    s = ang * 0.3  # arc length on the column (radius 0.3)
    g = 0.035
    col_i, row_i = np.floor(s / g), np.floor(p[:, 2] / (1.6 * g))
    fu, fv = s / g - col_i, p[:, 2] / (1.6 * g) - row_i
    on = _hash(col_i, row_i, np.zeros(len(p)), 31) > 0.45
    sub = _hash(np.floor(fu * 3) + 3 * col_i, np.floor(fv * 4) + 4 * row_i, np.ones(len(p)), 32) > 0.35
    ink_id = _hash(np.floor(col_i / 7), row_i, np.full(len(p), 2.0), 33)
    ink = _mix([0.05, 0.05, 0.10], [0.60, 0.08, 0.05], (ink_id > 0.6).astype(float))
    paper = np.array([0.93, 0.90, 0.80]) * (0.9 + 0.2 * fbm(p * 25.0, 34))[:, None]
    glyph = on & sub & (fu > 0.12) & (fv > 0.12)
    return np.where(glyph[:, None], ink, paper)


def tex_cone(p: np.ndarray) -> np.ndarray:
    """Orange and white bands with dirt."""
    band = (np.floor(p[:, 2] / 0.09) % 2) == 0
    col = np.where(band[:, None], [0.95, 0.45, 0.08], [0.95, 0.95, 0.92])
    return col * (0.7 + 0.5 * fbm(p * 16.0, 41))[:, None]


def tex_torus(p: np.ndarray) -> np.ndarray:
    """Leopard-like spots."""
    n = fbm(p * 12.0, 51, 3)
    col = _mix([0.90, 0.75, 0.35], [0.15, 0.10, 0.05], (n > 0.55).astype(float))
    return col * (0.85 + 0.3 * fbm(p * 30.0, 52, 2))[:, None]


def tex_wall(p: np.ndarray) -> np.ndarray:
    """Bricks with per-brick colour, mortar and weathering."""
    ang = np.arctan2(p[:, 1], p[:, 0])
    s = ang * 7.0
    bw, bh = 0.45, 0.2
    row = np.floor(p[:, 2] / bh)
    u = s / bw + 0.5 * (row % 2)
    col_i = np.floor(u)
    fu, fv = u - col_i, p[:, 2] / bh - row
    mortar = (fu < 0.06) | (fv < 0.1)
    shade = _hash(col_i, row, np.zeros(len(p)), 61)
    brick = _mix([0.55, 0.20, 0.12], [0.80, 0.45, 0.30], shade) * (0.7 + 0.6 * fbm(p * 6.0, 62))[:, None]
    brick[mortar] = [0.70, 0.68, 0.62]
    return brick


# ----------------------------------------------------------------------------------------- scene
def _add(scene, mesh: o3d.geometry.TriangleMesh, texture):
    mesh.compute_triangle_normals()
    gid = scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    return gid, texture


def _ring_wall(radius: float, height: float, segments: int) -> o3d.geometry.TriangleMesh:
    """An open cylinder (no caps) around the garden."""
    a = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([radius * np.cos(a), radius * np.sin(a)], 1)
    verts = np.concatenate([np.c_[ring, np.zeros(segments)], np.c_[ring, np.full(segments, height)]])
    i = np.arange(segments)
    j = (i + 1) % segments
    tris = np.concatenate([np.stack([i, j, j + segments], 1), np.stack([i, j + segments, i + segments], 1)])
    mesh = o3d.geometry.TriangleMesh()
    mesh.vertices = o3d.utility.Vector3dVector(verts)
    mesh.triangles = o3d.utility.Vector3iVector(tris)
    return mesh


def build_scene():
    """The raycasting scene and a texture function per geometry id."""
    scene = o3d.t.geometry.RaycastingScene()
    textures = {}
    ground = o3d.geometry.TriangleMesh()
    ground.vertices = o3d.utility.Vector3dVector([[-8, -8, 0], [8, -8, 0], [8, 8, 0], [-8, 8, 0]])
    ground.triangles = o3d.utility.Vector3iVector([[0, 1, 2], [0, 2, 3]])
    parts = [
        (ground, tex_ground),
        (o3d.geometry.TriangleMesh.create_box(0.7, 0.7, 0.7).translate((-0.2, -1.05, 0.0)), tex_crate),
        (o3d.geometry.TriangleMesh.create_sphere(0.42, 48).translate((0.75, 0.25, 0.42)), tex_marble),
        (o3d.geometry.TriangleMesh.create_cylinder(0.3, 1.3, 48).translate((-0.95, 0.55, 0.65)), tex_print),
        (o3d.geometry.TriangleMesh.create_cone(0.28, 0.75, 40).translate((0.35, 1.15, 0.0)), tex_cone),
        (o3d.geometry.TriangleMesh.create_torus(0.3, 0.1, 48, 24).translate((1.1, -0.9, 0.1)), tex_torus),
    ]
    parts.append((_ring_wall(6.5, 3.5, 128), tex_wall))
    for mesh, tex in parts:
        gid, t = _add(scene, mesh, tex)
        textures[int(gid)] = t
    return scene, textures


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV world-to-camera 4×4 (x right, y down, z forward)."""
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, down, fwd])
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def orbit(num: int) -> list[np.ndarray]:
    """World-to-camera matrices on a wavy orbit around the garden."""
    poses = []
    for i in range(num):
        a = 2 * math.pi * i / num
        radius = 3.3 + 0.25 * math.sin(3 * a)
        height = 1.45 + 0.35 * math.sin(2 * a + 0.5)
        eye = np.array([radius * math.cos(a), radius * math.sin(a), height])
        poses.append(look_at(eye, TARGET + np.array([0.1 * math.sin(a), 0.1 * math.cos(a), 0.0])))
    return poses


def render(
    scene,
    textures,
    w2c: np.ndarray,
    fx: float,
    cx: float,
    cy: float,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """H×W×3 float image of one view."""
    ss = supersample
    offs = (np.arange(ss) + 0.5) / ss
    u = (np.arange(width)[:, None] + offs[None]).reshape(-1)
    v = (np.arange(height)[:, None] + offs[None]).reshape(-1)
    uu, vv = np.meshgrid(u, v)
    d_cam = np.stack([(uu - cx) / fx, (vv - cy) / fx, np.ones_like(uu)], -1).reshape(-1, 3)
    rot = w2c[:3, :3]
    eye = -rot.T @ w2c[:3, 3]
    d = d_cam @ rot  # world direction = R^T d_cam
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rays = np.concatenate([np.broadcast_to(eye, d.shape), d], 1).astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy().astype(np.float64)
    gid = hit["geometry_ids"].numpy()
    normal = hit["primitive_normals"].numpy().astype(np.float64)
    valid = np.isfinite(t)
    color = np.zeros((len(d), 3))
    # sky where nothing is hit (rare: the wall encloses the garden)
    color[~valid] = _mix([0.75, 0.82, 0.92], [0.35, 0.55, 0.85], np.clip(d[~valid, 2] * 3, 0, 1))
    p = eye + d * np.where(valid, t, 0)[:, None]
    normal = np.where((np.sum(normal * d, 1) > 0)[:, None], -normal, normal)  # face the viewer
    albedo = np.zeros_like(color)
    for g, tex in textures.items():
        m = valid & (gid == g)
        if m.any():
            albedo[m] = tex(p[m])
    # sun light with shadows, plus sky ambient that is darker on downward faces
    lam = np.clip(normal @ SUN, 0, None)
    origins = p + normal * 1e-3
    shadow_rays = np.concatenate([origins, np.broadcast_to(SUN, p.shape)], 1).astype(np.float32)
    lit = ~scene.test_occlusions(o3d.core.Tensor(shadow_rays[valid])).numpy()
    sun = np.zeros(len(d))
    sun[valid] = lam[valid] * lit
    ambient = 0.35 + 0.15 * normal[:, 2]
    shaded = albedo * (ambient + 0.9 * sun)[:, None]
    color[valid] = shaded[valid]
    img = color.reshape(height, ss, width, ss, 3).mean(axis=(1, 3))
    return img


def orbit_at(a: float) -> np.ndarray:
    """World-to-camera matrix at angle ``a`` of the wavy orbit (the same path ``orbit`` samples)."""
    radius = 3.3 + 0.25 * math.sin(3 * a)
    height = 1.45 + 0.35 * math.sin(2 * a + 0.5)
    eye = np.array([radius * math.cos(a), radius * math.sin(a), height])
    return look_at(eye, TARGET + np.array([0.1 * math.sin(a), 0.1 * math.cos(a), 0.0]))


def make_video(path: Path, seconds: float, fps: float, width: int, height: int, frames: range | None = None) -> None:
    """Render one smooth turn of the orbit as an H.264 video and its true cameras as ``PATH.json``.

    ``frames``: render only these frames of the video (segments rendered in parallel processes join
    losslessly with ``ffmpeg -f concat -c copy``); the camera file always lists every frame.
    """
    import imageio_ffmpeg

    scene, textures = build_scene()
    fx = 0.5 * width / math.tan(FOV_X / 2)
    cx, cy = width / 2, height / 2
    num = int(round(seconds * fps))
    frames = range(num) if frames is None else frames
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    writer = imageio_ffmpeg.write_frames(str(tmp), (width, height), fps=fps, quality=6, codec="libx264",
                                         macro_block_size=2)  # fmt: skip
    writer.send(None)
    for k, i in enumerate(frames):
        img = render(scene, textures, orbit_at(2 * math.pi * i / num), fx, cx, cy, width=width, height=height,
                     supersample=1)  # fmt: skip
        img = img + np.random.default_rng([7, i]).normal(0.0, 0.008, img.shape)  # per frame: segments agree
        arr = (np.clip(img, 0, 1) ** (1 / 1.15) * 255 + 0.5).astype(np.uint8)
        writer.send(np.ascontiguousarray(arr))
        print(f"\rrendered {k + 1}/{len(frames)} (frame {i})", end="", flush=True)
    writer.close()
    cameras = []
    for i in range(num):
        c2w_gl = np.linalg.inv(orbit_at(2 * math.pi * i / num)) @ np.diag([1.0, -1.0, -1.0, 1.0])
        cameras.append({"time": i / fps, "transform_matrix": np.round(c2w_gl, 9).tolist()})
    tmp.replace(path)
    meta = {"camera_model": "PINHOLE", "fl_x": fx, "fl_y": fx, "cx": cx, "cy": cy, "w": width, "h": height,
            "fps": fps, "frames": cameras}  # fmt: skip
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"\nwrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(frames)} frames at {fps:g} fps) and its cameras")


def main() -> None:
    """Render the views and write images + transforms.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "garden")
    ap.add_argument("--views", type=int, default=36)
    ap.add_argument("--video", type=Path, default=None, help="render an orbit video to this file instead")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", default="960x540", help="video frame size WxH")
    ap.add_argument("--frame-range", default=None, metavar="A:B", help="video: render only frames A..B-1")
    args = ap.parse_args()
    if args.video is not None:
        w, h = (int(v) for v in args.size.lower().split("x"))
        part = None
        if args.frame_range:
            a, b = (int(v) for v in args.frame_range.split(":"))
            part = range(a, b)
        make_video(args.video, args.seconds, args.fps, w, h, part)
        return
    scene, textures = build_scene()
    fx = 0.5 * WIDTH / math.tan(FOV_X / 2)
    cx, cy = WIDTH / 2, HEIGHT / 2
    img_dir = args.out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    frames = []
    total = 0
    for i, w2c in enumerate(orbit(args.views)):
        img = render(scene, textures, w2c, fx, cx, cy)
        img = img + rng.normal(0.0, 0.008, img.shape)  # a little sensor noise
        arr = (np.clip(img, 0, 1) ** (1 / 1.15) * 255 + 0.5).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        name = f"{i:03d}.jpg"
        (img_dir / name).write_bytes(buf.getvalue())
        total += len(buf.getvalue())
        c2w_cv = np.linalg.inv(w2c)
        c2w_gl = c2w_cv @ np.diag([1.0, -1.0, -1.0, 1.0])
        frames.append({"file_path": f"images/{name}", "transform_matrix": np.round(c2w_gl, 9).tolist()})
        print(f"\rrendered {i + 1}/{args.views}", end="", flush=True)
    meta = {
        "camera_model": "PINHOLE",
        "fl_x": fx,
        "fl_y": fx,
        "cx": cx,
        "cy": cy,
        "w": WIDTH,
        "h": HEIGHT,
        "frames": frames,
    }
    (args.out / "transforms.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"\nwrote {args.views} images ({total / 1e6:.2f} MB) and transforms.json to {args.out}")


if __name__ == "__main__":
    main()
