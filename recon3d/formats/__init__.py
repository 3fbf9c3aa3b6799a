"""recon3d.formats: read and write Gaussian-splat files; ``load_scene`` tells them apart by content.

==================  ===============================  ===========================  ==========================
format              file                             detected by                  module
==================  ===============================  ===========================  ==========================
``ply``             3DGS PLY (exact)                 ``ply`` + ``f_dc_0``         :mod:`recon3d.ply`
``compressed-ply``  PlayCanvas compressed PLY        ``ply`` + ``element chunk``  :mod:`.compressed_ply`
``splat``           antimatter15 .splat              size a multiple of 32        :mod:`.splat`
``spz``             Niantic SPZ v2/v3 (gzip)         gzip stream, ``NGSP`` inside :mod:`.spz`
``sog``             PlayCanvas SOG v2 (WebP + json)  zip or folder with meta.json :mod:`.sog`
``gltf``            glTF 2.0 KHR_gaussian_splatting  ``glTF`` magic / JSON asset  :mod:`.gltf`
==================  ===============================  ===========================  ==========================

Readers and writers take and return :class:`~recon3d.scene.GaussianScene` in the raw parameters the
3DGS PLY stores, with OpenCV axes; formats with other axes (SPZ, glTF) convert at the edge.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..scene import GaussianScene

SCENE_FORMATS = ("ply", "compressed-ply", "splat", "spz", "sog", "gltf")
_SUFFIXES = {
    ".spz": "spz",
    ".sog": "sog",
    ".glb": "gltf",
    ".gltf": "gltf",
    ".splat": "splat",
}

__all__ = ["SCENE_FORMATS", "detect_format", "file_antialiased", "load_scene", "save_scene", "format_from_suffix"]


def format_from_suffix(path: str | Path) -> str | None:
    """The scene format an output path's name implies (``x.compressed.ply`` → compressed-ply), or None."""
    name = Path(path).name.lower()
    if name.endswith(".compressed.ply"):
        return "compressed-ply"
    if name == "meta.json":
        return "sog"
    return _SUFFIXES.get(Path(name).suffix) or ("ply" if name.endswith(".ply") else None)


def detect_format(path: str | Path) -> str:
    """Which splat format ``path`` holds, judged by its content (magic bytes), not its name."""
    path = Path(path)
    if path.is_dir():
        if (path / "meta.json").is_file():
            return "sog"
        raise InputError(path, "is a folder without meta.json (a SOG folder holds meta.json and WebP images)")
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot read the file ({exc.strerror or exc})") from None
    if head.startswith(b"ply"):
        from .compressed_ply import is_compressed_ply

        return "compressed-ply" if is_compressed_ply(head) else "ply"
    if head[:2] == b"\x1f\x8b" or head[:4] == b"NGSP":
        return "spz"
    if head[:4] == b"glTF":
        return "gltf"
    if head[:4] == b"PK\x03\x04":
        return "sog"
    stripped = head.lstrip()
    if stripped[:1] == b"{":
        if path.name == "meta.json" or b'"means"' in head:
            return "sog"
        if b'"asset"' in head:
            return "gltf"
    # No magic matched: the name picks the reader, which then says what is wrong with the file.
    guess = format_from_suffix(path)
    if guess is not None:
        return guess
    if size and size % 32 == 0:
        return "splat"  # .splat has no magic: only its size (32 bytes a Gaussian) speaks for it
    raise InputError(
        path, "not a PLY, nor another splat file recon3d reads (compressed PLY, .splat, SPZ, SOG, glTF/GLB)"
    )


def file_antialiased(path: str | Path) -> bool:
    """Whether a splat file (or a run's scene.ply) says its scene was trained for the anti-aliased render
    mode: the PLY's ``rasterize_mode antialiased`` comment, or SPZ's header flag 0x1. False when unsaid."""
    path = Path(path)
    if path.is_dir():
        path = path / "scene.ply"
    try:
        fmt = detect_format(path)
    except InputError:
        return False
    if fmt == "ply":
        from ..ply import ply_antialiased

        return ply_antialiased(path)
    if fmt == "spz":
        from .spz import spz_header_antialiased

        return spz_header_antialiased(path)
    return False


# format -> (module, reader, writer); modules load on first use so `import recon3d.formats` stays light
_CODECS = {
    "ply": ("recon3d.ply", "load_ply", "save_ply"),
    "compressed-ply": ("recon3d.formats.compressed_ply", "load_compressed_ply", "save_compressed_ply"),
    "spz": ("recon3d.formats.spz", "load_spz", "save_spz"),
    "sog": ("recon3d.formats.sog", "load_sog", "save_sog"),
    "gltf": ("recon3d.formats.gltf", "load_gltf", "save_gltf"),
    "splat": ("recon3d.formats.splat", "load_splat", "save_splat"),
}


def _codec(fmt: str, which: int):
    """The reader (which=1) or writer (which=2) of ``fmt``."""
    import importlib

    entry = _CODECS[fmt]
    return getattr(importlib.import_module(entry[0]), entry[which])


def load_scene(path: str | Path) -> GaussianScene:
    """Read any supported splat file (or SOG folder) into a GaussianScene, picking the reader by content."""
    path = Path(path)
    fmt = detect_format(path)
    return _codec(fmt if fmt in _CODECS else "splat", 1)(path)


def save_scene(scene: GaussianScene, path: str | Path, format: str | None = None, **options) -> Path:
    """Write ``scene`` as ``format`` (or the one ``path``'s name implies); options go to the writer."""
    path = Path(path)
    fmt = format or format_from_suffix(path)
    if fmt is None:
        raise InputError(path, f"cannot tell the scene format from the name; pass one of {', '.join(SCENE_FORMATS)}")
    if fmt not in _CODECS:
        raise InputError(None, f"unknown scene format {fmt!r}; choose one of {', '.join(SCENE_FORMATS)}")
    return _codec(fmt, 2)(scene, path, **options)
