"""PlayCanvas's compressed PLY (SuperSplat, splat-transform): chunks of 256 Gaussians, min/max quantisation.

Layout (from PlayCanvas's published reader and writer, github.com/playcanvas/splat-transform), a binary
little-endian PLY with up to three elements:

- ``chunk`` (one per 256 Gaussians): float32 ``min_x min_y min_z max_x max_y max_z``, ``min_scale_x …
  max_scale_z`` (log σ, clamped to ±20) and ``min_r min_g min_b max_r max_g max_b`` (the DC colour
  ``sh0·C0 + 0.5``); the colour bounds are optional for readers.
- ``vertex``: four uint32 per Gaussian. ``packed_position`` and ``packed_scale`` hold 11/10/11 bits of
  (value − min)/(max − min) for x/y/z; ``packed_color`` 8 bits each of r, g, b (within the chunk's
  colour bounds) and sigmoid(opacity); ``packed_rotation`` the quaternion (w, x, y, z as stored in
  ``rot_0..3``) normalised with its largest component made positive, the largest's index in bits
  30–31 and the other three as 10-bit ``q·√½ + ½``.
- ``sh`` (SH degree ≥ 1): uint8 ``f_rest_i`` in the PLY's channel-major order, ``trunc((v/8 + ½)·256)``.

Gaussians are written in Morton order of their positions so that each chunk is spatially compact.
Coordinates are the PLY's own (no axis change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..constants import SH_C0
from ..errors import InputError
from ..io_utils import atomic_open
from ..ply import MAX_HEADER_BYTES, _parse_header
from ..scene import GaussianScene, num_sh_rest, sh_degree_from_rest
from ._common import arrays_scene, logit, morton_order, normalized_quats, read_file_bytes, scene_arrays, sigmoid

CHUNK = 256
CHUNK_PROPS = (
    "min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
    "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
    "min_r", "min_g", "min_b", "max_r", "max_g", "max_b",
)  # fmt: skip
VERTEX_PROPS = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
_SQRT1_2 = np.float32(np.sqrt(0.5))


def _unorm(v: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(v * top + 0.5), 0, top).astype(np.uint32)


def _normalize(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(x − lo)/(hi − lo) per chunk, 0 where the range is (nearly) empty, as PlayCanvas's writer does."""
    span = hi - lo
    t = np.where(span < 1e-5, 0.0, (x - lo) / np.where(span < 1e-5, 1.0, span))
    return np.clip(t, 0.0, 1.0)


def _pack_111011(t: np.ndarray) -> np.ndarray:
    return (_unorm(t[..., 0], 11) << 21) | (_unorm(t[..., 1], 10) << 11) | _unorm(t[..., 2], 11)


def _unpack_111011(v: np.ndarray) -> np.ndarray:
    return np.stack([((v >> 21) & 2047) / 2047.0, ((v >> 11) & 1023) / 1023.0, (v & 2047) / 2047.0], axis=-1).astype(
        np.float32
    )


