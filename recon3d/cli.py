"""The ``recon3d`` command line: one subcommand per job, each defined in ``recon3d/commands/``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines ``register(subparsers)``, adding its subcommands with ``set_defaults(func=...)``.
# A module that is not there (a part of recon3d not yet built) simply adds no command.
COMMAND_MODULES = (
    "recon3d.commands.reconstruct",  # reconstruct, eval
    "recon3d.commands.render",  # render
    "recon3d.commands.view",  # view
    "recon3d.commands.export",  # export
    "recon3d.commands.generate",  # generate, generate-data, train-generator
    "recon3d.commands.library",  # index, search
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="recon3d",
        description="Photos to 3D Gaussian-splat scenes: reconstruct, render, view, export, generate.",
        epilog="Run 'recon3d COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"recon3d {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recon3d`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        from .progress import configure_warnings

        configure_warnings()  # each note once, on one line
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        result = args.func(args)
        return int(result or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the traceback only with --debug
        if debug:
            raise
        from .errors import Recon3dError

        if isinstance(exc, Recon3dError):
            from .train.distributed import PeerLost, env_rank, requested

            # several training processes (torchrun) hit the same error: rank 0 says it once; another rank
            # speaks only when it is the one that saw a process go away
            if not requested() or env_rank() == 0 or isinstance(exc, PeerLost):
                print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
            print(
                "error: out of memory; try --downscale 2 or a lower Gaussian cap (e.g. --max-gaussians 200000)",
                file=sys.stderr,
            )
            return 3
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
