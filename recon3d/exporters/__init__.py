"""recon3d.exporters: write a scene (or a run) in the formats other tools open.

=============  =====================  ==================================================================
format         writes                 opened by
=============  =====================  ==================================================================
``ply``        3DGS PLY               SuperSplat, antimatter15, mkkellogg, gsplat, nerfstudio, Inria SIBR
``splat``      antimatter15 .splat    antimatter15's WebGL viewer, SuperSplat, most web splat viewers
``points``     coloured point PLY     open3d, trimesh, MeshLab, CloudCompare, Blender
``mesh``       GLB / OBJ / PLY mesh   Blender, MeshLab, three.js/model-viewer (GLB), trimesh, open3d
``nerfstudio`` transforms.json + ply  nerfstudio (``ns-train splatfacto --data DIR``), recon3d
``spz``        Niantic SPZ (v2/v3)    Scaniverse, Niantic's spz library, SuperSplat, gsply
``compressed-ply`` PlayCanvas PLY     SuperSplat, PlayCanvas engine, splat-transform, gsply
``sog``        PlayCanvas SOG v2      SuperSplat, PlayCanvas engine, splat-transform, gsply
``gltf``       GLB, KHR_gaussian_     glTF viewers with the Khronos Gaussian-splat extension (CesiumJS);
               splatting              others show the points
``html``       a web page             any browser, from file:// with no server (viser's bundled client)
=============  =====================  ==================================================================

The splat formats themselves (readers and writers) live in :mod:`recon3d.formats`.

``recon3d.export(source, format, path, **options)`` does any of them; ``save_splat``, ``export_mesh``,
``write_nerfstudio`` etc. are the per-format functions. ``source`` is a GaussianScene, a run directory
(``scene.ply`` + ``cameras.json``), a 3DGS ``.ply`` or a ``.splat``. A NeRF run (``nerf.pt``) exports to the
splat formats through the scene its first export distils from the field (``recon3d.nerf.distill``), and
to a mesh by marching cubes on its density (``recon3d.nerf.mesh``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..formats.splat import load_splat, save_splat
from ..ply import load_ply, save_ply
from .points import save_point_cloud, write_point_cloud
from .source import ExportSource, load_source

FORMATS = ("ply", "splat", "points", "mesh", "nerfstudio", "spz", "compressed-ply", "sog", "gltf", "html")
# Formats written by recon3d.formats.save_scene (a scene in, a file out).
SCENE_WRITERS = ("spz", "compressed-ply", "sog", "gltf")

__all__ = [
    "FORMATS",
    "ExportSource",
    "export",
    "export_mesh",
    "export_nerfstudio",
    "extract_mesh",
    "format_for_path",
    "load_ply",
    "load_source",
    "load_splat",
    "save_mesh",
    "save_ply",
    "save_point_cloud",
    "save_splat",
    "write_nerfstudio",
    "write_point_cloud",
]


def format_for_path(path: str | Path) -> str:
    """Guess the export format from an output path: .ply (3DGS), .compressed.ply, .splat, .spz, .sog, .html,
    .glb/.obj (mesh), no suffix (nerfstudio)."""
    name = Path(path).name.lower()
    suffix = Path(path).suffix.lower()
    if name.endswith(".compressed.ply"):
        return "compressed-ply"
    guess = {
        ".splat": "splat", ".glb": "mesh", ".obj": "mesh", ".ply": "ply", "": "nerfstudio",
        ".spz": "spz", ".sog": "sog", ".html": "html", ".htm": "html",
    }.get(suffix)  # fmt: skip
    if guess is None:
        raise InputError(path, f"cannot tell the export format from the extension {suffix!r}; pass --format")
    return guess


def export(
    source: str | Path | object,
    format: str | None,
    path: str | Path,
    **options,
) -> Path:
    """Export ``source`` (a scene, run directory or any splat file) as ``format`` to ``path``; returns what was written.

    Options: ``min_opacity`` (points, nerfstudio: Gaussians below it are left out), ``copy_images``
    (nerfstudio), ``cameras`` (mesh: views to fuse instead of the run's), every
    :class:`~recon3d.exporters.mesh.MeshOptions` field (mesh), ``version`` (spz: 2 or 3) and
    ``antialiased`` (spz: the header flag), ``sh_palette`` (sog: SH palette entries), ``spz`` (gltf: the
    SPZ-compressed variant), ``max_gaussians`` (html: keep the most visible ones).
    """
    path = Path(path)
    fmt = format or format_for_path(path)
    if fmt not in FORMATS:
        raise InputError(None, f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "mesh":
        from .mesh import MESH_FORMATS

        if path.suffix.lower() not in MESH_FORMATS:  # refuse before minutes of fusion
            raise InputError(path, f"a mesh is written as {', '.join(MESH_FORMATS)}; this path ends in {path.suffix!r}")
    elif fmt in ("ply", "points") and path.suffix.lower() != ".ply":
        raise InputError(path, f"the {fmt} export writes a .ply file")
    elif fmt == "splat" and path.suffix.lower() != ".splat":
        raise InputError(path, "the splat export writes a .splat file")
    elif fmt == "spz" and path.suffix.lower() != ".spz":
        raise InputError(path, "the spz export writes a .spz file")
    elif fmt == "compressed-ply" and path.suffix.lower() != ".ply":
        raise InputError(path, "the compressed-ply export writes a .ply file (name it x.compressed.ply)")
    elif fmt == "gltf" and path.suffix.lower() != ".glb":
        raise InputError(path, "the gltf export writes a .glb file")
    if fmt not in ("nerfstudio", "sog", "html") and path.is_dir():
        raise InputError(path, f"is a directory; the {fmt} export writes a file")
    known = _options_for(fmt)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"export format {fmt!r} takes no option {', '.join(unknown)} (it takes {', '.join(sorted(known)) or 'none'})"
        )

    if fmt == "spz" and "antialiased" not in options and isinstance(source, (str, Path)):
        from ..formats import file_antialiased

        options["antialiased"] = file_antialiased(source)  # carry the run's anti-aliased mode into the header
    if isinstance(source, (str, Path)) and fmt == "mesh":
        from .source import is_nerf_run

        if is_nerf_run(source):  # marching cubes on the field's density (recon3d.nerf.mesh)
            from ..nerf.mesh import field_mesh
            from ..nerf.trainer import MODEL_FILE, NerfModel
            from .mesh import save_mesh

            model = NerfModel.load(Path(source) / MODEL_FILE)
            return save_mesh(field_mesh(model, resolution=options.get("resolution", 256),
                                        min_component_fraction=options.get("min_component_fraction", 0.0)), path)
    src = load_source(source)
    if fmt == "ply":
        return save_ply(src.scene, path)
    if fmt == "splat":
        return save_splat(src.scene, path)
    if fmt in SCENE_WRITERS:
        from ..formats import save_scene

        return save_scene(src.scene, path, fmt, **options)
    if fmt == "html":
        from .html import save_html

        return save_html(src.scene, path, src.cameras, **options)
    if fmt == "points":
        return save_point_cloud(src.scene, path, **options)
    if fmt == "mesh":
        cameras = options.pop("cameras", None)
        if cameras is None:
            cameras = src.cameras
        return export_mesh(src.scene, path, cameras, **options)
    return export_nerfstudio(src, path, **options)


def _options_for(fmt: str) -> set[str]:
    if fmt == "points":
        return {"min_opacity"}
    if fmt == "nerfstudio":
        return {"min_opacity", "copy_images"}
    if fmt == "spz":
        return {"version", "antialiased", "sh1_bits", "sh_rest_bits"}
    if fmt == "sog":
        return {"sh_palette"}
    if fmt == "gltf":
        return {"spz"}
    if fmt == "html":
        return {"max_gaussians"}
    if fmt == "mesh":
        from dataclasses import fields

        from .mesh import MeshOptions

        return {f.name for f in fields(MeshOptions)} | {"cameras"}
    return set()


def __getattr__(name: str):
    # open3d and trimesh load only when a mesh or nerfstudio export asks for them.
    if name in ("extract_mesh", "save_mesh", "MeshOptions", "sphere_views"):
        from . import mesh

        return getattr(mesh, name)
    if name in ("write_nerfstudio", "write_nerfstudio_from_scene_data", "nerfstudio_transforms"):
        from . import nerfstudio

        return getattr(nerfstudio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def export_mesh(*args, **kwargs) -> Path:
    """Extract a coloured mesh from a scene and write it (see :func:`recon3d.exporters.mesh.export_mesh`)."""
    from .mesh import export_mesh as _export_mesh

    return _export_mesh(*args, **kwargs)


def export_nerfstudio(*args, **kwargs) -> Path:
    """Write a run as a nerfstudio data folder (see :func:`recon3d.exporters.nerfstudio.export_nerfstudio`)."""
    from .nerfstudio import export_nerfstudio as _export_nerfstudio

    return _export_nerfstudio(*args, **kwargs)
