"""Niantic's SPZ (versions 2 and 3, gzip): a 16-byte header and six attribute streams, about 10× smaller than PLY.

Layout (from the published spec, github.com/nianticlabs/spz, README and ``load-spz.cc``), all little-endian,
the whole file one gzip stream:

=========  =========================================================================================
header     magic ``NGSP`` (u32 0x5053474e), version u32 (2 or 3), numPoints u32, shDegree u8,
           fractionalBits u8, flags u8 (0x1: trained with antialiasing), reserved u8 (0)
positions  N × 3 × 24-bit signed fixed point with ``fractionalBits`` fraction bits
alphas     N × u8, sigmoid(opacity)·255
colors     N × 3 × u8, SH DC · (0.15·255) + 127.5
scales     N × 3 × u8, (log σ + 10)·16
rotations  v2: N × 3 × u8, (x, y, z) of the unit quaternion with w ≥ 0, as q·127.5 + 127.5;
           v3: N × u32, "smallest three": the largest component's index in bits 30–31, then three
           10-bit fields (sign bit, 9-bit magnitude of |q|/√½) for the other components in order
sh         N × dim(shDegree) × 3 × u8, coefficient-major with the colour channel fastest,
           value·128 + 128 (recon3d keeps 6 significant bits; Niantic's writer 5 for degree 1, 4 for 2–3)
=========  =========================================================================================

SPZ stores y up and z back ("RUB"); 3DGS PLY scenes, and so GaussianScene, use OpenCV's y down, z forward
("RDF"). The writer rotates the scene 180° about x into SPZ's frame and the reader rotates it back, the
conversion Niantic's ``ply_to_spz`` applies. (gsply and PlayCanvas's splat-transform read the stored
values without converting; compare with them after the same flip.)
"""

from __future__ import annotations

import gzip
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io_utils import atomic_write_bytes
from ..scene import GaussianScene, num_sh_rest
from ._common import (
    RDF_TO_RUB,
    arrays_scene,
    flip_axes,
    logit,
    normalized_quats,
    read_file_bytes,
    scene_arrays,
    sigmoid,
)

MAGIC = 0x5053474E
HEADER = struct.Struct("<IIIBBBB")
assert HEADER.size == 16
FLAG_ANTIALIASED = 0x1
COLOR_SCALE = 0.15
FRACTIONAL_BITS = 12  # Niantic's writer: ~0.25 mm steps, ±2048 units of range
# Significant bits kept of each 8-bit SH value (the format lets a writer choose; readers need not know).
# Niantic's writer keeps 5 and 4, which rounds every |coefficient| < 1/16 of degrees 2-3 to 0 or ±1/8: on a
# short, split-up lego scene that alone cost render PSNR 31.7 dB (benchmarks/formats.py). On a converged
# 150k lego run (benchmarks/results/formats_lego150k.json), 6/6 is 1/7.98 of the PLY's size, 6/5 1/8.75,
# 5/5 1/9.37 and 5/4 1/10.4, all above 43 dB: 6/5 keeps degree 1 (most of the view-dependent colour) finer.
SH1_BITS, SH_REST_BITS = 6, 5
SQRT1_2 = np.float32(np.sqrt(0.5))
VERSIONS = (2, 3)
# For each largest-component index, the other three components in the order v3 stores them.
_OTHERS = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
# Largest SPZ any reader here inflates: 2^32 points is the header's own limit; this bounds the
# decompressed size to what the compressed file could plausibly hold (zlib's best ratio is ~1032:1).
_MAX_INFLATE_RATIO = 1100


@dataclass
class SpzInfo:
    """What an SPZ header says beyond the Gaussians themselves."""

    version: int
    antialiased: bool
    fractional_bits: int
    sh_degree: int
    num_points: int


def _bytes_per_point(version: int, sh_degree: int) -> int:
    return 9 + 1 + 3 + 3 + (3 if version == 2 else 4) + num_sh_rest(sh_degree) * 3


