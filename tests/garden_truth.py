"""The shipped example garden's ground truth, for tests: true cameras, true geometry, frame alignment."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GARDEN = ROOT / "examples" / "garden"


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: scale s, rotation R, translation t minimising |s R src + t - dst|²."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ d @ vt
    s = float(np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean())
    return s, r, mu_d - s * r @ mu_s


def ground_truth(garden: Path = GARDEN) -> tuple[dict[str, np.ndarray], dict]:
    """Image name -> OpenCV camera-to-world from the example's transforms.json (OpenGL camera-to-world)."""
    meta = json.loads((garden / "transforms.json").read_text())
    out = {}
    for f in meta["frames"]:
        c2w = np.array(f["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
        out[f["file_path"].split("/")[-1]] = c2w
    return out, meta


def make_garden_module():
    """``examples/make_garden.py`` as a module (its ``build_scene()`` is the true geometry)."""
    spec = importlib.util.spec_from_file_location("make_garden", ROOT / "examples" / "make_garden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
