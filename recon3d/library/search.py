"""``recon3d search "QUERY" DIR``: the scenes of a library best matching a text, an image, or both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, Recon3dError
from .embed import DIM, EMBEDDING_VERSION, TextEmbedder, query_image_embedding, query_vector
from .index import check_library, default_index_dir, index_library, resolve_index_dir
from .store import DB_NAME, LibraryStore

MAX_QUERY_CHARS = 300
MAX_TOP = 1000


class QueryError(Recon3dError, ValueError):
    """A search query that cannot be used (empty, too long, not text, a bad --top)."""


@dataclass
class SearchResult:
    """One scene found: where it is, how well it matches (mean cosine over the query's parts), what it is."""

    path: Path
    rel: str
    score: float
    kind: str
    num_gaussians: int
    summary: str
    thumbnail: Path | None

    def to_json(self) -> dict:
        """``{"path", "score"}``, what ``recon3d search --json`` prints per scene."""
        return {"path": str(self.path), "score": round(float(self.score), 4)}


def check_query(query: object) -> str:
    """A usable text query, or a one-line QueryError."""
    if not isinstance(query, str):
        raise QueryError(f"the query must be text, got {type(query).__name__}")
    text = " ".join(query.split())
    if not text:
        raise QueryError("the query is empty; describe what to find, e.g. 'a red cube on a blue sphere' (or give only "
                         "--image)")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is too long ({len(text)} characters; at most {MAX_QUERY_CHARS})")
    return text


def search(query: str | None, library_dir: str | Path, *, image=None, top: int = 10, index: str | Path | None = None,
           update: bool = True, progress: bool = False, embedder: TextEmbedder | None = None) -> list[SearchResult]:
    """The ``top`` scenes of ``library_dir`` best matching ``query`` (text), ``image`` (a path or array), or both.

    With ``update`` (default) the index is first brought up to date (only new and changed scenes are read),
    when it can be written; a read-only index is searched as it is.
    """
    if query is None and image is None:
        raise QueryError("give a text query, an image, or both")
    text = check_query(query) if query is not None else None
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= int(top) <= MAX_TOP:
        raise QueryError(f"--top must be a whole number from 1 to {MAX_TOP}, got {top!r}")
    picture = None
    if image is not None:
        from ..generation.image import load_image_prompt

        picture = load_image_prompt(image)
    library = check_library(library_dir)
    folder = Path(index).expanduser() if index is not None else default_index_dir(library)
    embedder = embedder if embedder is not None else (TextEmbedder() if text is not None else None)
    if update:
        try:
            resolve_index_dir(library, index, write=True)
            writable = True
        except InputError:
            writable = False
        if writable:
            index_library(library, folder, progress=progress, embedder=embedder)
        elif not (folder / DB_NAME).is_file():
            resolve_index_dir(library, index, write=True)  # raises the one-line error
    if not (folder / DB_NAME).is_file():
        raise InputError(folder, "no library index here; run `recon3d index` first (or search with updating on)")
    store = LibraryStore(folder, DIM, EMBEDDING_VERSION, readonly=True)
    try:
        t = embedder.embed([text])[text] if text is not None else None
        i = query_image_embedding(picture) if picture is not None else None
        ids, scores = store.vectors.query(query_vector(t, i), int(top))
        records = store.records(ids.tolist())
    finally:
        store.close()
    results = []
    for label, score in zip(ids.tolist(), scores.tolist()):
        r = records.get(label)
        if r is None:
            continue
        thumb = folder / "thumbs" / r.thumb if r.thumb else None
        results.append(SearchResult(library / r.rel if r.rel != "." else library, r.rel, float(score), r.kind,
                                    r.num_gaussians, r.summary, thumb))
    return results
