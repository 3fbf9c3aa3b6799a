"""``TrainingViewer``: the viewer while ``recon3d reconstruct --viewer`` runs (the TrainingMonitor protocol).

The trainer calls ``on_step`` every step; it only appends the metrics and, every ``refresh_seconds``,
takes a CPU snapshot of the scene and hands it to a background thread that pushes it to the browsers —
so the training loop pays microseconds per step and a copy of the parameters every few seconds.

A NeRF training (``--method nerf``, ``field=True``) hands its live ``NerfModel`` instead of a scene: the
snapshot is a copy of the field (on its device), and the browsers see it through the server renderer
"NeRF field" at progressive resolution, like ``recon3d view`` of a finished NeRF run.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from recon3d.scene import GaussianScene

from .app import ViewerApp
from .server import DEFAULT_HOST, DEFAULT_PORT
from .source import ViewerData

if TYPE_CHECKING:
    from recon3d.data import SceneData

MAX_PLOT_POINTS = 2000  # the loss curve is thinned to this many points before it goes to the browser


def viewer_data_from_scene_data(data: SceneData) -> ViewerData:
    """What the viewer shows before the first step: the data set's cameras, images and SfM points."""
    points = None if data.points is None else data.points.detach().cpu().numpy()
    colors = None if data.point_colors is None else data.point_colors.detach().cpu().numpy()
    return ViewerData(
        scene=GaussianScene.empty(),
        source=f"training on {data.root} ({data.source})",
        cameras=data.cameras,
        image_paths=list(data.image_paths),
        splits=list(data.split),
        points=points,
        point_colors=colors,
        base_dir=None,
        z_up=getattr(data, "orientation", None) is not None,
    )


class _NoFieldYet:
    """What a NeRF training's viewer draws before the first snapshot: nothing (the background)."""

    def render(self, cameras, index: int = 0, *, background=None):
        """Transparent everywhere: rgb over ``background`` (or black), alpha 0, depth 0."""
        import torch

        h, w = int(cameras.height[index]), int(cameras.width[index])
        bg = torch.zeros(3) if background is None else background.float().cpu()
        return bg.reshape(1, 1, 3).expand(h, w, 3).clone(), torch.zeros(h, w, 1), torch.zeros(h, w, 1)


