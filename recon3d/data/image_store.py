"""The training image store: every view decoded once and kept as uint8, in RAM up to a bound, on disk beyond it.

A run used to hold each training image as float32 (23 MB at 1600×1200), so 600 photos needed 14 GB. The
store keeps the decoded colour, alpha and mask as bytes (5.8 MB per 1600×1200 view) and turns a view into
float32 only when a step uses it (``ImageStore.floats``), unless the training views fit the budget as floats:

- ``float``: the training views as float32 on the device, made once on first use (what every run did
  before: a step pays no conversion, so small captures such as lego train exactly as fast); held-out views
  go through the uint8 path in the memory left;
- ``ram``: every view in memory as uint8, decoded on first use;
- ``disk``: a decoded copy of each view in ``cache_dir`` (one file per view, written atomically, keyed by
  the source file, so ``--resume`` reuses it), read back on use; the most recently used views stay in RAM
  up to the budget (the OS page cache keeps hot files without counting against the process);
- ``auto`` (default): ``float`` when the training views fit the budget as float32, else ``ram`` when the
  whole capture fits as uint8, else ``disk``.

The budget is ``--image-cache-gb`` (``data.image_cache_gb``), by default a quarter of the memory free at the
start, at most 2 GiB. A capture that cannot be held (``float`` or ``ram`` over the budget, or a disk cache larger than the
free disk) is refused before training with one line naming the figure and the flag to change.

Colour is stored before compositing and composited per use by ``images.composite``, so a view of 8-bit
pixels at its file's size gives exactly the floats ``decode_image`` gives (bit-identical training); a view
resized on load (``--downscale``, ``max_image_size``) or a 16-bit PNG is rounded to 1/255 (≤ 0.5/255 per
channel, ≤ 1/255 once an RGBA view is composited); ``float`` mode keeps the decoder's floats exactly.

A view is decoded into the store as bytes by ``SceneData.decode_view_u8``: an 8-bit image at its camera's
size is packed from Pillow straight into the view's own mapping (no float32 round trip, no copy after), the
same bytes ``images.to_u8`` makes of ``decode_image``'s floats; a resized or 16-bit one goes through those
floats (benchmarks/scale_decode.py times both paths).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .images import composite, to_u8

GIB = 1024**3
MODES = ("auto", "float", "ram", "disk")
DEFAULT_MAX_BUDGET = 2 * GIB  # the default never takes more, however much memory is free
_HEADER = 4  # bytes before a cached view's pixels: has_alpha, has_mask, 2 spare


def _outside_heap(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of ``nbytes`` in its own anonymous mapping, given back to the OS whole when it goes.

    Held views live for many steps and leave in LRU order. From malloc's heap (where glibc puts blocks of
    this size once a larger block has been freed) they leave holes the heap cannot return: a 600-view
    1600×1200 capture under a 2 GiB bound grew to 6 GB RSS in 800 draws (benchmarks/scale.py); in mappings
    of their own it stays at the bound. The mapping is private, not shared (``mmap``'s default for -1): shared
    anonymous memory is shmem, faulted in page by page through the page cache's machinery; private anonymous
    memory faults in for less (a 23 MB float32 view for a step: 16.0 -> 11.4 ms of CPU for ``to_float``).
    No MADV_HUGEPAGE: with THP defrag on request, it made some faults compact memory (means worse than shared
    in one run of benchmarks/scale_decode.py under load, while the median halved)."""
    block = mmap.mmap(-1, max(1, nbytes), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(block, dtype=torch.uint8, count=max(1, nbytes))[:nbytes]


def _load_malloc_trim():
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        return trim
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        return None


_MALLOC_TRIM = _load_malloc_trim()


_TRIM_EVERY = 8  # decodes between trims: each trim also hands back pages the training's next step faults in again
_decodes_since_trim = 0


def _give_back_free_heap() -> None:
    """Return the heap's free pages to the OS (glibc's malloc_trim also releases pages inside the heap).

    Decoding a view (the image library's buffers, float32 conversions, the uint8 result) frees ~50 MB of
    blocks of assorted sizes; between them small blocks stay, and the free space left behind was never
    reused whole nor returned: 909 MB of free heap after 150 decoded 1600×1200 views (RSS 7.7 GB over a 2 GiB
    bound in an 800-step run of a 600-view capture). A trim takes ~2 ms, but the pages it returns include the
    training's own free buffers, which its next step faults in again: so once every ``_TRIM_EVERY`` decodes."""
    global _decodes_since_trim
    _decodes_since_trim += 1
    if _MALLOC_TRIM is not None and _decodes_since_trim >= _TRIM_EVERY:
        _decodes_since_trim = 0
        _MALLOC_TRIM(0)


def _held(view: StoredView) -> StoredView:
    """``view`` copied into one mapping of its own (see ``_outside_heap``)."""
    parts = [t for t in (view.rgb, view.alpha, view.mask) if t is not None]
    block = _outside_heap(sum(t.numel() for t in parts))
    out, at = [], 0
    for t in (view.rgb, view.alpha, view.mask):
        if t is None:
            out.append(None)
            continue
        dst = block[at:at + t.numel()].view(t.shape)
        dst.copy_(t)
        out.append(dst)
        at += t.numel()
    return StoredView(*out)


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable), or 8 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * GIB


