"""The index of a library on disk: SQLite for what is known about each scene, faiss for the vectors.

An index folder holds:

- ``library.sqlite``: one row per scene (path relative to the library, kind, size, mtime, content hash,
  Gaussians, texts, the fused vector as float32 bytes, the thumbnail file), the scenes that could not be
  read (with the size and mtime they had, so an unchanged broken file is not retried), and ``meta``
  (embedding version, the vectors' generation);
- ``vectors.faiss`` + ``vectors.json``: the faiss index of the vectors (exact inner product; labels are
  the scenes' row ids) and the generation of the database it was saved from;
- ``thumbs/``: the thumbnails (PNG strips), named by content hash.

SQLite is the source of truth: each batch of scenes is committed as it is done, so an interrupted
``recon3d index`` keeps what it finished. The vector index is saved after each batch; if it is missing,
damaged or older than the database (the process died between the two), it is rebuilt from the stored
vectors on open.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

DB_NAME = "library.sqlite"
VECTORS_NAME = "vectors.faiss"
VECTORS_META = "vectors.json"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS scenes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a vector label is never given twice
    rel TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    num_gaussians INTEGER NOT NULL,
    texts TEXT NOT NULL,
    summary TEXT NOT NULL,
    vector BLOB NOT NULL,
    thumb TEXT,
    indexed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    rel TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class SceneRecord:
    """One indexed scene as stored."""

    id: int
    rel: str
    kind: str
    size: int
    mtime_ns: int
    hash: str
    num_gaussians: int
    texts: list[tuple[str, float]]
    summary: str
    thumb: str | None


def _faiss():
    """The faiss module (imported on first use)."""
    import faiss

    return faiss


@contextmanager
def _one_thread():
    """faiss on one thread for the call, and the caller's torch threads back after it.

    One query vector gains nothing from more threads, and faiss's OpenMP pool spinning beside torch's made a
    2,000-scene query 50x slower (38 vs 0.74 ms median) and a MiniLM query embedding 90x slower on a loaded
    2-core machine (benchmarks/search.py latency). faiss and torch share one OpenMP runtime, so setting faiss
    to one thread once (as this module did) also held torch at one thread for the rest of the process; the
    setting is now made around each faiss call and torch's own count restored after it.
    """
    import torch

    threads = torch.get_num_threads()
    _faiss().omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class VectorIndex:
    """The vectors by label in a faiss index: exact inner product (``IndexFlatIP`` under ``IndexIDMap2``), with
    additions, removals and an atomic save. Exact search of 100k scenes takes milliseconds (benchmarks/search.py),
    so no approximate graph is needed at library sizes; its results are the true best."""

    def __init__(self, dim: int):
        faiss = _faiss()
        self.dim = dim
        with _one_thread():
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorIndex:
        """Read a saved index (RuntimeError when the file is damaged or of another dimension)."""
        faiss = _faiss()
        index = cls.__new__(cls)
        index.dim = dim
        with _one_thread():
            index._index = faiss.read_index(str(path))
        if index._index.d != dim:
            raise RuntimeError(f"the saved index has {index._index.d} dimensions, not {dim}")
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (N×dim) under new labels (never reused: the scenes' row ids)."""
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if len(labels):
            with _one_thread():
                self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), labels)

    def remove(self, labels: list[int]) -> None:
        """Delete labels (absent ones are ignored)."""
        if labels:
            with _one_thread():
                self._index.remove_ids(np.asarray(labels, dtype=np.int64))

    def query(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best labels and their inner products with ``vector``, best first."""
        k = min(k, len(self))
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        with _one_thread():
            scores, labels = self._index.search(np.ascontiguousarray(vector, dtype=np.float32)[None], k)
        keep = labels[0] >= 0
        return labels[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def save(self, path: Path) -> None:
        """Write the index atomically (a temporary file renamed over ``path``)."""
        faiss = _faiss()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with _one_thread():
                faiss.write_index(self._index, str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class LibraryStore:
    """The SQLite database and the vector index of one library index folder."""

    def __init__(self, folder: Path, dim: int, embedding: str, readonly: bool = False):
        self.folder = Path(folder)
        self.dim = dim
        self.embedding = embedding
        self.readonly = readonly
        db_path = self.folder / DB_NAME
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
            else:
                self.folder.mkdir(parents=True, exist_ok=True)
                (self.folder / "thumbs").mkdir(exist_ok=True)
                self.db = sqlite3.connect(db_path)
                self.db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise InputError(db_path, f"cannot open the library index ({exc})") from None
        try:
            self._check_meta()
        except sqlite3.DatabaseError as exc:
            raise InputError(db_path, f"the library index is damaged ({exc}); delete the folder and index again") from None
        self.vectors = self._open_vectors()

    # ------------------------------------------------------------------ meta
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _check_meta(self) -> None:
        """A database of another schema or embedding is emptied (when writable): its vectors do not mix."""
        schema, embedding = self._meta("schema"), self._meta("embedding")
        if schema == str(SCHEMA_VERSION) and embedding == self.embedding:
            return
        if self.readonly:
            if schema is None:
                raise InputError(self.folder, "is not a library index (no scenes indexed)")
            raise InputError(self.folder, f"the index was built with another embedding ({embedding}); run "
                             "`recon3d index` with a writable index to rebuild it")
        with self.db:
            self.db.execute("DELETE FROM scenes")
            self.db.execute("DELETE FROM failures")
            self._set_meta("schema", str(SCHEMA_VERSION))
            self._set_meta("embedding", self.embedding)
            self._set_meta("generation", "0")

    @property
    def generation(self) -> int:
        """How many committed batches changed the vectors (the vector index file records the one it matches)."""
        return int(self._meta("generation") or 0)

    # ------------------------------------------------------------------ vectors
    def _open_vectors(self) -> VectorIndex:
        ids = {r[0] for r in self.db.execute("SELECT id FROM scenes")}
        path, meta_path = self.folder / VECTORS_NAME, self.folder / VECTORS_META
        try:
            saved = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            saved = {}
        if path.is_file() and saved.get("generation") == self.generation and saved.get("dim") == self.dim:
            try:
                vectors = VectorIndex.load(path, self.dim)
                if len(vectors) == len(ids):
                    return vectors
            except RuntimeError:
                pass  # a damaged index file: rebuilt below
        vectors = VectorIndex(self.dim)
        rows = self.db.execute("SELECT id, vector FROM scenes").fetchall()
        if rows:
            vectors.add(np.array([r[0] for r in rows]), np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]))
        if not self.readonly:
            self._save_vectors(vectors)
        return vectors

    def _save_vectors(self, index: VectorIndex | None = None) -> None:
        from ..io_utils import atomic_write_text

        (index if index is not None else self.vectors).save(self.folder / VECTORS_NAME)
        atomic_write_text(self.folder / VECTORS_META, json.dumps({"generation": self.generation, "dim": self.dim}))

    # ------------------------------------------------------------------ rows
    def get(self, rel: str) -> SceneRecord | None:
        """The stored record of ``rel``, or None."""
        row = self.db.execute(
            "SELECT id, rel, kind, size, mtime_ns, hash, num_gaussians, texts, summary, thumb FROM scenes WHERE rel = ?",
            (rel,)).fetchone()
        return None if row is None else _record(row)

    def records(self, ids: list[int]) -> dict[int, SceneRecord]:
        """Records by row id."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT id, rel, kind, size, mtime_ns, hash, num_gaussians, texts, summary, thumb FROM scenes WHERE id IN ({marks})",
            ids).fetchall()
        return {r[0]: _record(r) for r in rows}

    def rels(self) -> set[str]:
        """Every indexed path."""
        return {r[0] for r in self.db.execute("SELECT rel FROM scenes")}

    def failure(self, rel: str) -> tuple[int, int, str] | None:
        """(size, mtime_ns, error) of a scene that could not be read, or None."""
        row = self.db.execute("SELECT size, mtime_ns, error FROM failures WHERE rel = ?", (rel,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), str(row[2]))

    def failures(self) -> dict[str, str]:
        """Every scene that could not be read, with the reason."""
        return {r[0]: r[1] for r in self.db.execute("SELECT rel, error FROM failures ORDER BY rel")}

    def vector(self, rel: str) -> np.ndarray | None:
        """The stored vector of ``rel``."""
        row = self.db.execute("SELECT vector FROM scenes WHERE rel = ?", (rel,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).copy()

    def commit_batch(self, done: list[dict], failed: list[tuple[str, int, int, str]], touched: list[tuple[str, int, int]],
                     removed: list[str]) -> None:
        """Write one batch in one transaction, then the vector index: new/changed scenes (dicts of the columns plus
        ``vector``), unreadable ones, unchanged-content ones whose mtime moved, and vanished ones."""
        now = time.time()
        new_vectors: list[tuple[int, np.ndarray]] = []
        removed_ids: list[int] = []
        with self.db:
            for rel in removed:
                row = self.db.execute("SELECT id FROM scenes WHERE rel = ?", (rel,)).fetchone()
                if row:
                    removed_ids.append(int(row[0]))
                self.db.execute("DELETE FROM scenes WHERE rel = ?", (rel,))
                self.db.execute("DELETE FROM failures WHERE rel = ?", (rel,))
            for rel, size, mtime_ns in touched:
                self.db.execute("UPDATE scenes SET size = ?, mtime_ns = ? WHERE rel = ?", (size, mtime_ns, rel))
            for rel, size, mtime_ns, error in failed:
                self.db.execute("INSERT OR REPLACE INTO failures (rel, size, mtime_ns, error) VALUES (?, ?, ?, ?)",
                                (rel, size, mtime_ns, error))
                row = self.db.execute("SELECT id FROM scenes WHERE rel = ?", (rel,)).fetchone()
                if row:  # a scene that was readable and is now broken leaves the results
                    removed_ids.append(int(row[0]))
                    self.db.execute("DELETE FROM scenes WHERE rel = ?", (rel,))
            for d in done:
                vec = np.asarray(d["vector"], dtype=np.float32)
                values = (d["kind"], d["size"], d["mtime_ns"], d["hash"], d["num_gaussians"], json.dumps(d["texts"]),
                          d["summary"], vec.tobytes(), d.get("thumb"), now)
                row = self.db.execute("SELECT id FROM scenes WHERE rel = ?", (d["rel"],)).fetchone()
                if row:  # a changed scene gets a new row id, so a vector label is never reused
                    removed_ids.append(int(row[0]))
                    self.db.execute("DELETE FROM scenes WHERE id = ?", (row[0],))
                cur = self.db.execute("INSERT INTO scenes (kind, size, mtime_ns, hash, num_gaussians, texts, summary, "
                                      "vector, thumb, indexed_at, rel) VALUES (?,?,?,?,?,?,?,?,?,?,?)", (*values, d["rel"]))
                new_vectors.append((int(cur.lastrowid), vec))
                self.db.execute("DELETE FROM failures WHERE rel = ?", (d["rel"],))
            if new_vectors or removed_ids:
                self._set_meta("generation", str(self.generation + 1))
        if new_vectors or removed_ids:
            self.vectors.remove(removed_ids)
            if new_vectors:
                self.vectors.add(np.array([i for i, _ in new_vectors]), np.stack([v for _, v in new_vectors]))
            self._save_vectors()

    def close(self) -> None:
        """Close the database."""
        self.db.close()


def _record(row) -> SceneRecord:
    texts = [(str(t), float(w)) for t, w in json.loads(row[7])]
    return SceneRecord(int(row[0]), row[1], row[2], int(row[3]), int(row[4]), row[5], int(row[6]), texts, row[8], row[9])
