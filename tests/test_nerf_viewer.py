"""``recon3d reconstruct DATA --method nerf --viewer``: a NeRF training watched live (issue 20 item 4), tested
as the splat ``--viewer`` is (``test_train_training.py``, ``test_viewer_app.py``, ``test_viewer_browser.py``):
the trainer's side of the monitor protocol (every step reported, pause, the save button, close), the viewer's
side without a browser (the field snapshot it draws is the trained field's own render, and a copy that later
steps do not change), ``--viewer`` building the viewer lazily, and in a headless Chromium the field appearing
on the canvas while training runs, pausing and resuming from the page."""

from __future__ import annotations

import threading
import time

import monitor_recorder  # tests/ is on sys.path (rootdir conftest)
import numpy as np
import pytest
import torch

from recon3d.api import reconstruct
from recon3d.nerf.trainer import NerfModel
from recon3d.train.synthetic import make_synthetic_data

# the small field of test_nerf_training (32×32 views on a shared 2-core machine)
SMALL = ["nerf.levels=8", "nerf.log2_table=14", "nerf.max_resolution=128", "nerf.samples_per_step=8192",
         "nerf.initial_rays=128", "nerf.max_samples=128", "nerf.steps_across=128", "nerf.grid_res=32",
         "nerf.hidden=32", "nerf.dir_degree=1", "run.checkpoint_every=100000", "run.eval_renders=0"]
CENTER, RADIUS = (5.0, -3.0, 2.0), 3.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_data(tmp_path_factory.mktemp("data"), num_views=12, size=32, center=CENTER, radius=RADIUS,
                               backend="reference")


def _train(data, out, steps: int, **kw):
    return reconstruct(data, out, preset="fast", steps=steps, threads=1, quiet=True, method="nerf",
                       assignments=SMALL, **kw)


def _test_camera(data):
    return data.cameras[list(data.test_indices())[0:1]]


def test_nerf_training_monitor_protocol(data, tmp_path):
    from recon3d.train.checkpoint import list_checkpoints
    from recon3d.train.monitor import TrainingMonitor

    class Recorder(monitor_recorder.Recorder):
        def seen(self, step, model):
            if step == 3:  # what the viewer keeps: a copy, and the live table's values at this step
                self.kept = model.snapshot()
                self.table_at_3 = model.field.table.detach().clone()

    monitor = Recorder()
    assert isinstance(monitor, TrainingMonitor)
    _train(data, tmp_path / "run", 6, monitor=monitor)
    assert monitor.steps == [1, 2, 3, 4, 5, 6] and monitor.closed and not monitor.pause_answers
    model, metrics = monitor.last
    assert isinstance(model, NerfModel)
    assert {"loss", "psnr", "steps_per_second", "rays", "samples"} <= set(metrics)
    assert metrics["samples"] > 0 and np.isfinite(metrics["loss"])
    # the snapshot taken at step 3 kept step 3's table while training changed the live one
    assert torch.equal(monitor.kept.field.table, monitor.table_at_3)
    assert not torch.equal(model.field.table, monitor.table_at_3)
    assert monitor.kept.field.table.data_ptr() != model.field.table.data_ptr()
    # the asked-for save (after step 3) and the final one
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3, 6]
    # the saved field is the last one the monitor saw
    saved = NerfModel.load(tmp_path / "run" / "nerf.pt")
    assert torch.equal(saved.field.table, model.field.table)


def test_pause_stops_nerf_training_and_its_time_is_not_training_time(data, tmp_path):
    class Pauser:
        def __init__(self):
            self.steps, self.until = [], None

        def on_step(self, step, model, metrics):
            self.steps.append((step, time.monotonic()))
            if step == 2:
                self.until = time.monotonic() + 1.5

        def paused(self):
            return self.until is not None and time.monotonic() < self.until

        def take_save_request(self):
            return False

        def close(self):
            pass

    monitor = Pauser()
    _, _, metrics = _train(data, tmp_path / "run", 4, monitor=monitor)
    (_, t2), (_, t3) = monitor.steps[1], monitor.steps[2]
    assert t3 - t2 >= 1.5  # no step while paused
    assert metrics["train_seconds"] < (monitor.steps[-1][1] - monitor.steps[0][1])  # the pause is not counted


