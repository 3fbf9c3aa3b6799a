"""``recon3d export --crop`` and ``--clean``: a known scene with planted floaters, each rule checked by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_export_cli import _scene, run_dir  # noqa: F401  (the fixture: a sphere of Gaussians seen by 12 cameras)

import recon3d
from recon3d.bounds import clean_mask, views_seeing
from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.cli import main
from recon3d.scene import GaussianScene


def _with_floaters(run) -> tuple[GaussianScene, int]:
    """The run's sphere plus planted floaters: 5 far away, and 1 right in front of camera 1."""
    body = _scene()
    far = torch.tensor([[900.0, 0, 0], [0, -2000.0, 30], [50, 40, 3000], [-700, 700, -700], [0, 1200, 0]])
    a = 2 * math.pi * 1 / 12
    eye = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 1.5 * math.sin(3 * a)])
    near = (eye * 0.9)[None]  # 10 % of the way from camera 1 to the centre: inside camera 1's view only
    extra = GaussianScene.from_points(torch.cat([far, near]), torch.full((6, 3), 0.5), scale=0.05, opacity=0.8,
                                      sh_degree=1)  # fmt: skip
    scene = GaussianScene.cat([body, extra])
    recon3d.save_ply(scene, run / "scene.ply")
    return scene, len(body)


def test_views_seeing_counts_the_cameras_that_see_a_point():
    w2c = torch.stack([look_at_world_to_camera([0.0, -4.0, 0.0], [0.0, 0.0, 0.0]),
                       look_at_world_to_camera([0.0, 4.0, 0.0], [0.0, 0.0, 0.0])])  # fmt: skip
    cams = Cameras.from_fov(w2c, 0.8, 40, 30)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, -3.0, 0.0], [5.0, 0.0, 0.0], [0.0, -5.0, 0.0]])
    scene = GaussianScene.from_points(pts, torch.full((4, 3), 0.5))
    # origin: both; in front of camera 0 only (and behind it for nobody else... camera 1 sees it far away);
    # far to the side: none; behind camera 0: camera 1 only
    assert views_seeing(scene, cams).tolist() == [2, 2, 0, 1]


def test_clean_drops_far_floaters_and_what_one_view_sees(run_dir, tmp_path, capsys):  # noqa: F811
    scene, n_body = _with_floaters(run_dir)
    out = tmp_path / "clean.ply"
    assert main(["export", str(run_dir), "--clean", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    # the far ones go; the near one lies within the clean box (the bounds widened by their size) and more
    # than one camera of the ring has it in view, so it stays (the view rule is tested below)
    assert "--clean: dropped 5 of 606 Gaussians" in said and "5 beyond the robust bounds widened by 1× their size" in said, said
    kept = recon3d.load_ply(out)
    assert len(kept) == n_body + 1
    # with no margin the near one (2.7 from the centre, the sphere's bounds reach about 0.9) goes as well
    out0 = tmp_path / "clean0.ply"
    assert main(["export", str(run_dir), "--clean", "--clean-margin", "0", "-o", str(out0)]) == 0
    assert len(recon3d.load_ply(out0)) == n_body
    assert torch.allclose(kept.means[:n_body], scene.means[:n_body])  # the sphere, in order, untouched



def test_clean_drops_what_too_few_views_see_inside_the_bounds():
    """Forward-facing: three cameras side by side look at a wide wall; its far ends are inside the bounds
    but in one camera's view only."""
    w2c = torch.stack([look_at_world_to_camera([x, -3.0, 0.0], [x, 0.0, 0.0]) for x in (-1.0, 0.0, 1.0)])
    cams = Cameras.from_fov(w2c, 0.8, 40, 30)
    xs = torch.linspace(-2.2, 2.2, 45)
    wall = torch.stack([xs, torch.zeros(45), torch.zeros(45)], 1)
    scene = GaussianScene.from_points(wall, torch.full((45, 3), 0.5), scale=0.05)
    seen = views_seeing(scene, cams)
    keep, stats = clean_mask(scene, cams, min_views=2)
    assert stats["outside_bounds"] == 0
    assert stats["seen_by_too_few_views"] == int((seen < 2).sum()) > 0
    assert torch.equal(keep, seen >= 2)
    # one view covers |x − camera x| ≤ 3·tan(0.4) = 1.27 of the wall, so two views see exactly |x| ≤ 1.27
    assert torch.equal(keep, xs.abs() <= 3 * math.tan(0.4))
    assert torch.equal(clean_mask(scene, cams, min_views=0)[0], torch.ones(45, dtype=torch.bool))


def test_crop_keeps_what_lies_in_the_box(run_dir, tmp_path, capsys):  # noqa: F811
    scene, _ = _with_floaters(run_dir)
    out = tmp_path / "crop.ply"
    assert main(["export", str(run_dir), "--crop", "0", "-1", "-1", "1", "1", "1", "-o", str(out)]) == 0
    kept = recon3d.load_ply(out)
    m = scene.means.numpy()
    inside = (m >= [0, -1, -1]).all(1) & (m <= [1, 1, 1]).all(1)
    assert len(kept) == int(inside.sum()) > 100
    np.testing.assert_allclose(kept.means.numpy(), m[inside])
    assert "--crop: kept" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--crop", "1", "0", "0", "0", "1", "1"], "each minimum below its maximum"),
        (["--crop", "5", "5", "5", "6", "6", "6"], "left no Gaussians"),
        (["--clean", "--clean-min-views", "-1"], "--clean-min-views"),
        (["--clean", "--clean-margin", "-1"], "--clean-margin"),
    ],
)
def test_bad_crop_or_clean_is_one_line(run_dir, tmp_path, capsys, argv, needle):  # noqa: F811
    code = main(["export", str(run_dir), *argv, "-o", str(tmp_path / "x.ply")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err
