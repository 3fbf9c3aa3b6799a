"""Camera paths: keyframes taken from the browser's view, interpolated smoothly, rendered to an mp4.

Positions follow a Catmull-Rom spline through the keyframes (it passes through every keyframe and has a
continuous tangent), orientations are slerped between neighbouring keyframes and the vertical FOV is
interpolated linearly; frames are spaced evenly in the keyframe parameter.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recon3d.cameras import Cameras

from .camera import ViewPose, viser_to_cameras
from .host import PanelHost


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions (shortest arc)."""
    q0 = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    q1 = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and −q are the same rotation: take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(dot, 1.0))
    s = math.sin(theta)
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / s


def catmull_rom(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, t: float) -> np.ndarray:
    """Uniform Catmull-Rom point between p1 (t=0) and p2 (t=1)."""
    t2, t3 = t * t, t * t * t
    return 0.5 * (
        2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
    )


def interpolate_path(keyframes: Sequence[ViewPose], num_frames: int, *, loop: bool = False) -> list[ViewPose]:
    """``num_frames`` poses along the path through ``keyframes`` (the first and last frame are keyframes)."""
    if not keyframes:
        raise ValueError("a camera path needs at least one keyframe")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    k = len(keyframes)
    if k == 1:
        return [keyframes[0]] * num_frames
    pos = [np.asarray(p.position, dtype=np.float64) for p in keyframes]
    segments = k if loop else k - 1
    out = []
    for f in range(num_frames):
        u = (f / num_frames if loop else f / max(num_frames - 1, 1)) * segments
        i = min(int(math.floor(u)), segments - 1)
        t = u - i

        def at(j: int) -> int:
            return j % k if loop else min(max(j, 0), k - 1)

        p = catmull_rom(pos[at(i - 1)], pos[at(i)], pos[at(i + 1)], pos[at(i + 2)], t)
        a, b = keyframes[at(i)], keyframes[at(i + 1)]
        out.append(ViewPose(slerp(a.wxyz, b.wxyz, t), p, (1 - t) * a.fov + t * b.fov, (1 - t) * a.aspect + t * b.aspect))
    return out


def path_cameras(poses: Sequence[ViewPose], width: int, height: int) -> Cameras:
    """Cameras (all W×H) for interpolated poses."""
    cams = [viser_to_cameras(p.wxyz, p.position, p.fov, width, height) for p in poses]
    return Cameras.cat(cams)


