"""The CLI shell: help, one-line errors, the render command on the shipped example."""

from __future__ import annotations

import subprocess
import sys

from recon3d.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "render" in out


def test_missing_file_is_one_line_error(tmp_path, capsys):
    code = main(["render", str(tmp_path / "nope.ply"), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "nope.ply" in err and "Traceback" not in err


def test_not_a_ply_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.ply"
    bad.write_text("hello")
    code = main(["render", str(bad), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bad.ply" in err and "not a PLY" in err


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "recon3d.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "recon3d" in out.stdout
