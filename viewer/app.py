"""The viewer application: a viser server showing one GaussianScene, its cameras and sparse points.

Two ways of drawing the scene:

* ``browser splats`` — viser's own WebGL splat renderer draws the Gaussians client side (fast, SH DC
  colour only);
* ``recon3d`` — the server renders each client's current camera with ``recon3d.render`` (exact SH colour,
  depth and alpha) and streams it as the scene background. While the camera moves the resolution drops to
  keep each frame near ``TARGET_FRAME_SECONDS``; once it rests a full-resolution frame follows (the
  approach of nerfstudio's viewer).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recon3d.bounds import framing_pose, outside_bounds, scene_bounds
from recon3d.cameras import Cameras
from recon3d.errors import Recon3dError
from recon3d.scene import GaussianScene

from .camera import ViewPose, camera_up_direction, cameras_to_view_pose, render_size, viser_to_cameras
from .server import DEFAULT_PORT, start_viser
from .source import ViewerData

RENDERERS = ("browser splats", "recon3d")
FIELD_RENDERER = "NeRF field"  # a NeRF run's field, rendered on the server (offered only for NeRF runs)
SERVER_RENDERERS = ("recon3d", FIELD_RENDERER)
OUTPUTS = ("RGB", "depth", "alpha")
TARGET_FRAME_SECONDS = 0.25  # while moving: ~4 frames/s on a CPU, the resolution adapts to hold it
SETTLE_SECONDS = 0.3  # camera still this long -> render at full resolution
MIN_SCALE = 0.1
THUMBNAIL_SIDE = 128


def colorize_depth(depth: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """H×W depth to an RGB image (near = warm, far = cool) over the background where nothing was drawn."""
    valid = alpha > 0.5
    out = np.empty(depth.shape + (3,), dtype=np.float32)
    out[:] = background
    if not valid.any():
        return out
    near, far = np.percentile(depth[valid], [2.0, 98.0])
    t = np.clip((depth - near) / max(far - near, 1e-9), 0.0, 1.0)
    # a short perceptual ramp (yellow -> orange -> purple -> dark blue), interpolated per channel
    stops = np.array([[0.99, 0.91, 0.15], [0.96, 0.52, 0.19], [0.72, 0.20, 0.42], [0.33, 0.06, 0.51], [0.05, 0.03, 0.22]])
    pos = t * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    rgb = stops[lo] * (1 - frac) + stops[lo + 1] * frac
    out[valid] = rgb[valid]
    return out


class _ClientView:
    """One connected browser: its server-side render loop for the ``recon3d`` renderer."""

    def __init__(self, app: ViewerApp, client) -> None:
        self.app = app
        self.client = client
        self.scale = 0.5
        self.last_move = time.time()
        self.full_done = False
        self.refine = 0.0  # progressive mode: the scale of the last frame rendered at rest
        self.generation = 0  # bumped by every move or settings change; a frame only completes its own
        self.last_frame: dict | None = None
        self.wake = threading.Event()
        self.stopped = False
        client.camera.on_update(lambda _cam: self.moved())
        self.thread = threading.Thread(target=self._loop, name=f"recon3d-view-{client.client_id}", daemon=True)
        self.thread.start()

    def moved(self) -> None:
        self.last_move = time.time()
        self.generation += 1
        self.full_done = False
        self.refine = 0.0
        self.wake.set()

    def invalidate(self) -> None:
        self.generation += 1
        self.full_done = False
        self.refine = 0.0
        self.wake.set()

    def _loop(self) -> None:
        while not self.stopped:
            self.wake.wait(0.1)
            self.wake.clear()
            if self.app.renderer not in SERVER_RENDERERS or self.full_done:
                continue
            try:
                cam = self.client.camera
                position, wxyz, fov = np.array(cam.position), np.array(cam.wxyz), float(cam.fov)
                canvas_w, canvas_h = int(cam.image_width), int(cam.image_height)
            except AssertionError:  # the browser has not reported its camera yet
                continue
            if canvas_w <= 0 or canvas_h <= 0:
                continue
            started = time.time()
            generation = self.generation
            moving = started - self.last_move < SETTLE_SECONDS
            scale = self.scale if moving else 1.0
            if not moving and self.app.progressive and self.refine < 1.0:
                # a slow renderer (the NeRF field) refines at rest: first at the moving frames' scale (fast), then
                # each frame doubles the side, up to full size
                self.refine = self.scale if self.refine <= 0 else min(1.0, 2.0 * self.refine)
                full = render_size(canvas_w, canvas_h, self.app.max_resolution, 1.0)
                if render_size(canvas_w, canvas_h, self.app.max_resolution, self.refine) == full:
                    self.refine = 1.0  # capped by the maximum resolution: this frame is already the full one
                scale = self.refine
            width, height = render_size(canvas_w, canvas_h, self.app.max_resolution, scale)
            cameras = viser_to_cameras(wxyz, position, fov, width, height)
            try:
                t0 = time.perf_counter()
                image = self.app.render_image(cameras)
                seconds = time.perf_counter() - t0
            except Exception as exc:  # a render failure must not kill the loop; say it in the GUI
                self.app.set_status(f"render failed: {exc}")
                self.full_done = True
                continue
            if moving:
                # frame time grows with pixel count, i.e. with scale²
                self.scale = float(np.clip(scale * math.sqrt(TARGET_FRAME_SECONDS / max(seconds, 1e-3)), MIN_SCALE, 1.0))
            if self.app.renderer not in SERVER_RENDERERS:
                continue  # switched back to browser splats while rendering: do not paint over them
            # lossless PNG for the resting frame, JPEG (smaller, faster) while moving
            self.client.scene.set_background_image(
                (image * 255).round().astype(np.uint8), format="jpeg" if moving else "png", jpeg_quality=85
            )
            self.last_frame = {
                "cameras": cameras,
                "image": image,
                "size": (width, height),
                "full": not moving and scale >= 1.0,
                "seconds": seconds,
                "time": time.time(),
                "generation": generation,
            }
            self.app.set_status(f"recon3d {width}×{height} in {seconds * 1000:.0f} ms ({self.app.backend_in_use})")
            # a change that came in while this frame rendered (new output mode, new scene) needs another frame
            if self.last_move <= started and not moving and self.generation == generation and scale >= 1.0:
                self.full_done = True
            else:
                self.wake.set()


class ViewerApp:
    """A viser server showing ``data``; build it, then call ``serve_forever`` or keep a reference alive."""

    def __init__(
        self,
        data: ViewerData,
        *,
        host: str | None = None,
        port: int = DEFAULT_PORT,
        allow_remote: bool | None = None,
        backend: str = "auto",
        max_resolution: int = 1024,
        generate_panel: bool = True,
        label: str | None = None,
        search_panel: bool = True,
        library: str | Path | None = None,
    ) -> None:
        self.data = data
        self._lock = threading.RLock()
        self.scene = data.scene.detach().to("cpu")
        self.backend = backend
        self.backend_in_use = backend
        self.max_resolution = int(max_resolution)
        # a NeRF run (``data.nerf``): its field is drawn on the server, at progressive resolution
        self.renderers = RENDERERS + ((FIELD_RENDERER,) if data.nerf is not None else ())
        self.renderer = FIELD_RENDERER if data.nerf is not None else RENDERERS[0]
        self.progressive = data.nerf is not None
        self.output = OUTPUTS[0]
        self.splat_scale = 1.0
        self.background = np.array([1.0, 1.0, 1.0], dtype=np.float32)
        self.sh_degree = self.scene.sh_degree
        self.views: dict[int, _ClientView] = {}
        self._status = "ready"
        self._splats = None
        self._frustums: list = []
        self._thumbnails: dict[int, np.ndarray] = {}
        self._thumbnail_thread: threading.Thread | None = None
        self._points_handle = None
        self._crop: tuple[np.ndarray, np.ndarray] | None = None  # (lo, hi) when the crop box is on
        self._crop_handle = None
        allow = (host is not None) if allow_remote is None else allow_remote
        self.server, self.url = start_viser(host, port, allow_remote=allow, label=label)
        self.port = self.server.get_port()
        self._bounds = self._robust_bounds()
        self._extent = float(np.linalg.norm(self._bounds[1] - self._bounds[0])) or 1.0
        self._setup_world()
        self._build_gui()
        self._update_splats()
        self._add_points()
        self._add_cameras()
        self.camera_path = None
        from .camera_path import CameraPathPanel

        self.camera_path = CameraPathPanel(self)
        self.generate = None
        if generate_panel:
            from .generate_panel import GeneratePanel, generator_available

            if generator_available():
                self.generate = GeneratePanel(self)
        self.search = None
        if search_panel:
            from .search_panel import SearchPanel, search_available

            if search_available():
                self.search = SearchPanel(self, library=library)
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)

    # ------------------------------------------------------------------ set-up
    def _robust_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The scene's robust box (``recon3d.bounds``); before any Gaussian exists, the sparse points' or the
        cameras' percentile box."""
        if len(self.scene) > 0:
            return scene_bounds(self.scene)
        pts = self.data.points
        if pts is None or len(pts) < 10:
            if self.data.cameras is not None and len(self.data.cameras) > 1:
                pts = self.data.cameras.centers().double().numpy()
            else:
                return np.full(3, -1.0), np.full(3, 1.0)
        lo, hi = np.percentile(np.asarray(pts, dtype=np.float64), [2.0, 98.0], axis=0)
        pad = 1e-3 + 0.05 * (hi - lo)
        return lo - pad, hi + pad

    def _scene_center(self) -> np.ndarray:
        return 0.5 * (self._bounds[0] + self._bounds[1])

    def up_direction(self) -> np.ndarray:
        """+Z for upright worlds (oriented runs, generated scenes, no cameras), else the cameras' mean up."""
        cams = self.data.cameras
        if self.data.z_up or cams is None or len(cams) == 0:
            return np.array([0.0, 0.0, 1.0])
        return camera_up_direction(cams)

    def _setup_world(self) -> None:
        cams = self.data.cameras
        ic = self.server.initial_camera
        up = self.up_direction()
        self.server.scene.set_up_direction(tuple(float(v) for v in up))
        ic.up = tuple(float(v) for v in up)
        if cams is not None and len(cams) > 0 and len(self.scene) == 0:
            # nothing trained yet (a live training view): start at the first training camera
            pose = cameras_to_view_pose(cams, self._train_indices()[0] if self._train_indices() else 0)
            center = self._scene_center()
            forward = self._forward(pose)
            distance = max(float(np.dot(center - pose.position, forward)), 0.1 * self._extent)
            ic.position = tuple(float(v) for v in pose.position)
            ic.look_at = tuple(float(v) for v in pose.position + forward * distance)
            ic.fov = float(pose.fov)
            return
        lo, hi = self._bounds
        direction, fov = None, float(ic.fov)
        if cams is not None and len(cams) > 0:
            # frame the robust bounds from the first training camera's side, with its field of view
            pose = cameras_to_view_pose(cams, self._train_indices()[0] if self._train_indices() else 0)
            direction, fov = pose.position - self._scene_center(), float(pose.fov)
        # the browser's canvas is wider than tall on a desktop: the vertical FOV is the narrower one
        eye, target, _ = framing_pose(lo, hi, direction=direction, up=up, fov_x=fov, fov_y=fov)
        ic.fov = fov
        ic.position = tuple(float(v) for v in eye)
        ic.look_at = tuple(float(v) for v in target)

    @staticmethod
    def _forward(pose: ViewPose) -> np.ndarray:
        from .camera import quat_wxyz_to_rotmat

        return quat_wxyz_to_rotmat(pose.wxyz)[:, 2]

    def _train_indices(self) -> list[int]:
        if self.data.cameras is None:
            return []
        splits = self.data.splits or ["train"] * len(self.data.cameras)
        return [i for i, s in enumerate(splits) if s == "train"] or list(range(len(self.data.cameras)))

    def _build_gui(self) -> None:
        gui = self.server.gui
        with gui.add_folder("View"):
            self.gui_renderer = gui.add_dropdown("Renderer", self.renderers, initial_value=self.renderer)
            self.gui_output = gui.add_dropdown("Output", OUTPUTS, initial_value=self.output)
            degrees = tuple(str(d) for d in range(self.scene.sh_degree + 1))
            self.gui_sh = gui.add_dropdown("SH degree", degrees, initial_value=degrees[-1])
            self.gui_scale = gui.add_slider("Splat scale", min=0.1, max=3.0, step=0.05, initial_value=1.0)
            self.gui_background = gui.add_rgb("Background", initial_value=(255, 255, 255))
            self.gui_maxres = gui.add_slider(
                "Max resolution", min=64, max=2048, step=32, initial_value=min(2048, max(64, self.max_resolution))
            )
            self.gui_show_cameras = gui.add_checkbox("Show cameras", initial_value=True)
            self.gui_show_photos = gui.add_checkbox("Show photos", initial_value=False,
                                                    hint="the training photos on the camera frustums")
            self.gui_show_points = gui.add_checkbox("Show sparse points", initial_value=False)
            self.gui_status = gui.add_markdown(self._status)
        with gui.add_folder("Crop", expand_by_default=False):
            lo, hi = self._bounds
            step = float(10 ** np.floor(np.log10(max(self._extent, 1e-6) / 200)))
            self.gui_crop = gui.add_checkbox("Crop to box", initial_value=False,
                                             hint="show only the Gaussians inside the box; export honours it with --crop")
            self.gui_crop_min = gui.add_vector3("Box min", tuple(float(v) for v in lo), step=step)
            self.gui_crop_max = gui.add_vector3("Box max", tuple(float(v) for v in hi), step=step)
            self.gui_crop_command = gui.add_markdown(self._crop_command())
        with gui.add_folder("Info"):
            self.gui_info = gui.add_markdown(self._info_text())

        @self.gui_renderer.on_update
        def _(_event) -> None:
            self.set_renderer(self.gui_renderer.value)

        @self.gui_output.on_update
        def _(_event) -> None:
            self.output = self.gui_output.value
            if self.output != "RGB" and self.renderer not in SERVER_RENDERERS:
                self.gui_renderer.value = "recon3d"  # the browser's splats only draw colour
                self.set_renderer("recon3d")
            self.invalidate()

        @self.gui_sh.on_update
        def _(_event) -> None:
            self.sh_degree = int(self.gui_sh.value)
            self.invalidate()

        @self.gui_scale.on_update
        def _(_event) -> None:
            self.splat_scale = float(self.gui_scale.value)
            self._update_splats()
            self.invalidate()

        @self.gui_background.on_update
        def _(_event) -> None:
            self.background = np.asarray(self.gui_background.value, dtype=np.float32) / 255.0
            self._apply_background()
            self.invalidate()

        @self.gui_maxres.on_update
        def _(_event) -> None:
            self.max_resolution = int(self.gui_maxres.value)
            self.invalidate()

        @self.gui_show_cameras.on_update
        def _(_event) -> None:
            for f in self._frustums:
                f.visible = bool(self.gui_show_cameras.value)

        @self.gui_show_points.on_update
        def _(_event) -> None:
            if self._points_handle is not None:
                self._points_handle.visible = bool(self.gui_show_points.value)

        @self.gui_show_photos.on_update
        def _(_event) -> None:
            self.show_photos(bool(self.gui_show_photos.value))

        def crop_changed(_event) -> None:
            box = None
            if self.gui_crop.value:
                lo = np.minimum(self.gui_crop_min.value, self.gui_crop_max.value)
                hi = np.maximum(self.gui_crop_min.value, self.gui_crop_max.value)
                box = (np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
            self.set_crop(box)

        for handle in (self.gui_crop, self.gui_crop_min, self.gui_crop_max):
            handle.on_update(crop_changed)

    def _info_text(self) -> str:
        s = self.scene
        lo, hi = self._bounds
        fmt = lambda t: "(" + ", ".join(f"{float(v):.3g}" for v in t) + ")"
        ncam = 0 if self.data.cameras is None else len(self.data.cameras)
        npts = 0 if self.data.points is None else len(self.data.points)
        outside = int(outside_bounds(s, lo, hi).sum()) if len(s) else 0
        share = f" ({100 * outside / len(s):.1f} %)" if len(s) else ""
        return (
            f"**Gaussians:** {len(s):,}  \n**SH degree:** {s.sh_degree}  \n"
            f"**Bounds:** {fmt(lo)} – {fmt(hi)}  \n**Outside the bounds (floaters):** {outside:,}{share}  \n"
            f"**Cameras:** {ncam}  \n**Sparse points:** {npts:,}  \n"
            f"**Source:** `{self.data.source}`"
        )

    def _crop_command(self) -> str:
        lo = np.minimum(self.gui_crop_min.value, self.gui_crop_max.value)
        hi = np.maximum(self.gui_crop_min.value, self.gui_crop_max.value)
        nums = " ".join(f"{float(v):.4g}" for v in (*lo, *hi))
        target = self.data.base_dir if self.data.base_dir is not None and Path(self.data.source).is_dir() else self.data.source
        return f"Export this box:  \n`recon3d export {target} --crop {nums} …`"

    def set_crop(self, box: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Show only the Gaussians inside ``box`` = (lo, hi) (None: all of them); draws the box's wireframe."""
        with self._lock:
            self._crop = box
            if self._crop_handle is not None:
                self._crop_handle.remove()
                self._crop_handle = None
            if box is not None:
                lo, hi = box
                self._crop_handle = self.server.scene.add_box(
                    "/crop_box", color=(230, 120, 20), dimensions=tuple(float(v) for v in np.maximum(hi - lo, 1e-9)),
                    wireframe=True, position=tuple(float(v) for v in 0.5 * (lo + hi)),
                )  # fmt: skip
            self.gui_crop_command.content = self._crop_command()
            self._update_splats()
        self.invalidate()

    def visible_scene(self) -> GaussianScene:
        """The scene as drawn: cropped to the crop box when it is on."""
        scene = self.scene
        if self._crop is None or len(scene) == 0:
            return scene
        keep = ~outside_bounds(scene, *self._crop)
        return scene[keep] if not bool(keep.all()) else scene

    # ------------------------------------------------------------------ scene content
    def _update_splats(self) -> None:
        with self._lock:
            scene = self.visible_scene()
            if len(scene) == 0:
                if self._splats is not None:
                    self._splats.remove()
                    self._splats = None
                return
            with torch.no_grad():
                cov = (scene.covariances() * self.splat_scale**2).double().numpy()
                centers = scene.means.double().numpy()
                rgbs = scene.base_colors().double().numpy()
                opacities = scene.activated_opacities().double().numpy()[:, None]
            self._splats = self.server.scene.add_gaussian_splats(
                "/scene/splats", centers, cov, rgbs, opacities, visible=self.renderer == "browser splats"
            )

    def _add_points(self) -> None:
        pts = self.data.points
        if pts is None or len(pts) == 0:
            self.gui_show_points.disabled = True
            return
        colors = self.data.point_colors
        if colors is None:
            colors = np.full((len(pts), 3), 0.3)
        self._points_handle = self.server.scene.add_point_cloud(
            "/scene/sparse_points",
            np.asarray(pts, dtype=np.float32),
            (np.clip(np.asarray(colors), 0, 1) * 255).astype(np.uint8),
            point_size=0.003 * self._extent,
            visible=bool(self.gui_show_points.value),
        )

    def _add_cameras(self) -> None:
        cams = self.data.cameras
        if cams is None or len(cams) == 0:
            self.gui_show_cameras.disabled = True
            return
        centers = cams.centers()
        spread = float((centers.max(0).values - centers.min(0).values).norm()) if len(cams) > 1 else self._extent
        # small, so that the scene and not a wall of frustums fills the first screen
        size = 0.015 * max(min(spread, 2 * self._extent), 1e-3)
        self.frustum_size = size
        for i in range(len(cams)):
            pose = cameras_to_view_pose(cams, i)
            split = self.data.splits[i] if i < len(self.data.splits) else "train"
            handle = self.server.scene.add_camera_frustum(
                f"/cameras/{i:05d}",
                fov=pose.fov,
                aspect=pose.aspect,
                scale=size,
                thickness=0.015 * size,
                color=(40, 90, 200) if split == "train" else (220, 120, 30),
                wxyz=pose.wxyz,
                position=pose.position,
            )
            handle.on_click(lambda event, i=i: self.go_to_camera(event.client, i))
            self._frustums.append(handle)

    def show_photos(self, on: bool) -> None:
        """Put the training photos on the camera frustums (decoded once, in the background) or take them off."""
        if not on:
            for handle in self._frustums:
                handle.image = None
            return
        if self._thumbnail_thread is None or not self._thumbnail_thread.is_alive():
            # thumbnails decode in the background: a few hundred images must not block the GUI
            self._thumbnail_thread = threading.Thread(target=self._load_thumbnails, daemon=True,
                                                      name="recon3d-thumbnails")  # fmt: skip
            self._thumbnail_thread.start()

    def _load_thumbnails(self) -> None:
        from PIL import Image

        for i, handle in enumerate(list(self._frustums)):
            if not self.gui_show_photos.value:
                return
            if i not in self._thumbnails:
                path = self.data.image_paths[i] if i < len(self.data.image_paths) else None
                if path is None or not Path(path).is_file():
                    continue
                try:
                    with Image.open(path) as im:
                        im = im.convert("RGB")
                        im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                        self._thumbnails[i] = np.asarray(im)
                except Exception:  # a thumbnail is decoration: an unreadable image just has none
                    continue
            handle.image = self._thumbnails[i]

    def go_to_camera(self, client, index: int) -> None:
        """Move ``client``'s view onto camera ``index`` (position, orientation and field of view)."""
        pose = cameras_to_view_pose(self.data.cameras, index)
        with client.atomic():
            client.camera.wxyz = pose.wxyz
            client.camera.position = pose.position
            client.camera.fov = pose.fov

    def set_scene(self, scene: GaussianScene, *, source: str | None = None) -> None:
        """Replace the scene shown (live training, a generated scene); thread-safe."""
        with self._lock:
            self.scene = scene.detach().to("cpu")
            if len(self.scene) > 0:
                self._bounds = scene_bounds(self.scene)
            if source is not None:
                self.data.source = source
            degrees = tuple(str(d) for d in range(self.scene.sh_degree + 1))
            if tuple(self.gui_sh.options) != degrees:
                self.gui_sh.options = degrees
                self.gui_sh.value = degrees[-1]
            self.sh_degree = min(int(self.gui_sh.value), self.scene.sh_degree)
            self._update_splats()
            self.gui_info.content = self._info_text()
        self.invalidate()

    def set_field(self, model, *, source: str | None = None) -> None:
        """Replace the NeRF field drawn by the "NeRF field" renderer (a NeRF training's snapshot); thread-safe."""
        with self._lock:
            self.data.nerf = model
            if source is not None:
                self.data.source = source
            self.gui_info.content = self._info_text()
        self.invalidate()

    def show_other_scene(self, scene: GaussianScene, *, source: str | None = None) -> None:
        """Show a different scene (a search result): the old scene's cameras, photos and sparse points are
        hidden, since they belong to it, and every browser is pointed at the whole new scene."""
        if self.data.nerf is not None:  # a NeRF run was shown: its field is not the new scene
            self.data.nerf = None
            if self.renderer == FIELD_RENDERER:
                self.gui_renderer.value = RENDERERS[0]
                self.set_renderer(RENDERERS[0])
        self.set_scene(scene, source=source)
        with self._lock:
            self.gui_show_cameras.value = False
            self.gui_show_points.value = False
            for handle in self._frustums:
                handle.visible = False
            if self._points_handle is not None:
                self._points_handle.visible = False
            lo, hi = self._bounds
            self._extent = float(np.linalg.norm(hi - lo)) or 1.0
            ic = self.server.initial_camera
            fov = float(ic.fov)
            eye, target, _ = framing_pose(lo, hi, up=self.up_direction(), fov_x=fov, fov_y=fov)
            ic.position, ic.look_at = tuple(float(v) for v in eye), tuple(float(v) for v in target)
            for client in list(self.server.get_clients().values()):
                with client.atomic():
                    client.camera.position = tuple(float(v) for v in eye)
                    client.camera.look_at = tuple(float(v) for v in target)
        self.invalidate()

    # ------------------------------------------------------------------ rendering
    def set_renderer(self, renderer: str) -> None:
        """Switch between the browser's splats and server-side recon3d renders."""
        if renderer not in self.renderers:
            raise ValueError(f"renderer must be one of {self.renderers}, got {renderer!r}")
        self.renderer = renderer
        if self._splats is not None:
            self._splats.visible = renderer == "browser splats"
        if renderer == "browser splats":
            self._apply_background()
            self.set_status("browser splats (SH degree 0 colour)")
        self.invalidate()

    def _apply_background(self) -> None:
        if self.renderer == "browser splats":
            solid = np.broadcast_to((self.background * 255).round().astype(np.uint8), (4, 4, 3)).copy()
            self.server.scene.set_background_image(solid, format="png")

    def set_status(self, text: str) -> None:
        """Show one line of status under the view settings."""
        if text != self._status:
            self._status = text
            self.gui_status.content = text

    def invalidate(self) -> None:
        """Ask every client's render loop for a new frame (settings or scene changed)."""
        for view in list(self.views.values()):
            view.invalidate()

    def render_image(self, cameras: Cameras) -> np.ndarray:
        """Render one camera with recon3d in the current output mode; H×W×3 float32 in [0,1]."""
        with self._lock:
            scene = self.visible_scene()
            sh = min(self.sh_degree, scene.sh_degree)
        bg = torch.from_numpy(self.background.astype(np.float32))
        h, w = int(cameras.height[0]), int(cameras.width[0])
        if self.renderer == FIELD_RENDERER and self.data.nerf is not None:
            out = self._render_field(cameras, bg)
        elif len(scene) == 0:
            return np.broadcast_to(self.background, (h, w, 3)).astype(np.float32)
        else:
            out = self._render(scene, cameras, bg, sh)
        if self.output == "RGB":
            return out.rgb[0].clamp(0, 1).numpy().astype(np.float32)
        alpha = out.alpha[0, ..., 0].numpy()
        if self.output == "alpha":
            return np.repeat(alpha[..., None], 3, axis=-1).astype(np.float32)
        return colorize_depth(out.depth[0, ..., 0].numpy(), alpha, self.background)

    def _render_field(self, cameras: Cameras, bg: torch.Tensor):
        """The NeRF run's field from ``cameras[0]`` (batched like a RenderOutput: rgb, alpha, depth)."""
        from types import SimpleNamespace

        with self._lock:
            nerf = self.data.nerf  # a training viewer swaps it for a newer snapshot while this frame renders
        rgb, alpha, depth = nerf.render(cameras, 0, background=bg)
        self.backend_in_use = f"NeRF field, {getattr(nerf, 'device', 'cpu')}"
        return SimpleNamespace(rgb=rgb[None], alpha=alpha[None], depth=depth[None])

    def _render(self, scene: GaussianScene, cameras: Cameras, bg: torch.Tensor, sh: int):
        from recon3d.render import render

        with torch.no_grad():
            try:
                out = render(scene, cameras, background=bg, sh_degree=sh, backend=self.backend,
                             antialiased=self.data.antialiased)
                self.backend_in_use = self.backend
                return out
            except Recon3dError as exc:  # BackendUnavailable or a failed kernel build
                if self.backend != "auto":
                    raise
                print(f"recon3d viewer: {exc}; using the reference rasterizer (slow)", file=sys.stderr)
                self.backend = "reference"
                self.backend_in_use = "reference"
                return render(scene, cameras, background=bg, sh_degree=sh, backend="reference",
                              antialiased=self.data.antialiased)

    # ------------------------------------------------------------------ clients
    def _on_connect(self, client) -> None:
        self.views[client.client_id] = _ClientView(self, client)

    def _on_disconnect(self, client) -> None:
        view = self.views.pop(client.client_id, None)
        if view is not None:
            view.stopped = True
            view.wake.set()

    def wait_for_client(self, timeout: float = 60.0, with_camera: bool = True):
        """Block until a browser is connected (and has reported its camera); returns its ClientHandle."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for client in list(self.server.get_clients().values()):
                if not with_camera:
                    return client
                try:
                    client.camera.position  # noqa: B018 - raises until the browser has sent its camera
                    return client
                except AssertionError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"no browser connected to {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the render loops and the server."""
        for view in list(self.views.values()):
            view.stopped = True
            view.wake.set()
        self.server.stop()

    def serve_forever(self, poll: Callable[[], None] | None = None) -> None:
        """Block until Ctrl-C (then stop the server)."""
        try:
            while True:
                time.sleep(0.5)
                if poll is not None:
                    poll()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
