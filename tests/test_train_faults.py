"""Faults in real processes: `kill -9` then --resume retraces the uninterrupted run bit for bit, and Ctrl-C
(SIGINT) saves a checkpoint and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import kernel_backend

from recon3d.train.checkpoint import list_checkpoints, load_checkpoint

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from recon3d.train import step as trainer
    from recon3d.api import reconstruct
    from recon3d.train.synthetic import make_synthetic_data

    data_dir, run_dir, resume, delay, backend = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4]), sys.argv[5]
    real = trainer.image_loss

    def slowed(*args):
        time.sleep(delay)  # give the parent time to kill us mid-run
        return real(*args)

    trainer.image_loss = slowed
    data = make_synthetic_data(data_dir, num_views=16, size=24, center=(1.0, 2.0, -1.0), radius=2.0, backend=backend)
    reconstruct(data, run_dir, resume=resume, preset="fast", steps=60, backend=backend, quiet=True, threads=1,
                seed=3, checkpoint_every=10, refine_start=5, refine_every=10, max_gaussians=400, keep_checkpoints=10)
    """
)


_backend = kernel_backend


def _run(script: Path, data: Path, run: Path, resume: bool, delay: float, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen([sys.executable, str(script), str(data), str(run), "1" if resume else "0", str(delay),
                             _backend()], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
def test_resume_after_kill_9_is_bit_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    # uninterrupted reference run
    proc = _run(script, tmp_path / "data_a", tmp_path / "a", False, 0.0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    # the same run, killed with SIGKILL once it has passed step 20, then resumed
    proc = _run(script, tmp_path / "data_b", tmp_path / "b", False, 0.05)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        steps = [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")]
        if steps and max(steps) >= 20:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints"))
    assert 20 <= killed_at < 60 and not (tmp_path / "b" / "scene.ply").exists()
    proc = _run(script, tmp_path / "data_b", tmp_path / "b", True, 0.0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]

    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "ckpt_00000060.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "ckpt_00000060.pt")
    assert a["step"] == b["step"] == 60
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
        assert torch.equal(a["optimizer"]["exp_avg"][name], b["optimizer"]["exp_avg"][name]), name
    assert torch.equal(a["rng_cpu"], b["rng_cpu"])
    assert (tmp_path / "a" / "scene.ply").read_bytes() == (tmp_path / "b" / "scene.ply").read_bytes()


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    from recon3d.train.synthetic import make_synthetic_data, write_blender

    data = make_synthetic_data(tmp_path / "synthetic", num_views=16, size=24, backend=_backend())
    blender = write_blender(data, tmp_path / "blender")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "recon3d.cli", "reconstruct", str(blender), "-o", str(run)]
    options = ["--preset", "fast", "--backend", _backend(), "--quiet", "--set", "threads=1", "--set", "checkpoint_every=20"]
    cmd = base + options + ["--steps", "100000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list_checkpoints(run / "checkpoints"):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err_text = err.decode()
    assert proc.returncode == 130, err_text[-2000:]
    assert "checkpoint saved" in err_text and "--resume" in err_text
    assert "Traceback" not in err_text
    assert not (run / "scene.ply").exists()
    step, path = list_checkpoints(run / "checkpoints")[-1]
    state = load_checkpoint(path)
    assert state["step"] == step >= 20
    # --resume continues from there to the (overridden) end and writes the outputs
    done = subprocess.run(base + ["--steps", str(step + 5), "--quiet", "--resume"], env=env,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert (run / "scene.ply").is_file() and (run / "metrics.json").is_file()
    # and a fresh run into the same directory is refused with one line
    refused = subprocess.run(base, env=env, capture_output=True, timeout=120)
    assert refused.returncode != 0
    assert "already holds a run" in refused.stderr.decode() and "Traceback" not in refused.stderr.decode()
