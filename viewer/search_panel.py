"""The 'Search' GUI folder: find scenes in a library by text (``recon3d.search``), see their thumbnails, open one.

A query, the library folder (``recon3d view --library DIR``; by default the folder the viewed scene is in), how
many results, and a button. Each result shows its thumbnail strip (the views ``recon3d index`` rendered), its
score and an 'Open' button that loads that scene into the viewer in place of the one shown. The search
brings the index up to date first (only new or changed scenes are read; a read-only library is searched as
indexed). It runs in a thread; a failure (an empty query, no such folder) is one line in the panel.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from .host import PanelHost

MAX_RESULTS = 20


def search_available() -> bool:
    """True when the library search and its vector index (faiss) can be imported."""
    try:
        return importlib.util.find_spec("faiss") is not None and importlib.util.find_spec("recon3d.library") is not None
    except (ImportError, ValueError):
        return False


def default_library(source: str | None) -> str:
    """The folder a viewed scene lives in (its run directory's parent for a run), or '' when unknown."""
    if not source:
        return ""
    path = Path(source)
    if not path.exists():
        return ""
    return str(path.parent.resolve())


def thumbnail_image(path: Path | None, side: int = 96) -> np.ndarray:
    """A result's thumbnail strip (H×W×3 uint8) scaled to ``side`` pixels high; a gray tile when it is missing."""
    from PIL import Image

    if path is not None and Path(path).is_file():
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w = max(1, round(im.width * side / max(im.height, 1)))
                return np.asarray(im.resize((w, side), Image.Resampling.BOX))
        except OSError:  # an unreadable thumbnail is decoration: show the placeholder
            pass
    return np.full((side, side, 3), 200, np.uint8)


class SearchPanel:
    """Query + library + top-K + button; the results (thumbnail, score, 'Open') appear below them."""

    def __init__(self, app: PanelHost, library: str | Path | None = None) -> None:
        self.app = app
        self._busy = threading.Lock()
        self.results: list = []
        self._result_handles: list = []
        gui = app.server.gui
        start = str(Path(library).expanduser()) if library else default_library(getattr(app.data, "source", None))
        self.folder = gui.add_folder("Search", expand_by_default=library is not None)
        with self.folder:
            self.query = gui.add_text("Query", initial_value="", hint="what the scene shows, e.g. 'a red cube on a blue sphere'")
            self.library = gui.add_text("Library", initial_value=start, hint="the folder of scenes to search (indexed on demand)")
            self.top = gui.add_number("Results", initial_value=5, min=1, max=MAX_RESULTS, step=1)
            self.button = gui.add_button("Search")
            self.status = gui.add_markdown("")
        self.button.on_click(lambda _event: threading.Thread(target=self.run, daemon=True).start())

    def run(self) -> bool:
        """Search the library for the current query and list the results; False on failure."""
        if not self._busy.acquire(blocking=False):
            return False
        try:
            from recon3d.library import search

            query, library = str(self.query.value), str(self.library.value).strip()
            if not library:
                raise ValueError("give the library folder to search")
            self.button.disabled = True
            self.status.content = f"searching {library} …"
            results = search(query, Path(library).expanduser(), top=int(self.top.value))
            self.show_results(results)
            self.status.content = (f"{len(results)} scene{'s' if len(results) != 1 else ''} for “{' '.join(query.split())}”"
                                   if results else "no scenes found in this library")
            return True
        except Exception as exc:  # an empty query, a missing folder, an unwritable index: one line here
            self.status.content = f"search failed: {exc}"
            return False
        finally:
            self.button.disabled = False
            self._busy.release()

    def show_results(self, results: list) -> None:
        """Replace the listed results with ``results`` (``recon3d.library.search.SearchResult``)."""
        for handle in self._result_handles:
            handle.remove()
        self._result_handles = []
        self.results = list(results)
        gui = self.app.server.gui
        with self.folder:
            for k, r in enumerate(self.results):
                label = f"{k + 1}. {r.rel}"
                self._result_handles.append(gui.add_image(thumbnail_image(r.thumbnail), label=label, format="png"))
                button = gui.add_button(f"Open {k + 1} ({r.score:.2f})", hint=f"{r.path} — {r.num_gaussians:,} Gaussians")
                button.on_click(lambda _event, k=k: threading.Thread(target=self.open, args=(k,), daemon=True).start())
                self._result_handles.append(button)

    def open(self, k: int) -> bool:
        """Load result ``k`` into the viewer in place of the scene shown; False (and a line) on failure."""
        from .source import load_target

        try:
            r = self.results[k]
            self.status.content = f"opening {r.rel} …"
            data = load_target(r.path)
            self.app.show_other_scene(data.scene, source=str(r.path))
            self.status.content = f"opened {r.rel} ({len(data.scene):,} Gaussians)"
            return True
        except Exception as exc:  # a file deleted or broken since it was indexed
            self.status.content = f"could not open result {k + 1}: {exc}"
            return False
