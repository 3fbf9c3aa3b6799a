"""``recon3d index DIR``: find the scenes of a library, embed the new and changed ones, keep the index current.

Incremental: a scene whose files have the size and mtime the index recorded is not read; one whose
mtime moved but whose content hash is the same only gets its mtime updated; new and changed scenes are
loaded, rendered and embedded; scenes gone from the folder leave the index. A scene's files are its scene
file and the text files beside it (``metadata.signature_files``), so editing a prompt re-embeds it.

Interrupted indexing resumes: batches are committed as they finish, and the next run skips them.
Unreadable scenes are reported by name and skipped (and not retried until they change).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, Recon3dError
from .discover import SceneEntry, discover
from .embed import DIM, EMBEDDING_VERSION, TextEmbedder, fuse, scene_embedding, text_vector, views_embedding
from .metadata import scene_text, signature_files
from .store import LibraryStore

INDEX_DIR_NAME = ".recon3d-index"
MAX_GAUSSIANS = 5_000_000  # larger scenes are indexed by text only (thumbnails would take seconds each)


@dataclass
class IndexReport:
    """What one ``index_library`` call did."""

    library: Path
    index_dir: Path
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    touched: list[str] = field(default_factory=list)  # mtime moved, content the same
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # unreadable (newly, or again after a change)
    still_failed: dict[str, str] = field(default_factory=dict)  # unreadable and unchanged since last time
    total: int = 0  # scenes in the index now

    def summary(self) -> str:
        """One line for the user."""
        parts = [f"{self.total} scenes indexed in {self.index_dir}", f"{len(self.new)} new", f"{len(self.changed)} changed",
                 f"{self.unchanged + len(self.touched)} unchanged", f"{len(self.removed)} removed"]
        bad = len(self.failed) + len(self.still_failed)
        if bad:
            parts.append(f"{bad} unreadable")
        return ", ".join(parts)


def default_index_dir(library: Path) -> Path:
    """Where the index of ``library`` lives unless ``--index`` says otherwise: a hidden folder inside it."""
    return Path(library) / INDEX_DIR_NAME


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def resolve_index_dir(library: Path, index: str | Path | None, write: bool = True) -> Path:
    """The index folder for ``library``; a one-line error when it would have to be written and cannot be."""
    if index is not None:
        index = Path(index).expanduser()
        if write and (index.exists() and not index.is_dir()):
            raise InputError(index, "the index path is a file; give a folder")
        if write and not _writable(index):
            raise InputError(index, "cannot write the index there (read-only); choose another --index folder")
        return index
    folder = default_index_dir(library)
    if write and not _writable(folder):
        raise InputError(library, "the library folder is read-only, so the index cannot be kept inside it; pass "
                         "--index PATH, a folder you can write (e.g. ~/.cache/recon3d/index/NAME)")
    return folder


def check_library(library: str | Path) -> Path:
    """The library folder, or a one-line error when it is missing or not a folder."""
    library = Path(library).expanduser()
    if not library.exists():
        raise InputError(library, "no such folder (the library to index or search)")
    if not library.is_dir():
        raise InputError(library, "not a folder (give the folder that holds the scenes)")
    return library


def file_hash(paths: list[Path]) -> str:
    """BLAKE2b of the files' contents in order (the scene and its text files), hex, 32 characters."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _signature(paths: list[Path]) -> tuple[int, int]:
    """(size, latest mtime in ns) of a scene's files: what tells a changed scene without reading it."""
    stats = [p.stat() for p in paths]
    return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


