"""recon3d.native: native code builds with this environment's ninja whatever PATH holds, and every entry point
(a PATH with the system's ninja first, the venv's first, or none at all) reuses one build instead of
rebuilding it. The fast tests build a one-function extension through the very helper the rasterizer uses
(a second to compile); the slow one checks the real kernels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recon3d import native
from recon3d.errors import BuildError

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler (c++)")


def path_without_ninja(tmp_path: Path, path: str | None = None) -> str:
    """PATH with every folder holding a ``ninja`` replaced by a folder of links to all its other programs."""
    folders = []
    for i, folder in enumerate((path or os.environ.get("PATH", "")).split(os.pathsep)):
        if not folder or not os.path.isdir(folder):
            continue
        if not os.path.exists(os.path.join(folder, "ninja")):
            folders.append(folder)
            continue
        shadow = tmp_path / f"path{i}"
        shadow.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(folder):
            if entry.name != "ninja":
                (shadow / entry.name).symlink_to(entry.path)
        folders.append(str(shadow))
    return os.pathsep.join(folders)


_TINY = """
from pathlib import Path
from recon3d import native
src = Path({src!r})
module = native.load_torch_extension("recon3d_tiny_ext", [src], Path({build!r}), what="the test extension")
print(module.answer())
"""


def _tiny_source(folder: Path) -> Path:
    src = folder / "tiny.cpp"
    src.write_text(textwrap.dedent("""
        #include <Python.h>
        static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }
        static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, "42"}, {nullptr, nullptr, 0, nullptr}};
        static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "recon3d_tiny_ext", nullptr, -1, methods};
        PyMODINIT_FUNC PyInit_recon3d_tiny_ext(void) { return PyModule_Create(&def); }
    """))
    return src


def _run(code: str, path: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "RECON3D_CACHE": str(tmp_path / "cache")}
    env.pop("TORCH_EXTENSIONS_DIR", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


def _outputs(build: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in build.iterdir() if p.suffix in (".o", ".so")}


def test_builds_with_no_ninja_on_path_and_every_path_reuses_the_build(tmp_path):
    src = _tiny_source(tmp_path)
    build = tmp_path / "build"
    code = _TINY.format(src=str(src), build=str(build))
    bare = path_without_ninja(tmp_path / "bare")
    assert shutil.which("ninja", path=bare) is None

    first = _run(code, bare, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip() == "42"
    built = _outputs(build)
    assert any(name.endswith(".o") for name in built) and any(name.endswith(".so") for name in built)

    # what `make`, `.venv/bin/recon3d` and an activated venv see: the system's ninja first, the venv's first
    venv_bin = os.path.dirname(sys.executable)
    for path in (f"/usr/bin:/bin:{bare}", f"{venv_bin}:/usr/bin:/bin:{bare}", bare):
        again = _run(code, path, tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.strip() == "42"
        assert _outputs(build) == built, f"PATH={path} rebuilt the extension"


def test_a_failed_build_raises_build_error_naming_the_folder_and_the_error(tmp_path):
    src = tmp_path / "broken.cpp"
    src.write_text("int main() { return undefined_name; }\n")
    with pytest.raises(BuildError) as info:
        native.load_torch_extension("recon3d_broken_ext", [src], tmp_path / "b", what="the test extension")
    message = str(info.value)
    assert str(tmp_path / "b") in message and "undefined_name" in message


def test_ninja_of_this_environment_comes_first_only_during_the_build(monkeypatch):
    monkeypatch.setenv("PATH", "/nowhere")
    with native.build_environment() as folder:
        assert os.environ["PATH"].split(os.pathsep)[0] == str(folder)
        assert (folder / "ninja").is_file()
    assert os.environ["PATH"] == "/nowhere"


def test_one_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RECON3D_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    from recon3d.train import cpu_ops

    assert native.kernels_cache_dir() == tmp_path / "kernels"
    assert cpu_ops._cache_dir() == tmp_path / "train_ops"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch"))
    assert native.kernels_cache_dir() == tmp_path / "torch"


def test_isa_cap_applies_to_both_builds(monkeypatch):
    from recon3d.backends import kernels
    from recon3d.train import cpu_ops

    monkeypatch.setenv("RECON3D_CPU_ISA", "generic")
    for flags in (kernels._cpu_flags(), cpu_ops._flags()):
        assert not any(f.startswith("-mavx") or f == "-mfma" for f in flags)
    monkeypatch.setenv("RECON3D_CPU_ISA", "sse9")
    with pytest.raises(BuildError, match="RECON3D_CPU_ISA"):
        cpu_ops._flags()


@pytest.mark.slow
def test_the_kernels_built_here_are_reused_under_the_system_path(tmp_path):
    """The rasterizer built by this process (venv or not) loads unchanged from a process whose PATH puts the
    system's ninja first (as `make` and `.venv/bin/recon3d` do) and from one with no ninja at all."""
    from recon3d.backends import kernels

    try:
        ext = kernels.load_kernels()
    except BuildError as exc:  # pragma: no cover - no compiler here
        pytest.skip(f"kernels unavailable: {exc}")
    build = Path(ext.__file__).parent
    before = _outputs(build)
    code = "from recon3d.backends.kernels import load_kernels; print(load_kernels().__file__)"
    for path in ("/usr/local/bin:/usr/bin:/bin", path_without_ninja(tmp_path)):
        env = {**os.environ, "PATH": path}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip() == ext.__file__
        assert "building recon3d kernels" not in done.stderr
        assert _outputs(build) == before, f"PATH={path} rebuilt the kernels"


def test_build_kernels_entry_point_runs_without_a_runpy_warning():
    """``python -m recon3d.build_kernels`` (what ``make setup`` runs) builds or finds the kernels and prints no
    RuntimeWarning (``python -m recon3d.native`` did: the package's imports load ``native`` before runpy runs it)."""
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "recon3d.build_kernels"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RuntimeWarning" not in proc.stderr and "kernels ready" in proc.stdout, proc.stdout + proc.stderr


def test_the_kernels_build_key_hashes_the_headers_they_include_only(tmp_path):
    """The rasterizer's build key covers every header its sources reach (directly or through each other) and no
    header only another build reads: editing the NeRF kernels' header must not rebuild the rasterizer."""
    from recon3d.backends.kernels import included_headers

    inc = tmp_path / "include" / "recon3d"
    inc.mkdir(parents=True)
    (inc / "common.h").write_text('#pragma once\n#include "constants.h"\n')
    (inc / "constants.h").write_text("#pragma once\n")
    (inc / "blend.h").write_text('#pragma once\n  #  include "common.h"\n')
    (inc / "other.h").write_text('#pragma once\n#include "common.h"\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.cpp").write_text('#include <vector>\n#include "recon3d/blend.h"\n')
    assert [p.name for p in included_headers(tmp_path, [src / "a.cpp"])] == ["blend.h", "common.h", "constants.h"]

    from recon3d.constants import kernel_source_dir

    real = kernel_source_dir()
    names = {p.name for p in included_headers(real, [real / "src" / "binding.cpp", real / "src" / "rasterizer_cpu.cpp"])}
    assert {"blend.h", "common.h", "constants.h", "driver.h", "projection.h", "sh.h"} <= names
    assert "nerf.h" not in names
