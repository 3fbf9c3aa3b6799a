"""End-to-end training on a small analytic scene rendered by recon3d: quality rises, scene.ply is in the
input's world frame, eval agrees, NaN/OOM/time-budget handling and the run-directory guard."""

from __future__ import annotations

import json
import math

import monitor_recorder  # tests/ is on sys.path (rootdir conftest)
import pytest
import torch
from conftest import kernel_backend

from recon3d.api import reconstruct
from recon3d.cli import main
from recon3d.errors import InputError
from recon3d.metrics import psnr
from recon3d.ply import load_ply
from recon3d.render import render
from recon3d.train import method as method_module
from recon3d.train import step as step_module
from recon3d.train import trainer as trainer_module
from recon3d.train.synthetic import make_synthetic_data
from recon3d.train.trainer import OutOfMemory, TrainingDiverged

CENTER, RADIUS = (5.0, -3.0, 2.0), 3.0  # deliberately far from the origin and not unit-sized


backend = kernel_backend


# small, single-threaded (deterministic and fair on a shared machine) runs
SMALL = dict(quiet=True, threads=1, refine_start=40, refine_every=40, refine_stop=250, sh_degree_every=60,
             max_gaussians=800, checkpoint_every=100)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_data(tmp_path_factory.mktemp("data"), num_views=16, size=32, center=CENTER, radius=RADIUS,
                               backend=backend())


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _, _, start = reconstruct(data, root / "start", preset="fast", steps=1, backend=backend(), **SMALL)
    scene, cameras, metrics = reconstruct(data, root / "run", preset="fast", steps=300, backend=backend(), **SMALL)
    return root / "run", scene, cameras, metrics, start


@pytest.mark.slow
def test_training_raises_psnr_well_above_the_start(trained):
    run_dir, scene, _cameras, metrics, start = trained
    assert metrics["steps"] == 300 and metrics["num_test_views"] == 2
    assert metrics["psnr"] > start["psnr"] + 6.0, (start["psnr"], metrics["psnr"])
    assert metrics["psnr"] > 24.0 and metrics["ssim"] > 0.85
    assert len(scene) <= 800
    for name in ("config.yaml", "scene.ply", "cameras.json", "metrics.json"):
        assert (run_dir / name).is_file()
    assert len(list((run_dir / "renders").glob("*.png"))) == 2
    assert list((run_dir / "checkpoints").glob("ckpt_*.pt"))
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    for key in ("psnr", "ssim", "steps", "train_seconds", "num_gaussians", "peak_ram_mb"):
        assert key in on_disk
    assert on_disk["lpips"] is None and "not available locally" in on_disk["lpips_note"]


@pytest.mark.slow
def test_scene_ply_is_in_the_input_world_frame(trained, data):
    run_dir, _scene, _cameras, metrics, _ = trained
    scene = load_ply(run_dir / "scene.ply")
    # rendering the exported scene with the user's own cameras reproduces the held-out figures exactly
    for view in metrics["per_view"]:
        i = view["index"]
        with torch.no_grad():
            rgb = render(scene, data.cameras[i], background=data.background, backend=backend()).rgb[0]
        assert psnr(rgb.clamp(0, 1), data.images[i]) == pytest.approx(view["psnr"], abs=0.02)
    # and the opaque Gaussians sit on the true sphere (centre (5,-3,2), radius 3), in world units
    keep = torch.sigmoid(scene.opacities) > 0.3
    dist = (scene.means[keep] - torch.tensor(CENTER)).norm(dim=-1)
    assert keep.sum() > 50
    assert abs(float(dist.median()) - RADIUS) < 0.15 * RADIUS


