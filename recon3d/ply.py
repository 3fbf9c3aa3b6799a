"""The standard 3DGS PLY: exact round trip, and a bounded reader that refuses bad files early.

Layout (little-endian float32 per vertex): ``x y z nx ny nz f_dc_0..2 f_rest_0..(3K−1) opacity
scale_0..2 rot_0..3`` with ``f_rest`` channel-major (all K red coefficients, then green, then blue).
Files written by Inria's 3DGS (with normals), gsplat's examples (without normals) and nerfstudio's
``ns-export gaussian-splat`` use it. The reader also takes fewer ``f_rest`` (lower SH degrees), any
property order, float64 or integer properties, extra properties (ignored), big-endian and ASCII bodies,
and other elements before or after ``vertex``.

Bad files are refused with :class:`~recon3d.errors.InputError` before anything large is allocated:
the header is read within :data:`MAX_HEADER_BYTES`, and every count it declares is checked against
the file's real size first, so memory stays proportional to the file, whatever the header claims.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .io_utils import atomic_open
from .scene import GaussianScene, num_sh_rest, sh_degree_from_rest

MAX_HEADER_BYTES = 1 << 16
MAX_PROPERTIES = 1024  # a 3DGS vertex has 62; headers with more are refused
MAX_ELEMENTS = 256

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_FORMATS = ("binary_little_endian", "binary_big_endian", "ascii")
_COUNT = re.compile(r"[0-9]{1,15}")
# The smallest ASCII value is one character plus a separator.
_MIN_ASCII_BYTES_PER_VALUE = 2


class _Element:
    def __init__(self, name: str, count: int):
        self.name = name
        self.count = count
        self.properties: list[tuple[str, str]] = []  # (name, numpy type code)
        self.has_list = False

    def row_bytes(self) -> int:
        """Bytes per binary row (only meaningful without list properties)."""
        return int(sum(np.dtype(t).itemsize for _, t in self.properties))


def _parse_header(path: Path, raw: bytes) -> tuple[str, list[_Element], int]:
    """Parse the header within ``raw`` (the file's first bytes); return format, elements and body offset."""
    first_newline = raw.find(b"\n")
    first_line = raw[: first_newline if first_newline >= 0 else len(raw)].rstrip(b"\r")
    if first_line != b"ply":
        raise InputError(path, "not a PLY file (it does not start with a 'ply' line)")
    pos = first_newline + 1
    lines: list[bytes] = []
    body_start = -1
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            # The header's last line may end the file itself (an empty body).
            line, next_pos = raw[pos:], len(raw)
            if line.strip() != b"end_header" or len(raw) >= MAX_HEADER_BYTES:
                break
        else:
            line, next_pos = raw[pos:nl], nl + 1
        if line.strip() == b"end_header":
            body_start = next_pos
            break
        lines.append(line)
        pos = next_pos
    if body_start < 0:
        raise InputError(path, f"PLY header has no 'end_header' line within its first {MAX_HEADER_BYTES} bytes")
    try:
        header_lines = [line.decode("ascii") for line in lines]
    except UnicodeDecodeError:
        raise InputError(path, "PLY header is not ASCII text") from None

    fmt = None
    elements: list[_Element] = []
    n_props = 0
    for line_no, line in enumerate(header_lines, start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        what = line.strip()[:80]
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise InputError(path, f"unsupported PLY format on header line {line_no}: {what!r}")
            if fmt is not None:
                raise InputError(path, f"PLY header has a second format line (line {line_no})")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not _COUNT.fullmatch(words[2]):
                raise InputError(path, f"bad PLY element on header line {line_no}: {what!r}")
            if len(elements) >= MAX_ELEMENTS:
                raise InputError(path, f"PLY header declares more than {MAX_ELEMENTS} elements")
            if any(e.name == words[1] for e in elements):
                raise InputError(path, f"PLY element {words[1]!r} is declared twice")
            elements.append(_Element(words[1], int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise InputError(path, f"PLY property before any element on header line {line_no}")
            n_props += 1
            if n_props > MAX_PROPERTIES:
                raise InputError(path, f"PLY header declares more than {MAX_PROPERTIES} properties")
            if len(words) >= 2 and words[1] == "list":
                if len(words) != 5 or words[2] not in _PLY_TYPES or words[3] not in _PLY_TYPES:
                    raise InputError(path, f"bad PLY list property on header line {line_no}: {what!r}")
                elements[-1].has_list = True
                continue
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise InputError(path, f"unknown PLY property type on header line {line_no}: {what!r}")
            name = words[2]
            if any(name == existing for existing, _ in elements[-1].properties):
                raise InputError(path, f"PLY property {name!r} of element {elements[-1].name!r} is declared twice")
            elements[-1].properties.append((name, _PLY_TYPES[words[1]]))
        else:
            raise InputError(path, f"unexpected PLY header line {line_no}: {what!r}")
    if fmt is None:
        raise InputError(path, "PLY header has no format line")
    return fmt, elements, body_start


def _read_ascii_vertices(
    path: Path, f, elements: list[_Element], vertex: _Element, body_start: int, size: int
) -> dict[str, np.ndarray]:
    # Every count is bounded by the body size before numpy sees it.
    body_size = size - body_start
    n_values = vertex.count * len(vertex.properties)
    if n_values * _MIN_ASCII_BYTES_PER_VALUE > body_size + 1:
        raise InputError(path, f"PLY declares {vertex.count} vertices but the file is too small to hold them")
    skip = 0
    for element in elements:
        if element is vertex:
            break
        skip += element.count  # one element per line in an ASCII body
    if skip > body_size:  # every skipped row is at least a newline
        raise InputError(path, f"PLY declares {skip} rows before the vertices but the file is too small to hold them")
    if vertex.count == 0:
        return {name: np.zeros(0, dtype=np.float64) for name, _ in vertex.properties}
    f.seek(body_start)
    try:
        text = f.read().decode("ascii")
    except UnicodeDecodeError:
        raise InputError(path, "PLY ASCII body holds bytes that are not ASCII text") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data" is reported below as truncation
            values = np.loadtxt(
                io.StringIO(text), dtype=np.float64, skiprows=skip, max_rows=vertex.count, ndmin=2, comments=None
            )
    except ValueError as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else "unreadable value"
        raise InputError(path, f"PLY ASCII vertex data is malformed ({reason})") from None
    if values.shape[0] < vertex.count:
        raise InputError(path, f"PLY is truncated: {values.shape[0]} of {vertex.count} vertex rows present")
    if values.shape[1] != len(vertex.properties):
        raise InputError(
            path, f"PLY ASCII vertex rows hold {values.shape[1]} values, the header declares {len(vertex.properties)}"
        )
    return {name: values[:, i] for i, (name, _) in enumerate(vertex.properties)}


def read_ply_vertices(path: str | Path) -> dict[str, np.ndarray]:
    """Read the ``vertex`` element of any PLY into a dict of 1-D arrays, refusing bad files before allocating."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_header = f.read(MAX_HEADER_BYTES)
            fmt, elements, body_start = _parse_header(path, raw_header)
            vertex = next((e for e in elements if e.name == "vertex"), None)
            if vertex is None:
                raise InputError(path, "PLY has no 'vertex' element")
            if vertex.has_list:
                raise InputError(path, "PLY 'vertex' element has a list property, which a splat file never has")
            if not vertex.properties:
                raise InputError(path, "PLY 'vertex' element has no properties")
            if fmt == "ascii":
                return _read_ascii_vertices(path, f, elements, vertex, body_start, size)
            offset = body_start
            for element in elements:
                if element is vertex:
                    break
                if element.has_list:
                    raise InputError(
                        path, f"PLY element {element.name!r} with a list property before 'vertex' is not supported"
                    )
                offset += element.count * element.row_bytes()
            endian = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, endian + t) for name, t in vertex.properties])
            needed = vertex.count * dtype.itemsize
            if offset + needed > size:
                room = max(size - offset, 0)
                raise InputError(
                    path,
                    f"PLY claims {vertex.count} vertices but the file holds at most {room // dtype.itemsize}: it is "
                    f"truncated or its header lies ({vertex.count} vertices of {dtype.itemsize} bytes need "
                    f"{needed} bytes, the file has {room})",
                )
            f.seek(offset)
            buffer = f.read(needed)
            if len(buffer) != needed:  # the file shrank while we read it
                raise InputError(path, "PLY is truncated")
            data = np.frombuffer(buffer, dtype=dtype, count=vertex.count)
    except OSError as exc:
        raise InputError(path, f"cannot read the file ({exc.strerror or exc})") from None
    return {name: data[name] for name in dtype.names}


def load_point_cloud(path: str | Path, drop_nonfinite: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """A point-cloud PLY (x y z, optional red green blue): P×3 float64 positions and P×3 colours in [0, 1].

    Colours stored as integers (0-255) are scaled; NaN or infinite positions are refused, or with
    ``drop_nonfinite`` their points left out.
    """
    path = Path(path)
    v = read_ply_vertices(path)
    if not all(k in v for k in ("x", "y", "z")):
        raise InputError(path, "PLY has no vertex element with x, y, z")
    xyz = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("x", "y", "z")], axis=1)
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all() and not drop_nonfinite:
        raise InputError(path, "PLY points hold NaN or infinite coordinates")
    colors = None
    if all(k in v for k in ("red", "green", "blue")):
        colors = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("red", "green", "blue")], axis=1)
        colors = colors / (255.0 if colors.max(initial=0) > 1.0 else 1.0)
    if not finite.all():
        xyz, colors = xyz[finite], (colors[finite] if colors is not None else None)
    return xyz, colors


def load_ply(path: str | Path) -> GaussianScene:
    """Read a 3DGS PLY into a GaussianScene (float32, CPU)."""
    path = Path(path)
    v = read_ply_vertices(path)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    required += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [name for name in required if name not in v]
    if missing:
        if "packed_position" in v:
            raise InputError(path, "this is a compressed PLY (SuperSplat/gsplat 'ply_compressed'), which is not read")
        raise InputError(path, f"not a Gaussian-splat PLY: missing vertex properties {', '.join(missing)}")
    n_rest = 0
    while f"f_rest_{n_rest}" in v:
        n_rest += 1
    stray = [name for name in v if name.startswith("f_rest_") and name not in {f"f_rest_{i}" for i in range(n_rest)}]
    if stray:
        raise InputError(path, f"f_rest properties are not numbered 0..{n_rest - 1} without gaps (found {stray[0]})")
    if n_rest % 3 != 0:
        raise InputError(path, f"{n_rest} f_rest properties is not a multiple of 3")
    try:
        sh_degree_from_rest(n_rest // 3)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    n = len(v["x"])

    def stack(names: list[str]) -> np.ndarray:
        if not names:
            return np.zeros((n, 0), dtype=np.float32)
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
            return np.stack([np.asarray(v[name], dtype=np.float32) for name in names], axis=-1)

    arrays = {
        "means": stack(["x", "y", "z"]),
        "scales": stack([f"scale_{i}" for i in range(3)]),
        "quats": stack([f"rot_{i}" for i in range(4)]),
        "opacities": stack(["opacity"])[:, 0],
        "sh0": stack([f"f_dc_{i}" for i in range(3)])[:, None, :],
        "shN": stack([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, n_rest // 3).transpose(0, 2, 1),
    }
    for name, arr in arrays.items():
        finite = np.isfinite(arr.reshape(n, int(np.prod(arr.shape[1:])))).all(axis=1)
        if not finite.all():
            raise InputError(path, f"{int((~finite).sum())} of {n} Gaussians have NaN or infinite {name}")
    return GaussianScene(**{k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()})


# The header comment of a PLY whose scene was trained for the anti-aliased render mode (render(antialiased=True)).
ANTIALIASED_COMMENT = "comment rasterize_mode antialiased"


def ply_antialiased(path: str | Path) -> bool:
    """Whether the PLY's header says its scene needs the anti-aliased render mode (ANTIALIASED_COMMENT)."""
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES).split(b"end_header", 1)[0]
    return any(line.strip() == ANTIALIASED_COMMENT.encode() for line in head.splitlines())


def ply_header(num_gaussians: int, sh_degree: int, antialiased: bool = False) -> tuple[str, list[str]]:
    """The header text and property names of a 3DGS PLY (with ANTIALIASED_COMMENT when ``antialiased``)."""
    k = num_sh_rest(sh_degree)
    props = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    props += [f"f_rest_{i}" for i in range(3 * k)]
    props += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    lines = ["ply", "format binary_little_endian 1.0", "comment written by recon3d"]
    lines += [ANTIALIASED_COMMENT] if antialiased else []
    lines += [f"element vertex {num_gaussians}"]
    lines += [f"property float {p}" for p in props]
    lines.append("end_header")
    return "\n".join(lines) + "\n", props


def save_ply(scene: GaussianScene, path: str | Path, antialiased: bool = False) -> Path:
    """Write ``scene`` as a standard 3DGS PLY, atomically (noting the anti-aliased mode when ``antialiased``)."""
    path = Path(path)
    s = scene.detach().to("cpu", torch.float32)
    if not s.is_finite():
        raise ValueError(f"refusing to write {path}: the scene holds NaN or infinite parameters")
    n = len(s)
    header, props = ply_header(n, s.sh_degree, antialiased)
    columns = [
        s.means.numpy(),
        np.zeros((n, 3), dtype=np.float32),
        s.sh0[:, 0].numpy(),
        s.shN.permute(0, 2, 1).reshape(n, 3 * s.shN.shape[1]).numpy(),
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
