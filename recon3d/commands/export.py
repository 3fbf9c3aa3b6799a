"""``recon3d export``: write a run or a scene as PLY, SPZ, SOG, glTF, .splat, a web page, points, mesh or nerfstudio data."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMAT_HELP = (
    "ply: standard 3DGS PLY (SuperSplat, antimatter15, gsplat, nerfstudio); "
    "splat: antimatter15 .splat (web viewers); "
    "points: coloured point cloud PLY of the Gaussian centres (open3d, MeshLab, CloudCompare); "
    "mesh: TSDF-fused surface with vertex colours, GLB/OBJ/PLY by the extension of -o (Blender, MeshLab); "
    "nerfstudio: a folder with transforms.json + sparse_pc.ply (ns-train splatfacto --data DIR); "
    "spz: Niantic SPZ, ~10x smaller (Scaniverse, SuperSplat); "
    "compressed-ply: PlayCanvas compressed PLY (SuperSplat); "
    "sog: PlayCanvas SOG, WebP images + meta.json in a folder or one .sog file, ~15x smaller; "
    "gltf: GLB with KHR_gaussian_splatting; "
    "html: a web page (folder with index.html, or a .html file) that shows the scene offline"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export",
        help="export a scene as PLY, SPZ, SOG, glTF, .splat, a web page, point cloud, mesh or nerfstudio data",
        description="Export a run directory (scene.ply + cameras.json) or any splat file recon3d reads to a format "
        "other tools open. " + FORMAT_HELP + ".",
    )
    p.add_argument(
        "source", type=Path, help="a run directory or a splat file (.ply, compressed .ply, .splat, .spz, .sog, .glb)"
    )
    p.add_argument(
        "-f",
        "--format",
        choices=("ply", "splat", "points", "mesh", "nerfstudio", "spz", "compressed-ply", "sog", "gltf", "html"),
        help="output format (default: from the extension of -o: .ply, .compressed.ply, .splat, .spz, .sog, .html, "
        ".glb/.obj = mesh, no suffix = nerfstudio; a splat .glb needs --format gltf)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output file (or folder for nerfstudio)")
    p.add_argument(
        "--min-opacity",
        type=float,
        default=0.0,
        help="points/nerfstudio: leave out Gaussians less opaque than this (default 0: keep all)",
    )
    p.add_argument(
        "--copy-images", action="store_true", help="nerfstudio: copy the images into OUTPUT/images/ (default: link)"
    )
    p.add_argument("--crop", type=float, nargs=6, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
                   help="keep only the Gaussians whose centre lies in this box (world units; the viewer's Crop "
                   "panel prints the box it shows)")
    p.add_argument("--clean", action="store_true",
                   help="drop floaters: Gaussians far outside the scene's robust bounds (beyond --clean-margin "
                   "times their size) and, for a run, those fewer than --clean-min-views training cameras see")
    p.add_argument("--clean-margin", type=float, default=1.0, metavar="M",
                   help="--clean: keep what lies within the robust bounds widened by M times their size on each "
                   "side (default 1; 0 keeps only the bounds, also dropping a background the photos show)")
    p.add_argument("--clean-min-views", type=int, default=2, metavar="N",
                   help="--clean: a Gaussian must lie in front of and inside the image of at least N training "
                   "cameras (default 2; 0 keeps only the bounds rule)")
    packed = p.add_argument_group("spz / sog / gltf / html options")
    packed.add_argument("--spz-version", type=int, choices=(2, 3), default=3, help="spz: file version (3)")
    packed.add_argument(
        "--antialiased", action="store_true", help="spz: set the header's antialiasing flag (a mip-splatting scene)"
    )
    packed.add_argument(
        "--sh-palette", type=int, default=4096, help="sog: palette entries for the higher SH (k-means; 4096)"
    )
    packed.add_argument(
        "--gltf-spz", action="store_true", help="gltf: store the splats SPZ-compressed (KHR_gaussian_splatting_compression_spz_2)"
    )
    packed.add_argument(
        "--max-gaussians", type=int, default=None, help="html: keep only the most visible N Gaussians (all)"
    )
    nerf = p.add_argument_group("NeRF runs (recon3d reconstruct --method nerf)",
                                "A NeRF run exports to the splat formats through its distilled scene.ply: the first "
                                "export distils the field into Gaussians (seeded on its surface, then fitted to its "
                                "renders) and writes RUN/scene.ply and RUN/distill.json; later exports reuse them. "
                                "--format mesh runs marching cubes on the field's density instead.")
    nerf.add_argument("--distill-seconds", type=float, default=120.0, metavar="S",
                      help="NeRF runs: wall-clock budget of the splat fine-tune (default 120; 0: seeding only)")
    nerf.add_argument("--distill-steps", type=int, default=3000, metavar="N",
                      help="NeRF runs: fine-tune steps at most (default 3000)")
    nerf.add_argument("--distill-scale", type=float, default=1.0, metavar="F",
                      help="NeRF runs: fine-tune on the training views resized by F (default 1; 0.5 renders the "
                      "field's targets 4x faster, the first pass over the views is most of a short fine-tune)")
    nerf.add_argument("--distill-views", type=int, default=0, metavar="N",
                      help="NeRF runs: fit the splats to N training views spread evenly (default 0: as many as half "
                      "the fine-tune's budget renders through the field; fewer views at full size, many steps each)")
    nerf.add_argument("--redistill", action="store_true",
                      help="NeRF runs: distil again even if RUN/scene.ply exists")
    nerf.add_argument("--layer-opacity", type=float, default=0.5, metavar="A",
                      help="NeRF mesh: the surface is where a layer 1/256 of the field's box thick stops this "
                      "share of the light (default 0.5; lower: a looser, fatter surface)")
    mesh = p.add_argument_group("mesh options")
    mesh.add_argument("--resolution", type=int, default=256, help="voxels along the scene's longest side (256)")
    mesh.add_argument(
        "--voxel-size", type=float, default=None, help="voxel size in world units (overrides --resolution)"
    )
    mesh.add_argument("--image-size", type=int, default=512, help="longest side of the fused depth views (512)")
    mesh.add_argument(
        "--views", type=int, default=48, help="automatic views around the scene when it has no cameras (48)"
    )
    mesh.add_argument(
        "--alpha-threshold", type=float, default=0.5, help="pixels less opaque than this carry no depth (0.5)"
    )
    mesh.add_argument(
        "--min-component",
        type=float,
        default=0.05,
        help="drop mesh pieces smaller than this fraction of the largest (0.05)",
    )
    mesh.add_argument("--min-views", type=int, default=1, help="surface only where at least this many views saw it (1)")
    mesh.add_argument(
        "--depth",
        choices=("median", "expected"),  # recon3d.render.DEPTH_MODES (not imported: the CLI starts without torch)
        default="median",
        help="depth fused per pixel: median (where the blend first hides half of what lies behind: the surface "
        "even in a hazy reconstruction) or expected (the alpha-weighted mean depth) (median)",
    )
    mesh.add_argument(
        "--consistent-views",
        type=int,
        default=None,
        help="keep a pixel's depth only where this many of its neighbouring training views see the same "
        "surface (0: no check; default: the mesh export's own choice, see recon3d.exporters.mesh.MeshOptions)",
    )
    mesh.add_argument(
        "--split-voxels",
        type=float,
        default=None,
        help="before rendering depth, split Gaussians wider than this many voxels into narrower pieces, so "
        "each pixel's depth comes from a piece near its surface point (0: no split; default: "
        "MeshOptions.split_voxels)",
    )
    mesh.add_argument(
        "--min-parallax",
        type=float,
        default=None,
        metavar="DEG",
        help="keep a pixel's depth only where some view at least DEG degrees round sees the same surface: "
        "far haze that near views agree on is left out (0: no check; part of the multi-view check, so "
        "--consistent-views 0 turns it off too; default: MeshOptions.min_parallax_deg)",
    )
    mesh.add_argument(
        "--fill-reach",
        type=float,
        default=None,
        metavar="VOXELS",
        help="close the fused surface's holes (screened Poisson), keeping the closed surface within VOXELS of the "
        "fused one, so holes up to about twice that wide close (0: keep the TSDF mesh with its holes; default: "
        "MeshOptions.fill_reach_voxels)",
    )
    mesh.add_argument(
        "--auto-views", action="store_true", help="fuse automatic views even when the run has training cameras"
    )
    mesh.add_argument("--backend", default="auto", help="render backend: auto, cpu, cuda, reference, gsplat")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    from ..errors import InputError

    checks = [
        (args.resolution >= 8, f"--resolution must be at least 8, got {args.resolution}"),
        (args.voxel_size is None or args.voxel_size > 0, "--voxel-size must be positive"),
        (args.image_size >= 16, f"--image-size must be at least 16, got {args.image_size}"),
        (args.views >= 1, "--views must be at least 1"),
        (args.min_views >= 1, "--min-views must be at least 1"),
        (args.consistent_views is None or args.consistent_views >= 0, "--consistent-views must be 0 or more"),
        (args.split_voxels is None or args.split_voxels >= 0, "--split-voxels must be 0 or more"),
        (args.min_parallax is None or 0 <= args.min_parallax < 90, "--min-parallax must lie in [0, 90) degrees"),
        (args.fill_reach is None or args.fill_reach >= 0, "--fill-reach must be 0 or more"),
        (0.0 < args.alpha_threshold < 1.0, "--alpha-threshold must lie in (0, 1)"),
        (0.0 <= args.min_component <= 1.0, "--min-component must lie in [0, 1]"),
        (0.0 <= args.min_opacity <= 1.0, "--min-opacity must lie in [0, 1]"),
        (args.clean_min_views >= 0, "--clean-min-views must be 0 or more"),
        (args.clean_margin >= 0, "--clean-margin must be 0 or more"),
        (args.crop is None or all(a < b for a, b in zip(args.crop[:3], args.crop[3:])),
         "--crop needs X0 Y0 Z0 X1 Y1 Z1 with each minimum below its maximum"),
        (1 <= args.sh_palette <= 65536, "--sh-palette must lie in 1..65536"),
        (args.max_gaussians is None or args.max_gaussians >= 1, "--max-gaussians must be at least 1"),
        (args.distill_seconds >= 0, "--distill-seconds must be 0 or more"),
        (args.distill_steps >= 0, "--distill-steps must be 0 or more"),
        (args.distill_views >= 0, "--distill-views must be 0 or more"),
        (0.0 < args.distill_scale <= 1.0, "--distill-scale must lie in (0, 1]"),
        (0.0 < args.layer_opacity < 1.0, "--layer-opacity must lie in (0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(None, message)


def select_gaussians(source, *, crop=None, clean: bool = False, min_views: int = 2, margin: float = 1.0) -> None:
    """Apply ``--crop`` and ``--clean`` to ``source.scene`` in place and say what they left out."""
    import math

    from ..bounds import clean_mask, outside_bounds
    from ..errors import InputError

    scene = source.scene
    total = len(scene)
    if crop is not None:
        if not all(math.isfinite(v) for v in crop):
            raise InputError(None, "--crop needs finite numbers")
        keep = ~outside_bounds(scene, crop[:3], crop[3:])
        scene = scene[keep]
        print(f"--crop: kept {len(scene):,} of {total:,} Gaussians inside the box")
    if clean and len(scene) > 0:
        train = source.cameras
        if train is not None and source.splits:
            idx = [i for i, s in enumerate(source.splits) if s == "train"]
            train = train[idx] if idx else train
        keep, stats = clean_mask(scene, train, min_views=min_views, margin=margin)
        scene = scene[keep]
        views = (f", {stats['seen_by_too_few_views']:,} seen by fewer than {min_views} training views"
                 if stats["min_views"] else "")  # fmt: skip
        dropped = stats["total"] - stats["kept"]
        print(f"--clean: dropped {dropped:,} of {stats['total']:,} Gaussians ({100 * dropped / max(stats['total'], 1):.1f} %): "
              f"{stats['outside_bounds']:,} beyond the robust bounds widened by {margin:g}× their size{views}")  # fmt: skip
    if len(scene) == 0:
        raise InputError(None, "--crop/--clean left no Gaussians to export")
    source.scene = scene


def run(args: argparse.Namespace) -> int:
    """Export the source and say what was written."""
    from ..exporters import export, format_for_path, load_source
    from ..exporters.source import is_nerf_run

    _check(args)
    fmt = args.format or format_for_path(args.output)
    if fmt == "mesh" and is_nerf_run(args.source):
        return _nerf_mesh(args)
    distill = None
    if is_nerf_run(args.source):
        from ..nerf.distill import DistillOptions

        distill = DistillOptions(seconds=args.distill_seconds, steps=args.distill_steps, image_scale=args.distill_scale,
                                 views=args.distill_views)
    source = load_source(args.source, distill=distill, redistill=args.redistill)
    select_gaussians(source, crop=args.crop, clean=args.clean, min_views=args.clean_min_views,
                     margin=args.clean_margin)  # fmt: skip
    options: dict = {}
    if fmt in ("points", "nerfstudio"):
        options["min_opacity"] = args.min_opacity
    if fmt == "nerfstudio":
        options["copy_images"] = args.copy_images
    if fmt == "spz":
        from ..formats import file_antialiased

        # --antialiased, or the source's own mode (its PLY comment or SPZ flag) carried over
        options.update(version=args.spz_version, antialiased=args.antialiased or file_antialiased(args.source))
    if fmt == "sog":
        options["sh_palette"] = args.sh_palette
    if fmt == "gltf":
        options["spz"] = args.gltf_spz
    if fmt == "html":
        options["max_gaussians"] = args.max_gaussians
    if fmt == "mesh":
        options.update(
            resolution=args.resolution,
            voxel_size=args.voxel_size,
            image_size=args.image_size,
            num_views=args.views,
            alpha_threshold=args.alpha_threshold,
            min_component_fraction=args.min_component,
            min_views=args.min_views,
            backend=args.backend,
            depth=args.depth,
        )
        if args.consistent_views is not None:
            options["consistent_views"] = args.consistent_views
        if args.split_voxels is not None:
            options["split_voxels"] = args.split_voxels
        if args.min_parallax is not None:
            options["min_parallax_deg"] = args.min_parallax
        if args.fill_reach is not None:
            options["close_holes"] = args.fill_reach > 0
            if args.fill_reach > 0:
                options["fill_reach_voxels"] = args.fill_reach
        if args.auto_views:
            source.cameras = None
        views = "training cameras" if source.cameras is not None else f"{args.views} automatic views"
        print(f"fusing {views} of {len(source.scene)} Gaussians into a mesh…")
    if fmt == "mesh":
        from ..errors import InputError
        from ..exporters.mesh import MESH_FORMATS, extract_mesh, save_mesh

        if args.output.suffix.lower() not in MESH_FORMATS:  # refuse before minutes of fusion
            raise InputError(args.output, f"a mesh is written as {', '.join(MESH_FORMATS)}")
        if args.output.is_dir():
            raise InputError(args.output, "is a directory; the mesh export writes a file")
        mesh = extract_mesh(source.scene, source.cameras, **options)
        written = save_mesh(mesh, args.output)
        watertight = "watertight" if mesh.is_watertight else "not watertight"
        detail = f"{len(mesh.vertices)} vertices, {len(mesh.faces)} triangles, {watertight}"
    else:
        written = export(source, fmt, args.output, **options)
        detail = f"{len(source.cameras)} cameras" if fmt == "nerfstudio" else f"{len(source.scene)} Gaussians"
    print(f"wrote {written} ({fmt}, {detail})")
    return 0


def _nerf_mesh(args: argparse.Namespace) -> int:
    """Marching cubes on a NeRF run's density, vertex colours from the field."""
    from ..errors import InputError
    from ..exporters.mesh import MESH_FORMATS, save_mesh
    from ..nerf.mesh import field_mesh
    from ..nerf.trainer import MODEL_FILE, NerfModel

    if args.output.suffix.lower() not in MESH_FORMATS:
        raise InputError(args.output, f"a mesh is written as {', '.join(MESH_FORMATS)}")
    if args.output.is_dir():
        raise InputError(args.output, "is a directory; the mesh export writes a file")
    if args.crop is not None or args.clean:
        raise InputError(None, "--crop/--clean select Gaussians; a NeRF run's mesh comes from its field (leave them out)")
    model = NerfModel.load(args.source / MODEL_FILE)
    print(f"marching cubes on the NeRF field's density ({args.resolution} cells along the box)…", flush=True)
    mesh = field_mesh(model, resolution=args.resolution, layer_opacity=args.layer_opacity,
                      min_component_fraction=args.min_component)
    written = save_mesh(mesh, args.output)
    watertight = "watertight" if mesh.is_watertight else "not watertight"
    print(f"wrote {written} (mesh, {len(mesh.vertices)} vertices, {len(mesh.faces)} triangles, {watertight})")
    return 0