def default_budget() -> int:
    """The RAM bound when ``--image-cache-gb`` is not given: a quarter of the free memory, at most 2 GiB."""
    return int(min(DEFAULT_MAX_BUDGET, 0.25 * available_memory()))


def to_float(u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] on ``device`` (the same floats as decoding the 8-bit file: v / 255).

    On the CPU the floats get a mapping of their own (``_outside_heap``): made for every step and freed a step
    later, with small blocks allocated in between, from malloc's heap they left holes it never gave back
    (1.6 GB of free heap after 200 views of 1600×1200 with a 200 MB bound)."""
    if torch.device(device).type != "cpu":
        return u8.to(device, non_blocking=True).float().div_(255.0)
    out = _outside_heap(4 * u8.numel()).view(torch.float32).view(u8.shape)
    return out.copy_(u8).div_(255.0)


@dataclass
class StoredView:
    """One view as bytes: colour H×W×3, alpha H×W and mask H×W (None where absent)."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    mask: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(t.numel() for t in (self.rgb, self.alpha, self.mask) if t is not None)


@dataclass
class Floats:
    """A view ready for a step: colour composited on the data's background, alpha and mask, float32 on the device."""

    image: torch.Tensor  # H×W×3
    alpha: torch.Tensor | None  # H×W×1
    mask: torch.Tensor | None  # H×W×1


def _gb(n: float) -> str:
    return f"{n / GIB:.2f} GB" if n < 10 * GIB else f"{n / GIB:.1f} GB"


