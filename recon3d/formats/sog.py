"""PlayCanvas's SOG ("spatially ordered Gaussians", version 2): lossless WebP images plus ``meta.json``.

Layout (from PlayCanvas's published reader and writer, github.com/playcanvas/splat-transform). Every
image is RGBA with one texel per Gaussian, row-major, in Morton order of the positions; width
``⌈√n/4⌉·4`` and height ``⌈n/width/4⌉·4`` (readers only need ≥ n texels):

==================  ================================================================================
``means_l/u.webp``  low/high bytes of 16-bit ``(f(v) − min)/(max − min)`` per axis, f(v) = sign·ln(|v|+1),
                    with ``means.mins/maxs`` in meta.json
``quats.webp``      "smallest three" of the unit quaternion (w, x, y, z) with the largest made positive:
                    the other three as ``255·(q·√2·½ + ½)``, alpha = 252 + index of the largest
``scales.webp``     per axis, an index into the 256-entry ``scales.codebook`` (log σ)
``sh0.webp``        per channel, an index into ``sh0.codebook`` (SH DC); alpha = sigmoid(opacity)·255
``shN_*.webp``      (SH degree ≥ 1) ``shN_labels``: a 16-bit palette index (R low, G high);
                    ``shN_centroids``: 64 palette entries per row, K texels each, R/G/B indices into
                    ``shN.codebook`` for the red/green/blue coefficient
==================  ================================================================================

The palette comes from k-means over the Gaussians' higher-order SH (``shN.count`` entries; recon3d uses
up to 4,096 to keep CPU time short, PlayCanvas up to 65,536). A scene is written as a folder (meta.json
beside the images) or as one ``.sog`` file, an uncompressed zip of the same files. Coordinates are the
PLY's own. Images go through Pillow's WebP codec, lossless and with ``exact`` RGB under alpha 0.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io_utils import atomic_open, atomic_write_bytes
from ..scene import GaussianScene, num_sh_rest
from ._common import arrays_scene, logit, morton_order, normalized_quats, scene_arrays, sigmoid

FILES = {
    "means": ["means_l.webp", "means_u.webp"],
    "scales": ["scales.webp"],
    "quats": ["quats.webp"],
    "sh0": ["sh0.webp"],
    "shN": ["shN_centroids.webp", "shN_labels.webp"],
}
MAX_META_BYTES = 16 << 20
MAX_WEBP_BYTES = 1 << 30
DEFAULT_PALETTE = 4096
_WEIGHT_POWER = 0.5
_SQRT2 = np.float32(math.sqrt(2.0))
_QUAT_OTHERS = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])


def texture_size(n: int) -> tuple[int, int]:
    """Width and height of a SOG image for ``n`` Gaussians (PlayCanvas's rule, multiples of 4)."""
    width = max(4, math.ceil(math.sqrt(n) / 4) * 4)
    height = max(4, math.ceil(n / width / 4) * 4)
    return width, height


def _log_transform(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.log1p(np.abs(v))


def _inv_log_transform(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.expm1(np.abs(v))


def codebook_1d(values: np.ndarray, size: int = 256, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``-entry 1-D codebook and each value's index in it.

    Lloyd's k-means over a 4,096-bin histogram whose bins weigh √count: dense values still get most
    centroids, but the sparse tails (the few very large Gaussians, the saturated colours) keep some, so
    the worst error stays near the range over ``size`` rather than growing with the tails' emptiness.
    """
    flat = values.reshape(-1).astype(np.float64)
    if flat.size == 0:
        return np.zeros(size, dtype=np.float32), np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(flat.min()), float(flat.max())
    bins = 4096
    idx = np.minimum(((flat - lo) / max(hi - lo, 1e-30) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    sums = np.bincount(idx, weights=flat, minlength=bins)
    keep = counts > 0
    points, weights = sums[keep] / counts[keep], counts[keep] ** _WEIGHT_POWER
    if points.size <= size:
        centres = points
    else:
        # Seeds halfway between the weighted quantiles and an even grid: strictly increasing (no two
        # seeds share a bin), dense where the data is, and reaching into the tails.
        t = (np.arange(size) + 0.5) / size
        cdf = np.cumsum(weights) / weights.sum()
        quantiles = points[np.minimum(np.searchsorted(cdf, t), points.size - 1)]
        centres = 0.5 * quantiles + 0.5 * (lo + t * (hi - lo))
        for _ in range(iterations):
            edges = (centres[1:] + centres[:-1]) * 0.5
            labels = np.searchsorted(edges, points)
            w = np.bincount(labels, weights=weights, minlength=centres.size)
            wx = np.bincount(labels, weights=weights * points, minlength=centres.size)
            updated = np.where(w > 0, wx / np.maximum(w, 1e-300), centres)
            if np.allclose(updated, centres, rtol=0, atol=1e-9 * max(hi - lo, 1e-30)):
                break
            centres = np.sort(updated)
    book = np.full(size, centres[-1], dtype=np.float64)
    book[: centres.size] = centres
    edges = (centres[1:] + centres[:-1]) * 0.5
    labels = np.searchsorted(edges, flat).astype(np.uint8).reshape(values.shape)
    return book.astype(np.float32), labels


def _kmeans(data: np.ndarray, k: int, iterations: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means (squared Euclidean): centroids fitted on a fixed random subset, then every row assigned once."""
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    n = x.shape[0]
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    # Fitting on ~8 rows per centroid costs a fraction of fitting on all rows and moves the centroids
    # little; the final assignment below uses every row.
    fit = x[torch.randperm(n, generator=gen)[: max(8 * k, 32768)]]
    centroids = fit[:k].clone()
    for _ in range(iterations):
        labels = _assign(fit, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, fit)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        moved = counts > 0
        centroids[moved] = sums[moved] / counts[moved, None]
    return centroids.numpy(), _assign(x, centroids).numpy()


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each row of ``x``, in blocks to bound memory."""
    c_sq = (centroids * centroids).sum(dim=1)
    labels = torch.empty(x.shape[0], dtype=torch.int64)
    for start in range(0, x.shape[0], 8192):
        block = x[start : start + 8192]
        # ‖c‖² − 2 x·c in one fused matmul (the ‖x‖² term does not change which centroid is nearest)
        labels[start : start + 8192] = torch.addmm(c_sq[None, :], block, centroids.T, alpha=-2.0).argmin(dim=1)
    return labels


def _encode_webp(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # exact: keep RGB under alpha 0 (opacity 0 Gaussians still carry colour indices);
    # quality/method are libwebp's lossless effort: 50/2 gives files within 1 % of 100/4 in 1/60 of the time.
    Image.fromarray(rgba, "RGBA").save(buf, format="WEBP", lossless=True, quality=50, method=2, exact=True)
    return buf.getvalue()


def sog_files(scene: GaussianScene, sh_palette: int = DEFAULT_PALETTE, kmeans_iterations: int = 10) -> dict[str, bytes]:
    """The files of a SOG bundle (name → bytes): meta.json and its WebP images."""
    a = scene_arrays(scene)
    n = a["means"].shape[0]
    if n == 0:
        raise ValueError("a SOG file cannot hold an empty scene")
    width, height = texture_size(n)
    if width > 16383 or height > 16383:
        raise ValueError(f"{n} Gaussians exceed the 16383×16383 WebP limit of a SOG image")
    order = morton_order(a["means"])
    a = {name: arr[order] for name, arr in a.items()}

    def image(channels: list[np.ndarray], alpha: np.ndarray | None = None, shape=(height, width)) -> bytes:
        texels = np.zeros((shape[0] * shape[1], 4), dtype=np.uint8)
        texels[:, 3] = 255
        for i, c in enumerate(channels):
            texels[: len(c), i] = c
        if alpha is not None:
            texels[: len(alpha), 3] = alpha
        return _encode_webp(texels.reshape(shape[0], shape[1], 4))

    files: dict[str, bytes] = {}
    lt = _log_transform(a["means"].astype(np.float64))
    mins, maxs = lt.min(axis=0), lt.max(axis=0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    q16 = np.clip(np.round((lt - mins) / span * 65535.0), 0, 65535).astype(np.uint32)
    files["means_l.webp"] = image([(q16[:, i] & 255).astype(np.uint8) for i in range(3)])
    files["means_u.webp"] = image([(q16[:, i] >> 8).astype(np.uint8) for i in range(3)])

    q = normalized_quats(a["quats"])
    largest = np.argmax(np.abs(q), axis=1)
    q = q * np.where(np.take_along_axis(q, largest[:, None], axis=1) < 0, -1.0, 1.0).astype(np.float32)
    others = np.take_along_axis(q, _QUAT_OTHERS[largest], axis=1) * _SQRT2
    qb = np.clip(np.round(255.0 * (others * 0.5 + 0.5)), 0, 255).astype(np.uint8)
    files["quats.webp"] = image([qb[:, 0], qb[:, 1], qb[:, 2]], (252 + largest).astype(np.uint8))

    scale_book, scale_idx = codebook_1d(a["scales"])
    files["scales.webp"] = image([scale_idx[:, i] for i in range(3)])
    color_book, color_idx = codebook_1d(a["sh0"][:, 0])
    alpha = np.clip(np.round(sigmoid(a["opacities"]) * 255.0), 0, 255).astype(np.uint8)
    files["sh0.webp"] = image([color_idx[:, i] for i in range(3)], alpha)

    meta: dict = {
        "version": 2,
        "asset": {"generator": "recon3d"},
        "count": n,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": FILES["means"]},
        "scales": {"codebook": scale_book.tolist(), "files": FILES["scales"]},
        "quats": {"files": FILES["quats"]},
        "sh0": {"codebook": color_book.tolist(), "files": FILES["sh0"]},
    }
    k = num_sh_rest(scene.sh_degree)
    if k:
        rest = a["shN"].transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major, as PLY's f_rest
        centroids, labels = _kmeans(rest, sh_palette, kmeans_iterations)
        count = centroids.shape[0]
        sh_book, sh_idx = codebook_1d(centroids)
        rows = math.ceil(count / 64)
        cent = np.zeros((rows * 64 * k, 4), dtype=np.uint8)
        cent[:, 3] = 255
        per = sh_idx.reshape(count, 3, k)  # centroid, channel, coefficient
        for ch in range(3):
            cent[: count * k, ch] = per[:, ch, :].reshape(-1)
        files["shN_centroids.webp"] = _encode_webp(cent.reshape(rows, 64 * k, 4))
        files["shN_labels.webp"] = image([(labels & 255).astype(np.uint8), (labels >> 8).astype(np.uint8)])
        meta["shN"] = {"count": count, "bands": scene.sh_degree, "codebook": sh_book.tolist(), "files": FILES["shN"]}
    files["meta.json"] = json.dumps(meta).encode("utf-8")
    return files


def save_sog(scene: GaussianScene, path: str | Path, sh_palette: int = DEFAULT_PALETTE) -> Path:
    """Write ``scene`` as SOG: one ``.sog`` zip when ``path`` ends in .sog, else a folder with meta.json."""
    path = Path(path)
    files = sog_files(scene, sh_palette=sh_palette)
    if path.suffix.lower() == ".sog":
        with atomic_open(path, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
                for name, data in files.items():
                    z.writestr(name, data)
        return path
    if path.name == "meta.json":
        path = path.parent
    if path.exists() and not path.is_dir():
        raise InputError(path, "exists and is not a folder; a SOG export writes a folder (or a .sog file)")
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if name != "meta.json":
            atomic_write_bytes(path / name, data)
    atomic_write_bytes(path / "meta.json", files["meta.json"])  # last: a folder with meta.json is complete
    return path


# ---------------------------------------------------------------------------------------------- reading


class _Source:
    """Files of a SOG bundle: a folder, a meta.json path or a .sog zip; every read is size-bounded."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.root = path
        elif path.name == "meta.json":
            self.root = path.parent
        else:
            self.root = None
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise InputError(path, f"not a SOG bundle (not a readable zip: {exc})") from None

    def read(self, name: str, limit: int) -> bytes:
        if "/" in name or "\\" in name or name.startswith("."):
            raise InputError(self.path, f"SOG meta.json names a file outside the bundle: {name!r}")
        if self.zip is not None:
            try:
                info = self.zip.getinfo(name)
            except KeyError:
                raise InputError(self.path, f"SOG bundle has no {name}") from None
            if info.file_size > limit:
                raise InputError(self.path, f"SOG {name} is {info.file_size} bytes, more than {limit} allowed")
            try:
                return self.zip.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise InputError(self.path, f"SOG bundle's {name} is unreadable ({exc})") from None
        file = self.root / name
        if not file.is_file():
            raise InputError(self.path, f"SOG bundle has no {name} (looked for {file})")
        if file.stat().st_size > limit:
            raise InputError(file, f"is more than {limit} bytes")
        try:
            return file.read_bytes()
        except OSError as exc:
            raise InputError(file, f"cannot read the file ({exc.strerror or exc})") from None


def _decode_webp(src: _Source, name: str, min_texels: int, width: int | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    data = src.read(name, MAX_WEBP_BYTES)
    try:
        im = Image.open(io.BytesIO(data), formats=["WEBP"])
        w, h = im.size
        # Check the size the header declares before decoding, so a lying image allocates nothing.
        if w * h < min_texels or (width is not None and w != width):
            want = f"width {width} and " if width is not None else ""
            raise InputError(src.path, f"SOG image {name} is {w}×{h}; it needs {want}at least {min_texels} texels")
        if w * h > 4 * min_texels + (1 << 20):
            raise InputError(src.path, f"SOG image {name} is {w}×{h}, far more texels than the {min_texels} needed")
        rgba = np.asarray(im.convert("RGBA"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(src.path, f"SOG image {name} is not a readable WebP ({exc})") from None
    return rgba.reshape(-1, 4)


def _number_list(src: _Source, meta: dict, key: str, field: str, length: int | None) -> np.ndarray:
    try:
        values = np.asarray(meta[key][field], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise InputError(src.path, f"SOG meta.json lacks a numeric {key}.{field}") from None
    if values.ndim != 1 or (length is not None and values.size != length) or not np.isfinite(values).all():
        raise InputError(src.path, f"SOG meta.json {key}.{field} must be {length or 'some'} finite numbers")
    return values.astype(np.float32)


def load_sog(path: str | Path) -> GaussianScene:
    """Read a SOG scene (a .sog zip, a folder holding meta.json, or meta.json itself) into a GaussianScene."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    src = _Source(path)
    try:
        return _load(src)
    finally:
        if src.zip is not None:
            src.zip.close()


def _load(src: _Source) -> GaussianScene:
    try:
        meta = json.loads(src.read("meta.json", MAX_META_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(src.path, f"SOG meta.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(src.path, "SOG meta.json is not a JSON object")
    if meta.get("version") != 2:
        raise InputError(src.path, f"SOG version {meta.get('version')!r} is not supported (version 2 is read)")
    n = meta.get("count")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > 16383 * 16383:
        raise InputError(src.path, f"SOG meta.json count {n!r} is not a number of Gaussians (1 to 16383²)")
    mins = _number_list(src, meta, "means", "mins", 3)
    maxs = _number_list(src, meta, "means", "maxs", 3)
    scale_book = _number_list(src, meta, "scales", "codebook", 256)
    color_book = _number_list(src, meta, "sh0", "codebook", 256)

    def names(key: str, count: int) -> list[str]:
        files = meta.get(key, {}).get("files") if isinstance(meta.get(key), dict) else None
        if not isinstance(files, list) or len(files) != count or not all(isinstance(f, str) for f in files):
            raise InputError(src.path, f"SOG meta.json {key}.files must name {count} image(s)")
        return files

    lo = _decode_webp(src, names("means", 2)[0], n)[:n, :3].astype(np.float32)
    hi = _decode_webp(src, names("means", 2)[1], n)[:n, :3].astype(np.float32)
    t = (lo + hi * 256.0) / 65535.0
    span = np.where(maxs - mins != 0, maxs - mins, 1.0)
    means = _inv_log_transform(mins + span * t)

    qt = _decode_webp(src, names("quats", 1)[0], n)[:n]
    tag = qt[:, 3].astype(np.int64)
    if ((tag < 252) | (tag > 255)).any():
        raise InputError(
            src.path, f"SOG quats image has {int(((tag < 252) | (tag > 255)).sum())} texels without a 252-255 tag"
        )
    largest = tag - 252
    vals = (qt[:, :3].astype(np.float32) / 255.0 * 2.0 - 1.0) / _SQRT2
    quats = np.zeros((n, 4), dtype=np.float32)
    np.put_along_axis(quats, _QUAT_OTHERS[largest], vals, axis=1)
    big = np.sqrt(np.maximum(0.0, 1.0 - (vals * vals).sum(axis=1)))
    np.put_along_axis(quats, largest[:, None], big[:, None].astype(np.float32), axis=1)

    scales = scale_book[_decode_webp(src, names("scales", 1)[0], n)[:n, :3]]
    c0 = _decode_webp(src, names("sh0", 1)[0], n)[:n]
    sh0 = color_book[c0[:, :3]]
    opacities = logit(c0[:, 3].astype(np.float32) / 255.0)

    shn = np.zeros((n, 0, 3), dtype=np.float32)
    if "shN" in meta:
        sh_meta = meta["shN"]
        bands = sh_meta.get("bands") if isinstance(sh_meta, dict) else None
        count = sh_meta.get("count") if isinstance(sh_meta, dict) else None
        if bands not in (1, 2, 3):
            raise InputError(src.path, f"SOG meta.json shN.bands {bands!r} is not 1, 2 or 3")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 65536:
            raise InputError(src.path, f"SOG meta.json shN.count {count!r} is not a palette size (1 to 65536)")
        k = num_sh_rest(bands)
        sh_book = _number_list(src, meta, "shN", "codebook", 256)
        centroid_file, label_file = names("shN", 2)
        cent = _decode_webp(src, centroid_file, count * k, width=64 * k)[: count * k, :3]
        labels_rgba = _decode_webp(src, label_file, n)[:n]
        labels = labels_rgba[:, 0].astype(np.int64) | (labels_rgba[:, 1].astype(np.int64) << 8)
        if (labels >= count).any():
            raise InputError(src.path, f"SOG shN labels point past the {count}-entry palette")
        palette = sh_book[cent].reshape(count, k, 3)  # centroid, coefficient, channel
        shn = palette[labels]
    arrays = {
        "means": means.astype(np.float32),
        "scales": scales.astype(np.float32),
        "quats": quats,
        "opacities": opacities,
        "sh0": sh0[:, None, :].astype(np.float32),
        "shN": shn.astype(np.float32),
    }
    return arrays_scene(src.path, arrays)
