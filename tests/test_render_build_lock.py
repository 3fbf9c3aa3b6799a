"""A kernel build killed half-way (Ctrl-C, OOM) leaves torch's lock file behind; the next load must not wait for
it forever. The test copies the built kernels into a fresh cache, leaves a lock file there as a killed build
would, and loads them in a new process with a time limit."""

import os
import shutil
import subprocess
import sys

import pytest


def test_a_stale_build_lock_left_by_a_killed_build_does_not_hang_the_next_load(tmp_path):
    from recon3d.backends import kernels

    try:
        ext = kernels.load_kernels()
    except kernels.BuildError as exc:  # pragma: no cover - no compiler here
        pytest.skip(f"kernels unavailable: {exc}")
    built = os.path.dirname(ext.__file__)
    cache = tmp_path / "cache"
    shutil.copytree(built, cache / os.path.basename(built))
    (cache / os.path.basename(built) / "lock").write_text("")  # what torch leaves when its build is killed
    code = "from recon3d.backends.kernels import load_kernels; print(load_kernels().__file__)"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache)}
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("loading the kernels waited on the stale lock file (killed after 240 s)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(cache)), done.stdout
    assert "stale build lock" in done.stderr
    assert not (cache / os.path.basename(built) / "lock").exists()