def test_training_viewer_draws_a_snapshot_of_the_field(data, tmp_path):
    from recon3d.viewer.app import FIELD_RENDERER
    from recon3d.viewer.training import TrainingViewer

    _train(data, tmp_path / "run", 20)
    model = NerfModel.load(tmp_path / "run" / "nerf.pt")
    viewer = TrainingViewer(data, port=0, refresh_seconds=0.2, field=True)
    try:
        app = viewer.app
        assert app.renderer == FIELD_RENDERER and FIELD_RENDERER in app.renderers and app.progressive
        cams = _test_camera(data)
        before = app.render_image(cams)  # no step yet: the viewer's white background
        assert np.allclose(before, 1.0)
        viewer.on_step(1, model, {"loss": 0.01, "psnr": 20.0, "steps_per_second": 3.0, "rays": 512.0,
                                  "samples": 8192.0})
        deadline = time.time() + 30
        while viewer.refreshes < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert viewer.refreshes == 1
        assert app.data.nerf is not model  # a copy
        shown = app.render_image(cams)
        ref, alpha, _ = model.render(cams, 0, background=torch.ones(3))
        assert np.abs(shown - ref.clamp(0, 1).numpy()).max() < 1e-5
        assert float(alpha.max()) > 0.2 and np.abs(shown - before).max() > 0.1  # 20 steps: a hazy field, not nothing
        assert "step** 1" in viewer.gui_metrics.content and "samples/step** 8,192" in viewer.gui_metrics.content
        with torch.no_grad():
            model.field.table.zero_()  # the trainer's next steps change the live field in place
        assert np.abs(app.render_image(cams) - shown).max() == 0.0
    finally:
        viewer.close()


def test_viewer_flag_builds_the_field_viewer_lazily(data, tmp_path, monkeypatch):
    import recon3d.viewer.training as training_viewer

    made = {}

    class FakeViewer:
        def __init__(self, scene_data, host="127.0.0.1", port=8080, *, field=False, refresh_seconds=3.0):
            made.update(data=scene_data, host=host, port=port, field=field, refresh=refresh_seconds, steps=0)

        def on_step(self, step, model, metrics):
            made["steps"] += 1
            made["model"] = model

        def paused(self):
            return False

        def take_save_request(self):
            return False

        def close(self):
            made["closed"] = True

    monkeypatch.setattr(training_viewer, "TrainingViewer", FakeViewer)
    _train(data, tmp_path / "run", 2, viewer=True, port=8123)
    assert made["data"] is data and made["port"] == 8123 and made["field"] is True and made["refresh"] >= 3.0
    assert made["steps"] == 2 and made["closed"] and isinstance(made["model"], NerfModel)


@pytest.mark.browser
@pytest.mark.slow
def test_nerf_training_viewer_in_the_browser(tmp_path):
    """The field appears on the page's canvas while training runs (server-rendered); the page's Pause button
    stops the steps, Resume lets the run finish, and the final field is what `recon3d view` then opens."""
    from recon3d.viewer.source import load_target
    from recon3d.viewer.training import TrainingViewer
    from test_viewer_browser import (
        CHROMIUM,
        CHROMIUM_ARGS,
        browser_camera,
        canvas,
        connect,
        foreground,
        pause_from_browser,
        press,
        set_view,
    )

    from recon3d.cameras import Cameras

    sync_api = pytest.importorskip("playwright.sync_api")
    data = make_synthetic_data(tmp_path / "data", num_views=12, size=32, center=(0.0, 0.0, 0.0), radius=1.0,
                               backend="reference")
    viewer = TrainingViewer(data, port=0, refresh_seconds=1.0, field=True)
    viewer.app.max_resolution = 96  # CPU field renders of a small canvas
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page, client = connect(browser, viewer.app)
    result: dict = {}

    def train() -> None:
        try:
            result["out"] = _train(data, tmp_path / "run", 100000, monitor=viewer, time_budget=2.0)
        except BaseException as exc:  # surfaced by the main thread
            result["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    try:
        set_view(client, Cameras.look_at((2.2, -2.2, 1.3), (0, 0, 0), (0, 0, 1), fov_x=0.9, width=320, height=240))
        for frustum in viewer.app._frustums:  # only the field should draw on the canvas
            frustum.visible = False
        time.sleep(1.0)
        cams = browser_camera(client)
        before = canvas(client, cams)
        thread.start()
        deadline = time.time() + 120
        while viewer.refreshes < 3 and time.time() < deadline and "error" not in result:
            time.sleep(0.2)
        assert "error" not in result, result.get("error")
        assert viewer.refreshes >= 3, "the training viewer never pushed the field"
        step_paused = pause_from_browser(page, viewer)
        deadline = time.time() + 60  # the server's progressive frames of the paused field reach full size
        view = viewer.app.views.get(client.client_id)
        while time.time() < deadline and not (view is not None and view.full_done):
            time.sleep(0.2)
        time.sleep(1.5)
        during = canvas(client, cams)
        assert foreground(during).mean() > 0.02 and foreground(before).mean() < 0.005, "no field in the browser"
        press(page, "Resume training")
        deadline = time.time() + 20
        while viewer.paused() and time.time() < deadline:
            time.sleep(0.1)
        assert not viewer.paused()
        thread.join(timeout=300)
        assert not thread.is_alive() and "error" not in result, result.get("error")
        assert viewer.steps[-1] > step_paused
        run = load_target(tmp_path / "run")
        assert run.nerf is not None and len(run.cameras) == 12
    finally:
        page.close()
        viewer.close()
        browser.close()
        pw.stop()
