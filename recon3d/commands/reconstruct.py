"""``recon3d reconstruct`` (photos/COLMAP/nerfstudio/Blender -> trained splat scene) and ``recon3d eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# named flag -> config key (value types are checked by the config itself)
_FLAG_KEYS = {
    "steps": "steps",
    "time_budget": "time_budget",
    "downscale": "downscale",
    "max_gaussians": "max_gaussians",
    "backend": "backend",
    "seed": "seed",
    "background": "background",
    "masks": "masks",
    "frames": "video_frames",
    "fps": "video_fps",
    "orient": "orient",
    "appearance": "appearance",
    "refine_cameras": "refine_cameras",
    "antialiased": "antialiased",
}


# --export FORMAT -> the file it writes in the run directory, beside scene.ply
EXPORT_NAMES = {
    "spz": ".spz", "compressed-ply": ".compressed.ply", "sog": ".sog", "gltf": ".glb", "splat": ".splat",
    "html": ".html",
}  # fmt: skip


def _export_formats(values: list[str]) -> list[str]:
    """The formats ``--export`` names, checked before training starts."""
    from ..errors import InputError

    formats = [f.strip() for v in values for f in v.split(",") if f.strip()]
    unknown = [f for f in formats if f not in EXPORT_NAMES]
    if unknown:
        raise InputError(None, f"--export {unknown[0]!r} is not one of {', '.join(EXPORT_NAMES)}")
    return list(dict.fromkeys(formats))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reconstruct`` and ``eval`` subcommands."""
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a Gaussian-splat scene from photos, a video, a COLMAP project, nerfstudio or Blender data",
        description="Train a 3D Gaussian-splat scene. PATH is a folder of photos (structure from motion runs "
        "first), a video (.mp4 .mov .mkv .webm .avi) or a folder of videos (sharp frames are chosen, then "
        "structure from motion with sequential matching), a COLMAP project (images/ + sparse/0), a nerfstudio/instant-ngp transforms.json folder or "
        "Blender/NeRF-synthetic data. Writes RUN_DIR/{config.yaml, scene.ply, cameras.json, metrics.json, "
        "renders/, checkpoints/}.",
    )
    p.add_argument("path", type=Path, help="input data (photo folder, video, COLMAP project, transforms.json folder)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--preset", default=None,
                   help="config preset: fast (CPU default), default, quality (GPU), or a YAML file")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="train until this many minutes are spent (schedules scaled to fit), then export and evaluate")
    p.add_argument("--downscale", type=int, help="load images at 1/N resolution")
    p.add_argument("--max-gaussians", type=int, help="cap on the number of Gaussians")
    p.add_argument("--backend", help="render backend: auto, cpu, cuda, reference, gsplat")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--background", choices=("auto", "white", "black", "random"),
                   help="training background: auto (default: white for RGBA object data, a random colour per step "
                   "for photos, so the scene comes out opaque), white, black, random")
    p.add_argument("--appearance", choices=("auto", "none", "affine"),
                   help="per-image exposure/white balance learnt with the scene: auto (default: affine for photos and "
                   "video, none for RGBA object data), none, affine; scene.ply keeps the neutral appearance")
    p.add_argument("--refine-cameras", action=argparse.BooleanOptionalAction, default=None,
                   help="learn a small pose correction per training camera (default: on for photos and video, off "
                   "for RGBA object data; needs a render backend with camera gradients)")
    p.add_argument("--masks", metavar="DIR",
                   help="folder of masks named like the images (a.jpg <- a.png); white = keep, black = ignore")
    p.add_argument("--frames", type=int, metavar="N", help="video input: keep N sharp, well-spread frames (default 150)")
    p.add_argument("--fps", type=float, metavar="F", help="video input: keep F frames per second of video instead")
    p.add_argument("--orient", choices=("auto", "up", "none"),
                   help="world frame: auto (default: photo folders are set upright, +Z up, centred, metric-ish "
                   "scale, saved as RUN_DIR/orientation.json; COLMAP/nerfstudio/Blender keep their frame), "
                   "up (always), none (never)")
    p.add_argument("--antialiased", action="store_true", default=None,
                   help="train and render in the anti-aliased mode (opacity x sqrt(det ratio), as gsplat's); "
                   "the scene renders cleanly when zoomed out, and scene.ply says it needs this mode")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value (repeatable), e.g. --set lr_means=1e-4")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in RUN_DIR")
    p.add_argument("--viewer", action="store_true", help="watch training live in the browser viewer")
    p.add_argument("--port", type=int, default=8080, help="viewer port (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="viewer host (default 127.0.0.1: this machine only)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--export", action="append", default=[], metavar="FORMAT",
                   help="also write the scene as FORMAT into RUN_DIR when training ends (repeatable or comma-separated): "
                   + ", ".join(f"{k} (scene{v})" for k, v in EXPORT_NAMES.items()))
    p.set_defaults(func=run)

    e = subparsers.add_parser(
        "eval",
        help="re-compute PSNR/SSIM of a run on its held-out views",
        description="Render a run's held-out cameras (cameras.json split 'test') and compare with their images. "
        "LPIPS is reported only where its network weights exist locally (recon3d never downloads them).",
    )
    e.add_argument("run_dir", type=Path, help="a run directory written by recon3d reconstruct")
    e.add_argument("--backend", default="auto", help="render backend (default auto)")
    e.add_argument("--split", default="test", choices=("test", "train", "all"), help="which cameras (default test)")
    e.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    e.set_defaults(func=run_eval)