@pytest.mark.slow
def test_eval_command_recomputes_the_figures(trained, capsys):
    run_dir, _scene, _cameras, metrics, _ = trained
    assert main(["eval", str(run_dir), "--backend", backend(), "--json", str(run_dir / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "LPIPS" in out
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["psnr"] == pytest.approx(metrics["psnr"], abs=0.02)
    assert result["ssim"] == pytest.approx(metrics["ssim"], abs=1e-3)


@pytest.mark.slow
def test_load_run_and_refusal_of_existing_run(trained, data):
    run_dir, scene, _cameras, _metrics, _ = trained
    from recon3d import load_run

    run = load_run(run_dir)
    loaded, cameras, images, splits = run.scene, run.cameras, run.image_paths, run.splits
    assert torch.allclose(loaded.means, scene.means) and len(cameras) == 16 and splits.count("test") == 2
    assert all(p.is_file() for p in images)
    with pytest.raises(InputError, match="already holds a run"):
        reconstruct(data, run_dir)


@pytest.mark.slow
def test_antialiased_training_matches_the_classic_mode(trained, data, tmp_path):
    # the anti-aliased mode trains as well as the classic one at equal steps (a loaded lego benchmark once
    # suggested otherwise: it had run 134 vs 304 steps), and its scene.ply renders back in that mode
    _run_dir, _scene, _cameras, classic, _ = trained
    run = tmp_path / "aa"
    _, _, metrics = reconstruct(data, run, preset="fast", steps=300, backend=backend(), antialiased=True, **SMALL)
    assert metrics["steps"] == 300
    assert metrics["psnr"] > 24.0 and metrics["psnr"] > classic["psnr"] - 1.0, (classic["psnr"], metrics["psnr"])
    from recon3d.ply import ply_antialiased

    assert ply_antialiased(run / "scene.ply")
    scene = load_ply(run / "scene.ply")
    view = metrics["per_view"][0]
    with torch.no_grad():
        rgb = render(scene, data.cameras[view["index"]], background=data.background, backend=backend(),
                     antialiased=True).rgb[0]
    assert psnr(rgb.clamp(0, 1), data.images[view["index"]]) == pytest.approx(view["psnr"], abs=0.02)


@pytest.mark.slow
def test_default_strategy_trains(data, tmp_path):
    _, _, metrics = reconstruct(data, tmp_path / "run", preset="default", steps=200, backend=backend(),
                                **{**SMALL, "reset_every": 1000, "lr_sh0": 0.01})
    assert metrics["strategy"] == "default"
    assert metrics["psnr"] > 22.0
    assert metrics["num_gaussians"] != 300  # densification changed the count


def test_nan_loss_restores_last_good_state_and_lowers_lr(data, tmp_path, monkeypatch):
    real = step_module.image_loss
    calls = {"n": 0}

    def flaky(rendered, target, weight):
        calls["n"] += 1
        loss = real(rendered, target, weight)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(step_module, "image_loss", flaky)
    scene, _, metrics = reconstruct(data, tmp_path / "run", preset="fast", steps=12, backend=backend(), **SMALL)
    assert metrics["nan_events"] == 1 and metrics["steps"] == 12
    assert scene.is_finite() and load_ply(tmp_path / "run" / "scene.ply").is_finite()


def test_persistent_nan_stops_clearly_without_writing_a_scene(data, tmp_path, monkeypatch):
    real = step_module.image_loss
    calls = {"n": 0}

    def broken(rendered, target, weight):
        calls["n"] += 1
        loss = real(rendered, target, weight)
        return loss * float("inf") if calls["n"] >= 5 else loss

    monkeypatch.setattr(step_module, "image_loss", broken)
    with pytest.raises(TrainingDiverged, match="diverged.*lower learning rates"):
        reconstruct(data, tmp_path / "run", preset="fast", steps=50, backend=backend(), **SMALL)
    assert not (tmp_path / "run" / "scene.ply").exists()


def test_nan_parameters_are_caught_within_the_step(data, tmp_path, monkeypatch):
    from recon3d.train.optim import GaussianAdam

    real_step = GaussianAdam.step
    calls = {"n": 0}

    def poisoned(self, lr_scale=1.0):
        real_step(self, lr_scale)
        calls["n"] += 1
        if calls["n"] == 6:
            with torch.no_grad():
                self.params["scales"][0, 0] = math.nan

    monkeypatch.setattr(GaussianAdam, "step", poisoned)
    scene, _, metrics = reconstruct(data, tmp_path / "run", preset="fast", steps=10, backend=backend(), **SMALL)
    assert metrics["nan_events"] == 1 and scene.is_finite()


def test_out_of_memory_gives_a_clear_message(data, tmp_path, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 123456789 bytes.")

    monkeypatch.setattr(method_module, "render", no_memory)
    with pytest.raises(OutOfMemory, match="--downscale 2.*--max-gaussians"):
        reconstruct(data, tmp_path / "run", preset="fast", steps=5, backend=backend(), **SMALL)


def test_time_budget_stops_training_and_scales_schedules(data, tmp_path):
    budget_min = 0.12  # 7.2 s including loading and evaluation
    _, _, metrics = reconstruct(data, tmp_path / "run", preset="fast", steps=100_000, time_budget=budget_min,
                                backend=backend(), **SMALL)
    assert 20 < metrics["steps"] < 100_000
    assert metrics["total_seconds"] <= budget_min * 60 + 3.0
    assert (tmp_path / "run" / "scene.ply").is_file()


def test_time_budget_is_used_even_when_the_first_steps_overestimate_the_step_time(data, tmp_path, monkeypatch):
    """Slow first steps (a kernel build, large early Gaussians) made the step-20 estimate end the run early."""
    import time

    real = trainer_module.Trainer._train_step
    calls = {"n": 0}

    def slow_start(self):
        calls["n"] += 1
        if calls["n"] <= 3:
            time.sleep(1.0)  # the step-time average at step 20 is then far above the real step time
        return real(self)

    monkeypatch.setattr(trainer_module.Trainer, "_train_step", slow_start)
    budget_min = 0.15  # 9 s including loading and evaluation
    _, _, metrics = reconstruct(data, tmp_path / "run", preset="fast", steps=100_000, time_budget=budget_min,
                                backend=backend(), **SMALL)
    reserve = min(0.1 * budget_min * 60, 5.0 + 0.5 * metrics["num_test_views"])
    # training went on until the budget (less the evaluation reserve) was spent, not to the step-20 estimate
    assert metrics["train_seconds"] >= budget_min * 60 - reserve - 2.5, metrics["train_seconds"]
    assert metrics["total_seconds"] <= budget_min * 60 + 3.0


@pytest.mark.slow
def test_render_orbit_of_a_run_uses_its_cameras(trained, data, tmp_path):
    from recon3d.commands.render import run_orbit_cameras

    run_dir = trained[0]
    orbit = run_orbit_cameras(data.cameras, 8, 32, 32)
    centers = orbit.centers()
    dist = (centers - torch.tensor(CENTER)).norm(dim=-1)
    # the run's cameras are 4 radii away at elevations +20° and −10°: the orbit keeps that distance and height
    assert torch.allclose(dist, dist[0]) and 4.0 * RADIUS * math.cos(math.radians(20)) - 1e-3 <= dist[0] <= 4.0 * RADIUS
    forward = orbit.camera_to_world()[:, :3, 2]
    to_center = torch.nn.functional.normalize(torch.tensor(CENTER) - centers, dim=-1)
    assert ((forward * to_center).sum(-1) > 0.999).all()
    out = tmp_path / "orbit.mp4"
    assert main(["render", str(run_dir), "--orbit", "-o", str(out), "--frames", "4", "--width", "32", "--height", "32",
                 "--backend", backend()]) == 0
    assert out.stat().st_size > 0


def test_training_monitor_protocol(data, tmp_path):
    from recon3d.train.checkpoint import list_checkpoints
    from recon3d.train.monitor import TrainingMonitor

    monitor = monitor_recorder.Recorder()
    assert isinstance(monitor, TrainingMonitor)
    reconstruct(data, tmp_path / "run", preset="fast", steps=6, backend=backend(), monitor=monitor,
                **{**SMALL, "checkpoint_every": 1000})
    assert monitor.steps == [1, 2, 3, 4, 5, 6] and monitor.closed and not monitor.pause_answers
    scene, metrics = monitor.last
    assert {"loss", "psnr", "num_gaussians", "steps_per_second"} <= set(metrics)
    # the monitor sees the scene in the input's world frame (the sphere around CENTER), not the training frame
    assert (scene.means.mean(0) - torch.tensor(CENTER)).norm() < RADIUS
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3, 6]  # the asked-for save, the final


def test_viewer_flag_builds_the_training_viewer_lazily(data, tmp_path, monkeypatch):
    import recon3d.viewer.training as training_viewer

    made = {}

    class FakeViewer:
        def __init__(self, scene_data, host="127.0.0.1", port=8080):
            made.update(data=scene_data, host=host, port=port, steps=0)

        def on_step(self, step, scene, metrics):
            made["steps"] += 1

        def paused(self):
            return False

        def take_save_request(self):
            return False

        def close(self):
            made["closed"] = True

    monkeypatch.setattr(training_viewer, "TrainingViewer", FakeViewer)
    reconstruct(data, tmp_path / "run", preset="fast", steps=2, backend=backend(), viewer=True, port=8123, **SMALL)
    assert made["data"] is data and made["host"] == "127.0.0.1" and made["port"] == 8123
    assert made["steps"] == 2 and made["closed"]