class TrainingViewer:
    """A live viewer implementing the trainer's ``TrainingMonitor`` protocol."""

    def __init__(
        self,
        data: SceneData | ViewerData,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        refresh_seconds: float = 3.0,
        backend: str = "auto",
        field: bool = False,
    ) -> None:
        viewer_data = data if isinstance(data, ViewerData) else viewer_data_from_scene_data(data)
        self.field = field  # a NeRF training: on_step receives the live NerfModel, drawn by the field renderer
        if field and viewer_data.nerf is None:
            viewer_data.nerf = _NoFieldYet()  # the app offers the "NeRF field" renderer from the start
        # the host comes from the trainer's own --host flag (default loopback), so it is the user's choice
        self.app = ViewerApp(viewer_data, host=host, port=port, allow_remote=True, backend=backend,
                             generate_panel=False)
        self.url = self.app.url
        self.refresh_seconds = float(refresh_seconds)
        self._paused = threading.Event()
        self._save_requested = threading.Event()
        self._closed = False
        self._last_refresh = 0.0
        self._pending: tuple[int, GaussianScene, dict] | None = None
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {"loss": [], "psnr": []}
        self.last_metrics: dict[str, float] = {}
        self.refreshes = 0  # scene pushes to the browser so far (tests and the status line read it)
        self._build_gui()
        self._pusher = threading.Thread(target=self._push_loop, daemon=True, name="recon3d-training-viewer")
        self._pusher.start()
        print(f"recon3d viewer: training view at {self.url}", flush=True)

    def _build_gui(self) -> None:
        gui = self.app.server.gui
        with gui.add_folder("Training", order=-1.0):  # first: the controls that matter while training
            self.gui_pause = gui.add_button("Pause training")
            self.gui_save = gui.add_button("Save checkpoint")
            self.gui_metrics = gui.add_markdown("waiting for the first step …")
            self.gui_plot = gui.add_uplot(
                data=(np.zeros(2), np.full(2, np.nan), np.full(2, np.nan)),
                series=(
                    {"label": "step"},
                    {"label": "loss", "stroke": "#d62728", "scale": "loss", "width": 1.5},
                    {"label": "PSNR (dB)", "stroke": "#1f77b4", "scale": "psnr", "width": 1.5},
                ),
                scales={"x": {"time": False}, "loss": {"auto": True}, "psnr": {"auto": True}},
                axes=({}, {"scale": "loss", "label": "loss"}, {"scale": "psnr", "side": 1, "label": "PSNR"}),
                title="loss and PSNR",
                aspect=1.4,
            )

        @self.gui_pause.on_click
        def _(_event) -> None:
            if self._paused.is_set():
                self.resume()
            else:
                self.pause()

        @self.gui_save.on_click
        def _(_event) -> None:
            self._save_requested.set()
            self.gui_metrics.content = self._metrics_text("checkpoint requested")

    # ------------------------------------------------------------------ TrainingMonitor protocol
    def on_step(self, step: int, scene, metrics: dict[str, float]) -> None:
        """Record the metrics; every ``refresh_seconds`` snapshot the scene (a ``GaussianScene``, or a NeRF
        training's live ``NerfModel``) for the browsers."""
        if self._closed:
            return
        self.steps.append(int(step))
        for key in self.history:
            value = metrics.get(key)
            self.history[key].append(float(value) if value is not None else float("nan"))
        self.last_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        now = time.monotonic()
        if now - self._last_refresh >= self.refresh_seconds or self._last_refresh == 0.0:
            self._last_refresh = now
            if isinstance(scene, GaussianScene):
                snapshot = scene.detach().to("cpu").clone()  # the trainer mutates its tensors in place
            else:  # a NerfModel: a copy of its field and grid (on the field's device), same reason
                snapshot = scene.snapshot()
            with self._pending_lock:
                self._pending = (int(step), snapshot, dict(self.last_metrics))
            self._wake.set()

    def paused(self) -> bool:
        """True while the user has paused training."""
        return self._paused.is_set()

    def take_save_request(self) -> bool:
        """True once after the user pressed 'Save checkpoint'."""
        if self._save_requested.is_set():
            self._save_requested.clear()
            return True
        return False

    def close(self) -> None:
        """Stop the server (the trainer calls it when training ends)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self.app.stop()

    # ------------------------------------------------------------------ controls
    def pause(self) -> None:
        """Pause training (the trainer polls ``paused``)."""
        self._paused.set()
        self.gui_pause.label = "Resume training"

    def resume(self) -> None:
        """Resume training."""
        self._paused.clear()
        self.gui_pause.label = "Pause training"

    # ------------------------------------------------------------------ browser updates
    def _metrics_text(self, note: str = "") -> str:
        m = self.last_metrics
        parts = [f"**step** {self.steps[-1] if self.steps else 0}"]
        for key, label, fmt in (
            ("loss", "loss", "{:.4f}"),
            ("psnr", "PSNR", "{:.2f} dB"),
            ("num_gaussians", "Gaussians", "{:,.0f}"),
            ("rays", "rays/step", "{:,.0f}"),
            ("samples", "samples/step", "{:,.0f}"),
            ("steps_per_second", "steps/s", "{:.1f}"),
        ):
            if key in m:
                parts.append(f"**{label}** {fmt.format(m[key])}")
        if self._paused.is_set():
            parts.append("**paused**")
        if note:
            parts.append(note)
        return "  \n".join(parts)

    def _plot_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.steps)
        idx = np.unique(np.linspace(0, n - 1, min(n, MAX_PLOT_POINTS)).round().astype(int))
        steps = np.asarray(self.steps, dtype=np.float64)[idx]
        loss = np.asarray(self.history["loss"][:n], dtype=np.float64)[idx]
        psnr = np.asarray(self.history["psnr"][:n], dtype=np.float64)[idx]
        if len(steps) == 1:  # uPlot needs two x values to draw an axis
            steps, loss, psnr = np.repeat(steps, 2), np.repeat(loss, 2), np.repeat(psnr, 2)
        return steps, loss, psnr

    def _push_loop(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._pending_lock:
                pending, self._pending = self._pending, None
            if pending is None or self._closed:
                continue
            step, scene, _metrics = pending
            source = f"{self.app.data.source.split(' — ')[0]} — step {step}"
            try:
                if isinstance(scene, GaussianScene):
                    self.app.set_scene(scene, source=source)
                else:
                    self.app.set_field(scene, source=source)
                self.gui_plot.data = self._plot_data()
                self.gui_metrics.content = self._metrics_text()
                self.refreshes += 1
            except Exception as exc:  # the viewer must never stop training
                self.app.set_status(f"viewer update failed: {exc}")
