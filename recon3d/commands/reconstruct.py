"""``recon3d reconstruct`` (photos/COLMAP/nerfstudio/Blender -> trained splat scene) and ``recon3d eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# named flag -> config key (value types are checked by the config itself; recon3d/train/config.py)
_FLAG_KEYS = {
    "steps": "run.steps",
    "time_budget": "run.time_budget",
    "downscale": "data.downscale",
    "max_gaussians": "strategy.cap",
    "backend": "run.backend",
    "seed": "run.seed",
    "background": "data.background",
    "masks": "data.masks",
    "frames": "data.video_frames",
    "fps": "data.video_fps",
    "orient": "data.orient",
    "appearance": "model.appearance",
    "refine_cameras": "model.refine_cameras",
    "antialiased": "model.antialiased",
    "batch_size": "optim.batch_size",
    "image_cache": "data.image_cache",
    "image_cache_gb": "data.image_cache_gb",
    "method": "run.method",
    "field": "nerf.field",
}

# flags (and --set sections) only Gaussian splats have: one line says so when given with --method nerf
SPLAT_ONLY_FLAGS = ("max_gaussians", "antialiased", "refine_cameras", "appearance", "backend")
SPLAT_ONLY_SECTIONS = ("strategy.", "model.", "optim.")


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
    p.add_argument("--method", default=None, metavar="NAME",
                   help="reconstruction method: gaussians (default: 3D Gaussian splats) or nerf (a hash-grid radiance "
                   "field; `recon3d export RUN --format ply` distils it into splats)")
    p.add_argument("--field", default=None, choices=("ours", "tcnn"),
                   help="--method nerf: the hash encoding's implementation, ours (default; CPU or CUDA kernels) or "
                   "tcnn (tiny-cuda-nn, needs the tinycudann package and a GPU)")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="train until this many minutes are spent (schedules scaled to fit), then export and evaluate")
    p.add_argument("--downscale", type=int, help="load images at 1/N resolution")
    p.add_argument("--max-gaussians", type=int, help="cap on the number of Gaussians (strategy.cap)")
    p.add_argument("--backend", help="render backend: auto, cpu, cuda, reference, gsplat")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--background", choices=("auto", "white", "black", "random"),
                   help="training background: auto (default: white for RGBA object data, a random colour per step "
                   "for photos, so the scene comes out opaque), white, black, random")
    p.add_argument("--appearance", choices=("auto", "none", "affine", "grid"),
                   help="per-image exposure/white balance learnt with the scene: auto (default: affine for photos and "
                   "video, none for posed data sets (COLMAP, nerfstudio) and RGBA object data), none, affine (one colour transform per image), grid (a bilateral "
                   "grid per image: transforms varying across the image and with brightness); scene.ply keeps the "
                   "neutral appearance")
    p.add_argument("--refine-cameras", action=argparse.BooleanOptionalAction, default=None,
                   help="learn a small pose correction per training camera (default: off; it cost 0.4-0.9 dB of "
                   "held-out PSNR on every capture measured, see docs/real_captures.md; needs a render backend "
                   "with camera gradients)")
    p.add_argument("--antialiased", action="store_true", default=None,
                   help="train and render in the anti-aliased mode (opacity x sqrt(det ratio), as gsplat's); "
                   "the scene renders cleanly when zoomed out, and scene.ply says it needs this mode")
    p.add_argument("--masks", metavar="DIR",
                   help="folder of masks named like the images (a.jpg <- a.png); white = keep, black = ignore")
    p.add_argument("--frames", type=int, metavar="N", help="video input: keep N sharp, well-spread frames (default 150)")
    p.add_argument("--fps", type=float, metavar="F", help="video input: keep F frames per second of video instead")
    p.add_argument("--orient", choices=("auto", "up", "none"),
                   help="world frame: auto (default: photo folders are set upright, +Z up, centred, metric-ish "
                   "scale, saved as RUN_DIR/orientation.json; COLMAP/nerfstudio/Blender keep their frame), "
                   "up (always), none (never)")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="cameras rendered per step (per process under torchrun); learning rates follow gsplat's "
                   "batch rule (docs/scale.md)")
    p.add_argument("--image-cache", choices=("auto", "float", "ram", "disk"),
                   help="how the decoded training images are held: auto (default: float32 when the training images "
                   "fit --image-cache-gb as floats, else uint8 in memory when they fit as bytes, else a decoded "
                   "uint8 copy on disk in RUN_DIR/image_cache), float, ram, disk")
    p.add_argument("--image-cache-gb", type=float, metavar="GB",
                   help="memory for the decoded training images (default: a quarter of free memory, at most 2)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value by its dotted key (repeatable), e.g. --set strategy.cap=200000 "
                   "--set optim.lr_means=1e-4 (every key: recon3d/train/config.py)")
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
    e.add_argument("--align-poses", action="store_true",
                   help="also report the figures after test-time pose alignment (each camera's pose optimised "
                   "against the frozen scene, as pose-refining methods are evaluated); the unaligned ones stay "
                   "the headline")
    e.add_argument("--align-steps", type=int, default=None, metavar="N",
                   help="renders (L-BFGS evaluations) per view for --align-poses (default 50)")
    e.set_defaults(func=run_eval)


def run(args: argparse.Namespace) -> int:
    """Run a reconstruction from the parsed arguments."""
    from ..api import reconstruct
    from ..train.trainer import TrainingInterrupted

    _check_method(args)
    exports = _export_formats(getattr(args, "export", []))
    overrides = {key: getattr(args, flag) for flag, key in _FLAG_KEYS.items() if getattr(args, flag) is not None}
    if args.quiet:
        overrides["run.progress"] = False
    if args.masks is not None:  # saved in config.yaml: absolute, so --resume works from any folder
        overrides["data.masks"] = str(Path(args.masks).resolve())
    try:
        _scene, _cameras, metrics = reconstruct(
            args.path, args.output, preset=args.preset, resume=args.resume, overwrite=args.overwrite,
            assignments=args.assignments, viewer=args.viewer, host=args.host, port=args.port,
            quiet=args.quiet, **overrides,
        )
    except TrainingInterrupted as exc:
        from ..train.distributed import env_rank

        if env_rank() == 0:
            print(f"{exc}: recon3d reconstruct {args.path} -o {args.output} --resume", file=sys.stderr)
        return 130
    from ..train.distributed import env_rank, requested

    if requested() and env_rank() != 0:
        return 0  # rank 0 wrote the run and says so
    # the trainer has printed the summary (figures, Gaussians, steps/s) unless --quiet; this says where it went
    print(f"result: {args.output / 'scene.ply'} (run directory {args.output})")
    if exports:
        from ..exporters import export

        for fmt in exports:
            written = export(args.output, fmt, args.output / f"scene{EXPORT_NAMES[fmt]}")
            print(f"exported {written} ({fmt})")
    return 0


def _check_method(args: argparse.Namespace) -> None:
    """One line for an unknown --method, or for a splat-only option given with --method nerf."""
    from ..errors import InputError
    from ..train.method import trainer_class

    method = getattr(args, "method", None)
    if getattr(args, "field", None) is not None and method != "nerf":
        raise InputError(None, "--field applies to --method nerf only (the hash encoding of the NeRF field)")
    if method is None:
        return
    trainer_class(method)  # one line listing the methods for an unknown name
    if method != "nerf":
        return
    for flag in SPLAT_ONLY_FLAGS:
        if getattr(args, flag, None) is not None:
            raise InputError(None, f"--{flag.replace('_', '-')} applies to Gaussian splats only, not --method nerf "
                             f"(its settings are the nerf.* keys, e.g. --set nerf.log2_table=18)")
    for assignment in getattr(args, "assignments", []) or []:
        key = assignment.split("=", 1)[0].strip()
        if key.startswith(SPLAT_ONLY_SECTIONS):
            raise InputError(None, f"--set {key} applies to Gaussian splats only, not --method nerf "
                             f"(its settings are the nerf.* keys)")
    if getattr(args, "export", None):
        raise InputError(None, "--export applies to Gaussian splats only, not --method nerf; after training, "
                         "`recon3d export RUN --format ply` distils the field into splats")


def evaluate_run(run_dir: Path, *, backend: str = "auto", split: str = "test", align_poses: bool = False,
                 align_steps: int | None = None) -> dict:
    """PSNR/SSIM of a run's scene against its images on ``split`` cameras (the trainer's evaluation)."""
    from ..run import load_run

    return load_run(run_dir).evaluate(split, backend=backend, align_poses=align_poses, align_steps=align_steps)


def run_eval(args: argparse.Namespace) -> int:
    """Print (and optionally save) PSNR/SSIM of a run."""
    from ..io_utils import atomic_write_text

    if args.align_steps is not None and args.align_steps < 1:
        from ..errors import InputError

        raise InputError(None, f"--align-steps must be at least 1, got {args.align_steps}")
    result = evaluate_run(args.run_dir, backend=args.backend, split=args.split, align_poses=args.align_poses,
                          align_steps=args.align_steps)
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
    what = "NeRF field" if result.get("method") == "nerf" else f"{result['num_gaussians']:,} Gaussians"
    print(f"{args.run_dir}: PSNR {result['psnr']:.2f} dB{extra}, SSIM {result['ssim']:.4f} over {result['num_views']} "
          f"{args.split} views ({what}); {lpips}")
    aligned = result.get("aligned_poses")
    if aligned is not None:
        extra = (f" (over black {aligned['psnr_black']:.2f}, over white {aligned['psnr_white']:.2f})"
                 if aligned.get("psnr_black") is not None else "")
        shift = aligned.get("translation_orbit_fraction")
        print(f"  with test-time pose alignment: PSNR {aligned['psnr']:.2f} dB{extra}, SSIM {aligned['ssim']:.4f}; "
              f"mean correction {aligned['rotation_deg']:.3f} deg"
              + (f", {100 * shift:.2f} % of the orbit radius" if shift is not None else ""))
        for v in result["per_view"]:
            a = v["aligned_poses"]
            view_shift = a.get("translation_orbit_fraction")
            print(f"    {Path(v['image']).name}: {v['psnr']:.2f} -> {a['psnr']:.2f} dB, {a['rotation_deg']:.3f} deg"
                  + (f", {100 * view_shift:.2f} %" if view_shift is not None else ""))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0
