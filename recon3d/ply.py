"""The standard 3DGS PLY: exact round trip, and a bounded reader that refuses bad files early.

Layout (little-endian float32 per vertex): ``x y z nx ny nz f_dc_0..2 f_rest_0..(3K−1) opacity
scale_0..2 rot_0..3`` with ``f_rest`` channel-major (all K red coefficients, then green, then blue).
Files written by Inria's 3DGS, gsplat's examples and nerfstudio's ``ns-export gaussian-splat`` use it;
other vertex properties are ignored, float64 properties are accepted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .io_utils import atomic_open
from .scene import GaussianScene, num_sh_rest, sh_degree_from_rest

MAX_HEADER_BYTES = 1 << 16
MAX_PROPERTIES = 4096

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


class _Element:
    def __init__(self, name: str, count: int):
        self.name = name
        self.count = count
        self.properties: list[tuple[str, str]] = []  # (name, numpy type code)
        self.has_list = False


def _parse_header(path: Path, raw: bytes) -> tuple[str, list[_Element], int]:
    if not raw.startswith(b"ply"):
        raise InputError(path, "not a PLY file (it does not start with 'ply')")
    end = raw.find(b"end_header")
    if end < 0:
        raise InputError(path, f"PLY header has no 'end_header' within {MAX_HEADER_BYTES} bytes")
    body_start = raw.find(b"\n", end)
    if body_start < 0:
        raise InputError(path, "PLY header is truncated after 'end_header'")
    body_start += 1
    try:
        header = raw[:end].decode("ascii")
    except UnicodeDecodeError:
        raise InputError(path, "PLY header is not ASCII text") from None
    fmt = None
    elements: list[_Element] = []
    n_props = 0
    for line_no, line in enumerate(header.splitlines()[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) != 3 or words[1] not in ("binary_little_endian", "binary_big_endian", "ascii"):
                raise InputError(path, f"unsupported PLY format line {line_no}: {line.strip()!r}")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not re.fullmatch(r"\d{1,12}", words[2]):
                raise InputError(path, f"bad PLY element line {line_no}: {line.strip()!r}")
            elements.append(_Element(words[1], int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise InputError(path, f"PLY property before any element on line {line_no}")
            n_props += 1
            if n_props > MAX_PROPERTIES:
                raise InputError(path, f"PLY header declares more than {MAX_PROPERTIES} properties")
            if len(words) >= 2 and words[1] == "list":
                elements[-1].has_list = True
                continue
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise InputError(path, f"unknown PLY property type on line {line_no}: {line.strip()!r}")
            elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
        else:
            raise InputError(path, f"unexpected PLY header line {line_no}: {line.strip()!r}")
    if fmt is None:
        raise InputError(path, "PLY header has no format line")
    return fmt, elements, body_start


def read_ply_vertices(path: str | Path) -> dict[str, np.ndarray]:
    """Read the ``vertex`` element of any PLY into a dict of 1-D arrays, refusing bad files before allocating."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_header = f.read(MAX_HEADER_BYTES)
        fmt, elements, body_start = _parse_header(path, raw_header)
        names = [e.name for e in elements]
        if "vertex" not in names:
            raise InputError(path, "PLY has no 'vertex' element")
        offset = body_start
        for element in elements:
            if element.name == "vertex":
                break
            if fmt != "ascii" and not element.has_list:
                offset += element.count * int(sum(np.dtype(t).itemsize for _, t in element.properties))
            else:
                raise InputError(path, f"PLY element {element.name!r} before 'vertex' is not supported")
        vertex = elements[names.index("vertex")]
        if vertex.has_list:
            raise InputError(path, "PLY 'vertex' element has a list property, which a splat file never has")
        if not vertex.properties:
            raise InputError(path, "PLY 'vertex' element has no properties")
        seen = set()
        for name, _ in vertex.properties:
            if name in seen:
                raise InputError(path, f"PLY 'vertex' property {name!r} is declared twice")
            seen.add(name)
        if fmt == "ascii":
            # An ASCII vertex needs at least 2 bytes per value: bound the count by the file size.
            if vertex.count * len(vertex.properties) * 2 > size - body_start:
                raise InputError(path, f"PLY declares {vertex.count} vertices but the file is too small to hold them")
            f.seek(body_start)
            text = f.read().decode("ascii", errors="replace").split()
            need = vertex.count * len(vertex.properties)
            if len(text) < need:
                raise InputError(path, f"PLY is truncated: {len(text)} values for {need} expected")
            try:
                values = np.array(text[:need], dtype=np.float64).reshape(vertex.count, len(vertex.properties))
            except ValueError:
                raise InputError(path, "PLY ASCII body holds a value that is not a number") from None
            return {name: values[:, i] for i, (name, _) in enumerate(vertex.properties)}
        endian = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, endian + t) for name, t in vertex.properties])
        needed = vertex.count * dtype.itemsize
        if offset + needed > size:
            raise InputError(
                path,
                f"PLY is truncated or its header lies: {vertex.count} vertices of {dtype.itemsize} bytes "
                f"need {needed} bytes, the file has {max(size - offset, 0)}",
            )
        f.seek(offset)
        data = np.frombuffer(f.read(needed), dtype=dtype, count=vertex.count)
    return {name: data[name] for name in dtype.names}


