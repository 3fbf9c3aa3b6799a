"""``recon3d export`` end to end on a run directory made per the trainer's contract (scene.ply + cameras.json)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recon3d
from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.cli import main
from recon3d.exporters import load_splat
from recon3d.ply import read_ply_vertices
from recon3d.scene import GaussianScene


def _scene() -> GaussianScene:
    """600 flat Gaussians on a sphere of radius 0.8, red on top, blue below."""
    n = 600
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * k
    normals = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1).float()
    colors = torch.stack([(normals[:, 2] + 1) / 2, 0.3 * torch.ones(n), 1 - (normals[:, 2] + 1) / 2], 1)
    scene = GaussianScene.from_points(0.8 * normals, colors, scale=0.8 * 0.1, opacity=0.95, sh_degree=1)
    # flat: local z turned onto the normal, and squashed
    q = torch.stack([1 + normals[:, 2], -normals[:, 1], normals[:, 0], torch.zeros(n)], 1)
    scene.quats = q / q.norm(dim=1, keepdim=True)
    scene.scales[:, 2] = math.log(0.002)
    return scene


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    recon3d.save_ply(_scene(), run / "scene.ply")
    records = []
    for i in range(12):
        a = 2 * math.pi * i / 12
        eye = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 1.5 * math.sin(3 * a)])
        w2c = look_at_world_to_camera(eye, (0.0, 0.0, 0.0))
        cam = Cameras.from_fov(w2c, 0.8, 48, 40)
        Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(run / "images" / f"{i:02d}.png")
        records.append({
            "image": f"images/{i:02d}.png",
            "split": "test" if i % 4 == 0 else "train",
            "width": 48,
            "height": 40,
            "fx": float(cam.fx[0]),
            "fy": float(cam.fy[0]),
            "cx": float(cam.cx[0]),
            "cy": float(cam.cy[0]),
            "world_to_camera": w2c.double().tolist(),
        })  # fmt: skip
    (run / "cameras.json").write_text(json.dumps(records))
    return run


def _ok(argv: list[str], capsys) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_cli_ply_splat_points(run_dir, tmp_path, capsys):
    scene = recon3d.load_ply(run_dir / "scene.ply")
    out = _ok(["export", str(run_dir), "-f", "ply", "-o", str(tmp_path / "o.ply")], capsys)
    assert "wrote" in out and "600 Gaussians" in out
    back = recon3d.load_ply(tmp_path / "o.ply")
    assert all(torch.equal(getattr(back, k), v) for k, v in scene.as_dict().items())
    _ok(["export", str(run_dir), "-o", str(tmp_path / "o.splat")], capsys)
    assert len(load_splat(tmp_path / "o.splat")) == 600
    _ok(
        ["export", str(run_dir / "scene.ply"), "-f", "points", "--min-opacity", "0.5", "-o", str(tmp_path / "p.ply")],
        capsys,
    )
    assert read_ply_vertices(tmp_path / "p.ply")["red"].dtype == np.uint8


def test_cli_nerfstudio(run_dir, tmp_path, capsys):
    out = _ok(["export", str(run_dir), "--format", "nerfstudio", "-o", str(tmp_path / "ns")], capsys)
    assert "12 cameras" in out
    meta = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    assert len(meta["frames"]) == 12 and len(meta["test_filenames"]) == 3
    assert all((tmp_path / "ns" / f["file_path"]).is_file() for f in meta["frames"])


@pytest.mark.slow
def test_cli_mesh_from_run_cameras(run_dir, tmp_path, capsys):
    import trimesh

    out = _ok(
        # 12 coarse (48-pixel) views of a clean sphere: the default multi-view check (2 agreeing neighbours
        # within 1 % of depth) keeps only 421 of its 11,374 triangles, and with 1 it still loses the poles,
        # so this test of the CLI path switches it off (which also tests the flag).
        ["export", str(run_dir), "-o", str(tmp_path / "m.obj"), "--resolution", "48", "--image-size", "48"]
        + ["--consistent-views", "0"],
        capsys,
    )
    assert "training cameras" in out and "triangles" in out
    mesh = trimesh.load(tmp_path / "m.obj", force="mesh")
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert len(mesh.faces) > 500 and abs(np.median(radius) - 0.8) < 0.05
    colors = mesh.visual.vertex_colors[:, :3].astype(float) / 255
    top = mesh.vertices[:, 2] > 0.6
    bottom = mesh.vertices[:, 2] < -0.6
    assert colors[top, 0].mean() > 0.8 and colors[bottom, 2].mean() > 0.8  # red on top, blue below


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["export", "{tmp}/nothing", "-o", "{tmp}/x.ply"], "no such file"),
        (["export", "{tmp}", "-o", "{tmp}/x.ply"], "no scene.ply"),
        (["export", "{run}", "-o", "{tmp}/x.xyz"], "cannot tell the export format"),
        (["export", "{run}", "-f", "mesh", "-o", "{tmp}/x.stl"], "a mesh is written as"),
        (["export", "{run}", "-f", "mesh", "--alpha-threshold", "2", "-o", "{tmp}/x.glb"], "--alpha-threshold"),
        (["export", "{run}", "-f", "mesh", "--min-parallax", "90", "-o", "{tmp}/x.glb"], "--min-parallax"),
        (["export", "{run}", "-f", "mesh", "--fill-reach", "-1", "-o", "{tmp}/x.glb"], "--fill-reach"),
        (["export", "{run}/scene.ply", "-f", "nerfstudio", "-o", "{tmp}/ns"], "needs the training cameras"),
        (["export", "{run}/images/00.png", "-o", "{tmp}/x.splat"], "not a PLY"),
        (["export", "{run}", "-f", "splat", "-o", "{run}/images"], "the splat export writes a .splat"),
        (["export", "{run}", "-f", "nerfstudio", "-o", "{run}/cameras.json"], "writes a folder"),
    ],
)
def test_cli_bad_input_is_one_line(run_dir, tmp_path, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path / "empty", run=run_dir) for a in argv]
    (tmp_path / "empty").mkdir()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and needle in err, err


def test_cli_bad_cameras_json(run_dir, tmp_path, capsys):
    (run_dir / "cameras.json").write_text("[{broken")
    code = main(["export", str(run_dir), "-f", "nerfstudio", "-o", str(tmp_path / "ns")])
    err = capsys.readouterr().err
    assert code == 2 and "cameras.json" in err and err.count("\n") == 1


def test_console_entry_point(run_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "recon3d.cli", "export", str(run_dir), "-o", str(tmp_path / "e.splat")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "e.splat").stat().st_size == 600 * 32
