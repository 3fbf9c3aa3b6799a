"""``recon3d index DIR``, ``recon3d search "QUERY" DIR`` and ``recon3d describe SCENE``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the library's subcommands."""
    p = subparsers.add_parser(
        "index",
        help="index a folder of scenes for search (only new and changed scenes are read)",
        description="Find every scene under DIR (3DGS .ply, .splat, .spz, .sog, run directories, generated "
        "scenes), render thumbnails, embed what they show and what is written about them, and keep the index "
        "in DIR/.recon3d-index (or --index PATH). Run it again to bring the index up to date; an interrupted "
        "run resumes.",
    )
    p.add_argument("library", type=Path, metavar="DIR", help="the folder of scenes")
    p.add_argument("--index", type=Path, default=None, metavar="PATH",
                   help="keep the index in this folder (for a read-only library; default DIR/.recon3d-index)")
    p.add_argument("--backend", default="auto", help="render backend for thumbnails (default auto)")
    p.set_defaults(func=run_index)

    s = subparsers.add_parser(
        "search",
        help="find scenes in a folder by a text query, an image, or both",
        description="Rank the scenes under DIR by how well they match QUERY (and/or --image). The index is "
        "brought up to date first (see `recon3d index`). Examples: recon3d search \"a red cube\" scenes/ ; "
        "recon3d search scenes/ --image photo.png",
    )
    s.add_argument("args", nargs="+", metavar="QUERY DIR",
                   help="the text query and the library folder (with --image, the query may be left out)")
    s.add_argument("--image", type=Path, default=None, help="an image of what to find (alone or with the query)")
    s.add_argument("--top", type=int, default=10, metavar="K", help="how many results (default 10)")
    s.add_argument("--json", action="store_true", help='print only a JSON list of {"path", "score"}, best first')
    s.add_argument("--index", type=Path, default=None, metavar="PATH", help="the index folder (default DIR/.recon3d-index)")
    s.add_argument("--no-update", action="store_true", help="search the index as it is, without indexing new scenes")
    s.set_defaults(func=run_search)

    d = subparsers.add_parser(
        "describe",
        help="say in words what a scene shows (objects, colours, counts, relations)",
        description="Caption a scene of the kind the scene encoder knows (composed and generated scenes: up to two "
        "kinds of objects, their colours, counts and relation). For anything else it says how far the scene is "
        "from what it knows, and gives no caption.",
    )
    d.add_argument("scene", type=Path, metavar="SCENE", help="a scene file (.ply, .splat, .spz, .sog) or a run directory")
    d.add_argument("--json", action="store_true", help="print the description as JSON (caption, familiarity, alternatives)")
    d.set_defaults(func=run_describe)


def run_index(args: argparse.Namespace) -> int:
    """Index a library and print what was done."""
    from ..library import index_library

    report = index_library(args.library, args.index, backend=args.backend)
    print(report.summary())
    return 0


def run_search(args: argparse.Namespace) -> int:
    """Search a library; a table, or JSON with --json."""
    from ..library import QueryError, search

    if len(args.args) > 2:
        raise QueryError(f"expected QUERY DIR, got {len(args.args)} words; put the query in quotes")
    if len(args.args) == 1:
        if args.image is None:
            raise QueryError("give a query and the library folder (recon3d search \"QUERY\" DIR), or DIR with --image")
        query, library = None, args.args[0]
    else:
        query, library = args.args
    results = search(query, library, image=args.image, top=args.top, index=args.index, update=not args.no_update,
                     progress=not args.json)
    if args.json:
        print(json.dumps([r.to_json() for r in results]))
        return 0
    if not results:
        print("no scenes in this library")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, title=f"scenes in {library}", title_justify="left")
    for name, justify in (("#", "right"), ("score", "right"), ("scene", "left"), ("Gaussians", "right"), ("about", "left")):
        table.add_column(name, justify=justify)
    for k, r in enumerate(results, 1):
        table.add_row(str(k), f"{r.score:.3f}", r.rel, f"{r.num_gaussians:,}", r.summary[:60])
    Console(soft_wrap=True, highlight=False).print(table)
    return 0


def run_describe(args: argparse.Namespace) -> int:
    """Describe one scene."""
    from ..understand.describe import describe

    d = describe(args.scene)
    if args.json:
        print(json.dumps(d.to_json()))
        return 0
    print(d.text)
    if d.known:
        print(f"familiarity {d.familiarity:.2f} (composed scenes ≥ {d.threshold:.2f}), agreement of Gaussians and "
              f"views {d.agreement:.2f} (≥ {d.agreement_threshold:.2f}); nearest single objects: "
              + "; ".join(f"{c} ({s:.2f})" for c, s in d.alternatives))
    return 0
