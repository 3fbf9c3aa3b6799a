"""recon3d.progress: plain timed lines with the true rate when the output is not a terminal, and a piped
reconstruction whose log reads cleanly (no bar redraws, the measured steps/s, one summary)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

from recon3d.progress import Progress, console, track

_LINE = re.compile(r"^(?P<name>[^:]+): (?P<done>[\d,]+)(?:/(?P<total>[\d,]+))? (?P<unit>\w+)"
                   r"(?: \(\d+%\))?(?:, (?P<rate>[\d.]+) (?P=unit)/s)?")


def test_plain_lines_come_every_interval_with_the_true_rate():
    out = io.StringIO()  # not a terminal
    with Progress(stream=out, interval=0.2) as bar:
        task = bar.add_task("training", total=60)
        start = time.monotonic()
        for step in range(60):
            time.sleep(0.01)
            bar.update(task, completed=step + 1, info=f"loss {1 / (step + 1):.3f}")
        elapsed = time.monotonic() - start
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert 2 <= len(lines) <= elapsed / 0.2 + 2, lines
    rates = [float(_LINE.match(line)["rate"]) for line in lines]
    true_rate = 60 / elapsed
    # each line's rate is steps since the previous line over the time since it (sleep 10 ms: ≤ 100 steps/s)
    assert all(0.3 * true_rate < r <= 110 for r in rates), (rates, true_rate)
    assert lines[-1].startswith("training: 60/60 steps (100%)") and "in 0:0" in lines[-1]
    assert sum("60/60" in line for line in lines) == 1  # the end is said once
    assert lines[0].endswith(tuple(f"loss {1 / n:.3f}" for n in range(1, 61)))


def test_disabled_and_interrupted_progress_print_nothing():
    out = io.StringIO()
    with Progress(stream=out, interval=0, enabled=False) as bar:
        bar.advance(bar.add_task("x", total=3), 3)
    assert out.getvalue() == ""
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(stream=out, interval=100) as bar:
        bar.advance(bar.add_task("x", total=3))
        raise KeyboardInterrupt
    assert out.getvalue() == ""


def test_track_yields_everything_and_reports_once(monkeypatch, capsys):
    monkeypatch.setenv("RECON3D_PROGRESS_SECONDS", "100")
    assert list(track(range(5), "frames", unit="frames")) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("frames: 5/5 frames (100%)")


def test_console_does_not_wrap_long_lines_in_a_log():
    out = io.StringIO()
    console(stream=out).print("word " * 60)
    assert out.getvalue().count("\n") == 1


@pytest.mark.slow
def test_a_piped_reconstruction_logs_plain_lines_true_rate_and_one_summary(tmp_path):
    from recon3d.train.synthetic import make_synthetic_data, write_blender

    data = make_synthetic_data(tmp_path / "synthetic", num_views=10, size=40, num_gaussians=200)
    blender = write_blender(data, tmp_path / "blender")
    run = tmp_path / "run"
    env = {**os.environ, "RECON3D_PROGRESS_SECONDS": "2", "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-m", "recon3d.cli", "reconstruct", str(blender), "-o", str(run), "--steps", "600",
         "--backend", "cpu", "--set", "threads=1"],
        capture_output=True, text=True, timeout=900, env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "\r" not in log and "\x1b[" not in log, log[-2000:]  # no bar redraws, no colour codes
    assert "━" not in log and "Loading weights" not in log
    metrics = json.loads((run / "metrics.json").read_text())
    training = [m for m in map(_LINE.match, proc.stderr.splitlines()) if m and m["name"] == "training"]
    assert training, proc.stderr
    assert training[-1]["done"] == f"{metrics['steps']:,}"
    last_rate = float(training[-1]["rate"])  # the whole run's rate, said at the end
    assert 0.7 * metrics["steps_per_second"] <= last_rate <= 1.3 * metrics["steps_per_second"], (
        last_rate, metrics["steps_per_second"])
    summaries = [line for line in log.splitlines() if "Gaussians after" in line]
    assert len(summaries) == 1, log
    assert "held-out PSNR" in summaries[0] and summaries[0].rstrip().endswith("steps/s)")
    assert log.count("result: ") == 1


def test_eval_names_lpips_once_on_its_figures_line(tmp_path, capsys):
    from recon3d.api import reconstruct
    from recon3d.cli import main
    from recon3d.train.synthetic import make_synthetic_data

    data = make_synthetic_data(tmp_path / "data", num_views=8, size=24, num_gaussians=50)
    reconstruct(data, tmp_path / "run", preset="fast", steps=2, quiet=True)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert out.count("LPIPS") == 1 and "LPIPS" in first and "PSNR" in first, out


def test_cli_warnings_are_one_line_and_said_once():
    code = (
        "import warnings\n"
        "from recon3d.data.scene_data import DataWarning, warn\n"
        "from recon3d.progress import configure_warnings\n"
        "configure_warnings()\n"
        "def a(): warn('photos: 2 image(s) could not be registered')\n"
        "def b(): warn('photos: 2 image(s) could not be registered')\n"
        "a(); b(); a()\n"
        "warnings.warn('from a library', RuntimeWarning)\n"
        "warnings.warn('old api', DeprecationWarning, stacklevel=2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "warning: photos: 2 image(s) could not be registered",
        "warning (RuntimeWarning): from a library",
    ], proc.stderr