class ImageStore:
    """Views of ``data`` (the ones in ``indices``) as uint8, decoded lazily, bounded in RAM (module docstring)."""

    def __init__(self, data, indices: list[int], *, budget_bytes: int | None = None, mode: str = "auto",
                 cache_dir: Path | None = None, budget_flag: str = "--image-cache-gb",
                 train_indices: list[int] | None = None) -> None:
        if mode not in MODES:
            raise InputError(None, f"data.image_cache must be auto, float, ram or disk, not {mode!r}")
        self.data = data
        self.indices = list(indices)
        self.budget = default_budget() if budget_bytes is None else int(budget_bytes)
        if self.budget < 0:
            raise InputError(None, f"{budget_flag} must be 0 or more, not {self.budget / GIB:g}")
        # an upper bound from the cameras alone (no decoding): colour, plus alpha for RGBA data, plus a mask
        per_pixel = 3 + (data.background is not None) + (1 if _has_masks(data) else 0)
        self.sizes = {i: (int(data.cameras.height[i]), int(data.cameras.width[i])) for i in self.indices}
        self.total_bytes = sum(h * w * per_pixel for h, w in self.sizes.values())
        # the training views as float32 (the views a step reads; held-out ones are read at evaluation only)
        self.train_set = set(self.indices if train_indices is None else train_indices) & set(self.indices)
        self.float_bytes = sum(4 * h * w * per_pixel for i, (h, w) in self.sizes.items() if i in self.train_set)
        if mode == "auto":
            if self.float_bytes <= self.budget:
                mode = "float"
            else:
                mode = "ram" if self.total_bytes <= self.budget or cache_dir is None else "disk"
        self.mode = mode
        self.cache_dir = Path(cache_dir) if cache_dir is not None and mode == "disk" else None
        h, w = max(self.sizes.values(), key=lambda s: s[0] * s[1]) if self.sizes else (0, 0)
        what = f"{len(self.indices)} images of up to {w}×{h}"
        if mode == "float" and self.float_bytes > self.budget:
            raise InputError(None, f"{len(self.train_set)} training images of up to {w}×{h} need "
                             f"{_gb(self.float_bytes)} in memory as float32, more than the image cache's "
                             f"{_gb(self.budget)}: raise {budget_flag} or use --image-cache ram or disk")
        if mode == "ram" and self.total_bytes > self.budget:
            raise InputError(None, f"{what} need {_gb(self.total_bytes)} in memory as uint8, more than the image "
                             f"cache's {_gb(self.budget)}: raise {budget_flag} or use --image-cache disk")
        if mode == "disk":
            if self.cache_dir is None:
                raise InputError(None, "--image-cache disk needs a run directory for its decoded copy")
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.cache_dir).free + self._cached_bytes()
            if self.total_bytes + GIB // 4 > free:
                raise InputError(self.cache_dir, f"{what} need {_gb(self.total_bytes)} as uint8: more than "
                                 f"{budget_flag} {self.budget / GIB:g} in memory, and only {_gb(free)} free on "
                                 f"this disk for the decoded cache; free disk space or raise {budget_flag}")
        self._ram: OrderedDict[int, StoredView] = OrderedDict()
        self._ram_bytes = 0
        self._floats: dict[int, Floats] = {}  # float mode: the training views, made once
        self._float_bytes_held = 0
        self._eval: OrderedDict[int, Floats] = OrderedDict()  # float mode: recent held-out views
        self._eval_bytes = 0
        # the bound on the uint8 views held in RAM: float mode keeps them in what the floats leave
        self.u8_budget = self.budget - self.float_bytes if mode == "float" else self.budget
        self._lock = threading.Lock()
        self.peak_ram_bytes = 0
        self.decoded = 0  # views decoded from their source files (the rest came from RAM or the disk cache)
        self.disk_reads = 0

    def describe(self) -> str:
        """One line: how the views are held."""
        if self.mode == "float":
            return f"{len(self.train_set)} training images held as float32 ({_gb(self.float_bytes)})"
        if self.mode == "ram":
            return f"{len(self.indices)} images held as uint8 in memory ({_gb(self.total_bytes)})"
        return (f"{len(self.indices)} images ({_gb(self.total_bytes)} as uint8) in a decoded cache on disk "
                f"({self.cache_dir}), up to {_gb(self.budget)} of them in memory")

    # ------------------------------------------------------------------ access
    def get(self, index: int) -> StoredView:
        """The bytes of view ``index``: from RAM, else the disk cache, else decoded (and stored)."""
        with self._lock:
            view = self._ram.get(index)
            if view is not None:
                self._ram.move_to_end(index)
                return view
        view = self._read(index) if self.cache_dir is not None else None
        if view is None:
            view = self._decode(index)
            if self.cache_dir is not None:
                self._write(index, view)
        self._keep(index, view)
        return view

    def floats(self, index: int, device: torch.device, background: torch.Tensor | None = None) -> Floats:
        """View ``index`` as float32 on ``device``: colour composited on its data's colour, alpha, mask."""
        held = self._floats.get(index)
        if held is not None and background is None:
            return held
        if self.mode == "float" and background is None:
            if index in self.train_set:
                floats = self._exact_floats(index, device)
                with self._lock:
                    self._floats[index] = floats
                    self._float_bytes_held += _floats_nbytes(floats)
            else:  # a held-out view (evaluation): exact floats too, the recent ones kept in the memory left
                with self._lock:
                    floats = self._eval.get(index)
                    if floats is not None:
                        self._eval.move_to_end(index)
                        return floats
                floats = self._exact_floats(index, device)
                with self._lock:
                    self._eval[index] = floats
                    self._eval_bytes += _floats_nbytes(floats)
                    while self._eval and self._eval_bytes > self.u8_budget:
                        _, old = self._eval.popitem(last=False)
                        self._eval_bytes -= _floats_nbytes(old)
            self.peak_ram_bytes = max(self.peak_ram_bytes, self._float_bytes_held + self._eval_bytes)
            return floats
        return self._make_floats(self.get(index), device, background)

    def _exact_floats(self, index: int, device: torch.device) -> Floats:
        """The decoder's floats themselves (no uint8 rounding: a resized view is kept exactly as before)."""
        decoded = self.data.decode_view(index)
        h, w = self.sizes[index]
        rgb = decoded.rgb.to(device)
        alpha = None
        if decoded.alpha is not None:
            a = decoded.alpha.to(device).reshape(h, w)
            bg = decoded.background if decoded.background is not None else self._background(None)
            rgb = composite(rgb, a, bg.to(device))
            alpha = a[..., None]
        mask = None if decoded.mask is None else decoded.mask.float().to(device).reshape(h, w, 1)
        self.decoded += 1
        return Floats(rgb.contiguous(), alpha, mask)

    def _make_floats(self, view: StoredView, device: torch.device, background: torch.Tensor | None) -> Floats:
        rgb = to_float(view.rgb, device)
        alpha = None
        if view.alpha is not None:
            a = to_float(view.alpha, device)
            bg = self._background(background).to(device)
            rgb = composite(rgb, a, bg)
            alpha = a[..., None]
        mask = None if view.mask is None else to_float(view.mask, device)[..., None]
        return Floats(rgb, alpha, mask)

    def _background(self, background: torch.Tensor | None) -> torch.Tensor:
        if background is not None:
            return background
        bg = self.data.background if self.data.background is not None else getattr(self.data, "_composite", None)
        return torch.ones(3) if bg is None else bg

    def _keep(self, index: int, view: StoredView) -> None:
        with self._lock:
            if index in self._ram:
                return
            self._ram[index] = view
            self._ram_bytes += view.nbytes
            while self._ram_bytes > self.u8_budget and len(self._ram) > 1:
                _, old = self._ram.popitem(last=False)
                self._ram_bytes -= old.nbytes
            if self._ram_bytes > self.u8_budget and self.mode != "ram":  # a budget below one view: keep none
                self._ram.pop(index)
                self._ram_bytes -= view.nbytes
            self.peak_ram_bytes = max(self.peak_ram_bytes, self._ram_bytes)

    def _decode(self, index: int) -> StoredView:
        fast = getattr(self.data, "decode_view_u8", None)
        got = None if fast is None else fast(index, _outside_heap)
        if got is not None:  # decoded straight into a mapping of its own as uint8 (the same bytes as below)
            self.decoded += 1
            _give_back_free_heap()
            return StoredView(*got)
        decoded = self.data.decode_view(index)
        h, w = self.sizes.get(index, (decoded.rgb.shape[0], decoded.rgb.shape[1]))
        rgb = to_u8(decoded.rgb)
        alpha = None if decoded.alpha is None else to_u8(decoded.alpha.reshape(h, w))
        mask = None if decoded.mask is None else to_u8(decoded.mask.reshape(h, w))
        self.decoded += 1
        held = _held(StoredView(rgb, alpha, mask))
        del decoded, rgb, alpha, mask
        _give_back_free_heap()
        return held

    # ------------------------------------------------------------------ the disk cache
    def _file(self, index: int) -> Path:
        path = Path(self.data.image_paths[index])
        try:
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:
            stamp = []
        mask_path = self.data.mask_path(index) if hasattr(self.data, "mask_path") else None
        key = json.dumps([str(path), stamp, self.sizes[index], None if mask_path is None else str(mask_path)])
        return self.cache_dir / f"{index:06d}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.u8"

    def _cached_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.cache_dir.glob("*.u8")) if self.cache_dir is not None else 0

    def _read(self, index: int) -> StoredView | None:
        path = self._file(index)
        try:  # a read into a mapping of our own (not a file mapping: the page cache stays the OS's)
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                block = _outside_heap(size)
                if f.readinto(memoryview(block.numpy())) != size:
                    return None
        except OSError:
            return None
        raw = block.numpy()
        h, w = self.sizes[index]
        if len(raw) < _HEADER:
            return None
        has_alpha, has_mask = bool(raw[0]), bool(raw[1])
        if len(raw) != _HEADER + h * w * (3 + has_alpha + has_mask):
            return None  # a stale or foreign file: decode again
        data = torch.from_numpy(raw[_HEADER:])
        rgb = data[: h * w * 3].view(h, w, 3)
        rest = data[h * w * 3:]
        alpha = rest[: h * w].view(h, w) if has_alpha else None
        mask = rest[h * w * has_alpha:].view(h, w) if has_mask else None
        self.disk_reads += 1
        return StoredView(rgb, alpha, mask)

    def _write(self, index: int, view: StoredView) -> None:
        header = np.array([view.alpha is not None, view.mask is not None, 0, 0], dtype=np.uint8)
        path = self._file(index)
        # temporary file + rename (never a half-written view), without atomic_open's fsync: it is a cache,
        # checked by its size when read, and 600 fsyncs would cost more than the decoding they save
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(header.tobytes())
                for t in (view.rgb, view.alpha, view.mask):
                    if t is not None:
                        f.write(memoryview(t.numpy()))
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InputError(self.cache_dir, f"cannot write the decoded image cache ({exc.strerror or exc})") from None

    def remove_cache(self) -> None:
        """Delete the decoded copy on disk (a finished run needs it no more)."""
        if self.cache_dir is not None and self.cache_dir.is_dir():
            shutil.rmtree(self.cache_dir, ignore_errors=True)


def _floats_nbytes(f: Floats) -> int:
    return sum(t.numel() * t.element_size() for t in (f.image, f.alpha, f.mask) if t is not None)


def _has_masks(data) -> bool:
    flag = getattr(data, "has_masks", None)
    return bool(flag) if flag is not None else False
