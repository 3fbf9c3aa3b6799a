"""Packaging: pyproject lists every package folder, a plain (not editable) build prints no setuptools warning,
and the wheel carries the kernel sources, the C training ops, the presets and the shipped weights."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# what the wheel is built from (the rest of the checkout does not go into it)
_BUILD_INPUTS = ("pyproject.toml", "README.md", "recon3d", "viewer", "cuda", "configs")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _roots() -> dict[str, Path]:
    setup = _pyproject()["tool"]["setuptools"]
    return {"recon3d": ROOT / "recon3d", **{name: ROOT / d for name, d in setup["package-dir"].items()}}


def _folder_of(package: str) -> Path:
    """The folder a package name maps to through ``package-dir``."""
    roots = _roots()
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in roots:
            return roots[".".join(parts[:n])].joinpath(*parts[n:])
    raise AssertionError(f"{package} is outside recon3d")


def _shipped_files(folder: Path) -> list[Path]:
    return [f for f in folder.iterdir() if f.is_file() and not f.name.endswith((".pyc", ".sh"))]


def _package_folders() -> dict[str, Path]:
    """Every package name the tree implies (folders holding Python or data files), with its folder."""
    roots = _roots()
    found: dict[str, Path] = {}
    for root_name, root in roots.items():
        for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts or not _shipped_files(folder):
                continue
            name = ".".join((root_name, *folder.relative_to(root).parts))
            if name != root_name and name in roots:  # mapped elsewhere (recon3d/viewer is not the viewer)
                continue
            found.setdefault(name, folder)
    return found


def test_pyproject_lists_every_package_folder():
    """Every folder of Python or data files is a listed package (a rename must update the list), and
    every listed package exists."""
    setup = _pyproject()["tool"]["setuptools"]
    listed = set(setup["packages"])
    missing = sorted(set(_package_folders()) - listed)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing} (they would not be installed)"
    gone = sorted(name for name in listed if not _folder_of(name).is_dir())
    assert not gone, f"pyproject.toml lists packages with no folder: {gone}"
    assert setup["package-dir"]["recon3d._cuda"] == "cuda"
    assert setup["package-dir"]["recon3d.viewer"] == "viewer"


def test_every_data_file_matches_its_package_data():
    """Kernel sources, C training ops, presets and weights match a package-data pattern of their own folder."""
    import fnmatch

    data = _pyproject()["tool"]["setuptools"]["package-data"]
    for name, folder in _package_folders().items():
        for f in _shipped_files(folder):
            if f.suffix == ".py":
                continue
            assert any(fnmatch.fnmatch(f.name, pat) for pat in data.get(name, [])), (
                f"{f.relative_to(ROOT)} would not be installed (no package-data pattern of {name} matches)")


def test_license_is_an_spdx_string():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    requires = _pyproject()["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+).*", r) and int(re.match(r"setuptools>=(\d+)", r)[1]) >= 77
               for r in requires), requires


@pytest.mark.slow
def test_a_plain_build_is_clean_and_the_wheel_carries_sources_configs_and_weights(tmp_path):
    """A non-editable wheel build (this environment's setuptools, as pip would use) prints no setuptools warning;
    installed into a bare folder, it finds its kernel sources, presets and weights."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (pyproject's build requirement)")
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in _BUILD_INPUTS:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name, **(
            {"ignore": ignore} if (ROOT / name).is_dir() else {}))
    dist = tmp_path / "dist"
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "would be ignored" not in log and "absent from the `packages` configuration" not in log, log[-4000:]
    assert "project.license" not in log, log[-4000:]
    warnings = [line for line in log.splitlines() if re.search(r"\w+Warning\b", line)]
    assert not warnings, "\n".join(warnings)

    (wheel,) = dist.glob("recon3d-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"recon3d/{p.relative_to(ROOT / 'recon3d')}" for p in (ROOT / "recon3d").rglob("*.py")}
    expected |= {f"recon3d/viewer/{p.relative_to(ROOT / 'viewer')}" for p in (ROOT / "viewer").rglob("*.py")}
    expected |= {f"recon3d/_cuda/{p.relative_to(ROOT / 'cuda')}" for p in (ROOT / "cuda").rglob("*")
                 if p.is_file() and p.suffix in (".h", ".cpp", ".cu", ".cuh")}
    expected |= {f"recon3d/_configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    expected |= {f"recon3d/{p.relative_to(ROOT / 'recon3d')}" for p in (ROOT / "recon3d").rglob("*")
                 if p.is_file() and p.suffix in (".c", ".pt", ".json")}
    expected = {e for e in expected if "__pycache__" not in e}
    assert not sorted(expected - names), f"the wheel lacks {sorted(expected - names)}"
    assert any(n.endswith(".pt") for n in names) and any(n.startswith("recon3d/_cuda/src/") for n in names)
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in metadata

    # installed into a bare folder (no checkout beside it), the package finds its kernel sources and presets
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=600, env=env)
    assert inst.returncode == 0, inst.stderr[-3000:]
    code = ("import recon3d, recon3d.constants as c, recon3d.train.cpu_ops as o; "
            "from recon3d.train.config import load_preset; load_preset('fast'); "
            "print(recon3d.__file__); print(c.kernel_source_dir()); print(o._SOURCE.is_file())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr[-3000:]
    module, kernel_dir, csrc = run.stdout.split()
    assert module.startswith(str(target)) and kernel_dir.startswith(str(target)) and csrc == "True", run.stdout