def run(args: argparse.Namespace) -> int:
    """Run a reconstruction from the parsed arguments."""
    from ..train.api import reconstruct
    from ..train.trainer import TrainingInterrupted

    exports = _export_formats(getattr(args, "export", []))
    overrides = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items() if getattr(args, flag) is not None}
    if args.quiet:
        overrides["progress"] = False
    if args.masks is not None:  # saved in config.yaml: absolute, so --resume works from any folder
        overrides["masks"] = str(Path(args.masks).resolve())
    try:
        _scene, _cameras, metrics = reconstruct(
            args.path, args.output, preset=args.preset, resume=args.resume, overwrite=args.overwrite,
            assignments=args.assignments, viewer=args.viewer, host=args.host, port=args.port,
            quiet=args.quiet, **overrides,
        )
    except TrainingInterrupted as exc:
        print(f"{exc}: recon3d reconstruct {args.path} -o {args.output} --resume", file=sys.stderr)
        return 130
    # the trainer has printed the summary (figures, Gaussians, steps/s) unless --quiet; this says where it went
    print(f"result: {args.output / 'scene.ply'} (run directory {args.output})")
    if exports:
        from ..exporters import export

        for fmt in exports:
            written = export(args.output, fmt, args.output / f"scene{EXPORT_NAMES[fmt]}")
            print(f"exported {written} ({fmt})")
    return 0


def _load_target(path: Path, width: int, height: int, background):
    """An image at the camera's size, RGBA composited on ``background``, and its alpha (H×W×1, None for RGB)."""
    import torch

    try:
        from ..data.images import decode_image

        image, alpha = decode_image(path, size=(width, height), background=background)
        return image, (None if alpha is None else alpha.reshape(height, width, 1))
    except ImportError:  # pragma: no cover - recon3d.data always ships it
        import numpy as np
        from PIL import Image

        from ..errors import InputError

        try:
            with Image.open(path) as im:
                im = im.convert("RGBA").resize((width, height), Image.BOX)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read image ({exc})") from None
        rgb, alpha = torch.from_numpy(arr[..., :3]), torch.from_numpy(arr[..., 3:])
        return rgb * alpha + background.view(1, 1, 3) * (1 - alpha), alpha