def load_ply(path: str | Path) -> GaussianScene:
    """Read a 3DGS PLY into a GaussianScene (float32, CPU)."""
    path = Path(path)
    v = read_ply_vertices(path)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    required += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [name for name in required if name not in v]
    if missing:
        raise InputError(path, f"not a Gaussian-splat PLY: missing vertex properties {', '.join(missing)}")
    n_rest = 0
    while f"f_rest_{n_rest}" in v:
        n_rest += 1
    if n_rest % 3 != 0:
        raise InputError(path, f"{n_rest} f_rest properties is not a multiple of 3")
    try:
        sh_degree_from_rest(n_rest // 3)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None

    def stack(names: list[str]) -> np.ndarray:
        if not names:
            return np.zeros((len(v["x"]), 0), dtype=np.float32)
        return np.stack([np.asarray(v[name], dtype=np.float32) for name in names], axis=-1)

    arrays = {
        "means": stack(["x", "y", "z"]),
        "scales": stack([f"scale_{i}" for i in range(3)]),
        "quats": stack([f"rot_{i}" for i in range(4)]),
        "opacities": stack(["opacity"])[:, 0],
        "sh0": stack([f"f_dc_{i}" for i in range(3)])[:, None, :],
        "shN": stack([f"f_rest_{i}" for i in range(n_rest)]).reshape(len(v["x"]), 3, n_rest // 3).transpose(0, 2, 1),
    }
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr.reshape(arr.shape[0], -1))).any(axis=1).sum())
            raise InputError(path, f"{bad} Gaussians have NaN or infinite {name}")
    return GaussianScene(**{k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()})


def ply_header(num_gaussians: int, sh_degree: int) -> tuple[str, list[str]]:
    """The header text and property names of a 3DGS PLY."""
    k = num_sh_rest(sh_degree)
    props = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    props += [f"f_rest_{i}" for i in range(3 * k)]
    props += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    lines = ["ply", "format binary_little_endian 1.0", "comment written by recon3d", f"element vertex {num_gaussians}"]
    lines += [f"property float {p}" for p in props]
    lines.append("end_header")
    return "\n".join(lines) + "\n", props


def save_ply(scene: GaussianScene, path: str | Path) -> Path:
    """Write ``scene`` as a standard 3DGS PLY, atomically; returns the path."""
    path = Path(path)
    s = scene.detach().to("cpu", torch.float32)
    if not s.is_finite():
        raise ValueError(f"refusing to write {path}: the scene holds NaN or infinite parameters")
    n = len(s)
    header, props = ply_header(n, s.sh_degree)
    columns = [
        s.means.numpy(),
        np.zeros((n, 3), dtype=np.float32),
        s.sh0[:, 0].numpy(),
        s.shN.permute(0, 2, 1).reshape(n, -1).numpy(),
        s.opacities[:, None].numpy(),
        s.scales.numpy(),
        s.quats.numpy(),
    ]
    data = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")
    assert data.shape[1] == len(props)
    with atomic_open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())
    return path
