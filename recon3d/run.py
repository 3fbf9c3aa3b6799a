"""``recon3d.load_run(path)``: a run directory opened once, for export, the viewer, eval and render.

A run directory (written by ``recon3d reconstruct``; the layout is in ``recon3d/train/rundir.py``) holds
``scene.ply`` and, when it came from training, ``cameras.json``, ``config.yaml``, ``metrics.json`` and
maybe ``points.ply``. A folder holding only a ``scene.ply`` (a generated scene) opens too, without
cameras. Everything is in the run's world frame: the input's own, or, where ``orientation.json`` exists (a
photo folder or video, or ``--orient up``), the upright frame it maps the input frame to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cameras import Cameras
from .errors import InputError
from .scene import GaussianScene

if TYPE_CHECKING:
    from .data.orient import Orientation
    from .nerf.trainer import NerfModel
    from .render import RenderOutput
    from .train.config import TrainConfig


@dataclass
class Run:
    """A finished reconstruction (or a bare scene folder): the scene, its cameras with splits, config, metrics."""

    root: Path
    scene: GaussianScene | None  # None for a NeRF run not distilled yet (``recon3d export RUN --format ply``)
    cameras: Cameras | None = None  # None for a folder holding only scene.ply
    image_paths: list[Path] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)  # "train" / "test" per camera
    config: TrainConfig | None = None
    metrics: dict[str, Any] | None = None
    points: np.ndarray | None = None  # P×3 sparse points (points.ply), if the run has them
    point_colors: np.ndarray | None = None  # P×3 in [0, 1]
    orientation: Orientation | None = None  # input frame -> the run's upright frame (orientation.json)
    nerf: NerfModel | None = None  # a NeRF run's field (nerf.pt): render() and evaluate() go through it

    @property
    def method(self) -> str:
        """The reconstruction method that made the run: ``gaussians`` or ``nerf``."""
        return "nerf" if self.nerf is not None else "gaussians"

    def indices(self, split: str = "test") -> list[int]:
        """Camera indices of ``split`` (``train``, ``test`` or ``all``)."""
        return [i for i, s in enumerate(self.splits) if split == "all" or s == split]

    @property
    def background(self) -> torch.Tensor:
        """The colour the run's images were composited on and its held-out views rendered over."""
        name = self.config.data.background if self.config is not None else "white"
        return torch.zeros(3) if name == "black" else torch.ones(3)

    def render(self, cameras: Cameras, *, background: torch.Tensor | None = None, backend: str = "auto",
               sh_degree: int | None = None) -> RenderOutput:
        """Render the run's scene (a NeRF run: its field) from ``cameras`` (world frame), over the run's
        background by default."""
        from .render import render

        if self.nerf is not None:
            return self._render_nerf(cameras, self.background if background is None else background)
        with torch.no_grad():
            return render(self.scene, cameras, background=self.background if background is None else background,
                          sh_degree=sh_degree, backend=backend)

    def _render_nerf(self, cameras: Cameras, background: torch.Tensor) -> RenderOutput:
        from .render import RenderOutput

        rgbs, alphas, depths = [], [], []
        for i in range(len(cameras)):
            rgb, alpha, depth = self.nerf.render(cameras, i, background=background)
            rgbs.append(rgb)
            alphas.append(alpha)
            depths.append(depth)
        empty = torch.zeros(len(cameras), 0)
        return RenderOutput(torch.stack(rgbs), torch.stack(alphas), torch.stack(depths), empty.int(),
                            torch.zeros(len(cameras), 0, 2))

    @property
    def protocol(self) -> str:
        """How the run was evaluated: ``composited`` (RGBA object data) or ``opaque`` (photos, the default)."""
        from .metrics import PROTOCOL_OPAQUE

        return (self.metrics or {}).get("protocol", PROTOCOL_OPAQUE)

    def masks(self) -> dict[int, Path]:
        """Each camera's mask by camera index: cameras.json names every camera's (runs before it did: metrics.json
        names the held-out views' only)."""
        found: dict[int, Path] = {}
        try:
            for v in (self.metrics or {}).get("per_view", []):
                if v.get("mask"):
                    found[int(v["index"])] = Path(v["mask"])
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
        return found | camera_masks(self.root)

    def load_image(self, index: int, background: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Camera ``index``'s image at the camera's size (H×W×3 in [0, 1]; RGBA on the run's background) and
        its alpha (H×W×1, None for RGB)."""
        from .data.images import decode_image

        if self.cameras is None:
            raise InputError(self.root, "has no cameras.json, so no images")
        w, h = int(self.cameras.width[index]), int(self.cameras.height[index])
        image, alpha = decode_image(self.image_paths[index], size=(w, h),
                                    background=self.background if background is None else background)
        return image, (None if alpha is None else alpha.reshape(h, w, 1))

    def evaluate(self, split: str = "test", *, backend: str = "auto", align_poses: bool = False,
                 align_steps: int | None = None) -> dict[str, Any]:
        """The figures of the scene against the images of ``split`` (the trainer's evaluation, in the world
        frame): PSNR/SSIM by the run's protocol, over black and over white, the see-through share.

        ``align_poses`` adds, beside them (``aligned_poses``, and per view), the same figures after test-time
        pose alignment (``recon3d.train.pose_align``: each camera's pose optimised against the frozen scene with at
        most ``align_steps`` renders, as pose-refining methods are evaluated) and the correction each view took."""
        from .evaluation import evaluate_views, measure_view
        from .metrics import PROTOCOL_COMPOSITED

        if self.cameras is None:
            raise InputError(self.root, "has no cameras.json, so nothing to evaluate against")
        if align_poses and self.scene is None:
            raise InputError(self.root, "--align-poses needs a Gaussian-splat scene (scene.ply); a NeRF run has "
                             "none until `recon3d export RUN --format ply`")
        chosen = self.indices(split)
        if not chosen:
            raise InputError(self.root / "cameras.json", f"no cameras in the {split!r} split")
        protocol = self.protocol
        masks = self.masks()

        def view(i: int) -> tuple[dict[str, float], torch.Tensor]:
            target, alpha = self.load_image(i)
            if alpha is None and protocol == PROTOCOL_COMPOSITED:
                alpha = torch.ones(*target.shape[:2], 1)
            mask = None
            if i in masks and masks[i].is_file():
                from .data.masks import load_mask

                mask = load_mask(masks[i], (int(self.cameras.width[i]), int(self.cameras.height[i])))
            out = self.render(self.cameras[i], background=torch.zeros(3), backend=backend)
            values, shown = measure_view(out.rgb[0], out.alpha[0], target, protocol=protocol,
                                         background=self.background, target_alpha=alpha, mask=mask)
            if align_poses:
                values["aligned_poses"] = self._aligned_view(i, target, alpha, mask, backend, align_steps)
            return values, shown

        result = evaluate_views(chosen, view, self.image_paths, protocol=protocol)
        return {**{k: v for k, v in result.items() if k != "per_view"}, "split": split, "num_views": len(chosen),
                "num_gaussians": len(self.scene) if self.scene is not None else 0, "method": self.method,
                "per_view": result["per_view"]}


    def _aligned_view(self, i: int, target: torch.Tensor, alpha: torch.Tensor | None, mask: torch.Tensor | None,
                      backend: str, steps: int | None) -> dict[str, Any]:
        """Camera ``i``'s figures after test-time pose alignment, and the correction it took."""
        from .train.pose_align import aligned_view_figures, orbit_radius

        train = self.indices("train")
        radius = orbit_radius(self.cameras[train] if len(train) > 1 else self.cameras)
        return aligned_view_figures(self.scene, self.cameras[i], target, protocol=self.protocol,
                                    background=self.background, radius=radius, target_alpha=alpha, mask=mask,
                                    backend=backend, steps=steps)


def camera_masks(run_dir: Path) -> dict[int, Path]:
    """The masks cameras.json names, by camera index (paths inside the run are relative to it)."""
    try:
        records = json.loads((Path(run_dir) / "cameras.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found = {}
    for i, rec in enumerate(records if isinstance(records, list) else []):
        if isinstance(rec, dict) and isinstance(rec.get("mask"), str):
            path = Path(rec["mask"])
            found[i] = path if path.is_absolute() else Path(run_dir) / path
    return found


def _locate_images(run_dir: Path, image_paths: list[Path]) -> list[Path]:
    """Images that cameras.json names relative to where training was started, when that is here too.

    cameras.json names images inside the run relative to it and others absolute; a run recorded before
    that named them relative to the working directory of the training run (``data/x/...``), which is
    usually the current directory again.
    """
    try:
        records = json.loads((run_dir / "cameras.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return image_paths
    if not isinstance(records, list) or len(records) != len(image_paths):
        return image_paths
    located = []
    for found, record in zip(image_paths, records):
        raw = record.get("image") if isinstance(record, dict) else None
        if not found.is_file() and isinstance(raw, str) and not Path(raw).is_absolute() and Path(raw).is_file():
            found = Path(raw).resolve()
        located.append(found)
    return located


def load_run(path: str | Path) -> Run:
    """Open a run directory (or a folder with just a ``scene.ply``); InputError naming what is wrong."""
    from .ply import load_ply, load_point_cloud
    from .train.rundir import read_cameras_json

    root = Path(path)
    if not root.is_dir():
        raise InputError(root, "no such directory (expected a recon3d run directory)" if not root.exists()
                         else "not a directory (expected a recon3d run directory)")
    scene_path = root / "scene.ply"
    nerf_path = root / "nerf.pt"
    if not scene_path.is_file() and not nerf_path.is_file():
        hint = (" (training has not finished: `recon3d reconstruct --resume` continues it)"
                if (root / "checkpoints").is_dir() else "")
        raise InputError(root, f"no scene.ply in this directory{hint}; expected a run directory")
    # a NeRF run holds nerf.pt, and scene.ply once `recon3d export RUN --format ply` has distilled it
    scene = load_ply(scene_path) if scene_path.is_file() else None
    run = Run(root, scene)
    if nerf_path.is_file():
        from .nerf.trainer import NerfModel

        run.nerf = NerfModel.load(nerf_path)
    if (root / "cameras.json").is_file():
        run.cameras, images, run.splits = read_cameras_json(root / "cameras.json")
        run.image_paths = _locate_images(root, [Path(p) for p in images])
    if (root / "config.yaml").is_file():
        from .train.config import config_from_yaml

        run.config = config_from_yaml(root / "config.yaml")
    if (root / "metrics.json").is_file():
        try:
            run.metrics = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(root / "metrics.json", f"invalid JSON: {exc}") from None
    if (root / "points.ply").is_file():
        run.points, run.point_colors = load_point_cloud(root / "points.ply", drop_nonfinite=True)
    from .data.orient import ORIENTATION_FILE, load_orientation

    run.orientation = load_orientation(root / ORIENTATION_FILE)
    return run
