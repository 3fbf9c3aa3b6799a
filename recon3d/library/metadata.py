"""What is known about a scene in words: its prompt, caption or description, and its file and folder names.

Sources, each optional (``X`` is the scene file's name without its suffix; for a run, the run folder):

- ``X.json`` beside the file (or ``scene.json`` / ``meta.json`` in a run) with any of the keys
  ``prompt``, ``caption``, ``description``, ``title``, ``tags`` (a list);
- ``X.txt`` beside the file (or ``prompt.txt`` / ``description.txt`` / ``caption.txt`` in a run);
- ``captions.jsonl`` in the folder, lines of ``{"file": NAME, "caption": …}`` (the generator's scan-folder
  format);
- PLY header comments ``comment prompt: …``, ``comment caption: …``, ``comment description: …``;
- the name: the path inside the library, split into words (``red_cube-v2/scene.ply`` -> ``red cube v2``);
  for a run, also the folder of the images it was trained on (from ``cameras.json``).

Texts are returned with a weight each: what someone wrote about the scene (prompt, caption, description)
counts fully; names count half, since they are often arbitrary (``scan_003``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .discover import SceneEntry

TEXT_KEYS = ("prompt", "caption", "description", "title")
MAX_TEXT_CHARS = 300
NAME_WEIGHT = 0.5
# words that say nothing about what a scene shows
_STOP_NAMES = {"scene", "ply", "splat", "spz", "sog", "out", "output", "outputs", "run", "runs", "final", "result",
               "results", "images", "export", "exports", "point", "cloud", "iteration", "gaussians", "compressed"}


@dataclass
class SceneText:
    """The texts known about one scene, each with a weight (1 for written text, ``NAME_WEIGHT`` for names)."""

    texts: list[tuple[str, float]] = field(default_factory=list)

    def add(self, text: object, weight: float) -> None:
        """Add one text (ignored when empty or not a string); long texts are cut to ``MAX_TEXT_CHARS``."""
        if isinstance(text, list):
            text = ", ".join(str(t) for t in text if isinstance(t, (str, int, float)))
        if not isinstance(text, str):
            return
        text = " ".join(text.split())[:MAX_TEXT_CHARS]
        if text and all(t != text for t, _ in self.texts):
            self.texts.append((text, weight))

    @property
    def summary(self) -> str:
        """One line for a results table: the written text when there is one, else the name words."""
        written = [t for t, w in self.texts if w >= 1.0]
        return (written or [t for t, _ in self.texts] or [""])[0]


def signature_files(root: Path, entry: SceneEntry) -> list[Path]:
    """The files whose change changes what is indexed of ``entry``: the scene file, then its text files."""
    if entry.is_run:
        folder = root / entry.rel
        names = ("scene.json", "meta.json", "prompt.txt", "caption.txt", "description.txt", "cameras.json")
        extra = [folder / n for n in names] + [folder.parent / "captions.jsonl"]
    else:
        path = entry.scene_file
        stem = _stem(path)
        extra = [path.with_name(stem + ".json"), path.with_name(stem + ".txt"), path.parent / "captions.jsonl"]
    return [entry.scene_file, *(p for p in extra if p.is_file())]


def _stem(path: Path) -> str:
    return path.name[: -len(".compressed.ply")] if path.name.lower().endswith(".compressed.ply") else path.stem


def name_words(rel: str) -> str:
    """The words of a path inside the library: ``a/red_cube-v2/scene.ply`` -> ``a red cube v2``."""
    stem = re.sub(r"\.(ply|splat|spz|sog|compressed)$", "", rel, flags=re.IGNORECASE)
    stem = re.sub(r"\.(ply|splat|spz|sog|compressed)$", "", stem, flags=re.IGNORECASE)
    words = re.split(r"[\\/_\-.\s]+", stem)
    # camelCase -> camel case, digits apart from letters
    out = []
    for w in words:
        out.extend(p.lower() for p in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", w) or [w])
    return " ".join(w for w in out if w and w not in _STOP_NAMES and w != ".")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_text(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(MAX_TEXT_CHARS * 2)
    except OSError:
        return None


def _ply_comments(path: Path) -> dict[str, str]:
    """``comment KEY: value`` lines of a PLY header, for the keys in ``TEXT_KEYS``."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 14)
    except OSError:
        return {}
    end = head.find(b"end_header")
    found = {}
    for line in head[: end if end >= 0 else len(head)].decode("latin-1").splitlines():
        m = re.match(r"comment\s+(\w+)\s*[:=]\s*(.+)", line.strip())
        if m and m.group(1).lower() in TEXT_KEYS:
            found[m.group(1).lower()] = m.group(2).strip()
    return found


def _captions_jsonl(folder: Path, name: str) -> list[str]:
    index = folder / "captions.jsonl"
    if not index.is_file():
        return []
    out = []
    try:
        with open(index, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("file") == name:
                    out.append(rec.get("caption"))
    except OSError:
        return []
    return out


def scene_text(root: Path, entry: SceneEntry) -> SceneText:
    """Everything written about ``entry`` (a scene of the library at ``root``), with weights."""
    text = SceneText()
    if entry.is_run:
        folder = root / entry.rel
        for name in ("scene.json", "meta.json"):
            meta = _read_json(folder / name)
            for key in (*TEXT_KEYS, "tags"):
                text.add(meta.get(key), 1.0)
        for name in ("prompt.txt", "caption.txt", "description.txt"):
            if (folder / name).is_file():
                text.add(_read_text(folder / name), 1.0)
        for value in _ply_comments(entry.scene_file).values():
            text.add(value, 1.0)
        for caption in _captions_jsonl(folder.parent, folder.name):
            text.add(caption, 1.0)
        text.add(name_words(entry.rel if entry.rel != "." else root.resolve().name), NAME_WEIGHT)
        source = _image_folder(folder / "cameras.json")
        if source:
            text.add(name_words(source), NAME_WEIGHT)
        return text
    path = entry.scene_file
    stem = _stem(path)
    meta = _read_json(path.with_name(stem + ".json"))
    for key in (*TEXT_KEYS, "tags"):
        text.add(meta.get(key), 1.0)
    if path.with_name(stem + ".txt").is_file():
        text.add(_read_text(path.with_name(stem + ".txt")), 1.0)
    if entry.kind == "ply":
        for value in _ply_comments(path).values():
            text.add(value, 1.0)
    for caption in _captions_jsonl(path.parent, path.name):
        text.add(caption, 1.0)
    text.add(name_words(entry.rel), NAME_WEIGHT)
    return text


def _image_folder(cameras: Path) -> str | None:
    """The folder of the first image a run's cameras.json names (where its photos came from), or None."""
    if not cameras.is_file():
        return None
    try:
        with open(cameras, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return None
    m = re.search(r'"image"\s*:\s*"([^"]+)"', head)  # the first record; the whole file can be large
    if not m:
        return None
    parent = Path(m.group(1)).parent
    while parent.name.lower() in ("images", "image", "input", "inputs", "rgb", "frames", "train", "photos"):
        parent = parent.parent
    return parent.name or None
