"""The viewer in a real headless Chromium (Debian's package, software WebGL through SwiftShader).

What the browser shows is read back with viser's ``client.get_render`` (the canvas as PNG) and compared with
``recon3d.render`` from the camera the browser reports:

* browser splats: the drawn foreground covers the same pixels (IoU ≥ 0.9) with the same colour (mean
  |Δ| ≤ 0.03) — viser's splat shader is not ours (DC colour only, its own cut-offs), so equality is not
  expected, but a camera-convention error of even a few pixels fails the IoU (checked by a shifted control);
* "render with recon3d": the canvas equals our render to within PNG quantisation (max |Δ| ≤ 2/255, mean
  |Δ| ≤ 0.5/255), in RGB and in depth mode.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from recon3d.viewer.app import ViewerApp, colorize_depth
from recon3d.viewer.camera import cameras_to_view_pose, viser_to_cameras
from recon3d.viewer.source import load_target
from test_viewer_app import blob_scene, write_run_dir  # tests/ is on sys.path (rootdir conftest)

from recon3d.cameras import Cameras
from recon3d.ply import save_ply
from recon3d.render import render

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--enable-unsafe-swiftshader",
]  # fmt: skip
VIEW_W, VIEW_H = 320, 240  # small canvas: SwiftShader and the CPU rasterizer both scale with pixels
WHITE = torch.ones(3)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    pw = sync_api.sync_playwright().start()
    # Playwright gives every launch a fresh temporary profile (its own --user-data-dir)
    b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close()
    pw.stop()


def connect(browser, app: ViewerApp, size: tuple[int, int] = (VIEW_W, VIEW_H)):
    """Open the viewer in a new page; wait for 'Connected', the camera report and a few seconds of settling."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(app.url)
    page.get_by_text("Connected").first.wait_for(timeout=60_000)
    # viser's "software WebGL" notice is accurate here but would sit over the canvas and the buttons
    page.add_style_tag(content='[class*="mantine-Notification"] { display: none !important; }')
    client = app.wait_for_client(timeout=60)
    time.sleep(3.0)  # software WebGL: let the first frames and the initial-camera messages land
    return page, client


def set_view(client, cameras: Cameras) -> None:
    pose = cameras_to_view_pose(cameras)
    with client.atomic():
        client.camera.wxyz = pose.wxyz
        client.camera.position = pose.position
        client.camera.fov = pose.fov


def browser_camera(client) -> Cameras:
    """recon3d Cameras for what the browser reports it shows (its own echo of the camera)."""
    cam = client.camera
    return viser_to_cameras(np.array(cam.wxyz), np.array(cam.position), float(cam.fov),
                            int(cam.image_width), int(cam.image_height))


def canvas(client, cams: Cameras) -> np.ndarray:
    """The browser's canvas as H×W×3 in [0,1], composited on white (viser's PNG capture is transparent)."""
    h, w = int(cams.height[0]), int(cams.width[0])
    rgba = client.get_render(h, w, transport_format="png", timeout=90).astype(np.float64) / 255.0
    assert rgba.shape == (h, w, 4)
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])


def press(page, name: str) -> None:
    """Click a GUI button in the page. The DOM click goes to the button itself: the panel re-lays out as
    the metrics stream in, and a pointer click aimed at a button that just moved lands beside it."""
    button = page.get_by_role("button", name=name)
    button.wait_for(state="visible", timeout=30_000)
    button.dispatch_event("click")


def pause_from_browser(page, viewer, since_seconds: float = 2.0) -> int:
    """Press the page's Pause button and check the trainer stops stepping: the step in flight may still
    finish; after that no step for ``since_seconds`` (a step here takes milliseconds). Returns that step."""
    press(page, "Pause training")
    deadline = time.time() + 20
    while not viewer.paused() and time.time() < deadline:
        time.sleep(0.1)
    assert viewer.paused()
    step_paused, still_since, deadline = viewer.steps[-1], time.time(), time.time() + 30
    while time.time() < deadline and time.time() - still_since < since_seconds:
        time.sleep(0.2)
        if viewer.steps[-1] != step_paused:
            step_paused, still_since = viewer.steps[-1], time.time()
    assert time.time() - still_since >= since_seconds, "training went on while paused"
    return step_paused


