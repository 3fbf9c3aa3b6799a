"""How the data readers speak: one-line info messages on stderr and lists of names in messages.

Below every reader (``scene_data``, ``masks``, ``photos``, ``video`` …), so none of them imports another
only to print.
"""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)
MAX_LISTED_NAMES = 10


def info(message: str) -> None:
    """A one-line progress/info message on stderr."""
    console.print(f"[dim]recon3d:[/dim] {message}")


def list_names(names: list[str]) -> str:
    """Names joined for a message, the first few then a count."""
    shown = ", ".join(names[:MAX_LISTED_NAMES])
    return shown + (f" and {len(names) - MAX_LISTED_NAMES} more" if len(names) > MAX_LISTED_NAMES else "")
