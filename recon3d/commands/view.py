"""``recon3d view``: open a run directory or a 3DGS .ply in the browser viewer (viser)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``view`` subcommand."""
    p = subparsers.add_parser(
        "view",
        help="view a scene in the browser (viser)",
        description="Serve a run directory (scene.ply, cameras, sparse points) or any 3DGS .ply in a browser "
        "viewer. Prints the URL and opens nothing; binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("target", type=Path, help="a run directory (with scene.ply) or a 3DGS .ply file")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; the next free one if taken)")
    p.add_argument(
        "--host",
        default=None,
        help="address to listen on (default 127.0.0.1, this machine only); e.g. 0.0.0.0 exposes the viewer "
        "to your network",
    )
    p.add_argument("--backend", default="auto", help="render backend for 'render with recon3d' (default auto)")
    p.add_argument("--max-resolution", type=int, default=1024, help="longest side of server renders (default 1024)")
    p.add_argument("--library", type=Path, default=None,
                   help="the folder of scenes the Search panel searches (default: the folder the target is in)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the target, start the server, print the URL and serve until Ctrl-C."""
    from recon3d.viewer.app import ViewerApp
    from recon3d.viewer.source import load_target

    data = load_target(args.target)  # a bad file fails here, before any server starts
    if args.library is not None and not args.library.expanduser().is_dir():
        from recon3d.errors import InputError

        raise InputError(args.library, "no such folder (--library names the folder of scenes to search)")
    app = ViewerApp(data, host=args.host, port=args.port, backend=args.backend, max_resolution=args.max_resolution,
                    library=args.library)
    what = f"{len(data.scene):,} Gaussians"
    if data.nerf is not None:  # a NeRF run: the field is drawn on the server, coarse first, sharper at rest
        what = "a NeRF field, server-rendered" + (f", and {what} distilled from it" if len(data.scene) else "")
    print(f"recon3d viewer: {app.url}  ({what} from {data.source}; Ctrl-C to stop)", flush=True)
    app.serve_forever()
    return 0
