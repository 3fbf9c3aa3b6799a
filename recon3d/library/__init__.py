"""A library of scenes, searchable by text and image: ``recon3d index DIR`` and ``recon3d search "QUERY" DIR``.

``discover`` finds the scenes, ``metadata`` what is written about them, ``thumbnails`` renders them,
``embed`` turns both into one vector, ``store`` keeps the vectors (faiss) and what is known (SQLite),
``index`` keeps the store current, ``search`` queries it.
"""

from __future__ import annotations

from .index import IndexReport, index_library
from .search import QueryError, SearchResult, search

__all__ = ["IndexReport", "QueryError", "SearchResult", "index_library", "search"]
