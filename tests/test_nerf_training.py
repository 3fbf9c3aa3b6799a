"""``--method nerf`` end to end on the small analytic scene that the splat tests use (recon3d renders it, so
its images are known): the training loss falls and held-out PSNR rises past a threshold, ``metrics.json``
and ``recon3d eval`` agree, ``recon3d render`` draws the field, resume reproduces an uninterrupted run bit for
bit, and the bad-input lines of issue 20 (unknown method, splat-only options, resuming as the other method)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from recon3d.api import check_resumed_method, reconstruct
from recon3d.cli import main
from recon3d.errors import InputError
from recon3d.metrics import psnr
from recon3d.nerf import trainer as nerf_trainer
from recon3d.run import load_run
from recon3d.train.config import METHODS, TrainConfig
from recon3d.train.faults import TrainingInterrupted
from recon3d.train.method import METHOD_TRAINERS, trainer_class
from recon3d.train.synthetic import make_synthetic_data

CENTER, RADIUS = (5.0, -3.0, 2.0), 3.0  # far from the origin and not unit-sized, like the splat tests

# a small field for a 32×32 scene on a shared 2-core machine: 8 levels of 2^14 rows up to 128 cells, short rays.
# The view direction enters the colour at SH degree 1: with degree 3 and 14 training views the colour MLP
# learned the colours as a function of the direction (train views 21-23 dB, held-out 13 dB after 400 steps)
SMALL = ["nerf.levels=8", "nerf.log2_table=14", "nerf.max_resolution=128", "nerf.samples_per_step=8192",
         "nerf.initial_rays=128", "nerf.max_samples=128", "nerf.steps_across=128", "nerf.grid_res=32",
         "nerf.hidden=32", "nerf.dir_degree=1"]
STEPS = 400
VIEWS = 32  # 28 training views, 4 held out


def _train(data, out, steps: int, **kw):
    return reconstruct(data, out, preset="fast", steps=steps, threads=1, quiet=True, method="nerf",
                       assignments=SMALL, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_data(tmp_path_factory.mktemp("data"), num_views=VIEWS, size=32, center=CENTER,
                               radius=RADIUS, backend="reference")  # the dense splat reference: no kernel build


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _, _, start = _train(data, root / "start", 1)
    scene, cameras, metrics = _train(data, root / "run", STEPS)
    return root / "run", scene, metrics, start


def test_registry_names_the_configs_methods():
    assert set(METHOD_TRAINERS) == set(METHODS) == {"gaussians", "nerf"}
    assert trainer_class("nerf") is nerf_trainer.NerfTrainer
    with pytest.raises(InputError, match="gaussians, nerf"):
        trainer_class("mesh")


@pytest.mark.slow
def test_training_loss_falls_and_psnr_passes_the_threshold(trained):
    run_dir, scene, metrics, start = trained
    assert scene is None  # a NeRF run has no splat scene until it is distilled
    assert metrics["method"] == "nerf" and metrics["steps"] == STEPS and metrics["num_test_views"] == 4
    curve = metrics["curve"]
    assert len(curve) >= 50
    first, last = curve[: len(curve) // 10], curve[-len(curve) // 10:]
    assert np.mean([c["loss"] for c in last]) < 0.3 * np.mean([c["loss"] for c in first])
    # held-out views of a smooth coloured sphere over white. The untrained field (1 step) is a grey haze at
    # ~11.5 dB; a field with the right silhouette but the wrong colours scores 13-15 dB (measured: the run whose
    # colours followed the view direction, 13.1 dB); 17.5 dB needs the colour pattern over the surface. This
    # setting measured 19.7 dB (19.4-20.3 per view) after 400 steps, so 17.5 leaves 2 dB for other platforms
    assert start["psnr"] < 14.0
    assert metrics["psnr"] > 17.5 and metrics["psnr"] > start["psnr"] + 5.0, (start["psnr"], metrics["psnr"])
    for name in ("config.yaml", "nerf.pt", "cameras.json", "metrics.json"):
        assert (run_dir / name).is_file()
    assert not (run_dir / "scene.ply").exists()
    assert len(list((run_dir / "renders").glob("*.png"))) == min(4, TrainConfig().run.eval_renders)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["psnr"] == pytest.approx(metrics["psnr"]) and on_disk["protocol"] == "composited"


@pytest.mark.slow
def test_eval_and_load_run_recompute_the_figures_in_the_world_frame(trained, data, tmp_path, capsys):
    run_dir, _, metrics, _ = trained
    run = load_run(run_dir)
    assert run.method == "nerf" and run.scene is None
    # rendering the loaded field with the user's own (world-frame) cameras gives the trainer's figures
    for view in metrics["per_view"]:
        i = view["index"]
        rgb = run.render(data.cameras[i], background=data.background).rgb[0]
        assert psnr(rgb.clamp(0, 1), data.images[i]) == pytest.approx(view["psnr"], abs=0.02)
    assert main(["eval", str(run_dir), "--json", str(tmp_path / "eval.json")]) == 0
    assert "NeRF field" in capsys.readouterr().out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["method"] == "nerf"
    assert result["psnr"] == pytest.approx(metrics["psnr"], abs=0.02)
    assert result["ssim"] == pytest.approx(metrics["ssim"], abs=1e-3)
    # recon3d render draws the field from the first held-out camera (index 0 here)
    out = tmp_path / "view.png"
    assert main(["render", str(run_dir), "-o", str(out), "--width", "32"]) == 0
    image = torch.from_numpy(np.asarray(Image.open(out)).astype(np.float32) / 255)
    assert image.shape == (32, 32, 3)
    assert psnr(image, data.images[0]) == pytest.approx(metrics["per_view"][0]["psnr"], abs=0.2)


@pytest.mark.slow
def test_export_distils_the_trained_field_into_splats(trained, tmp_path):
    run_dir, _, metrics, _ = trained
    assert main(["export", str(run_dir), "-o", str(tmp_path / "x.ply"), "--distill-steps", "600",
                 "--distill-seconds", "1e9"]) == 0
    record = json.loads((run_dir / "distill.json").read_text())
    assert record["steps"] == 600 and record["field"]["psnr"] == metrics["psnr"]
    # the distilled splats on the held-out views, against the data's images: the colour pattern, not just the
    # silhouette (which scores 13-15 dB, see above), and near the field they came from. Measured: 17.15 dB
    # after 600 steps (16.18 after 200) against the field's 19.70: 32×32 views, 28 of them, 12k Gaussians
    assert record["splats"]["psnr"] > 16.0 and record["splats"]["psnr"] > metrics["psnr"] - 3.5, record
    run = load_run(run_dir)
    assert run.method == "nerf" and len(run.scene) == record["gaussians"]


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(data, tmp_path, monkeypatch):
    steps = 40
    _train(data, tmp_path / "whole", steps)
    step = nerf_trainer.NerfTrainer.train_step

    def interrupted(self):
        out = step(self)
        if self.step == 25:  # as Ctrl-C does: the loop saves a checkpoint and stops
            self.interrupt = True
        return out

    monkeypatch.setattr(nerf_trainer.NerfTrainer, "train_step", interrupted)
    with pytest.raises(TrainingInterrupted):
        _train(data, tmp_path / "split", steps)
    monkeypatch.setattr(nerf_trainer.NerfTrainer, "train_step", step)
    assert not (tmp_path / "split" / "nerf.pt").exists()
    _, _, metrics = reconstruct(data, tmp_path / "split", resume=True, quiet=True)  # method from config.yaml
    assert metrics["method"] == "nerf" and metrics["steps"] == steps
    a = torch.load(tmp_path / "whole" / "nerf.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "nerf.pt", weights_only=True)
    for key, value in a["field"].items():
        assert torch.equal(value, b["field"][key]), key
    assert torch.equal(a["grid"]["density"], b["grid"]["density"])
    assert torch.equal(a["grid"]["mask"], b["grid"]["mask"])
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert metrics["psnr"] == whole["psnr"]
    assert [c["loss"] for c in metrics["curve"]] == [c["loss"] for c in whole["curve"]]


def test_unknown_method_and_splat_only_options_give_one_line(tmp_path, capsys):
    base = ["reconstruct", str(tmp_path), "-o", str(tmp_path / "run")]
    for extra, expected in ((["--method", "voxels"], "choose one of gaussians, nerf"),
                            (["--method", "nerf", "--max-gaussians", "1000"], "--max-gaussians applies to Gaussian"),
                            (["--method", "nerf", "--set", "strategy.cap=5"], "--set strategy.cap applies to Gaussian"),
                            (["--method", "nerf", "--export", "spz"], "--export applies to Gaussian")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


def test_resuming_as_the_other_method_is_refused(tmp_path):
    splats = tmp_path / "splats"
    splats.mkdir()
    (splats / "config.yaml").write_text(TrainConfig().to_yaml())
    check_resumed_method(splats, "gaussians")
    with pytest.raises(InputError, match="is a gaussians run and cannot be resumed with --method nerf"):
        check_resumed_method(splats, "nerf")
    field = tmp_path / "field"
    field.mkdir()
    cfg = TrainConfig()
    cfg.run.method = "nerf"
    (field / "config.yaml").write_text(cfg.to_yaml())
    (field / "nerf.pt").write_bytes(b"")
    check_resumed_method(field, "nerf")
    with pytest.raises(InputError, match="is a nerf run and cannot be resumed with --method gaussians"):
        check_resumed_method(field, "gaussians")


def test_occupancy_thresholds_follow_the_marching_step():
    # a cell is empty where one marching step through it stops < 1 % of the light: one density for a box's
    # constant step; per cell for a contracted scene, whose steps grow with distance (cone · distance)
    from recon3d.nerf.field import FieldBounds, OccupancyGrid

    grid = OccupancyGrid(8)
    box = FieldBounds(False, torch.zeros(3), 1.0, 0.0, 1e10, 0.01, 0.01, 0.0)
    assert grid.thresholds(box) == pytest.approx(1.0)
    center, radius = torch.tensor([1.0, 2.0, 3.0]), 2.0
    bounds = FieldBounds(True, center, radius, 0.04, 2000.0, 0.01, 1e10, 1 / 256)
    th = grid.thresholds(bounds)
    assert th.shape == (8**3,)
    for i, j, k in [(4, 4, 4), (0, 4, 4), (7, 7, 7), (0, 0, 0), (6, 1, 3)]:
        z = (torch.tensor([i, j, k], dtype=torch.float64) + 0.5) / 8 * 4 - 2  # the contracted coordinates
        m = float(z.abs().max())
        x = z if m <= 1 else z / (m * (2 - m))  # inverse L∞ contraction: |x|∞ = 1 / (2 − m) outside
        dt = min(max(float((x * radius).norm()) / 256, 0.01), 1e10)
        assert float(th[i + 8 * (j + 8 * k)]) == pytest.approx(0.01 / dt, rel=1e-4)
    assert float(th[0]) < 0.2 * float(th[4 + 8 * (4 + 8 * 4)])  # the far corner (5x the step) keeps a thinner density