def compressed_ply_bytes(scene: GaussianScene) -> bytes:
    """The compressed-PLY encoding of ``scene`` (see the module docstring)."""
    a = scene_arrays(scene)
    n = a["means"].shape[0]
    k = num_sh_rest(scene.sh_degree)
    order = morton_order(a["means"])
    a = {name: arr[order] for name, arr in a.items()}
    n_chunks = (n + CHUNK - 1) // CHUNK
    pad = n_chunks * CHUNK - n

    def chunked(x: np.ndarray) -> np.ndarray:
        # The last chunk repeats its last Gaussian, so padding never widens its bounds.
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)], axis=0)
        return x.reshape(n_chunks, CHUNK, *x.shape[1:])

    means = chunked(a["means"])
    log_scales = chunked(a["scales"])
    colors = chunked(a["sh0"][:, 0] * np.float32(SH_C0) + np.float32(0.5))
    p_lo, p_hi = means.min(axis=1), means.max(axis=1)
    s_lo = np.clip(log_scales.min(axis=1), -20, 20)
    s_hi = np.clip(log_scales.max(axis=1), -20, 20)
    c_lo, c_hi = colors.min(axis=1), colors.max(axis=1)
    chunk_data = np.concatenate([p_lo, p_hi, s_lo, s_hi, c_lo, c_hi], axis=1).astype("<f4")

    position = _pack_111011(_normalize(means, p_lo[:, None], p_hi[:, None]))
    scale = _pack_111011(_normalize(log_scales, s_lo[:, None], s_hi[:, None]))
    c = _normalize(colors, c_lo[:, None], c_hi[:, None])
    alpha = chunked(sigmoid(a["opacities"]))
    color = (_unorm(c[..., 0], 8) << 24) | (_unorm(c[..., 1], 8) << 16) | (_unorm(c[..., 2], 8) << 8)
    color = color | _unorm(alpha, 8)
    q = normalized_quats(a["quats"])
    largest = np.argmax(np.abs(q), axis=1)
    q = q * np.where(np.take_along_axis(q, largest[:, None], axis=1) < 0, -1.0, 1.0).astype(np.float32)
    rot = largest.astype(np.uint32)
    for i in range(4):
        field = _unorm(q[:, i] * _SQRT1_2 + 0.5, 10)
        rot = np.where(largest != i, (rot << 10) | field, rot)
    rotation = chunked(rot)

    vertex = np.stack([position, rotation, scale, color], axis=-1).reshape(-1, 4)[:n].astype("<u4")
    lines = [
        "ply",
        "format binary_little_endian 1.0",
        "comment written by recon3d (PlayCanvas compressed PLY)",
        f"element chunk {n_chunks}",
        *[f"property float {p}" for p in CHUNK_PROPS],
        f"element vertex {n}",
        *[f"property uint {p}" for p in VERTEX_PROPS],
    ]
    parts = [chunk_data.tobytes(), vertex.tobytes()]
    if k:
        lines.append(f"element sh {n}")
        lines += [f"property uchar f_rest_{i}" for i in range(3 * k)]
        rest = a["shN"].transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major, as PLY's f_rest
        parts.append(np.clip(np.trunc((rest / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8).tobytes())
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii") + b"".join(parts)


def save_compressed_ply(scene: GaussianScene, path: str | Path) -> Path:
    """Write ``scene`` as a PlayCanvas compressed PLY, atomically; returns the path."""
    path = Path(path)
    data = compressed_ply_bytes(scene)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path


def is_compressed_ply(head: bytes) -> bool:
    """True when a PLY header (the file's first bytes) declares a ``chunk`` element and packed vertices."""
    return head.startswith(b"ply") and b"element chunk" in head[:MAX_HEADER_BYTES] and b"packed_position" in head


def load_compressed_ply(path: str | Path) -> GaussianScene:
    """Read a PlayCanvas compressed PLY into a GaussianScene; refuses bad files before allocating."""
    path = Path(path)
    data = read_file_bytes(path)
    fmt, elements, body = _parse_header(path, data[:MAX_HEADER_BYTES])
    if fmt != "binary_little_endian":
        raise InputError(path, f"a compressed PLY is binary_little_endian, this one is {fmt}")
    by_name = {e.name: e for e in elements}
    chunk, vertex, sh = by_name.get("chunk"), by_name.get("vertex"), by_name.get("sh")
    if chunk is None or vertex is None:
        raise InputError(path, "not a compressed PLY: it needs 'chunk' and 'vertex' elements")
    if [e.name for e in elements if e.name in ("chunk", "vertex", "sh")] != [e.name for e in elements]:
        raise InputError(path, "compressed PLY holds elements other than chunk, vertex and sh")
    chunk_props = [p for p, _ in chunk.properties]
    if chunk_props not in (list(CHUNK_PROPS), list(CHUNK_PROPS[:12])) or any(t != "f4" for _, t in chunk.properties):
        raise InputError(path, "compressed PLY 'chunk' element does not hold the 12 or 18 float bounds")
    if [p for p, _ in vertex.properties] != list(VERTEX_PROPS) or any(t != "u4" for _, t in vertex.properties):
        raise InputError(path, "compressed PLY 'vertex' element does not hold the four packed uint properties")
    n = vertex.count
    if chunk.count != (n + CHUNK - 1) // CHUNK:
        raise InputError(path, f"compressed PLY has {chunk.count} chunks for {n} Gaussians (expected ⌈n/256⌉)")
    k3 = 0
    if sh is not None:
        k3 = len(sh.properties)
        if [p for p, _ in sh.properties] != [f"f_rest_{i}" for i in range(k3)] or any(
            t != "u1" for _, t in sh.properties
        ):
            raise InputError(path, "compressed PLY 'sh' element does not hold uchar f_rest_0.. properties")
        if sh.count != n:
            raise InputError(path, f"compressed PLY has {sh.count} SH rows for {n} Gaussians")
        try:
            sh_degree_from_rest(k3 // 3) if k3 % 3 == 0 else sh_degree_from_rest(-1)
        except ValueError:
            raise InputError(
                path, f"compressed PLY holds {k3} f_rest values per Gaussian (9, 24 or 45 expected)"
            ) from None
    sizes = [e.count * e.row_bytes() for e in elements]
    if body + sum(sizes) > len(data):
        raise InputError(
            path,
            f"compressed PLY is truncated or its header lies: {n} Gaussians need {sum(sizes)} bytes, "
            f"the file has {len(data) - body}",
        )
    off = body
    views = {}
    for e, size in zip(elements, sizes):
        views[e.name] = np.frombuffer(data, dtype=np.uint8, count=size, offset=off)
        off += size
    cd = views["chunk"].view("<f4").reshape(chunk.count, len(chunk_props))
    packed = views["vertex"].view("<u4").reshape(n, 4)
    ci = np.arange(n) // CHUNK
    p_lo, p_hi, s_lo, s_hi = cd[ci, 0:3], cd[ci, 3:6], cd[ci, 6:9], cd[ci, 9:12]
    t = _unpack_111011(packed[:, 0])
    means = p_lo * (1 - t) + p_hi * t
    t = _unpack_111011(packed[:, 2])
    scales = s_lo * (1 - t) + s_hi * t
    col = packed[:, 3]
    c = np.stack([(col >> 24) & 255, (col >> 16) & 255, (col >> 8) & 255], axis=-1).astype(np.float32) / 255.0
    if len(chunk_props) == 18:
        c = cd[ci, 12:15] * (1 - c) + cd[ci, 15:18] * c
    alpha = (col & 255).astype(np.float32) / 255.0
    rot = packed[:, 1]
    largest = (rot >> 30).astype(np.int64)
    q = np.zeros((n, 4), dtype=np.float32)
    fields = np.stack([(rot >> 20) & 1023, (rot >> 10) & 1023, rot & 1023], axis=-1).astype(np.float32)
    vals = (fields / 1023.0 - 0.5) / _SQRT1_2
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    np.put_along_axis(q, others, vals, axis=1)
    big = np.sqrt(np.maximum(0.0, 1.0 - (vals * vals).sum(axis=1)))
    np.put_along_axis(q, largest[:, None], big[:, None].astype(np.float32), axis=1)
    if k3:
        raw = views["sh"].reshape(n, k3).astype(np.float32)
        unit = np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256.0))
        shn = ((unit - 0.5) * 8.0).reshape(n, 3, k3 // 3).transpose(0, 2, 1)
    else:
        shn = np.zeros((n, 0, 3), dtype=np.float32)
    arrays = {
        "means": means.astype(np.float32),
        "scales": scales.astype(np.float32),
        "quats": q,
        "opacities": logit(alpha),
        "sh0": ((c - 0.5) / np.float32(SH_C0))[:, None, :].astype(np.float32),
        "shN": shn.astype(np.float32),
    }
    return arrays_scene(path, arrays)
