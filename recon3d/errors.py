"""recon3d's own error types: every failure a user can cause is one of these, with a one-line message."""

from __future__ import annotations

from pathlib import Path


class Recon3dError(Exception):
    """Base class of every error recon3d raises on purpose; the CLI prints it as one line."""


class InputError(Recon3dError, ValueError):
    """An input file or folder is missing, malformed or unsupported; the message names it."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class BuildError(Recon3dError, RuntimeError):
    """A kernel build failed or a compiler is missing."""


class BackendUnavailable(Recon3dError, RuntimeError):
    """The requested render backend cannot run on this machine."""
