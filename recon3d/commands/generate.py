"""``recon3d generate``, ``recon3d generate-data`` and ``recon3d train-generator``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the generator's subcommands."""
    p = subparsers.add_parser(
        "generate",
        help="generate a Gaussian scene from a text prompt",
        description="Sample a 3D Gaussian scene from a prompt with the shipped text-to-scene generator "
        "(e.g. 'a red cube on top of a blue sphere') and write it as a 3DGS .ply.",
    )
    p.add_argument("prompt", nargs="?", default=None,
                   help="what to generate, e.g. 'three red cubes in a row' (optional with --image)")
    p.add_argument("--image", type=Path, default=None,
                   help="an image of the scene to generate (alone or with the prompt; needs a checkpoint with an image encoder)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .ply")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--num-gaussians", type=int, default=None, help="Gaussians in the scene (default: checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="ODE steps (default: checkpoint's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: checkpoint's)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a generator checkpoint (default: the shipped one)")
    p.add_argument("--view", action="store_true", help="open the result in the browser viewer")
    p.add_argument("--turntable", type=Path, default=None, help="also render a turntable video (.mp4)")
    p.set_defaults(func=run_generate)

    d = subparsers.add_parser(
        "generate-data",
        help="build the generator's captioned training set",
        description="Compose captioned procedural scenes (primitives, composites, two-object relations), "
        "optionally meshes and reconstructed scenes, and cache their text embeddings. Held-out concepts "
        "never enter the set.",
    )
    d.add_argument("-o", "--output", type=Path, default=Path("runs/generator-data"), help="output folder")
    d.add_argument("--pairs", type=int, default=12000, help="distinct two-object captions (default 12000)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--heldout", type=Path, default=None, help="held-out concepts file (default ../shared/generation/heldout.txt)")
    d.add_argument("--meshes", type=Path, default=None, help="a folder of meshes named by their file names")
    d.add_argument("--scans", type=Path, action="append", default=[], help="a folder of .ply scenes with captions.jsonl (repeatable)")
    d.set_defaults(func=run_generate_data)

    t = subparsers.add_parser(
        "train-generator",
        help="train the text-to-scene generator (torchrun for several processes)",
        description="Train the generator from a config (configs/generator-{tiny,small,base}.yaml or a preset "
        "name). Resumes from the run's last checkpoint. For DDP: torchrun --nproc_per_node=N -m recon3d.cli "
        "train-generator --config ...",
    )
    t.add_argument("--config", required=True, help="a YAML config or a preset name: tiny, small, base")
    t.add_argument("--out", type=Path, default=None, help="run directory (overrides train.out)")
    t.add_argument("--data", type=Path, default=None, help="training set folder (overrides data.dir)")
    t.add_argument("--steps", type=int, default=None, help="training steps (overrides train.steps)")
    t.add_argument("--time-budget", type=float, default=None, help="stop after this many minutes")
    t.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    t.add_argument("--export", type=Path, default=None, help="write the EMA weights (float16 + JSON) here when done")
    t.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value by its dotted key (repeatable), e.g. --set train.lr=3e-4 "
                   "(every key: recon3d/generation/config.py)")
    t.set_defaults(func=run_train)


def run_generate(args: argparse.Namespace) -> int:
    """Generate one scene and write it."""
    import warnings

    from ..errors import InputError
    from ..generation.api import GeneratorWarning, PromptError, generate
    from ..ply import save_ply

    if args.output.suffix.lower() != ".ply":
        raise InputError(args.output, "the output must be a .ply file")
    if args.prompt is None and args.image is None:
        raise PromptError("give a prompt, --image PATH, or both")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GeneratorWarning)
        scene = generate(
            args.prompt, image=args.image, seed=args.seed, num_gaussians=args.num_gaussians, steps=args.steps,
            guidance=args.guidance, checkpoint=args.checkpoint,
        )
    for w in caught:
        print(f"warning: {w.message}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_ply(scene, args.output)
    print(f"wrote {args.output} ({len(scene)} Gaussians)")
    if args.turntable is not None:
        _turntable(scene, args.turntable)
    if args.view:
        try:
            from ..viewer import view
        except ImportError:
            print(f"the viewer is not installed; open {args.output} with `recon3d view` or any 3DGS viewer")
            return 0
        view(scene)
    return 0


def _turntable(scene, path: Path, frames: int = 48, size: int = 256) -> None:
    import imageio.v2 as imageio
    import numpy as np
    import torch

    from ..io_utils import atomic_open
    from ..progress import track
    from ..render import render
    from .render import orbit_cameras

    cams = orbit_cameras(scene, frames, size, size)
    images = []
    for i in track(range(len(cams)), description="turntable", unit="frames"):
        with torch.no_grad():
            out = render(scene, cams[i], background=torch.ones(3))
        images.append((out.rgb[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    with atomic_open(path, "wb") as f:
        imageio.mimwrite(f, images, format=(path.suffix or ".mp4").lstrip("."), fps=24)
    print(f"wrote {path} ({frames} frames)")


def run_generate_data(args: argparse.Namespace) -> int:
    """Build the training set."""
    from ..generation.data import build_dataset, load_heldout

    held = load_heldout(args.heldout)
    out = build_dataset(
        args.output, num_pairs=args.pairs, seed=args.seed, heldout=held, mesh_dir=args.meshes, scan_dirs=args.scans
    )
    print(f"wrote the generator training set to {out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Train (and optionally export) a generator."""
    from ..generation.train import export_weights, load_config, train

    over: dict = {"train": {}, "data": {}}
    if args.out is not None:
        over["train"]["out"] = str(args.out)
    if args.data is not None:
        over["data"]["dir"] = str(args.data)
    if args.steps is not None:
        over["train"]["steps"] = args.steps
    if args.time_budget is not None:
        over["train"]["time_budget_minutes"] = args.time_budget
    cfg = load_config(args.config, over, args.assignments)
    out = train(cfg, resume=not args.no_resume)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if args.export is not None and rank == 0:
        export_weights(out, args.export, sample=cfg.to_dict()["sample"])
        print(f"exported {args.export}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
