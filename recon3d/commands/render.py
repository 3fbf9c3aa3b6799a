"""``recon3d render``: draw a scene (PLY or run directory) to an image or an orbit video."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``render`` subcommand."""
    p = subparsers.add_parser(
        "render",
        help="render a scene to an image or an orbit video",
        description="Render a 3DGS .ply (or a run directory's scene.ply) with recon3d's rasterizer. "
        "Writes a PNG, or an MP4 orbit with --orbit. Without --camera the view frames the scene's robust "
        "bounds (far floaters ignored) whole, from the first training camera's side for a run directory and "
        "from an elevated three-quarter view (Z up) for a bare .ply, as the viewer's first screen does.",
    )
    p.add_argument("target", type=Path, help="a .ply file or a run directory holding scene.ply")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .png (or .mp4 with --orbit)")
    p.add_argument("--width", type=int, default=512, help="image width in pixels (default 512)")
    p.add_argument("--height", type=int, default=512, help="image height in pixels (default 512)")
    p.add_argument("--camera", type=int, default=None, metavar="INDEX",
                   help="render the run's camera INDEX (cameras.json order) at --width, keeping its aspect")
    p.add_argument("--orbit", action="store_true", help="render a 360° orbit around the scene to a video")
    p.add_argument("--frames", type=int, default=60, help="frames in the orbit (default 60)")
    p.add_argument("--fps", type=int, default=30, help="orbit video frame rate (default 30)")
    p.add_argument("--background", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("R", "G", "B"))
    p.add_argument("--backend", default="auto", help="render backend: auto, cpu, cuda, reference, gsplat")
    p.set_defaults(func=run)


def orbit_cameras(scene, num: int, width: int, height: int, elevation_deg: float = 25.0):
    """Cameras on a circle around the scene's robust bounds (``recon3d.bounds``), far enough that the whole
    scene stays in view from every side, looking at its centre, Z up."""
    import numpy as np
    import torch

    from ..bounds import framing_distance, scene_bounds
    from ..cameras import Cameras, look_at_world_to_camera

    lo, hi = scene_bounds(scene)
    center = torch.tensor(0.5 * (lo + hi), dtype=torch.float32)
    fov = 0.8
    fov_y = 2 * math.atan(math.tan(fov / 2) * height / width)
    radius = framing_distance(np.asarray(lo), np.asarray(hi), fov, fov_y)
    w2cs = []
    for k in range(num):
        theta = 2 * math.pi * k / num
        el = math.radians(elevation_deg)
        eye = center + radius * torch.tensor(
            [math.cos(el) * math.sin(theta), -math.cos(el) * math.cos(theta), math.sin(el)]
        )
        w2cs.append(look_at_world_to_camera(eye, center, (0.0, 0.0, 1.0)))
    return Cameras.from_fov(torch.stack(w2cs), fov, width, height)


def run_orbit_cameras(cameras, num: int, width: int, height: int):
    """Cameras on a circle through a run's own camera ring: same focus, mean distance, height and up vector."""
    import torch

    from ..cameras import Cameras, look_at_world_to_camera
    from ..train.frame import focus_point

    center = focus_point(cameras).double()
    c2w = cameras.camera_to_world().double()
    up = -c2w[:, :3, 1].mean(0)  # OpenCV y points down in the image
    up = up / up.norm().clamp_min(1e-12)
    offsets = c2w[:, :3, 3] - center
    height_along_up = float((offsets @ up).mean())
    radial = offsets - (offsets @ up)[:, None] * up
    radius = float(radial.norm(dim=-1).median().clamp_min(1e-6))
    # an orthonormal basis of the orbit plane, starting at the first camera's direction
    e1 = radial[0] / radial[0].norm().clamp_min(1e-12)
    e2 = torch.linalg.cross(up, e1)
    fov = 2 * math.atan(0.5 * float(cameras.width[0]) / float(cameras.fx[0]))
    w2cs = []
    for k in range(num):
        theta = 2 * math.pi * k / num
        eye = center + height_along_up * up + radius * (math.cos(theta) * e1 + math.sin(theta) * e2)
        w2cs.append(look_at_world_to_camera(eye.float(), center.float(), up.float()))
    return Cameras.from_fov(torch.stack(w2cs), fov, width, height)


