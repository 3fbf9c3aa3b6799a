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


def reconstruct(path: str | Path | Any, out_dir: str | Path, *, preset: str | None = None, resume: bool = False,
                overwrite: bool = False, monitor: TrainingMonitor | None = None, quiet: bool = False,
                assignments: list[str] | None = None, viewer: bool = False, host: str = "127.0.0.1",
                port: int = 8080, **overrides: Any) -> tuple[GaussianScene, Cameras, dict[str, Any]]:
    """Reconstruct a scene from ``path`` (photo folder, COLMAP, nerfstudio or Blender data, or a loaded
    ``SceneData``) into ``out_dir``; returns (scene, cameras, metrics) in the input's world frame.

    Keyword overrides are config keys: a setting's own name where one section has it (``steps=2000``,
    ``time_budget=10``), a dotted key (``**{"strategy.cap": 200_000}``) or a section (``run={"steps": 5}``).
    Started by torchrun (``WORLD_SIZE`` > 1), the processes train the scene together (``train/distributed.py``):
    rank 0 prepares and writes the run directory, the others return the same scene and empty metrics.
    """
    from .train import distributed

    args = dict(preset=preset, resume=resume, overwrite=overwrite, monitor=monitor, quiet=quiet,
                assignments=assignments, viewer=viewer, host=host, port=port, **overrides)
    if not distributed.requested():
        return _reconstruct(path, out_dir, **args)
    import torch

    sync = distributed.start(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if sync.is_main:
        result = _reconstruct(path, out_dir, sync=sync, **args)
    else:
        result = _follow(path, out_dir, sync, **args)
    # leave the group only after a clean run: after a failure a peer may be gone, and leaving can wait for it
    # long enough that torchrun kills this process before it prints its one line (the process ends anyway)
    sync.close()
    return result


def _follow(path: str | Path | Any, out_dir: str | Path, sync: Any, *, preset: str | None = None, resume: bool = False,
            assignments: list[str] | None = None, quiet: bool = False, **overrides: Any) -> tuple[GaussianScene, Cameras, dict[str, Any]]:
    """A process other than rank 0: rank 0's config, the same data, training; it writes nothing."""
    from . import configtree
    from .train.config import TrainConfig, validate

    for key in ("overwrite", "monitor", "viewer", "host", "port"):
        overrides.pop(key, None)
    sync.check_same(_facts(path, overrides, assignments, resume))
    shared: list[Any] = [None]
    import torch.distributed as dist

    dist.broadcast_object_list(shared, src=0)  # rank 0's resolved config, once its run directory is ready
    if shared[0] is None:
        from .errors import Recon3dError

        raise Recon3dError(f"rank {sync.rank}: rank 0 stopped before training (its error says why)")
    cfg = validate(configtree.from_mapping(TrainConfig, shared[0], Path(out_dir) / "config.yaml"))
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # on another machine: for its own image cache
    data = _load(path, run_dir, cfg)
    trainer = trainer_class(cfg.run.method)(data, cfg, run_dir, resume=resume, quiet=True, sync=sync)
    result = trainer.run()
    return result.scene, result.cameras, result.metrics


def _facts(path: Any, overrides: dict[str, Any], assignments: list[str] | None, resume: bool) -> dict[str, str]:
    """What must be the same in every process: versions, and the arguments that shape training."""
    import torch

    from . import __version__

    return {"recon3d": __version__, "torch": torch.__version__,
            "arguments": repr((str(path) if isinstance(path, (str, Path)) else type(path).__name__,
                               sorted((k, repr(v)) for k, v in overrides.items()), assignments, resume))}


def _load(path: str | Path | Any, run_dir: Path, cfg: Any) -> Any:
    """The data set of ``path`` with the config's loading settings (``path`` itself when already loaded)."""
    if not isinstance(path, (str, Path)):
        return path
    from .data import load_dataset

    return load_dataset(
        Path(path), work_dir=run_dir, downscale=cfg.data.downscale, max_image_size=cfg.data.max_image_size,
        background="white" if cfg.data.background in ("random", "auto") else cfg.data.background,
        test_every=cfg.data.test_every, masks=cfg.data.masks, video_frames=cfg.data.video_frames,
        video_fps=cfg.data.video_fps, orient=cfg.data.orient, sfm_deterministic=cfg.data.sfm_deterministic,
    )


@guards_run_dir  # a run that fails before writing anything worth keeping leaves no folder behind
def _reconstruct(path: str | Path | Any, out_dir: str | Path, *, preset: str | None = None, resume: bool = False,
                 overwrite: bool = False, monitor: TrainingMonitor | None = None, quiet: bool = False,
                 assignments: list[str] | None = None, viewer: bool = False, host: str = "127.0.0.1",
                 port: int = 8080, sync: Any = None, **overrides: Any) -> tuple[GaussianScene, Cameras, dict[str, Any]]:
    """``reconstruct`` in this process (rank 0 of several with ``sync``)."""
    start = time.monotonic()
    if sync is not None:
        sync.check_same(_facts(path, overrides, assignments, resume))
        try:
            return _reconstruct_main(path, out_dir, start, sync, preset=preset, resume=resume, overwrite=overwrite,
                                     monitor=monitor, quiet=quiet, assignments=assignments, viewer=viewer,
                                     host=host, port=port, **overrides)
        except BaseException:
            if not getattr(sync, "config_sent", False):
                import contextlib

                import torch.distributed as dist

                with contextlib.suppress(Exception):  # tell the others to stop rather than wait
                    dist.broadcast_object_list([None], src=0)
            raise
    return _reconstruct_main(path, out_dir, start, None, preset=preset, resume=resume, overwrite=overwrite,
                             monitor=monitor, quiet=quiet, assignments=assignments, viewer=viewer, host=host,
                             port=port, **overrides)


def _reconstruct_main(path: str | Path | Any, out_dir: str | Path, start: float, sync: Any, *, preset: str | None,
                      resume: bool, overwrite: bool, monitor: TrainingMonitor | None, quiet: bool,
                      assignments: list[str] | None, viewer: bool, host: str, port: int,
                      **overrides: Any) -> tuple[GaussianScene, Cameras, dict[str, Any]]:
    if isinstance(path, (str, Path)) and not Path(path).exists():
        raise InputError(path, "no such file or directory")
    run_dir = prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)
    cfg = resolve_config(run_dir, preset=preset, resume=resume, overrides=overrides, assignments=assignments)
    if resume:
        check_resumed_method(run_dir, cfg.run.method)
    if cfg.run.method == "nerf" and cfg.nerf.field == "tcnn":  # before any data loads (SfM can take minutes)
        from .nerf.tcnn_field import check_available

        check_available(cfg.run.device)
    data = _load(path, run_dir, cfg)
    # written once the data loaded, so a bad input leaves no half run behind that --overwrite would be needed for
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if sync is not None:  # the other processes start from this config (and reuse the SfM model just made)
        import torch.distributed as dist

        dist.broadcast_object_list([cfg.to_dict()], src=0)
        sync.config_sent = True
    if viewer and monitor is None:
        try:
            from .viewer.training import TrainingViewer
        except ImportError as exc:
            raise InputError(None, f"--viewer needs recon3d.viewer.training, which is not available ({exc})") from None
        if cfg.run.method == "nerf":  # the live field, drawn on the server (a snapshot every 10 s: renders are slow)
            monitor = TrainingViewer(data, host=host, port=port, field=True, refresh_seconds=10.0)
        else:
            monitor = TrainingViewer(data, host=host, port=port)
        if cfg.model.antialiased:  # the live view renders in the run's mode (ViewerData's default is off)
            monitor.app.data.antialiased = True
    extra = {"sync": sync} if sync is not None else {}  # data-parallel training: the Gaussian trainer only
    trainer = trainer_class(cfg.run.method)(data, cfg, run_dir, resume=resume, monitor=monitor, start_time=start,
                                            quiet=quiet, **extra)
    result = trainer.run()
    return result.scene, result.cameras, result.metrics
