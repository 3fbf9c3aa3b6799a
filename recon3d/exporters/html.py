"""A scene as a web page: viser's bundled client with the scene serialized into it, opened with no server.

viser (already recon3d's viewer) ships its built browser client inside the Python package
(``viser/client/build/index.html``, one self-contained file) and can serialize a scene into it
(``server.scene.as_html()``: the messages that build the scene, base64-encoded in the page). The page
opens from ``file://`` with no server and no network: nothing is fetched at run time.

The page draws the splats with viser's own splat shader (view-independent DC colour, as the viewer's
"browser splats" mode), from the run's first training camera when the source has cameras, else from an
elevated three-quarter view of the scene centre (z up, as the viewer does).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io_utils import atomic_write_text
from ..scene import GaussianScene


def scene_html(scene: GaussianScene, cameras=None, *, max_gaussians: int | None = None, dark_mode: bool = False) -> str:
    """A standalone HTML document that shows ``scene`` in viser's client (no server, no network)."""
    import viser

    s = scene.detach().to("cpu", torch.float32)
    if len(s) == 0:
        raise InputError(None, "the scene has no Gaussians to show")
    if not s.is_finite():
        raise ValueError("refusing to write a page for a scene with NaN or infinite parameters")
    if max_gaussians is not None and len(s) > max_gaussians:
        # Keep the most visible: opacity × volume, so thinning drops faint specks first.
        key = s.opacities.sigmoid().log() + s.scales.sum(dim=1)
        s = s[torch.argsort(key, descending=True)[:max_gaussians]]
    with contextlib.redirect_stdout(io.StringIO()):
        # Port 0: any free local port; the server only collects the scene's messages and is stopped below.
        server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    try:
        center = torch.quantile(s.means[:100_000], 0.5, dim=0).double().numpy()
        lo, hi = (t.double().numpy() for t in s.bounds())
        extent = max(float(np.linalg.norm(hi - lo)), 1e-3)
        ic = server.initial_camera
        if cameras is not None and len(cameras) > 0:
            from ..viewer.camera import camera_up_direction, cameras_to_view_pose, quat_wxyz_to_rotmat

            up = camera_up_direction(cameras)
            pose = cameras_to_view_pose(cameras, 0)
            forward = quat_wxyz_to_rotmat(pose.wxyz)[:, 2]
            distance = max(float(np.dot(center - pose.position, forward)), 0.1 * extent)
            server.scene.set_up_direction(tuple(float(v) for v in up))
            ic.up = tuple(float(v) for v in up)
            ic.position = tuple(float(v) for v in pose.position)
            ic.look_at = tuple(float(v) for v in pose.position + forward * distance)
            ic.fov = float(pose.fov)
        else:
            eye = center + extent * 0.75 * np.array([0.55, -0.65, 0.5])
            server.scene.set_up_direction((0.0, 0.0, 1.0))
            ic.up = (0.0, 0.0, 1.0)
            ic.position = tuple(float(v) for v in eye)
            ic.look_at = tuple(float(v) for v in center)
        with torch.no_grad():
            server.scene.add_gaussian_splats(
                "/scene/splats",
                s.means.double().numpy(),
                s.covariances().double().numpy(),
                s.base_colors().double().numpy(),
                s.activated_opacities().double().numpy()[:, None],
            )
        return server.scene.as_html(dark_mode=dark_mode)
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            server.stop()


def save_html(scene: GaussianScene, path: str | Path, cameras=None, *, max_gaussians: int | None = None) -> Path:
    """Write the scene as a web page: ``path`` ending in .html is the page, else a folder gets index.html."""
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        target = path
    else:
        if path.exists() and not path.is_dir():
            raise InputError(path, "exists and is not a folder; the html export writes DIR/index.html or a .html file")
        target = path / "index.html"
    atomic_write_text(target, scene_html(scene, cameras, max_gaussians=max_gaussians))
    return target
