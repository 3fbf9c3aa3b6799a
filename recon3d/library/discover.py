"""Finding the scenes of a library folder: splat files, run directories and generated scenes.

What counts as a scene:

- a **run directory**: a folder holding ``scene.ply`` and one of ``cameras.json``, ``config.yaml``,
  ``metrics.json`` (what ``recon3d reconstruct`` writes). It is one entry; nothing inside it is listed
  again (its ``points.ply``, checkpoints, …);
- a **3DGS PLY**: a ``.ply`` whose header has the 3DGS colour property ``f_dc_0`` or is a compressed PLY
  (``element chunk``). A PLY without them (a mesh, a point cloud) is not a scene and is passed over. A
  ``.ply`` whose header cannot be read is listed, so that indexing reports it as unreadable;
- ``.splat``, ``.spz`` and ``.sog`` files (these formats hold only splats).

A generated scene is a PLY like any other; what makes it findable by its prompt is the text next to it
(see :mod:`recon3d.library.metadata`). Hidden folders (``.name``), the index folder and ``__pycache__``
are skipped; symbolic links are not followed (a link loop cannot hang indexing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SPLAT_SUFFIXES = (".splat", ".spz", ".sog")
RUN_MARKERS = ("cameras.json", "config.yaml", "metrics.json")
_SKIP_DIRS = {"__pycache__", "checkpoints", "node_modules"}
_HEADER_BYTES = 1 << 14


@dataclass(frozen=True)
class SceneEntry:
    """One scene of a library: where it is (relative to the library root) and the file that holds it."""

    rel: str  # POSIX path relative to the library root: the key of the entry
    kind: str  # "run", "ply" or "splat"
    scene_file: Path  # the file whose bytes are the scene (scene.ply for a run)

    @property
    def is_run(self) -> bool:
        """Whether the entry is a run directory."""
        return self.kind == "run"


def is_run_dir(folder: Path) -> bool:
    """A folder that ``recon3d reconstruct`` wrote (scene.ply plus cameras/config/metrics)."""
    return (folder / "scene.ply").is_file() and any((folder / m).is_file() for m in RUN_MARKERS)


def ply_kind(path: Path) -> str | None:
    """``"splat"`` for a 3DGS or compressed PLY, None for another PLY (mesh, points), ``"unreadable"`` otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
    except OSError:
        return "unreadable"
    if not head.startswith(b"ply"):
        return "unreadable"
    end = head.find(b"end_header")
    if end < 0:
        return "unreadable"
    header = head[:end]
    if b"f_dc_0" in header or b"element chunk" in header:
        return "splat"
    return None


def discover(root: str | Path, skip: Path | None = None) -> Iterator[SceneEntry]:
    """Every scene under ``root`` in a stable (sorted) order; ``skip`` is a folder to leave out (the index)."""
    root = Path(root)
    if is_run_dir(root):  # the library folder itself is a run
        yield SceneEntry(".", "run", root / "scene.ply")
        return
    skip_real = os.path.realpath(skip) if skip is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if skip_real is not None and os.path.realpath(here) == skip_real:
            dirnames[:] = []
            continue
        if here != root and is_run_dir(here):
            dirnames[:] = []  # a run is one scene; its other files are not scenes of their own
            yield SceneEntry(here.relative_to(root).as_posix(), "run", here / "scene.ply")
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            suffix = path.suffix.lower()
            if suffix == ".ply":
                if ply_kind(path) is None:
                    continue
                yield SceneEntry(path.relative_to(root).as_posix(), "ply", path)
            elif suffix in SPLAT_SUFFIXES and path.is_file():
                yield SceneEntry(path.relative_to(root).as_posix(), "splat", path)
