"""``recon3d render`` without a camera frames the whole scene (robust bounds), as the viewer's first screen."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from test_viewer_app import write_run_dir  # tests/ is on sys.path (rootdir conftest)

from recon3d.cli import main
from recon3d.ply import save_ply
from recon3d.render import render
from recon3d.scene import GaussianScene
from recon3d.train.rundir import read_cameras_json


def generated_like_scene() -> GaussianScene:
    """A red cube on a blue sphere, a few hundred Gaussians, no floaters (as the generator makes them)."""
    g = torch.Generator().manual_seed(0)
    cube = (torch.rand(300, 3, generator=g) - 0.5) * 0.6 + torch.tensor([0.0, 0.0, 0.9])
    sph = torch.randn(300, 3, generator=g)
    sph = sph / sph.norm(dim=1, keepdim=True) * 0.4 + torch.tensor([0.0, 0.0, 0.3])
    return GaussianScene.cat([
        GaussianScene.from_points(cube, torch.tensor([0.9, 0.1, 0.1]).expand(300, 3), scale=0.04, opacity=0.95),
        GaussianScene.from_points(sph, torch.tensor([0.1, 0.2, 0.9]).expand(300, 3), scale=0.04, opacity=0.95),
    ])  # fmt: skip


def _foreground(path) -> np.ndarray:
    img = np.asarray(Image.open(path), dtype=np.float64) / 255.0
    return np.abs(img).max(axis=-1) > 0.05  # rendered over black


def _check_framed(mask: np.ndarray) -> None:
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert not border.any(), "the scene touches the image border: cropped"
    assert mask.mean() > 0.05, "the scene is a dot"


def test_render_a_generated_scene_is_not_cropped(tmp_path):
    scene = generated_like_scene()
    save_ply(scene, tmp_path / "gen.ply")
    for w, h in ((96, 64), (64, 96)):
        out = tmp_path / f"x{w}.png"
        assert main(["render", str(tmp_path / "gen.ply"), "-o", str(out), "--width", str(w), "--height", str(h),
                     "--background", "0", "0", "0", "--backend", "reference"]) == 0  # fmt: skip
        _check_framed(_foreground(out))


def test_render_ignores_far_floaters(tmp_path):
    scene = generated_like_scene()
    far = torch.tensor([[2500.0, -800.0, 300.0], [-4000.0, 100.0, -900.0], [10.0, 9000.0, 5.0]])
    floaters = GaussianScene.from_points(far, torch.full((3, 3), 0.5), scale=20.0, opacity=0.5)
    save_ply(GaussianScene.cat([scene, floaters]), tmp_path / "f.ply")
    out = tmp_path / "f.png"
    assert main(["render", str(tmp_path / "f.ply"), "-o", str(out), "--width", "80", "--height", "60",
                 "--background", "0", "0", "0", "--backend", "reference"]) == 0  # fmt: skip
    _check_framed(_foreground(out))


def test_render_a_run_frames_it_from_a_training_camera_and_renders_a_given_camera(tmp_path):
    scene = generated_like_scene()
    run = write_run_dir(tmp_path / "run", scene, num_cams=4)
    out = tmp_path / "run.png"
    assert main(["render", str(run), "-o", str(out), "--width", "80", "--height", "60",
                 "--background", "0", "0", "0", "--backend", "reference"]) == 0  # fmt: skip
    _check_framed(_foreground(out))
    # --camera N: exactly the run's camera N
    cams, _, _ = read_cameras_json(run / "cameras.json")
    out = tmp_path / "cam2.png"
    assert main(["render", str(run), "-o", str(out), "--camera", "2", "--width", "80",
                 "--background", "0", "0", "0", "--backend", "reference"]) == 0  # fmt: skip
    ours = np.asarray(Image.open(out))
    ref = render(scene, cams[2], background=torch.zeros(3), backend="reference").rgb[0]
    ref = (ref.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    assert ours.shape == ref.shape == (60, 80, 3)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_render_bad_camera_index_is_one_line(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", generated_like_scene(), num_cams=2)
    assert main(["render", str(run), "-o", str(tmp_path / "x.png"), "--camera", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no camera 7" in err[0]


def test_turntable_orbit_keeps_the_scene_in_view():
    from recon3d.commands.render import orbit_cameras

    scene = generated_like_scene()
    cams = orbit_cameras(scene, 4, 64, 48)
    for i in range(4):
        a = render(scene, cams[i], background=torch.zeros(3), backend="reference").alpha[0, ..., 0].numpy()
        _check_framed(a > 0.05)
    assert math.isfinite(float(cams.world_to_camera.sum()))
