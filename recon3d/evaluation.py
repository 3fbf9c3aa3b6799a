"""Held-out evaluation: render views, compare with their images, optionally save what a viewer would show.

The trainer's end-of-run figures (``metrics.json``) and ``recon3d eval`` (``Run.evaluate``) both call
``evaluate_views`` with ``measure_view``, so the two measure the same thing the same way: one render over
black gives the render over any colour, and ``recon3d.metrics.view_metrics`` judges it by the run's
protocol (photos: over black and over white, the see-through share, NeRF-W; RGBA object data: over its
background).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .io_utils import atomic_open
from .metrics import PROTOCOL_COMPOSITED, PROTOCOL_NOTES, PROTOCOL_OPAQUE, lpips_available, view_metrics

LPIPS_NOTE_WIRED = "LPIPS weights found locally but not wired in"
LPIPS_NOTE_ABSENT = "LPIPS not computed: its network weights are not available locally and recon3d never downloads them"
# the means reported for a set of views (each present when the views report it)
MEAN_KEYS = ("psnr", "ssim", "psnr_black", "psnr_white", "see_through", "psnr_nerfw", "psnr_nerfw_black",
             "psnr_nerfw_white", "psnr_nerfw_grid")


def lpips_note() -> str:
    """Why the LPIPS figure is None."""
    return LPIPS_NOTE_WIRED if lpips_available() else LPIPS_NOTE_ABSENT


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write an H×W×3 image in [0, 1] as an 8-bit PNG, atomically."""
    import numpy as np
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray((image.detach().cpu().numpy() * 255).round().astype(np.uint8)).save(f, format="PNG")


# test-time pose alignment's figures (recon3d/train/pose_align.py computes them; here so that this module need not
# import that one, which measures through measure_view)
ALIGN_KEYS = ("rotation_deg", "translation", "translation_orbit_fraction")
ALIGN_NOTE = ("test-time pose alignment: each held-out camera's pose optimised against the frozen scene (L-BFGS on an "
              "SE(3) correction, photometric MSE on the kept pixels) before measuring, as BARF/NeRF-- evaluate; the "
              "unaligned figures are the headline")


def measure_view(rgb_over_black: torch.Tensor, alpha: torch.Tensor, target: torch.Tensor, *, protocol: str,
                 background: torch.Tensor, target_alpha: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """The figures of one view by ``protocol`` and the image a viewer shows (RGBA data over its background, a
    photo scene over black, where see-through shows)."""
    values = view_metrics(rgb_over_black, alpha, target, protocol=protocol, background=background,
                          target_alpha=target_alpha, mask=mask, nerfw=protocol == PROTOCOL_OPAQUE)
    shown = background.to(rgb_over_black.device) if protocol == PROTOCOL_COMPOSITED else 0.0
    return values, (rgb_over_black + (1 - alpha) * shown).clamp(0, 1)


def aligned_means(per_view: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The means of the views' figures after test-time pose alignment (their ``aligned_poses`` entries)."""
    aligned = [v["aligned_poses"] for v in per_view if isinstance(v.get("aligned_poses"), dict)]

    def mean(key: str) -> float | None:
        found = [a[key] for a in aligned if a.get(key) is not None]
        return sum(found) / len(found) if found else None

    return {**{key: mean(key) for key in MEAN_KEYS + ALIGN_KEYS}, "note": ALIGN_NOTE, "num_views": len(aligned)}


def evaluate_views(indices: Sequence[int], view: Callable[[int], tuple[dict[str, float], torch.Tensor]],
                   image_paths: Sequence[Path], *, protocol: str, renders_dir: Path | None = None,
                   max_renders: int = 0) -> dict[str, Any]:
    """``view(i)`` -> (figures, shown image) for each index; their means, the notes and ``per_view``.

    The first ``max_renders`` shown images go to ``renders_dir/<k>_<image stem>.png``.
    """
    per_view = []
    if renders_dir is not None:
        renders_dir.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(indices):
        with torch.no_grad():
            values, shown = view(i)
        per_view.append({"index": i, "image": str(image_paths[i]), **values})
        if renders_dir is not None and k < max_renders:
            save_png(shown, renders_dir / f"{k:04d}_{Path(image_paths[i]).stem}.png")

    def mean(key: str) -> float | None:
        found = [v[key] for v in per_view if v.get(key) is not None]
        return sum(found) / len(found) if found else None

    result = {**{key: mean(key) for key in MEAN_KEYS}, "protocol": protocol, "protocol_note": PROTOCOL_NOTES[protocol],
              "lpips": None, "lpips_note": lpips_note(), "per_view": per_view}
    if any(isinstance(v.get("aligned_poses"), dict) for v in per_view):  # beside the headline, never instead
        result["aligned_poses"] = aligned_means(per_view)
    return result
