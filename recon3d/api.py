"""``recon3d.reconstruct``: data -> run directory -> trained scene, with an optional live viewer.

This module joins the parts (``recon3d.data``, ``recon3d.train``, the viewer); ``recon3d.train`` itself
never imports the viewer: the viewer implements ``recon3d.train.monitor.TrainingMonitor``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .cameras import Cameras
from .errors import InputError
from .io_utils import atomic_write_text
from .scene import GaussianScene
from .train.config import resolve_config
from .train.method import trainer_class
from .train.monitor import TrainingMonitor
from .train.rundir import guards_run_dir, prepare_run_dir


def check_resumed_method(run_dir: Path, method: str) -> None:
    """Refuse, in one line, to resume a run as the other method (a NeRF run as splats or the reverse)."""
    from .train.config import config_from_yaml

    saved_path = Path(run_dir) / "config.yaml"
    saved = config_from_yaml(saved_path).run.method if saved_path.is_file() else "gaussians"
    has_field = (Path(run_dir) / "nerf.pt").is_file()
    if saved != method or (has_field and method != "nerf"):
        was = "nerf" if has_field else saved
        raise InputError(run_dir, f"is a {was} run and cannot be resumed with --method {method}; resume it with "
                         f"--method {was} (or leave --method out), or start a new run directory")


@guards_run_dir  # a run that fails before writing anything worth keeping leaves no folder behind
def reconstruct(path: str | Path | Any, out_dir: str | Path, *, preset: str | None = None, resume: bool = False,
                overwrite: bool = False, monitor: TrainingMonitor | None = None, quiet: bool = False,
                assignments: list[str] | None = None, viewer: bool = False, host: str = "127.0.0.1",
                port: int = 8080, **overrides: Any) -> tuple[GaussianScene, Cameras, dict[str, Any]]:
    """Reconstruct a scene from ``path`` (photo folder, COLMAP, nerfstudio or Blender data, or a loaded
    ``SceneData``) into ``out_dir``; returns (scene, cameras, metrics) in the input's world frame.

    Keyword overrides are config keys: a setting's own name where one section has it (``steps=2000``,
    ``time_budget=10``), a dotted key (``**{"strategy.cap": 200_000}``) or a section (``run={"steps": 5}``).
    """
    start = time.monotonic()
    if isinstance(path, (str, Path)) and not Path(path).exists():
        raise InputError(path, "no such file or directory")
    run_dir = prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)
    cfg = resolve_config(run_dir, preset=preset, resume=resume, overrides=overrides, assignments=assignments)
    if resume:
        check_resumed_method(run_dir, cfg.run.method)
    if cfg.run.method == "nerf" and (viewer or monitor is not None):
        raise InputError(None, "--viewer is not available with --method nerf yet (watch the progress line; "
                         "`recon3d eval RUN` and `recon3d render RUN` show the field after training)")
    if isinstance(path, (str, Path)):
        from .data import load_dataset

        data = load_dataset(
            Path(path), work_dir=run_dir, downscale=cfg.data.downscale, max_image_size=cfg.data.max_image_size,
            background="white" if cfg.data.background in ("random", "auto") else cfg.data.background,
            test_every=cfg.data.test_every, masks=cfg.data.masks, video_frames=cfg.data.video_frames,
            video_fps=cfg.data.video_fps, orient=cfg.data.orient,
        )
    else:
        data = path
    # written once the data loaded, so a bad input leaves no half run behind that --overwrite would be needed for
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if viewer and monitor is None:
        try:
            from .viewer.training import TrainingViewer
        except ImportError as exc:
            raise InputError(None, f"--viewer needs recon3d.viewer.training, which is not available ({exc})") from None
        monitor = TrainingViewer(data, host=host, port=port)
        if cfg.model.antialiased:  # the live view renders in the run's mode (ViewerData's default is off)
            monitor.app.data.antialiased = True
    trainer = trainer_class(cfg.run.method)(data, cfg, run_dir, resume=resume, monitor=monitor, start_time=start,
                                            quiet=quiet)
    result = trainer.run()
    return result.scene, result.cameras, result.metrics
