"""The cpu kernels built for a lesser instruction set than this machine's (RECON3D_CPU_ISA), so the code
paths an AVX2-only CPU runs (8-wide vector maths, glibc's AVX2 expf/logf) are tested on an AVX-512 one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recon3d.backends import kernels
from recon3d.errors import BuildError


def test_isa_cap_selects_the_flags(monkeypatch):
    monkeypatch.setenv("RECON3D_CPU_ISA", "avx2")
    avx2 = kernels._cpu_flags()
    assert not any(f.startswith("-mavx512") for f in avx2)
    monkeypatch.setenv("RECON3D_CPU_ISA", "generic")
    assert not any(f.startswith("-mavx") or f == "-mfma" for f in kernels._cpu_flags())
    monkeypatch.setenv("RECON3D_CPU_ISA", "native")
    native = kernels._cpu_flags()
    assert set(avx2) <= set(native)  # the cap only removes flags
    monkeypatch.setenv("RECON3D_CPU_ISA", "sse9")
    with pytest.raises(BuildError, match="RECON3D_CPU_ISA"):
        kernels._cpu_flags()


@pytest.mark.slow
def test_avx2_build_passes_the_parity_tests(project_root):
    """Builds the kernels with AVX2 flags only (~1-2 min) and runs the parity suites against them."""
    env = dict(os.environ, RECON3D_CPU_ISA="avx2")
    tests = ["tests/test_render_projection.py", "tests/test_render_cpu.py", "tests/test_render_median.py",
             "tests/test_render_exp.py", "tests/test_render_binning.py", "tests/test_render_features.py",
             "tests/test_render_antialiased.py", "tests/test_render_camera_grads.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests],
        cwd=project_root, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    check = subprocess.run(
        [sys.executable, "-c", "from recon3d.backends import kernels; print(' '.join(kernels._cpu_flags()))"],
        cwd=project_root, env=env, capture_output=True, text=True, timeout=60,
    )
    assert "-mavx2" in check.stdout.split() or "avx2" not in open("/proc/cpuinfo").read()
    assert "-mavx512f" not in check.stdout.split()