def _problem(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return exc.problem
    if isinstance(exc, Recon3dError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def load_entry(library: Path, entry: SceneEntry):
    """The GaussianScene of an entry; InputError when it cannot be read or holds nothing to draw."""
    import torch

    from ..formats import load_scene

    scene = load_scene(entry.scene_file)
    if len(scene) == 0:
        raise InputError(entry.scene_file, "holds no Gaussians")
    finite = torch.isfinite(scene.means).all(1)
    if not finite.any():
        raise InputError(entry.scene_file, "every Gaussian has a NaN or infinite position")
    return scene


def embed_scene_views(library: Path, entry: SceneEntry, scene, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The image part of a scene's vector (the image encoder over its thumbnails) and its thumbnail strip (uint8)."""
    from .thumbnails import orbit_cameras, render_thumbnails, run_cameras, thumbnail_strip

    cams_file = library / entry.rel / "cameras.json" if entry.is_run else None
    cameras = run_cameras(cams_file) if cams_file is not None and cams_file.is_file() else orbit_cameras(scene)
    rgb, alpha = render_thumbnails(scene, cameras, backend=backend)
    return views_embedding(rgb), thumbnail_strip(rgb)


def _save_thumb(folder: Path, digest: str, strip: np.ndarray) -> str:
    from PIL import Image

    from ..io_utils import atomic_open

    name = f"{digest}.png"
    path = folder / "thumbs" / name
    if not path.is_file():
        with atomic_open(path, "wb") as f:
            Image.fromarray(strip).save(f, format="PNG")
    return name


def index_library(library: str | Path, index: str | Path | None = None, *, backend: str = "auto", batch_size: int = 8,
                  progress: bool = True, embedder: TextEmbedder | None = None, after_batch=None) -> IndexReport:
    """Index (or bring up to date) the scenes under ``library``; returns what was done.

    ``index``: the index folder (default ``LIBRARY/.recon3d-index``). ``after_batch(report)`` is called
    after each committed batch (progress hooks, tests of interruption).
    """
    from ..progress import console, track

    library = check_library(library)
    index_dir = resolve_index_dir(library, index, write=True)
    store = LibraryStore(index_dir, DIM, EMBEDDING_VERSION)
    report = IndexReport(library, index_dir)
    try:
        entries = list(discover(library, skip=index_dir))
        found = {e.rel for e in entries}
        report.removed = sorted(store.rels() - found)
        gone_failures = [r for r in store.failures() if r not in found]
        todo: list[tuple[SceneEntry, int, int, str, bool]] = []
        touched: list[tuple[str, int, int]] = []
        failed: list[tuple[str, int, int, str]] = []
        for entry in entries:
            try:
                files = signature_files(library, entry)
                size, mtime = _signature(files)
                record = store.get(entry.rel)
                if record is not None and (record.size, record.mtime_ns) == (size, mtime):
                    report.unchanged += 1
                    continue
                known = store.failure(entry.rel)
                if record is None and known is not None and known[:2] == (size, mtime):
                    report.still_failed[entry.rel] = known[2]
                    continue
                digest = file_hash(files)
            except OSError as exc:
                problem = f"cannot read it ({exc.strerror or exc})"
                report.failed[entry.rel] = problem
                failed.append((entry.rel, 0, 0, problem))
                continue
            if record is not None and record.hash == digest:
                touched.append((entry.rel, size, mtime))
                report.touched.append(entry.rel)
                continue
            todo.append((entry, size, mtime, digest, record is not None))
        if report.removed or gone_failures or touched or failed:
            store.commit_batch([], failed, touched, report.removed + gone_failures)
        if todo and embedder is None:
            embedder = TextEmbedder()
        batch: list[dict] = []
        batch_failed: list[tuple[str, int, int, str]] = []
        try:
            for k, (entry, size, mtime, digest, existed) in enumerate(
                    track(todo, description="indexing scenes", unit="scenes", disable=not progress)):
                try:
                    scene = load_entry(library, entry)
                    scene_part = scene_embedding(scene)
                    if len(scene) <= MAX_GAUSSIANS:
                        image_part, strip = embed_scene_views(library, entry, scene, backend)
                        thumb = _save_thumb(index_dir, digest, strip)
                    else:
                        image_part, thumb = None, None
                    texts = scene_text(library, entry)
                    batch.append({"rel": entry.rel, "kind": entry.kind, "size": size, "mtime_ns": mtime, "hash": digest,
                                  "num_gaussians": len(scene), "texts": texts.texts, "summary": texts.summary,
                                  "scene": scene_part, "image": image_part, "thumb": thumb, "existed": existed})
                except Exception as exc:  # one bad scene must not stop the library: reported by name
                    problem = _problem(exc)
                    report.failed[entry.rel] = problem
                    batch_failed.append((entry.rel, size, mtime, problem))
                if len(batch) + len(batch_failed) >= batch_size or k == len(todo) - 1:
                    _commit(store, embedder, batch, batch_failed, report)
                    batch, batch_failed = [], []
                    if after_batch is not None:
                        after_batch(report)
        except KeyboardInterrupt:
            done = len(report.new) + len(report.changed)
            console().print(f"interrupted: {done} of {len(todo)} scenes were indexed and kept; run `recon3d index` "
                            "again to index the rest")
            raise
        _drop_orphan_thumbs(store)
        report.total = len(store.vectors)
    finally:
        store.close()
    for rel, problem in {**report.failed, **report.still_failed}.items():
        print(f"skipped (unreadable) {rel}: {problem}", file=sys.stderr)
    return report


def _commit(store: LibraryStore, embedder: TextEmbedder, batch: list[dict], failed: list, report: IndexReport) -> None:
    """Embed a batch's texts in one call, fuse them with the scene and image parts, and commit."""
    encoded = embedder.embed([t for d in batch for t, _ in d["texts"]]) if batch else {}
    for d in batch:
        d["vector"] = fuse(text_vector(d["texts"], encoded) if d["texts"] else None, d["scene"], d["image"])
    store.commit_batch(batch, failed, [], [])
    for d in batch:
        (report.changed if d["existed"] else report.new).append(d["rel"])


def _drop_orphan_thumbs(store: LibraryStore) -> None:
    """Delete thumbnails no scene refers to any more (their scenes changed or left)."""
    used = {r[0] for r in store.db.execute("SELECT thumb FROM scenes WHERE thumb IS NOT NULL")}
    folder = store.folder / "thumbs"
    for p in folder.glob("*.png"):
        if p.name not in used:
            p.unlink(missing_ok=True)
