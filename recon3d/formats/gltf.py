"""glTF 2.0 / GLB with ``KHR_gaussian_splatting`` (Khronos release candidate), plain or SPZ-compressed.

The splats are one mesh primitive in ``POINTS`` mode (from the extension's README in KhronosGroup/glTF):

=========================================  =====  ===========================================================
attribute                                  type   value
=========================================  =====  ===========================================================
``POSITION``                               VEC3   the mean (float)
``KHR_gaussian_splatting:ROTATION``        VEC4   unit quaternion in glTF order x, y, z, w (float)
``KHR_gaussian_splatting:SCALE``           VEC3   σ per axis, linear (float)
``KHR_gaussian_splatting:OPACITY``         SCALAR sigmoid(opacity) in [0, 1] (float)
``KHR_gaussian_splatting:SH_DEGREE_0_COEF_0``  VEC3   SH DC (colour = 0.282095·c + 0.5)
``KHR_gaussian_splatting:SH_DEGREE_l_COEF_n``  VEC3   higher SH, n = 0..2l, m from −l to l (3DGS order)
``COLOR_0``                                VEC4   fallback point colour (linear RGB, opacity), u8 normalised
=========================================  =====  ===========================================================

and the primitive's extension object says ``"kernel": "ellipse"``, ``"colorSpace": "srgb_rec709_display"``.
The spec's SH basis (with the Condon–Shortley phase) is the one 3DGS uses, so coefficients copy over.

``spz=True`` writes the ``KHR_gaussian_splatting_compression_spz_2`` variant (draft): the accessors keep
their type and count but have no bufferView, and the nested extension's ``bufferView`` holds an SPZ
(version 3) stream, which the spec packs with glTF's LUF axes declared, i.e. stored in SPZ's own frame.

glTF's axes are y up, z front, x left ("LUF"); 3DGS PLY scenes use OpenCV's ("RDF"). The writer rotates
the scene 180° about z into glTF's frame and the reader rotates it back. The reader takes GLB and
``.gltf`` files (buffers as ``data:`` URIs or files beside them), float or normalised-integer accessors
as the extension allows, and checks every offset and count against the buffers before reading.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io_utils import atomic_write_bytes
from ..scene import GaussianScene, num_sh_rest
from ._common import (
    RDF_TO_LUF,
    arrays_scene,
    flip_axes,
    logit,
    normalized_quats,
    read_file_bytes,
    scene_arrays,
    sigmoid,
)

EXT = "KHR_gaussian_splatting"
EXT_SPZ = "KHR_gaussian_splatting_compression_spz_2"
GLB_MAGIC = b"glTF"
_JSON, _BIN = 0x4E4F534A, 0x004E4942
_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_TYPES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
_MAX_JSON_BYTES = 64 << 20
_MIN_SCALE = 1e-30


def sh_attribute_names(degree: int) -> list[str]:
    """Attribute semantics of the higher-order SH coefficients up to ``degree``, in 3DGS order."""
    return [f"{EXT}:SH_DEGREE_{level}_COEF_{n}" for level in range(1, degree + 1) for n in range(2 * level + 1)]


def gltf_bytes(scene: GaussianScene, spz: bool = False) -> bytes:
    """A GLB holding ``scene`` as a ``KHR_gaussian_splatting`` primitive (SPZ-compressed when ``spz``)."""
    a = flip_axes(scene_arrays(scene), RDF_TO_LUF)
    n = a["means"].shape[0]
    degree = scene.sh_degree
    blob = bytearray()
    views: list[dict] = []
    accessors: list[dict] = []

    def add_view(data: bytes) -> int:
        while len(blob) % 4:
            blob.append(0)
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)})
        blob.extend(data)
        return len(views) - 1

    def add_accessor(
        values: np.ndarray | None,
        kind: str,
        component: int = 5126,
        normalized: bool = False,
        minmax: bool = False,
        ref: np.ndarray | None = None,
    ) -> int:
        acc: dict = {"componentType": component, "count": n, "type": kind}
        if normalized:
            acc["normalized"] = True
        src = values if values is not None else ref
        if minmax and src is not None and n:
            acc["min"] = src.min(axis=0).astype(float).tolist()
            acc["max"] = src.max(axis=0).astype(float).tolist()
        if values is not None:
            acc["bufferView"] = add_view(np.ascontiguousarray(values).tobytes())
        accessors.append(acc)
        return len(accessors) - 1

    q = normalized_quats(a["quats"])
    rows = {
        "POSITION": (a["means"].astype("<f4"), "VEC3"),
        f"{EXT}:ROTATION": (np.concatenate([q[:, 1:], q[:, :1]], axis=1).astype("<f4"), "VEC4"),
        f"{EXT}:SCALE": (np.exp(a["scales"]).astype("<f4"), "VEC3"),
        f"{EXT}:OPACITY": (sigmoid(a["opacities"]).astype("<f4"), "SCALAR"),
        f"{EXT}:SH_DEGREE_0_COEF_0": (a["sh0"][:, 0].astype("<f4"), "VEC3"),
    }
    for i, name in enumerate(sh_attribute_names(degree)):
        rows[name] = (a["shN"][:, i].astype("<f4"), "VEC3")
    attributes = {}
    for name, (values, kind) in rows.items():
        attributes[name] = add_accessor(None if spz else values, kind, minmax=name == "POSITION", ref=values)
    ext: dict = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}
    used = [EXT]
    required: list[str] = []
    if spz:
        from .spz import spz_bytes

        ext["extensions"] = {EXT_SPZ: {"bufferView": add_view(spz_bytes(scene, version=3))}}
        used.append(EXT_SPZ)
        required.append(EXT_SPZ)
    else:
        # Fallback point colours for viewers without the extension: linear RGB (glTF's COLOR_0) + opacity.
        srgb = np.clip(a["sh0"][:, 0] * 0.28209479177387814 + 0.5, 0.0, 1.0)
        linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
        rgba = np.concatenate([linear, sigmoid(a["opacities"])[:, None]], axis=1)
        attributes["COLOR_0"] = add_accessor(np.round(rgba * 255).astype(np.uint8), "VEC4", 5121, normalized=True)
    doc: dict = {
        "asset": {"version": "2.0", "generator": "recon3d"},
        "extensionsUsed": used,
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "gaussian splats"}],
        "meshes": [{"primitives": [{"attributes": attributes, "mode": 0, "extensions": {EXT: ext}}]}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": 0}],
    }
    if required:
        doc["extensionsRequired"] = required
    while len(blob) % 4:
        blob.append(0)
    doc["buffers"][0]["byteLength"] = len(blob)
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join(
        [
            struct.pack("<4sII", GLB_MAGIC, 2, total),
            struct.pack("<II", len(text), _JSON),
            text,
            struct.pack("<II", len(blob), _BIN),
            bytes(blob),
        ]
    )


def save_gltf(scene: GaussianScene, path: str | Path, spz: bool = False) -> Path:
    """Write ``scene`` as a GLB with ``KHR_gaussian_splatting`` (SPZ-compressed when ``spz``); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise InputError(path, "the glTF export writes a binary .glb file")
    atomic_write_bytes(path, gltf_bytes(scene, spz=spz))
    return path