def foreground(img: np.ndarray) -> np.ndarray:
    return np.abs(img - 1.0).max(axis=-1) > 0.15


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def blob_viewer(tmp_path_factory):
    path = tmp_path_factory.mktemp("viewer") / "blobs.ply"
    scene = blob_scene()
    save_ply(scene, path)
    app = ViewerApp(load_target(path), port=0, max_resolution=2048)
    yield app, scene
    app.stop()


def wait_for_full_frame(app: ViewerApp, client, cams: Cameras, timeout: float = 240.0) -> dict:
    """Wait until the server has sent a full-resolution frame for exactly the browser's current camera."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = app.views.get(client.client_id)
        frame = view.last_frame if view is not None else None
        if (frame is not None and frame["full"] and frame["size"] == (int(cams.width[0]), int(cams.height[0]))
                and torch.allclose(frame["cameras"].world_to_camera, cams.world_to_camera, atol=1e-6)
                and view.full_done):
            return frame
        time.sleep(0.2)
    raise AssertionError("the server never sent a full-resolution recon3d frame")


def settled_canvas(app: ViewerApp, client, cams: Cameras, tries: int = 3) -> tuple[dict, np.ndarray]:
    """The server's latest full-resolution frame and the canvas showing it. A camera update from the browser
    makes the server send new (JPEG, lower-resolution) frames; if one arrived while the canvas was captured,
    wait for the next full frame and capture again."""
    for _ in range(tries):
        frame = wait_for_full_frame(app, client, cams)
        time.sleep(1.5)  # the browser decodes the background texture asynchronously
        shown = canvas(client, cams)
        if app.views[client.client_id].last_frame is frame:
            return frame, shown
    raise AssertionError("the server kept sending new frames: the canvas never settled")


def test_browser_splats_appear_where_recon3d_puts_them(browser, blob_viewer):
    app, scene = blob_viewer
    page, client = connect(browser, app)
    try:
        set_view(client, Cameras.look_at((2.2, -2.6, 1.6), (0, 0, 0.2), (0, 0, 1), fov_x=0.9, width=VIEW_W,
                                         height=VIEW_H))
        time.sleep(3.0)
        cams = browser_camera(client)
        shown = canvas(client, cams)
        ours = render(scene, cams, background=WHITE).rgb[0].double().numpy()
        fg_shown, fg_ours = foreground(shown), foreground(ours)
        assert fg_ours.mean() > 0.05, "the test camera should see the scene"
        assert fg_shown.mean() > 0.05, "the browser canvas is blank"
        overlap = iou(fg_shown, fg_ours)
        assert overlap >= 0.9, f"browser splats and recon3d disagree on where the scene is (IoU {overlap:.3f})"
        # control: the same comparison against our image moved by 6 px fails, so the IoU bound is sharp
        assert iou(fg_shown, np.roll(fg_ours, 6, axis=1)) < 0.9
        both = fg_shown & fg_ours
        assert np.abs(shown - ours)[both].mean() <= 0.03
        for channel in range(3):  # each coloured cluster sits at the same place (centroid within 2 px)
            dominant = lambda img, c=channel: both & (img.argmax(-1) == c) & (img.max(-1) - img.min(-1) > 0.3)
            ys_s, xs_s = np.nonzero(dominant(shown))
            ys_o, xs_o = np.nonzero(dominant(ours))
            assert len(xs_s) > 20 and len(xs_o) > 20
            assert abs(xs_s.mean() - xs_o.mean()) < 2 and abs(ys_s.mean() - ys_o.mean()) < 2
    finally:
        page.close()


def test_render_with_recon3d_matches_recon3d_render(browser, blob_viewer):
    app, scene = blob_viewer
    page, client = connect(browser, app)
    try:
        set_view(client, Cameras.look_at((-1.8, -2.4, 2.0), (0, 0, 0.2), (0, 0, 1), fov_x=0.8, width=VIEW_W,
                                         height=VIEW_H))
        time.sleep(2.0)
        app.set_renderer("recon3d")
        cams = browser_camera(client)
        frame, shown = settled_canvas(app, client, cams)
        ours = render(scene, cams, background=WHITE).rgb[0].clamp(0, 1).double().numpy()
        assert np.abs(frame["image"] - ours).max() < 1e-5  # the server streams recon3d.render of that camera
        diff = np.abs(shown - ours)
        assert diff.max() <= 2 / 255 and diff.mean() <= 0.5 / 255, (diff.max(), diff.mean())

        app.output = "depth"
        app.invalidate()
        time.sleep(0.5)
        frame, shown_depth = settled_canvas(app, client, cams)
        out = render(scene, cams, background=WHITE)
        expected = colorize_depth(out.depth[0, ..., 0].numpy(), out.alpha[0, ..., 0].numpy(), np.ones(3))
        assert np.abs(frame["image"] - expected).max() < 1e-5  # the server streams the depth of that camera
        diff = np.abs(shown_depth - expected)
        assert diff.max() <= 2 / 255 and diff.mean() <= 0.5 / 255, (diff.max(), diff.mean())
        assert np.abs(shown_depth - shown).mean() > 0.02  # and it is not the RGB image
    finally:
        app.output = "RGB"
        app.set_renderer("browser splats")
        page.close()


def test_clicking_a_camera_frustum_jumps_to_that_camera(browser, tmp_path):
    run = write_run_dir(tmp_path / "run", blob_scene(), num_cams=4)
    app = ViewerApp(load_target(run), port=0)
    page, client = connect(browser, app, (640, 480))  # wide enough that the GUI panel leaves canvas free
    try:
        app.gui_show_photos.value = True  # photo planes are off by default; the click lands on one
        app.show_photos(True)
        target = 2
        deadline = time.time() + 60
        while time.time() < deadline and app._frustums[target].image is None:
            time.sleep(0.2)
        cams = app.data.cameras
        pose = cameras_to_view_pose(cams, target)
        center = cams.centers()[target].double().numpy()
        # stand inside camera 2's (small) frustum, between its apex and its photo, looking along its axis:
        # the photo fills the view
        forward = cams.world_to_camera[target, 2, :3].double().numpy()
        eye = center + forward * 0.3 * app.frustum_size
        with client.atomic():
            client.camera.wxyz = pose.wxyz
            client.camera.position = eye
            client.camera.fov = pose.fov
        time.sleep(3.0)
        assert np.linalg.norm(np.array(client.camera.position) - center) > 0.2 * app.frustum_size
        page.mouse.click(150, 300)  # left of the GUI panel, below the notice, on the frustum's thumbnail
        deadline = time.time() + 30
        while time.time() < deadline and np.linalg.norm(np.array(client.camera.position) - center) > 1e-3:
            time.sleep(0.2)
        assert np.allclose(client.camera.position, center, atol=1e-3)
        assert abs(abs(float(np.dot(client.camera.wxyz, pose.wxyz))) - 1) < 1e-4
        assert client.camera.fov == pytest.approx(pose.fov, abs=1e-4)
    finally:
        page.close()
        app.stop()


# Enough steps that training is still running when the test pauses it (two viewer refreshes, 1 s apart, come
# first): with the fused CPU loss a step of this tiny scene takes a few milliseconds, and 400 were over by then.
TRAIN_STEPS = 4000


def test_training_viewer_updates_while_training_runs(browser, tmp_path):
    from recon3d.viewer.training import TrainingViewer

    from recon3d.api import reconstruct
    from recon3d.train.synthetic import make_synthetic_data

    data = make_synthetic_data(tmp_path / "data", num_views=8, size=32, num_gaussians=120)
    viewer = TrainingViewer(data, port=0, refresh_seconds=1.0)
    page, client = connect(browser, viewer.app)
    result: dict = {}

    def train() -> None:
        try:
            result["out"] = reconstruct(data, tmp_path / "run", preset="fast", monitor=viewer, quiet=True,
                                        steps=TRAIN_STEPS, init="points", sh_degree=0, eval_renders=0,
                                        checkpoint_every=100000, checkpoint_minutes=1000.0)
        except BaseException as exc:  # surfaced by the main thread
            result["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    try:
        # from afar: software WebGL fills every covered pixel, and a busy page can miss its websocket pings
        set_view(client, Cameras.look_at((5.6, -5.6, 3.2), (0, 0, 0), (0, 0, 1), fov_x=0.9, width=VIEW_W,
                                         height=VIEW_H))
        for frustum in viewer.app._frustums:  # only the scene should draw on the canvas
            frustum.visible = False
        time.sleep(1.0)
        cams = browser_camera(client)
        before = canvas(client, cams)  # nothing trained yet: an empty scene
        thread.start()
        deadline = time.time() + 120
        while viewer.refreshes < 2 and time.time() < deadline and "error" not in result:
            time.sleep(0.2)
        assert "error" not in result, result.get("error")
        assert viewer.refreshes >= 2, "the training viewer never pushed the scene"
        step_paused = pause_from_browser(page, viewer)  # the trainer stops stepping
        time.sleep(1.0)
        during = canvas(client, cams)
        assert foreground(during).mean() > 0.02 and foreground(before).mean() < 0.005, "no scene in the browser"
        press(page, "Save checkpoint")
        press(page, "Resume training")
        deadline = time.time() + 20
        while viewer.paused() and time.time() < deadline:
            time.sleep(0.1)
        assert not viewer.paused()
        thread.join(timeout=180)
        assert not thread.is_alive(), "training did not finish"
        assert "error" not in result, result.get("error")
        assert viewer.steps[-1] > step_paused
        assert len(viewer.history["loss"]) == len(viewer.steps) and np.isfinite(viewer.history["psnr"][-1])
        # the trainer always saves at the end (the last step); the button's checkpoint is the one before that
        steps = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "run" / "checkpoints").glob("ckpt_*.pt"))
        assert steps[-1] == TRAIN_STEPS and len(steps) >= 2 and steps[-2] < TRAIN_STEPS, f"no button checkpoint: {steps}"
        assert viewer.gui_plot.data[0][-1] >= step_paused  # the plot shows the late steps
        # and `recon3d view` opens what the trainer wrote: its scene, every camera, the photos for thumbnails
        run = load_target(tmp_path / "run")
        assert len(run.scene) > 0 and run.scene.is_finite()
        assert len(run.cameras) == 8 and run.splits == data.split
        assert all(p is not None and p.is_file() for p in run.image_paths)
    finally:
        page.close()
        viewer.close()


def _with_far_floaters(scene, count: int = 6):
    """``scene`` plus a few big faint-ish Gaussians kilometres away, as training leaves them."""
    from recon3d.scene import GaussianScene

    g = torch.Generator().manual_seed(5)
    far = (torch.rand(count, 3, generator=g) - 0.5) * 6000
    floaters = GaussianScene.from_points(far, torch.full((count, 3), 0.5), scale=30.0, opacity=0.6)
    return GaussianScene.cat([scene, floaters])


@pytest.mark.parametrize("with_cameras", [True, False])
def test_first_screen_frames_the_scene_despite_far_floaters(browser, tmp_path, with_cameras):
    """The browser's initial camera (what the user sees first) shows the whole scene, neither cropped nor a
    dot, although far floaters stretch the min/max bounds a thousandfold; in a run, it looks from a training
    camera's side."""
    blobs = blob_scene()
    scene = _with_far_floaters(blobs)
    if with_cameras:
        target = write_run_dir(tmp_path / "run", scene, num_cams=4)
    else:
        target = tmp_path / "scene.ply"
        save_ply(scene, target)
    app = ViewerApp(load_target(target), port=0)
    page, client = connect(browser, app)
    try:
        cams = browser_camera(client)
        shown = render(blobs, cams, background=WHITE, backend="reference")
        alpha = shown.alpha[0, ..., 0]
        border = torch.cat([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
        assert float(border.max()) < 0.05, "the scene touches the border of the first screen: cropped"
        assert float(alpha.mean()) > 0.03, "the scene is a dot on the first screen"
        lo, hi = app._bounds
        assert (hi - lo).max() < 5.0  # robust bounds: the blobs, not the floaters
        if with_cameras:
            # from the side of the first training camera (camera 0 is the held-out one): the same horizontal
            # direction, looking down at least 30°
            eye = cams.centers()[0].double().numpy() - 0.5 * (lo + hi)
            train_eye = app.data.cameras.centers()[1].double().numpy() - 0.5 * (lo + hi)
            h, h_train = eye[:2] / np.linalg.norm(eye[:2]), train_eye[:2] / np.linalg.norm(train_eye[:2])
            assert h @ h_train > 0.99
            assert eye[2] / np.linalg.norm(eye) > np.sin(np.radians(29.0))
    finally:
        page.close()
        app.stop()


def test_search_panel_shows_thumbnails_and_opens_the_clicked_result(browser, tmp_path):
    """The Search panel in the page: press Search, the result thumbnails appear as images, press 'Open 1' and
    the browser is framed on that scene and draws it (a blue sphere: the canvas turns blue)."""
    from recon3d.generation.composer import compose_grammar_scene
    from recon3d.generation.grammar import bare_scene

    torch.set_num_threads(1)
    lib = tmp_path / "library"
    lib.mkdir()
    for k, (shape, colour) in enumerate((("cube", "red"), ("sphere", "blue"))):
        scene = compose_grammar_scene(bare_scene(shape, colour), per_object=300, seed=80 + k)[0]
        save_ply(scene, lib / f"{colour}_{shape}.ply")
    save_ply(blob_scene(), tmp_path / "shown.ply")
    app = ViewerApp(load_target(tmp_path / "shown.ply"), port=0, generate_panel=False, library=lib)
    page, client = connect(browser, app, (900, 700))
    try:
        app.search.query.value = "a blue ball"
        app.search.top.value = 2
        press(page, "Search")
        page.get_by_role("button", name="Open 1").wait_for(state="visible", timeout=300_000)
        assert app.search.results[0].rel == "blue_sphere.ply"
        thumbs = page.locator("img")
        deadline = time.time() + 30
        while time.time() < deadline and thumbs.count() < 2:
            time.sleep(0.2)
        assert thumbs.count() >= 2
        page.get_by_role("button", name="Open 2").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "search_panel.png"))  # for a person to look at
        press(page, "Open 1")
        deadline = time.time() + 120
        while time.time() < deadline and app.data.source != str(lib / "blue_sphere.ply"):
            time.sleep(0.2)
        assert app.data.source == str(lib / "blue_sphere.ply")
        time.sleep(3.0)
        assert np.allclose(client.camera.position, app.server.initial_camera.position, atol=1e-3)
        img = canvas(client, browser_camera(client))
        fg = foreground(img)
        assert fg.mean() > 0.01
        mean = img[fg].mean(0)
        assert mean[2] > mean[0] + 0.1 and mean[2] > mean[1] + 0.1, mean  # blue, not the red cube or the blobs
    finally:
        page.close()
        app.stop()
