"""The 'Search' GUI folder: find scenes in a library by text, an image or both (``recon3d.search``), see their
thumbnails, open one.

A query, an optional image (uploaded from the browser; 'Clear image' drops it), the library folder (``recon3d view --library DIR``; by default the folder the viewed scene is in), how
many results, and a button. Each result shows its thumbnail strip (the views ``recon3d index`` rendered), its
score and an 'Open' button that loads that scene into the viewer in place of the one shown. The search
brings the index up to date first (only new or changed scenes are read; a read-only library is searched as
indexed). With an image the search is the one ``recon3d search --image`` runs (text and image fused when
both are given). It runs in a thread; a failure (an empty query, no such folder, a file that is not an
image) is one line in the panel.
"""

from __future__ import annotations

import importlib.util
import io
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


def image_from_upload(name: str, content: bytes) -> np.ndarray:
    """An uploaded file's bytes -> H×W×3 float32 in [0, 1] (RGBA over white), with the limits and one-line
    errors of ``recon3d search --image`` (``generation.image``)."""
    from PIL import Image, UnidentifiedImageError

    from recon3d.errors import InputError
    from recon3d.generation.image import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, load_image_prompt

    if not content:
        raise InputError(name, "the image file is empty")
    if len(content) > MAX_IMAGE_BYTES:
        raise InputError(name, f"the image file is too large ({len(content) / 2**20:.0f} MiB; at most {MAX_IMAGE_BYTES // 2**20} MiB)")
    try:
        with Image.open(io.BytesIO(content)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise InputError(name, f"the image is too large ({w}×{h} pixels; at most {MAX_IMAGE_PIXELS:,})")
            im.load()
            arr = np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P", "PA") else im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(name, f"not an image this tool can read ({type(exc).__name__})") from None
    return load_image_prompt(arr).numpy()


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
            self.upload = gui.add_upload_button("Image", mime_type="image/*", hint="search by a picture too (or alone)")
            self.image_status = gui.add_markdown("")
            self.clear = gui.add_button("Clear image", visible=False)
            self.library = gui.add_text("Library", initial_value=start, hint="the folder of scenes to search (indexed on demand)")
            self.top = gui.add_number("Results", initial_value=5, min=1, max=MAX_RESULTS, step=1)
            self.button = gui.add_button("Search")
            self.status = gui.add_markdown("")
        self.button.on_click(lambda _event: threading.Thread(target=self.run, daemon=True).start())
        self.upload.on_upload(lambda _event: self.take_upload(self.upload.value.name, self.upload.value.content))
        self.clear.on_click(lambda _event: self.clear_image())
        self.image: np.ndarray | None = None
        self.image_name = ""
        self._preview = None

    def take_upload(self, name: str, content: bytes) -> bool:
        """Use an uploaded file as the image query (a preview appears under the button); False and a line
        when it cannot be read (the image used before is dropped)."""
        self.clear_image()
        try:
            self.image = image_from_upload(name, content)
        except Exception as exc:  # not an image, too large, empty: one line, no image query
            self.image_status.content = f"image not used: {exc}"
            return False
        self.image_name = name
        h, w = self.image.shape[:2]
        side = 96
        preview = (self.image * 255).round().astype(np.uint8)
        from PIL import Image

        tile = np.asarray(Image.fromarray(preview).resize((max(1, round(w * side / h)), side), Image.Resampling.BOX))
        with self.folder:
            self._preview = self.app.server.gui.add_image(tile, label=name, format="png", order=self.image_status.order + 0.01)
        self.image_status.content = f"image: {name} ({w}×{h})"
        self.clear.visible = True
        return True

    def clear_image(self) -> None:
        """Drop the image query and its preview."""
        self.image, self.image_name = None, ""
        if self._preview is not None:
            self._preview.remove()
            self._preview = None
        self.image_status.content = ""
        self.clear.visible = False

    def run(self) -> bool:
        """Search the library for the current query and list the results; False on failure."""
        if not self._busy.acquire(blocking=False):
            return False
        try:
            from recon3d.library import search

            query, library = str(self.query.value), str(self.library.value).strip()
            image = self.image
            if not library:
                raise ValueError("give the library folder to search")
            # with an image, an empty text box means "by the image alone" (as `recon3d search DIR --image`)
            text = None if image is not None and not query.strip() else query
            self.button.disabled = True
            self.status.content = f"searching {library} …"
            results = search(text, Path(library).expanduser(), image=image, top=int(self.top.value))
            self.show_results(results)
            what = " and ".join(x for x in (f"“{' '.join(query.split())}”" if text is not None else "",
                                            f"the image {self.image_name}" if image is not None else "") if x)
            self.status.content = (f"{len(results)} scene{'s' if len(results) != 1 else ''} for {what}"
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