def run(args: argparse.Namespace) -> int:
    """Render the target and write the image or video."""
    import numpy as np
    import torch

    from ..errors import InputError
    from ..io_utils import atomic_open
    from ..ply import load_ply, ply_antialiased
    from ..progress import track
    from ..render import render

    target = args.target
    if target.is_dir() and (target / "nerf.pt").is_file() and not (target / "scene.ply").is_file():
        return _run_nerf(args)
    if target.is_dir():
        target = target / "scene.ply"
    if not target.exists():
        raise InputError(target, "no such file (expected a .ply or a run directory with scene.ply)")
    scene = load_ply(target)
    antialiased = ply_antialiased(target)  # a scene trained in the anti-aliased mode says so in its header
    background = torch.tensor(args.background)
    count = args.frames if args.orbit else 1
    run_cameras = splits = None
    upright = True  # a bare .ply: Z up (ours, generated ones)
    if (target.parent / "cameras.json").is_file() and args.target.is_dir():
        from ..run import load_run

        run = load_run(args.target)
        run_cameras, splits = run.cameras, run.splits
        upright = run.orientation is not None
    if args.camera is not None:
        if run_cameras is None:
            raise InputError(args.target, "--camera needs a run directory (its cameras.json)")
        if not 0 <= args.camera < len(run_cameras):
            raise InputError(target.parent / "cameras.json", f"has {len(run_cameras)} cameras; no camera {args.camera}")
        if args.orbit:
            raise InputError(None, "--camera and --orbit exclude each other")
        cam = run_cameras[args.camera]
        cams = cam.scaled(args.width / float(cam.width[0]))
        args.width, args.height = int(cams.width[0]), int(cams.height[0])
    elif args.orbit and run_cameras is not None:
        # a run directory: orbit along its own cameras (same focus, distance, height and up vector)
        cams = run_orbit_cameras(run_cameras, count, args.width, args.height)
    elif args.orbit:
        cams = orbit_cameras(scene, count, args.width, args.height)
    else:
        from ..bounds import framing_cameras

        cams = framing_cameras(scene, args.width, args.height, cameras=run_cameras, splits=splits,
                               up=(0.0, 0.0, 1.0) if upright else None)  # fmt: skip
    frames = []
    for i in track(range(len(cams)), description="rendering", disable=len(cams) == 1, unit="frames"):
        with torch.no_grad():
            out = render(scene, cams[i], background=background, backend=args.backend, antialiased=antialiased)
        frames.append((out.rgb[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.orbit:
        import imageio.v2 as imageio

        suffix = args.output.suffix or ".mp4"
        with atomic_open(args.output, "wb") as f:
            imageio.mimwrite(f, frames, format=suffix.lstrip("."), fps=args.fps)
    else:
        from PIL import Image

        with atomic_open(args.output, "wb") as f:
            Image.fromarray(frames[0]).save(f, format="PNG")
    print(f"wrote {args.output} ({len(scene)} Gaussians, {args.width}×{args.height})")
    return 0



def _run_nerf(args: argparse.Namespace) -> int:
    """``recon3d render`` of a NeRF run (nerf.pt): its field from one of its cameras, or an orbit along them."""
    import numpy as np
    import torch

    from ..errors import InputError
    from ..io_utils import atomic_open
    from ..progress import track
    from ..run import load_run

    run = load_run(args.target)
    if run.cameras is None:
        raise InputError(args.target, "is a NeRF run without cameras.json; nothing to render from")
    if args.camera is not None and args.orbit:
        raise InputError(None, "--camera and --orbit exclude each other")
    if args.orbit:
        cams = run_orbit_cameras(run.cameras, args.frames, args.width, args.height)
    else:
        # no framing of a splat scene's bounds here: the first held-out camera (else camera 0) frames the field
        index = args.camera if args.camera is not None else (run.indices("test") or [0])[0]
        if not 0 <= index < len(run.cameras):
            raise InputError(args.target / "cameras.json", f"has {len(run.cameras)} cameras; no camera {index}")
        cams = run.cameras[index].scaled(args.width / float(run.cameras.width[index]))
        args.width, args.height = int(cams.width[0]), int(cams.height[0])
    background = torch.tensor(args.background, dtype=torch.float32)
    frames = []
    for i in track(range(len(cams)), description="rendering", disable=len(cams) == 1, unit="frames"):
        out = run.render(cams[i], background=background)
        frames.append((out.rgb[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.output, "wb") as f:
        if args.orbit:
            import imageio.v2 as imageio

            imageio.mimwrite(f, frames, format=(args.output.suffix or ".mp4").lstrip("."), fps=args.fps)
        else:
            from PIL import Image

            Image.fromarray(frames[0]).save(f, format="PNG")
    print(f"wrote {args.output} (NeRF field, {args.width}×{args.height})")
    return 0
