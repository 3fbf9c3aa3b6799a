"""A plain (non-editable) install must carry every subpackage, the kernel sources and the presets."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_every_python_package_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = set()
    for init in (ROOT / "recon3d").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT / "recon3d").parts
        dirs.add(".".join(("recon3d", *rel)))
    missing = sorted(dirs - listed)
    assert not missing, f"packages missing from pyproject [tool.setuptools] packages: {missing}"
    assert cfg["package-dir"]["recon3d._cuda"] == "cuda"
    assert cfg["package-dir"]["recon3d.viewer"] == "viewer"


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_kernel_sources_and_presets_are_package_data():
    import fnmatch

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for source in (ROOT / "cuda").rglob("*"):
        if source.is_file() and source.suffix in (".h", ".cuh", ".cpp", ".cu"):
            rel = str(source.relative_to(ROOT / "cuda"))
            assert any(fnmatch.fnmatch(rel, pat) for pat in cfg["recon3d._cuda"]), f"cuda/{rel} would not be installed"
    for preset in (ROOT / "configs").glob("*.yaml"):
        assert any(fnmatch.fnmatch(preset.name, pat) for pat in cfg["recon3d._configs"])
    for source in (ROOT / "recon3d" / "train" / "csrc").glob("*"):
        rel = str(source.relative_to(ROOT / "recon3d" / "train"))
        assert any(fnmatch.fnmatch(rel, pat) for pat in cfg["recon3d.train"]), f"recon3d/train/{rel} would not be installed"
