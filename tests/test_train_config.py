"""Presets, overrides (API, --set and named flags), the run directory guard, cameras.json and checkpoints."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
import yaml

from recon3d.cameras import Cameras, look_at_world_to_camera
from recon3d.cli import build_parser
from recon3d.errors import InputError
from recon3d.train import checkpoint as ckpt
from recon3d.train.config import PRESETS, apply_overrides, config_from_yaml, load_preset, resolve_config
from recon3d.train.rundir import prepare_run_dir, read_cameras_json, write_cameras_json


def test_presets_load_and_differ():
    configs = {name: load_preset(name) for name in PRESETS}
    assert configs["fast"].strategy.kind == "mcmc" and configs["fast"].strategy.cap <= 300_000
    assert configs["default"].strategy.kind == "default"
    assert configs["quality"].run.steps >= configs["fast"].run.steps
    for name, cfg in configs.items():
        assert cfg.preset == name


def test_overrides_types_and_errors():
    cfg = apply_overrides(load_preset("fast"), {"steps": 123}, ["lr_means=2e-4", "background=black", "time_budget=2.5",
                                                                "progress=false", "max-gaussians=5000"])
    assert (cfg.run.steps, cfg.optim.lr_means, cfg.data.background, cfg.run.time_budget, cfg.run.progress,
            cfg.strategy.cap) == (123, 2e-4, "black", 2.5, False, 5000)
    with pytest.raises(InputError, match="unknown config key 'stepz'"):
        apply_overrides(cfg, assignments=["stepz=3"])
    with pytest.raises(InputError, match="expects int"):
        apply_overrides(cfg, assignments=["steps=many"])
    with pytest.raises(InputError, match="key=value"):
        apply_overrides(cfg, assignments=["steps"])
    with pytest.raises(InputError, match="background"):
        apply_overrides(cfg, {"background": "pink"})
    with pytest.raises(InputError, match="unknown preset"):
        load_preset("turbo")


def test_config_yaml_round_trip(tmp_path):
    cfg = apply_overrides(load_preset("default"), {"steps": 77, "seed": 5})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert config_from_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("steps: [1, 2\n")
    with pytest.raises(InputError, match="invalid YAML"):
        config_from_yaml(tmp_path / "bad.yaml")


def test_cli_flags_reach_the_config(tmp_path):
    args = build_parser().parse_args([
        "reconstruct", "photos", "-o", str(tmp_path / "run"), "--preset", "fast", "--steps", "50",
        "--time-budget", "3", "--downscale", "2", "--max-gaussians", "1000", "--backend", "reference",
        "--seed", "9", "--background", "random", "--set", "lr_scales=0.01", "--set", "sh_degree=1",
    ])
    from recon3d.commands.reconstruct import _FLAG_KEYS

    overrides = {k: getattr(args, f) for f, k in _FLAG_KEYS.items() if getattr(args, f) is not None}
    cfg = resolve_config(tmp_path, preset=args.preset, overrides=overrides, assignments=args.assignments)
    assert (cfg.run.steps, cfg.run.time_budget, cfg.data.downscale, cfg.strategy.cap, cfg.run.backend, cfg.run.seed,
            cfg.data.background, cfg.optim.lr_scales, cfg.model.sh_degree) == (50, 3.0, 2, 1000, "reference", 9, "random",
                                                                               0.01, 1)


def test_resume_uses_the_saved_config(tmp_path):
    saved = apply_overrides(load_preset("fast"), {"steps": 42, "seed": 3})
    (tmp_path / "config.yaml").write_text(saved.to_yaml())
    cfg = resolve_config(tmp_path, preset="default", resume=True, overrides={"steps": 60})
    assert cfg.preset == "fast" and cfg.run.seed == 3 and cfg.run.steps == 60


def test_run_dir_guard(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run)  # new: fine
    (run / "sfm").mkdir()
    prepare_run_dir(run)  # an SfM cache alone is not a run
    (run / "config.yaml").write_text("steps: 1\n")
    (run / "scene.ply").write_text("x")
    with pytest.raises(InputError, match="already holds a run.*--resume.*--overwrite"):
        prepare_run_dir(run)
    prepare_run_dir(run, resume=True)
    prepare_run_dir(run, overwrite=True)
    assert not (run / "config.yaml").exists() and not (run / "scene.ply").exists() and (run / "sfm").is_dir()
    with pytest.raises(InputError, match="no run to resume"):
        prepare_run_dir(tmp_path / "other", resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        prepare_run_dir(tmp_path / "file")


def test_cameras_json_round_trip_and_bad_input(tmp_path):
    w2c = torch.stack([look_at_world_to_camera((3, 0, 1), (0, 0, 0)), look_at_world_to_camera((0, 3, 1), (0, 0, 0))])
    cams = Cameras(w2c, torch.tensor([50.0, 60.0]), 55.0, 20.0, torch.tensor([16.0, 17.0]), 40, torch.tensor([32, 34]))
    write_cameras_json(tmp_path / "cameras.json", cams, [tmp_path / "a.png", tmp_path / "b.png"], ["train", "test"])
    records = json.loads((tmp_path / "cameras.json").read_text())
    assert set(records[0]) == {"image", "split", "width", "height", "fx", "fy", "cx", "cy", "world_to_camera"}
    back, images, splits = read_cameras_json(tmp_path / "cameras.json")
    assert torch.allclose(back.world_to_camera, cams.world_to_camera) and back.height.tolist() == [32, 34]
    assert splits == ["train", "test"] and images[1] == tmp_path / "b.png"
    records[1]["world_to_camera"][0][0] = float("nan")
    (tmp_path / "bad.json").write_text(json.dumps(records).replace("NaN", "NaN"))
    with pytest.raises(InputError, match="camera 1"):
        read_cameras_json(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        read_cameras_json(tmp_path / "bad2.json")


def _state(value: float) -> dict:
    return {"format": "x", "step": int(value), "params": {"means": torch.full((3, 3), value)}, "rng": torch.Generator().get_state()}


def test_checkpoint_write_failure_leaves_previous_intact(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(directory, 10, _state(1.0))
    real_save = torch.save

    def exploding_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")  # some bytes reach the temporary file, then the disk is "full"
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_checkpoint(directory, 20, _state(2.0))
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in directory.iterdir()] == [first.name]  # no temporary file, no half checkpoint
    state, path = ckpt.load_latest_checkpoint(directory)
    assert path == first and torch.equal(state["params"]["means"], torch.full((3, 3), 1.0))


def test_checkpoint_keeps_newest_and_skips_unreadable(tmp_path):
    directory = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(directory, step, _state(step), keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(directory)] == [2, 3]
    ckpt.checkpoint_path(directory, 4).write_bytes(b"\x00not a checkpoint")
    with pytest.warns(UserWarning, match="not a readable"):
        state, path = ckpt.load_latest_checkpoint(directory)
    assert state["step"] == 3


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "ckpt_00000001.pt"
    torch.save({"payload": _Evil()}, path)
    with pytest.raises(InputError, match="not a readable recon3d checkpoint"):
        ckpt.load_checkpoint(path)


def test_saved_yaml_is_plain(tmp_path):
    data = yaml.safe_load(load_preset("fast").to_yaml())
    assert data["strategy"]["kind"] == "mcmc"


def test_bad_input_fails_early_and_leaves_no_run_behind(tmp_path):
    from recon3d.api import reconstruct
    from recon3d.train.rundir import holds_run

    with pytest.raises(InputError, match="no such file"):
        reconstruct(tmp_path / "missing", tmp_path / "run1")
    assert not (tmp_path / "run1").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no photos here")
    with pytest.raises(InputError):
        reconstruct(tmp_path / "notes", tmp_path / "run2")
    assert not holds_run(tmp_path / "run2")  # so a corrected retry needs no --overwrite


def test_cameras_json_image_paths_survive_another_working_directory(tmp_path, monkeypatch):
    """Paths given relative to the working directory must still point at the image after reading back."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"x")
    run = tmp_path / "runs" / "r"
    (run / "renders").mkdir(parents=True)
    (run / "renders" / "b.png").write_bytes(b"y")
    cams = Cameras(torch.eye(4).expand(2, 4, 4), 50.0, 50.0, 20.0, 16.0, 40, 32)
    write_cameras_json(run / "cameras.json", cams, [Path("data/a.png"), run / "renders" / "b.png"], ["train", "test"])
    records = json.loads((run / "cameras.json").read_text())
    assert records[1]["image"] == "renders/b.png"  # inside the run: relative, so the run can move
    monkeypatch.chdir(run)
    _, images, _ = read_cameras_json(run / "cameras.json")
    assert images[0] == (tmp_path / "data" / "a.png").resolve() and images[0].read_bytes() == b"x"
    assert images[1].read_bytes() == b"y"


