"""A run that fails before writing anything worth keeping leaves no folder behind; a folder that existed before
is left as it was (with --overwrite, the previous run comes back); a run that got as far as a checkpoint or
an SfM model keeps its folder for --resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recon3d.api import reconstruct
from recon3d.errors import BuildError, InputError
from recon3d.train.rundir import run_dir_guard


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_missing_input_leaves_no_folder_nor_parent(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        reconstruct(tmp_path / "missing", tmp_path / "runs" / "x")
    assert not (tmp_path / "runs").exists()


def test_the_cli_exits_2_and_leaves_no_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "recon3d.cli", "reconstruct", str(tmp_path / "missing"), "-o",
                           str(tmp_path / "runs" / "x")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "missing" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_photo_folder_that_fails_after_writing_sfm_files_leaves_no_folder(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):  # readable files of which too few are images for SfM: it fails after preparing sfm/
        Image.new("RGB", (32, 24), (i * 40, 0, 0)).save(photos / f"{i}.png")
    (photos / "notes.txt").write_text("not a photo")
    with pytest.raises(InputError):
        reconstruct(photos, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_bad_video_leaves_no_folder(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42 but not really a video" * 10)
    with pytest.raises(InputError):
        reconstruct(clip, tmp_path / "runs" / "vid")
    assert not (tmp_path / "runs").exists()


def test_a_kernel_build_failure_leaves_no_folder(tmp_path, monkeypatch):
    from recon3d.backends import kernels
    from recon3d.train.synthetic import make_synthetic_data

    data = make_synthetic_data(tmp_path / "data", num_views=8, size=24, num_gaussians=50)

    def broken(with_cuda: bool = False):
        raise BuildError("building the recon3d kernels in /x failed: error: no compiler today")

    monkeypatch.setattr(kernels, "load_kernels", broken)
    with pytest.raises(BuildError, match="no compiler today"):
        reconstruct(data, tmp_path / "run", preset="fast", steps=5, backend="cpu", quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_folder_that_existed_is_left_as_it_was(tmp_path, monkeypatch):
    from recon3d.backends import kernels
    from recon3d.train.synthetic import make_synthetic_data

    data = make_synthetic_data(tmp_path / "data", num_views=8, size=24, num_gaussians=50)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    monkeypatch.setattr(kernels, "load_kernels", lambda with_cuda=False: (_ for _ in ()).throw(BuildError("x")))
    with pytest.raises(BuildError):
        reconstruct(data, run, preset="fast", steps=5, backend="cpu", quiet=True)
    assert _tree(run) == {"notes.txt": b"mine"}


def test_overwrite_that_fails_brings_the_previous_run_back(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt_10.pt").write_bytes(b"old checkpoint")
    (run / "config.yaml").write_text("old: 1\n")
    (run / "scene.ply").write_bytes(b"old scene")
    (run / "sfm").mkdir()
    (run / "sfm" / "manifest.json").write_text("{}")
    before = _tree(run)
    with pytest.raises(InputError):
        reconstruct(tmp_path / "notes-not-here", run, overwrite=True)
    assert _tree(run) == before
    # and when the failure comes after the new run wrote its config
    with pytest.raises(RuntimeError, match="late"), run_dir_guard(run, overwrite=True):
        assert not (run / "scene.ply").exists()  # parked while the new run runs
        (run / "config.yaml").write_text("new: 2\n")
        (run / "renders").mkdir()
        raise RuntimeError("late failure")
    assert _tree(run) == before


def test_a_run_with_a_checkpoint_or_an_sfm_model_keeps_its_folder(tmp_path):
    for name, rel in (("ckpt", "checkpoints/ckpt_5.pt"), ("sfm", "sfm/sparse/0/images.bin")):
        run = tmp_path / name
        with pytest.raises(KeyboardInterrupt), run_dir_guard(run):
            run.mkdir()
            (run / rel).parent.mkdir(parents=True)
            (run / rel).write_bytes(b"x")
            (run / "config.yaml").write_text("a: 1\n")
            raise KeyboardInterrupt
        assert (run / rel).is_file() and (run / "config.yaml").is_file()


def test_resume_never_parks_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("a: 1\n")
    with run_dir_guard(run, overwrite=True, resume=True):
        assert (run / "config.yaml").is_file()
    assert os.listdir(run) == ["config.yaml"]