def evaluate_run(run_dir: Path, *, backend: str = "auto", split: str = "test") -> dict:
    """PSNR/SSIM over black and over white and the see-through share of a run's scene on ``split`` cameras."""
    import torch

    from ..errors import InputError
    from ..metrics import PROTOCOL_COMPOSITED, PROTOCOL_NOTES, PROTOCOL_OPAQUE, lpips_available, view_metrics
    from ..render import render
    from ..train.config import config_from_yaml
    from ..train.rundir import load_run

    scene, cameras, images, splits = load_run(run_dir)
    background = torch.ones(3)
    if (run_dir / "config.yaml").is_file():
        bg = config_from_yaml(run_dir / "config.yaml").background
        background = torch.zeros(3) if bg == "black" else torch.ones(3)
    # the protocol the run was evaluated with (RGBA object data: composited; photos: opaque)
    protocol = PROTOCOL_OPAQUE
    masks: dict[int, Path] = {}  # the masks the run was evaluated with (metrics.json names them per view)
    if (run_dir / "metrics.json").is_file():
        try:
            recorded = json.loads((run_dir / "metrics.json").read_text())
            protocol = recorded.get("protocol", PROTOCOL_OPAQUE)
            masks = {int(v["index"]): Path(v["mask"]) for v in recorded.get("per_view", []) if v.get("mask")}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    chosen = [i for i, s in enumerate(splits) if split == "all" or s == split]
    if not chosen:
        raise InputError(run_dir / "cameras.json", f"no cameras in the {split!r} split")
    per_view = []
    for i in chosen:
        cam = cameras[i]
        w, h = int(cam.width[0]), int(cam.height[0])
        target, target_alpha = _load_target(images[i], w, h, background)
        if target_alpha is None and protocol == PROTOCOL_COMPOSITED:
            target_alpha = torch.ones(h, w, 1)
        with torch.no_grad():
            out = render(scene, cam, background=torch.zeros(3), backend=backend)
        mask = None
        if i in masks and masks[i].is_file():
            from ..data.masks import load_mask

            mask = load_mask(masks[i], (w, h))
        values = view_metrics(out.rgb[0], out.alpha[0], target, protocol=protocol, background=background,
                              target_alpha=target_alpha, mask=mask, nerfw=protocol == PROTOCOL_OPAQUE)
        per_view.append({"index": i, "image": str(images[i]), **values})

    def mean(key: str):
        values = [v[key] for v in per_view if v.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "psnr_black": mean("psnr_black"),
        "psnr_white": mean("psnr_white"),
        "see_through": mean("see_through"),
        "psnr_nerfw": mean("psnr_nerfw"),
        "psnr_nerfw_black": mean("psnr_nerfw_black"),
        "psnr_nerfw_white": mean("psnr_nerfw_white"),
        "protocol": protocol,
        "protocol_note": PROTOCOL_NOTES[protocol],
        "lpips": None,
        "lpips_note": "LPIPS weights are installed locally but not wired in" if lpips_available()
        else "LPIPS not computed: its weights are not available locally and recon3d never downloads them",
        "split": split,
        "num_views": len(per_view),
        "num_gaussians": len(scene),
        "per_view": per_view,
    }


def run_eval(args: argparse.Namespace) -> int:
    """Print (and optionally save) PSNR/SSIM of a run."""
    from ..io_utils import atomic_write_text

    result = evaluate_run(args.run_dir, backend=args.backend, split=args.split)
    from ..metrics import lpips_available

    if result.get("lpips") is not None:
        lpips = f"LPIPS {result['lpips']:.4f}"
    elif lpips_available():
        lpips = "LPIPS n/a (its weights are installed but recon3d does not compute it yet)"
    else:
        lpips = "LPIPS n/a (needs its network weights installed locally; recon3d never downloads them)"
    extra = ""
    if result["psnr_black"] is not None:  # the worse of the two is the PSNR an opaque scene is judged by
        extra = (f" (over black {result['psnr_black']:.2f}, over white {result['psnr_white']:.2f}, "
                 f"see-through {100 * result['see_through']:.1f} %"
                 + (f", NeRF-W {result['psnr_nerfw']:.2f}" if result.get("psnr_nerfw") is not None else "")
                 + f"; {result['protocol']} protocol)")
    print(f"{args.run_dir}: PSNR {result['psnr']:.2f} dB{extra}, SSIM {result['ssim']:.4f} over {result['num_views']} "
          f"{args.split} views ({result['num_gaussians']:,} Gaussians); {lpips}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0