# ---------------------------------------------------------------------------------------------- reading


def _parse_glb(path: Path, data: bytes) -> tuple[dict, bytes | None]:
    if len(data) < 20:
        raise InputError(path, "GLB is truncated (shorter than its 20-byte header)")
    magic, version, length = struct.unpack_from("<4sII", data)
    if magic != GLB_MAGIC:
        raise InputError(path, "not a GLB file (no 'glTF' magic)")
    if version != 2:
        raise InputError(path, f"GLB version {version} is not supported (glTF 2.0 is read)")
    if length > len(data):
        raise InputError(path, f"GLB is truncated: its header says {length} bytes, the file has {len(data)}")
    json_len, kind = struct.unpack_from("<II", data, 12)
    if kind != _JSON or 20 + json_len > length:
        raise InputError(path, "GLB's first chunk is not a JSON chunk within the file")
    try:
        doc = json.loads(data[20 : 20 + json_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"GLB's JSON chunk is not valid JSON ({exc})") from None
    pos = 20 + json_len
    binary = None
    if pos + 8 <= length:
        bin_len, kind = struct.unpack_from("<II", data, pos)
        if kind == _BIN:
            if pos + 8 + bin_len > length:
                raise InputError(path, f"GLB's BIN chunk claims {bin_len} bytes, more than the file holds")
            binary = data[pos + 8 : pos + 8 + bin_len]
    return doc, binary


def _buffers(path: Path, doc: dict, binary: bytes | None) -> list[bytes]:
    out = []
    for i, buf in enumerate(doc.get("buffers") or []):
        if not isinstance(buf, dict):
            raise InputError(path, f"glTF buffer {i} is not an object")
        uri = buf.get("uri")
        if uri is None:
            if binary is None:
                raise InputError(path, f"glTF buffer {i} has no uri and the file has no BIN chunk")
            data = binary
        elif isinstance(uri, str) and uri.startswith("data:"):
            try:
                data = base64.b64decode(uri.split(",", 1)[1], validate=True)
            except (IndexError, ValueError):
                raise InputError(path, f"glTF buffer {i} has a malformed data: URI") from None
        elif isinstance(uri, str) and "/" not in uri and "\\" not in uri and not uri.startswith("."):
            data = read_file_bytes(path.parent / uri)
        else:
            raise InputError(path, f"glTF buffer {i} has a uri this reader does not follow: {str(uri)[:60]!r}")
        length = buf.get("byteLength")
        if not isinstance(length, int) or length < 0 or length > len(data):
            raise InputError(path, f"glTF buffer {i} declares {length!r} bytes but holds {len(data)}")
        out.append(data[:length])
    return out


def _view_bytes(path: Path, doc: dict, buffers: list[bytes], index) -> tuple[bytes, int | None]:
    views = doc.get("bufferViews") or []
    if not isinstance(index, int) or not 0 <= index < len(views) or not isinstance(views[index], dict):
        raise InputError(path, f"glTF refers to bufferView {index!r}, which does not exist")
    view = views[index]
    b, off, length = view.get("buffer"), view.get("byteOffset", 0), view.get("byteLength")
    if not isinstance(b, int) or not 0 <= b < len(buffers):
        raise InputError(path, f"glTF bufferView {index} refers to buffer {b!r}, which does not exist")
    if (
        not isinstance(off, int)
        or not isinstance(length, int)
        or off < 0
        or length < 0
        or off + length > len(buffers[b])
    ):
        raise InputError(path, f"glTF bufferView {index} lies outside its {len(buffers[b])}-byte buffer")
    stride = view.get("byteStride")
    return buffers[b][off : off + length], stride if isinstance(stride, int) else None


def _accessor(path: Path, doc: dict, buffers: list[bytes], index, n: int | None, kind: str, name: str) -> np.ndarray:
    accessors = doc.get("accessors") or []
    if not isinstance(index, int) or not 0 <= index < len(accessors) or not isinstance(accessors[index], dict):
        raise InputError(path, f"glTF attribute {name} refers to accessor {index!r}, which does not exist")
    acc = accessors[index]
    comp, count, typ = acc.get("componentType"), acc.get("count"), acc.get("type")
    if comp not in _COMPONENTS or typ != kind or not isinstance(count, int) or count < 0:
        raise InputError(path, f"glTF attribute {name} is not a {kind} accessor of a known component type")
    if n is not None and count != n:
        raise InputError(path, f"glTF attribute {name} has {count} values, POSITION has {n}")
    if "bufferView" not in acc:
        raise InputError(path, f"glTF attribute {name} has no bufferView (sparse or extension-only data)")
    data, stride = _view_bytes(path, doc, buffers, acc["bufferView"])
    width = _TYPES[kind]
    dtype = np.dtype(_COMPONENTS[comp]).newbyteorder("<")
    elem = width * dtype.itemsize
    stride = stride or elem
    off = acc.get("byteOffset", 0)
    if not isinstance(off, int) or off < 0 or stride < elem:
        raise InputError(path, f"glTF attribute {name} has a bad byteOffset or byteStride")
    need = off + (count - 1) * stride + elem if count else 0
    if need > len(data):
        raise InputError(
            path, f"glTF attribute {name}: {count} values need {need} bytes, its bufferView has {len(data)}"
        )
    if count == 0:
        return np.zeros((0, width), dtype=np.float32)
    raw = np.lib.stride_tricks.as_strided(
        np.frombuffer(data, dtype=np.uint8, offset=off, count=need - off), shape=(count, elem), strides=(stride, 1)
    )
    values = np.ascontiguousarray(raw).view(dtype).reshape(count, width).astype(np.float32)
    if acc.get("normalized"):
        values = np.maximum(values / float(np.iinfo(dtype).max), -1.0) if dtype.kind in "iu" else values
    return values


def parse_gltf(path: Path, data: bytes) -> GaussianScene:
    """Decode a GLB or .gltf holding a ``KHR_gaussian_splatting`` primitive into a GaussianScene."""
    if data[:4] == GLB_MAGIC:
        doc, binary = _parse_glb(path, data)
    else:
        if len(data) > _MAX_JSON_BYTES:
            raise InputError(path, f"glTF JSON is larger than {_MAX_JSON_BYTES} bytes")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(path, f"not a glTF file (neither GLB nor valid JSON: {exc})") from None
        binary = None
    if not isinstance(doc, dict) or not isinstance(doc.get("asset"), dict) or doc["asset"].get("version") != "2.0":
        raise InputError(path, "not a glTF 2.0 file (asset.version is not '2.0')")
    primitives = [
        p
        for mesh in doc.get("meshes") or []
        if isinstance(mesh, dict)
        for p in mesh.get("primitives") or []
        if isinstance(p, dict) and isinstance(p.get("extensions"), dict) and EXT in p["extensions"]
    ]
    if not primitives:
        raise InputError(path, f"glTF holds no mesh primitive with the {EXT} extension")
    if len(primitives) > 1:
        raise InputError(path, f"glTF holds {len(primitives)} Gaussian-splat primitives; recon3d reads files with one")
    prim = primitives[0]
    ext = prim["extensions"][EXT]
    if not isinstance(ext, dict):
        raise InputError(path, f"glTF's {EXT} extension is not an object")
    if ext.get("kernel", "ellipse") != "ellipse":
        raise InputError(path, f"glTF Gaussian kernel {ext.get('kernel')!r} is not supported ('ellipse' is)")
    buffers = _buffers(path, doc, binary)
    nested = ext.get("extensions") if isinstance(ext.get("extensions"), dict) else {}
    if EXT_SPZ in nested:
        from .spz import parse_spz

        view = nested[EXT_SPZ].get("bufferView") if isinstance(nested[EXT_SPZ], dict) else None
        blob, _ = _view_bytes(path, doc, buffers, view)
        return parse_spz(path, bytes(blob))[0]
    other = [k for k in nested if k != EXT_SPZ]
    if other:
        raise InputError(path, f"glTF Gaussian primitive uses extension {other[0]}, which recon3d does not read")
    attrs = prim.get("attributes")
    if not isinstance(attrs, dict) or "POSITION" not in attrs:
        raise InputError(path, "glTF Gaussian primitive has no POSITION attribute")
    means = _accessor(path, doc, buffers, attrs["POSITION"], None, "VEC3", "POSITION")
    n = means.shape[0]

    def get(name: str, kind: str) -> np.ndarray:
        key = f"{EXT}:{name}"
        if key not in attrs:
            raise InputError(path, f"glTF Gaussian primitive lacks the required attribute {key}")
        return _accessor(path, doc, buffers, attrs[key], n, kind, key)

    xyzw = get("ROTATION", "VEC4")
    scale = get("SCALE", "VEC3")
    opacity = get("OPACITY", "SCALAR")[:, 0]
    sh0 = get("SH_DEGREE_0_COEF_0", "VEC3")
    if (scale < 0).any():
        raise InputError(path, f"{int((scale < 0).any(axis=1).sum())} Gaussians have negative scales")
    if ((opacity < 0) | (opacity > 1)).any():
        raise InputError(path, "glTF opacities must lie in [0, 1]")
    degree = 0
    for d in (1, 2, 3):
        present = [k in attrs for k in sh_attribute_names(d)[num_sh_rest(d - 1) :]]
        if all(present) and degree == d - 1:
            degree = d
        elif any(present):
            raise InputError(path, f"glTF defines SH degree {d} only partly, or without the degrees below it")
    rest = [_accessor(path, doc, buffers, attrs[k], n, "VEC3", k) for k in sh_attribute_names(degree)]
    shn = np.stack(rest, axis=1) if rest else np.zeros((n, 0, 3), dtype=np.float32)
    arrays = {
        "means": means,
        "scales": np.log(np.maximum(scale, _MIN_SCALE)).astype(np.float32),
        "quats": np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1),
        "opacities": logit(opacity, eps=1e-7),
        "sh0": sh0[:, None, :],
        "shN": shn.astype(np.float32),
    }
    return arrays_scene(path, flip_axes(arrays, RDF_TO_LUF))


def load_gltf(path: str | Path) -> GaussianScene:
    """Read a GLB/.gltf with ``KHR_gaussian_splatting`` (plain or SPZ-compressed) into a GaussianScene."""
    path = Path(path)
    return parse_gltf(path, read_file_bytes(path))