def test_dotted_keys_sections_and_strategy_kinds():
    from recon3d.train.strategy import DefaultStrategy, MCMCStrategy

    cfg = apply_overrides(load_preset("fast"), {"run": {"steps": 9}, "optim.lr_quats": 2e-3},
                          ["strategy.cap=200000", "strategy.growth=0.1", "data.background=black"])
    assert (cfg.run.steps, cfg.optim.lr_quats, cfg.strategy.cap, cfg.strategy.growth, cfg.data.background) == (
        9, 2e-3, 200000, 0.1, "black")
    assert isinstance(cfg.strategy, MCMCStrategy)
    # switching the kind keeps the settings both strategies have and gives the others their defaults
    switched = apply_overrides(cfg, assignments=["strategy=default"])
    assert isinstance(switched, type(cfg)) and isinstance(switched.strategy, DefaultStrategy)
    assert switched.strategy.cap == 200000 and switched.strategy.refine_stop == cfg.strategy.refine_stop
    assert switched.strategy.grow_grad2d == DefaultStrategy().grow_grad2d
    assert apply_overrides(cfg, assignments=["strategy.kind=default"]) == switched
    with pytest.raises(InputError, match="unknown config key 'strategy.grow_grad2d'"):
        apply_overrides(cfg, assignments=["strategy.grow_grad2d=1e-3"])  # an MCMC run has no such setting
    with pytest.raises(InputError, match="unknown kind 'adc'"):
        apply_overrides(cfg, {"strategy": "adc"})
    with pytest.raises(InputError, match="strategy.cap must be at least 1"):
        apply_overrides(cfg, assignments=["strategy.cap=0"])