def _quantize_sh(values: np.ndarray, bits: int) -> np.ndarray:
    q = np.round(values * 128.0) + 128.0
    bucket = 1 << (8 - bits)
    q = np.floor((q + bucket // 2) / bucket) * bucket  # round to the bucket centre; 0 stays exact
    return np.clip(q, 0, 255).astype(np.uint8)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def spz_bytes(
    scene: GaussianScene,
    version: int = 3,
    antialiased: bool = False,
    sh1_bits: int = SH1_BITS,
    sh_rest_bits: int = SH_REST_BITS,
) -> bytes:
    """The SPZ encoding (gzip) of ``scene`` at ``version`` 2 or 3, with the antialiasing flag as given.

    ``sh1_bits``/``sh_rest_bits`` (1-8) are the significant bits kept of degree-1 and degree-2/3 SH values.
    """
    if version not in VERSIONS:
        raise ValueError(f"SPZ version must be 2 or 3, got {version}")
    if not (1 <= sh1_bits <= 8 and 1 <= sh_rest_bits <= 8):
        raise ValueError(f"SPZ SH bits must lie in 1..8, got {sh1_bits} and {sh_rest_bits}")
    a = flip_axes(scene_arrays(scene), RDF_TO_RUB)
    n = a["means"].shape[0]
    degree = scene.sh_degree
    limit = float(1 << (23 - FRACTIONAL_BITS))
    if n and np.abs(a["means"]).max() >= limit:
        raise ValueError(
            f"SPZ stores positions within ±{limit:g} (24-bit fixed point, {FRACTIONAL_BITS} fraction bits); "
            f"this scene reaches {np.abs(a['means']).max():.4g}"
        )
    fixed = np.round(a["means"].astype(np.float64) * (1 << FRACTIONAL_BITS)).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=-1).astype(np.uint8)
    alphas = _to_u8(sigmoid(a["opacities"]) * 255.0)
    colors = _to_u8(a["sh0"][:, 0] * (COLOR_SCALE * 255.0) + 0.5 * 255.0)
    scales = _to_u8((a["scales"] + 10.0) * 16.0)
    q = normalized_quats(a["quats"])  # w, x, y, z
    if version == 2:
        xyz = q[:, 1:] * np.where(q[:, :1] < 0, -1.0, 1.0)
        rotations = _to_u8(xyz * 127.5 + 127.5)
    else:
        xyzw = np.concatenate([q[:, 1:], q[:, :1]], axis=1)  # SPZ orders the components x, y, z, w
        largest = np.argmax(np.abs(xyzw), axis=1)
        negate = np.take_along_axis(xyzw, largest[:, None], axis=1)[:, 0] < 0
        comp = largest.astype(np.uint32)
        for i in range(4):
            keep = largest != i
            v = xyzw[:, i]
            negbit = ((v < 0) ^ negate).astype(np.uint32)
            mag = np.floor(511.0 * (np.abs(v) / SQRT1_2) + 0.5).astype(np.uint32)
            mag = np.minimum(mag, 511)
            comp = np.where(keep, (comp << 10) | (negbit << 9) | mag, comp)
        rotations = comp.astype("<u4").view(np.uint8).reshape(n, 4)
    k = num_sh_rest(degree)
    if k:
        sh = a["shN"]  # N × K × 3: coefficient-major, channel fastest, as SPZ stores it
        parts = [_quantize_sh(sh[:, :3], sh1_bits)]
        if k > 3:
            parts.append(_quantize_sh(sh[:, 3:], sh_rest_bits))
        sh_bytes = np.concatenate(parts, axis=1).reshape(n, k * 3)
    else:
        sh_bytes = np.zeros((n, 0), dtype=np.uint8)
    header = HEADER.pack(MAGIC, version, n, degree, FRACTIONAL_BITS, FLAG_ANTIALIASED if antialiased else 0, 0)
    body = b"".join(arr.tobytes() for arr in (positions, alphas, colors, scales, rotations, sh_bytes))
    # mtime=0: the same scene always gives the same bytes.
    return gzip.compress(header + body, compresslevel=6, mtime=0)


def save_spz(scene: GaussianScene, path: str | Path, version: int = 3, antialiased: bool = False, **bits) -> Path:
    """Write ``scene`` as an SPZ file (version 2 or 3), atomically; returns the path (``bits``: see spz_bytes)."""
    path = Path(path)
    atomic_write_bytes(path, spz_bytes(scene, version=version, antialiased=antialiased, **bits))
    return path


def parse_spz(path: Path, data: bytes) -> tuple[GaussianScene, SpzInfo]:
    """Decode SPZ bytes (gzip, versions 2–3) into a scene and its header facts; refuses bad files in one line."""
    if data[:2] != b"\x1f\x8b":
        if data[:4] == b"NGSP":
            raise InputError(path, "is an SPZ version 4 file (zstd); only versions 2 and 3 (gzip) are read")
        raise InputError(path, "not an SPZ file (it does not start with a gzip header)")
    # Inflate the header first so that a lying point count is refused before the body is inflated.
    head = _inflate_prefix(path, data, HEADER.size)
    magic, version, n, degree, frac, flags, _reserved = HEADER.unpack(head)
    if magic != MAGIC:
        raise InputError(path, "not an SPZ file (its gzip stream does not start with 'NGSP')")
    if version not in VERSIONS:
        raise InputError(path, f"SPZ version {version} is not supported (versions 2 and 3 are read)")
    if degree > 3:
        raise InputError(path, f"SPZ declares SH degree {degree}; degrees 0-3 are read")
    if frac > 23:
        raise InputError(path, f"SPZ declares {frac} fractional bits for 24-bit positions")
    need = HEADER.size + n * _bytes_per_point(version, degree)
    if need > len(data) * _MAX_INFLATE_RATIO + 4096:
        raise InputError(
            path, f"SPZ header claims {n} points ({need} bytes), more than a {len(data)}-byte file can hold"
        )
    # Inflate exactly what the header needs: a stream that inflates to more (trailing extension
    # records, or a decompression bomb) never allocates beyond it.
    raw = _inflate_prefix(path, data, need, what="body")
    if len(raw) < need:
        raise InputError(path, f"SPZ is truncated: {n} points need {need} bytes, the stream holds {len(raw)}")
    buf = np.frombuffer(raw, dtype=np.uint8, offset=HEADER.size)
    off = 0

    def take(count: int) -> np.ndarray:
        nonlocal off
        out = buf[off : off + count]
        off += count
        return out

    # Byte-wise lookup tables and in-place work: a 1M-Gaussian SH-3 file is ~65 MB of bytes to widen,
    # so every avoided pass over it counts.
    pos = take(n * 9).reshape(n * 3, 3)
    padded = np.empty((n * 3, 4), dtype=np.uint8)
    padded[:, :3] = pos
    padded[:, 3] = (pos[:, 2] >> 7) * 255  # sign-extend the 24-bit value to 32 bits
    means = padded.view("<i4").reshape(n, 3).astype(np.float32)
    means *= np.float32(1.0 / (1 << frac))
    byte = np.arange(256, dtype=np.float32)
    alphas = (byte / 255.0)[take(n)]
    sh0 = ((byte / 255.0 - 0.5) / COLOR_SCALE).astype(np.float32)[take(n * 3)].reshape(n, 1, 3)
    scales = (byte / 16.0 - 10.0)[take(n * 3)].reshape(n, 3)
    if version == 2:
        xyz = (byte / 127.5 - 1.0)[take(n * 3)].reshape(n, 3)
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1, keepdims=True)))
        quats = np.concatenate([w, xyz], axis=1)
    else:
        comp = take(n * 4).view("<u4")
        largest = (comp >> 30).astype(np.int64)
        magnitude = (SQRT1_2 * np.arange(512, dtype=np.float32) / np.float32(511.0)).astype(np.float32)
        signed = np.concatenate([magnitude, -magnitude])  # index: sign bit · 512 + magnitude
        fields = [(comp >> shift) & 1023 for shift in (20, 10, 0)]  # the three stored, in order
        vals = np.stack([signed[f] for f in fields], axis=1)
        quats_xyzw = np.zeros((n, 4), dtype=np.float32)
        np.put_along_axis(quats_xyzw, _OTHERS[largest], vals, axis=1)
        big = np.sqrt(np.maximum(0.0, 1.0 - (vals * vals).sum(axis=1)))
        np.put_along_axis(quats_xyzw, largest[:, None], big[:, None].astype(np.float32), axis=1)
        quats = np.concatenate([quats_xyzw[:, 3:], quats_xyzw[:, :3]], axis=1)
    k = num_sh_rest(degree)
    # The SH bytes are most of the file: widen them with torch (vectorised, multi-threaded) and fold the
    # axis flip's per-coefficient sign into the one scaling pass.
    sign = flip_axes(
        {"means": np.zeros((0, 3), np.float32), "quats": np.zeros((0, 4), np.float32),
         "shN": np.ones((1, k, 3), np.float32)},
        RDF_TO_RUB,
    )["shN"][0, :, :1]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a read-only view: .to() copies it, nothing writes to it
        shn = torch.from_numpy(take(n * k * 3).reshape(n, k, 3)).to(torch.float32)
    shn.sub_(128.0).mul_(torch.from_numpy(sign / np.float32(128.0))[None])
    arrays = {
        "means": means,
        "scales": scales,
        "quats": quats.astype(np.float32),
        "opacities": logit(alphas),
        "sh0": sh0,
        "shN": np.zeros((n, 0, 3), np.float32),
    }
    arrays = flip_axes(arrays, RDF_TO_RUB, in_place=True)
    arrays["shN"] = shn.numpy()
    info = SpzInfo(version, bool(flags & FLAG_ANTIALIASED), frac, degree, n)
    # Every byte decodes to a finite value (tables, clamped logit), so no NaN check is needed.
    return arrays_scene(path, arrays, check_finite=False), info


def _inflate_prefix(path: Path, data: bytes, size: int, what: str = "header") -> bytes:
    """The first ``size`` bytes the gzip stream inflates to (fewer when it ends first); one-line errors."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, size)
    except zlib.error as exc:
        raise InputError(path, f"is not a valid gzip stream ({exc})") from None
    if what == "header" and len(out) < size:
        raise InputError(path, f"SPZ is truncated: its stream ends within the {size}-byte header")
    return out


def spz_header_antialiased(path: str | Path) -> bool:
    """The antialiasing flag of an SPZ file's header (inflating only the 16-byte header)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = _inflate_prefix(path, f.read(1 << 16), HEADER.size)
    return bool(HEADER.unpack(head)[5] & FLAG_ANTIALIASED)


def read_spz(path: str | Path) -> tuple[GaussianScene, SpzInfo]:
    """Read an SPZ file into a scene plus its header facts (version, antialiasing flag)."""
    path = Path(path)
    return parse_spz(path, read_file_bytes(path))


def load_spz(path: str | Path) -> GaussianScene:
    """Read an SPZ file (version 2 or 3) into a GaussianScene (float32, CPU, OpenCV axes)."""
    return read_spz(path)[0]