def render_path_video(
    render_fn: Callable[[Cameras], np.ndarray],
    cameras: Cameras,
    output: str | Path,
    fps: int,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Render every camera with ``render_fn`` (→ H×W×3 in [0,1]) and write an mp4 atomically."""
    import imageio.v2 as imageio
    from rich.progress import Progress

    from recon3d.io_utils import atomic_open

    output = Path(output)
    h, w = int(cameras.height[0]), int(cameras.width[0])
    if w % 2 or h % 2:
        raise ValueError(f"mp4 (yuv420p) needs an even width and height, got {w}×{h}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(output, "wb") as f, Progress(transient=True) as bar:
        task = bar.add_task(f"rendering {output.name}", total=len(cameras))
        writer = imageio.get_writer(f, format="mp4", fps=fps, macro_block_size=1, quality=8)
        try:
            for i in range(len(cameras)):
                if cancel is not None and cancel.is_set():
                    raise InterruptedError("camera-path render cancelled")
                frame = render_fn(cameras[i])
                writer.append_data((np.clip(frame, 0, 1) * 255).round().astype(np.uint8))
                bar.advance(task)
                if progress is not None:
                    progress(i + 1, len(cameras))
        finally:
            writer.close()
    return output


class CameraPathPanel:
    """The 'Camera path' GUI folder: keyframes from the current view, preview, render to mp4."""

    def __init__(self, app: PanelHost) -> None:
        self.app = app
        self.keyframes: list[ViewPose] = []
        self._handles: list = []
        self._spline = None
        self._busy = threading.Lock()
        self.last_video: Path | None = None
        gui = app.server.gui
        self.output_dir = Path(app.data.base_dir or Path.cwd()).resolve()
        with gui.add_folder("Camera path", expand_by_default=False):
            self.add_button = gui.add_button("Add keyframe (current view)")
            self.clear_button = gui.add_button("Clear keyframes")
            self.loop = gui.add_checkbox("Loop", initial_value=False)
            self.duration = gui.add_number("Duration (s)", initial_value=4.0, min=0.1, max=600.0, step=0.1)
            self.fps = gui.add_number("FPS", initial_value=24, min=1, max=120, step=1)
            self.width = gui.add_number("Width", initial_value=640, min=16, max=4096, step=2)
            self.height = gui.add_number("Height", initial_value=480, min=16, max=4096, step=2)
            # a file name inside output_dir: whoever reaches the page must not choose where the server writes
            self.output = gui.add_text("Output (.mp4)", initial_value="camera_path.mp4", hint=f"saved in {self.output_dir}")
            self.preview_button = gui.add_button("Preview")
            self.render_button = gui.add_button("Render video")
            self.progress = gui.add_progress_bar(0.0, visible=False)
            self.status = gui.add_markdown("0 keyframes")

        self.add_button.on_click(lambda event: self.add_keyframe_from(event.client))
        self.clear_button.on_click(lambda _event: self.clear())
        self.preview_button.on_click(lambda event: self._spawn(self.preview, event.client))
        self.render_button.on_click(lambda _event: self._spawn(self.render_video))

    def _spawn(self, fn, *args) -> None:
        threading.Thread(target=fn, args=args, daemon=True, name="recon3d-camera-path").start()

    def add_keyframe_from(self, client) -> ViewPose:
        """Append the client's current view as a keyframe."""
        cam = client.camera
        pose = ViewPose(np.array(cam.wxyz), np.array(cam.position), float(cam.fov), float(cam.aspect))
        self.add_keyframe(pose)
        return pose

    def add_keyframe(self, pose: ViewPose) -> None:
        """Append a keyframe and draw it."""
        self.keyframes.append(pose)
        i = len(self.keyframes) - 1
        self._handles.append(
            self.app.server.scene.add_camera_frustum(
                f"/camera_path/key_{i:03d}",
                fov=pose.fov,
                aspect=pose.aspect,
                scale=0.05 * self.app._extent,
                color=(230, 40, 120),
                wxyz=pose.wxyz,
                position=pose.position,
            )
        )
        self._redraw_spline()
        self.status.content = f"{len(self.keyframes)} keyframes"

    def clear(self) -> None:
        """Remove every keyframe."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.keyframes.clear()
        self._redraw_spline()
        self.status.content = "0 keyframes"

    def _redraw_spline(self) -> None:
        if self._spline is not None:
            self._spline.remove()
            self._spline = None
        if len(self.keyframes) >= 2:
            pts = np.stack([p.position for p in interpolate_path(self.keyframes, 100, loop=bool(self.loop.value))])
            self._spline = self.app.server.scene.add_spline_catmull_rom(
                "/camera_path/spline", pts, thickness=2.0, thickness_units="screen", color=(230, 40, 120)
            )

    def num_frames(self) -> int:
        """Frames the video will have."""
        return max(1, int(round(float(self.duration.value) * int(self.fps.value))))

    def cameras(self) -> Cameras:
        """The path's cameras at the chosen video size."""
        poses = interpolate_path(self.keyframes, self.num_frames(), loop=bool(self.loop.value))
        return path_cameras(poses, int(self.width.value) // 2 * 2, int(self.height.value) // 2 * 2)

    def output_path(self) -> Path:
        """Where the video goes: the named .mp4 inside ``output_dir``; anything else raises ValueError."""
        name = str(self.output.value).strip()
        path = (self.output_dir / name).resolve()
        if path.suffix.lower() != ".mp4":
            raise ValueError(f"the output must be an .mp4 file, got {name!r}")
        if not path.is_relative_to(self.output_dir):
            raise ValueError(f"the output must lie inside {self.output_dir}, got {name!r}")
        return path

    def preview(self, client) -> None:
        """Fly the client's view along the path in real time."""
        if not self.keyframes:
            self.status.content = "add a keyframe first"
            return
        poses = interpolate_path(self.keyframes, self.num_frames(), loop=bool(self.loop.value))
        dt = 1.0 / int(self.fps.value)
        for pose in poses:
            with client.atomic():
                client.camera.wxyz = pose.wxyz
                client.camera.position = pose.position
                client.camera.fov = pose.fov
            time.sleep(dt)

    def render_video(self) -> Path | None:
        """Render the path with recon3d into the output file, showing progress in the GUI."""
        if not self.keyframes:
            self.status.content = "add a keyframe first"
            return None
        if not self._busy.acquire(blocking=False):
            self.status.content = "a render is already running"
            return None
        try:
            self.render_button.disabled = True
            self.progress.value = 0.0
            self.progress.visible = True
            cams = self.cameras()

            def progress(done: int, total: int) -> None:
                self.progress.value = 100.0 * done / total
                self.status.content = f"rendering frame {done}/{total}"

            out = render_path_video(self.app.render_image, cams, self.output_path(),
                                    int(self.fps.value), progress)
            self.last_video = out
            self.status.content = f"wrote `{out}` ({len(cams)} frames)"
            return out
        except Exception as exc:  # shown to the user in the panel; the server keeps running
            self.status.content = f"render failed: {exc}"
            return None
        finally:
            self.render_button.disabled = False
            self.progress.visible = False
            self._busy.release()