def test_old_flat_keys_name_their_new_key():
    from recon3d.configtree import RenamedConfigKey

    with pytest.warns(RenamedConfigKey, match="'max_gaussians' is now 'strategy.cap'"):
        cfg = apply_overrides(load_preset("fast"), {"max_gaussians": 1234})
    assert cfg.strategy.cap == 1234
    with pytest.warns(RenamedConfigKey, match="'mcmc_growth' is now 'strategy.growth'"):
        assert apply_overrides(cfg, assignments=["mcmc_growth=0.2"]).strategy.growth == 0.2
    with pytest.warns(RenamedConfigKey, match="'prune_opacity' is now 'strategy.min_opacity'"):
        assert apply_overrides(cfg, assignments=["prune_opacity=0.01"]).strategy.min_opacity == 0.01


def test_an_old_flat_run_config_still_resumes(tmp_path):
    """A run saved by the flat config resumes with the same settings (and one warning line)."""
    from recon3d.configtree import RenamedConfigKey

    flat = {"preset": "fast", "downscale": 2, "background": "black", "steps": 7000, "time_budget": None,
            "backend": "auto", "seed": 4, "init": "auto", "sh_degree": 3, "sh_degree_every": 500, "lr_sh0": 0.01,
            "strategy": "mcmc", "max_gaussians": 150000, "refine_start": 200, "refine_stop": 5500,
            "refine_every": 100, "reset_every": 3000, "grow_grad2d": 0.0002, "prune_opacity": 0.005,
            "mcmc_growth": 0.05, "mcmc_noise_lr": 5e5, "checkpoint_every": 500, "progress": True,
            "extra": {"curve_every_s": 60, "curve_views": 5}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(flat))
    with pytest.warns(RenamedConfigKey, match="flat config"):
        cfg = resolve_config(tmp_path, resume=True, overrides={"steps": 60})
    assert (cfg.data.downscale, cfg.data.background, cfg.run.seed, cfg.run.steps, cfg.strategy.kind,
            cfg.strategy.cap, cfg.strategy.refine_start, cfg.optim.lr_sh0, cfg.run.curve_every_s) == (
        2, "black", 4, 60, "mcmc", 150000, 200, 0.01, 60.0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**flat, "turbo": 1}))
    with pytest.raises(InputError, match="config.yaml: unknown config key 'turbo'"):
        resolve_config(tmp_path, resume=True)


def test_every_preset_sets_only_known_keys_and_saves_its_tree(tmp_path):
    for name in PRESETS:
        cfg = load_preset(name)
        data = yaml.safe_load(cfg.to_yaml())
        assert set(data) == {"preset", "data", "model", "optim", "strategy", "run", "nerf"}  # nerf: --method nerf
        (tmp_path / f"{name}.yaml").write_text(cfg.to_yaml())
        assert config_from_yaml(tmp_path / f"{name}.yaml") == cfg
