"""The README's Python API example on the demo garden shows it upright: ground at the bottom of the picture.

The demo reconstructs the bare photo folder (structure from motion, an arbitrary frame), which
``recon3d.data.orient`` turns upright. The README then renders ``look_at(eye=(0, -4, 2), target=(0, 0, 0.3))``.
The garden is known (``examples/make_garden.py``): a red brick wall rings a band of green grass around grey
paving with the objects. Upright, the picture shows the wall at the top, the grass below it, level across the
picture (no roll), and the ground filling the bottom; a scene on its side, tilted or upside down does not.
The check reads colours row by row, which a short training run already gets right (its depth is still hazy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import recon3d

pytestmark = pytest.mark.slow


def test_readme_example_view_of_the_demo_garden_is_upright(project_root, tmp_path):
    run = tmp_path / "demo"
    recon3d.reconstruct(project_root / "examples" / "garden" / "images", run, steps=400, quiet=True,
                        eval_renders=0)  # fmt: skip
    assert (run / "orientation.json").is_file()

    # the README's lines, verbatim but for the path
    scene = recon3d.load_ply(run / "scene.ply")
    cams = recon3d.Cameras.look_at(eye=(0, -4, 2), target=(0, 0, 0.3), width=400, height=300)
    out = recon3d.render(scene, cams, background=torch.ones(3), sh_degree=None, backend="auto")

    rgb = out.rgb[0].clamp(0, 1).numpy().astype(np.float64)
    alpha = out.alpha[0, ..., 0].numpy()
    assert upright_problems(rgb, alpha) == []
    # controls: the same picture upside down, or turned by 90°, fails the check
    assert upright_problems(rgb[::-1], alpha[::-1])
    assert upright_problems(np.rot90(rgb)[:300], np.rot90(alpha)[:300])


def upright_problems(rgb: np.ndarray, alpha: np.ndarray) -> list[str]:
    """What is wrong with a view of the garden that should be upright (empty when nothing is)."""
    h, w = alpha.shape
    red = rgb[..., 0] - rgb[..., 1]  # brick
    green = rgb[..., 1] - np.maximum(rgb[..., 0], rgb[..., 2])  # grass
    top, bottom = slice(0, int(0.15 * h)), slice(h // 2, h)
    problems = []
    # the wall at the top: redder than the ground in the bottom half
    if not (red[top].mean() > 0.05 and red[top].mean() > red[bottom].mean() + 0.05):
        problems.append("no wall at the top")
    # the grass band between wall and ground, at the same height on the left and on the right (level)
    # (the band's centroid in the upper 70 % of each half: a roll of 5° moves one half's band 17 rows against
    # the other's; the garden's own asymmetry moves it by up to about 9)
    rows = []
    for half in (slice(0, w // 2), slice(w // 2, w)):
        g = np.clip(green[: int(0.7 * h), half].mean(1), 0.0, None)
        if g.max() <= 0.03:
            problems.append("no grass band")
            rows.append(-1)
            continue
        rows.append(int(round(float((g * np.arange(len(g))).sum() / g.sum()))))
    if not all(0.15 * h <= r <= 0.6 * h for r in rows):
        problems.append(f"the grass band is not between wall and ground: rows {rows}")
    if abs(rows[0] - rows[1]) >= 0.06 * h:
        problems.append(f"the horizon is tilted: grass at rows {rows}")
    # and the ground fills the bottom of the picture
    if alpha[bottom].mean() <= 0.9:
        problems.append(f"the bottom of the picture is not covered (mean alpha {alpha[bottom].mean():.2f}): "
                        "the scene is not below the camera")
    return problems
