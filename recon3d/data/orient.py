"""An upright, centred world frame for a capture: +Z up, the scene at the origin, metric-ish units.

Structure from motion leaves poses in an arbitrary frame (COLMAP fixes the first image's camera), so a
scene from a photo folder would otherwise lie on its side. ``compute_orientation`` finds a similarity
``x' = s·R·x + t`` from the cameras and the sparse points:

* **up** — perpendicular to every camera's right axis (people hold cameras level, pitched but not rolled;
  nerfstudio's "vertical" idea), signed by the mean of the cameras' up vectors; that mean itself (nerfstudio's
  "up") when the right axes are all parallel (see ``level_up``). When the camera centres lie near one plane around the scene (an orbit, the
  inward-looking case) the plane's normal replaces it, since it does not carry the cameras' common pitch.
  Then, when the sparse points hold a dominant plane within ``GROUND_MAX_TILT_DEG`` of that up with the
  cameras above it (a ground or a table top), its normal is the final up: it is what "level" means in the
  picture, also for forward-facing captures whose cameras all pitch down.
* **yaw** — the first camera's view direction, made horizontal, becomes +Y: the first photo looks along +Y
  (an orbit's first camera sits on −Y), so ``look_at(eye=(0, -4, 2), …)`` views the scene from the front.
* **centre** — horizontally the cameras' focus (the point nearest every optical axis) when it is well
  posed and inside the sparse points' robust box (without points: in front of most cameras), else the
  sparse points' median (else the cameras' mean centre); vertically the ground
  plane at z = 0 when one was found, else the centre at z = 0.
* **scale** — metric-ish when a ground was found: the cameras' median height above it becomes
  ``EYE_HEIGHT`` (1.5 m, a handheld capture at about eye level). Otherwise a stated normalisation: the cameras'
  median distance from the centre becomes ``CAMERA_DISTANCE`` units.

The result says which rule each part used (``Orientation.methods``) and is saved as ``orientation.json``
in the run; ``input_from_oriented`` maps the oriented frame back to the input (SfM) frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io_utils import atomic_write_text

EYE_HEIGHT = 1.5  # metres: a camera held at about eye level above the ground
CAMERA_DISTANCE = 4.0  # units: the cameras' median distance from the centre when no ground tells the scale
GROUND_MAX_TILT_DEG = 25.0  # a plane tilted more than this from the cameras' up is a wall, not a ground
GROUND_MIN_INLIERS = 0.15  # share of the sparse points a plane must hold to count as the ground
ORBIT_FLATNESS = 0.35  # camera centres with 3rd/2nd singular value below this lie on one plane
ORIENT_MODES = ("auto", "up", "none")
ORIENTATION_FILE = "orientation.json"


@dataclass
class Orientation:
    """The similarity from the input frame to the oriented frame: ``x' = scale · rotation · x + translation``."""

    rotation: np.ndarray  # 3×3, proper (det +1)
    translation: np.ndarray  # 3
    scale: float
    methods: dict = field(default_factory=dict)  # which rule gave up / centre / scale, and their figures

    @property
    def oriented_from_input(self) -> np.ndarray:
        """4×4 matrix mapping input-frame points (homogeneous) to the oriented frame."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    @property
    def input_from_oriented(self) -> np.ndarray:
        """4×4 matrix mapping oriented-frame points back to the input (e.g. SfM) frame."""
        m = np.eye(4)
        m[:3, :3] = self.rotation.T / self.scale
        m[:3, 3] = -self.rotation.T @ self.translation / self.scale
        return m

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """Input-frame points (P×3) in the oriented frame."""
        p = np.asarray(points, dtype=np.float64)
        return (self.scale * p @ self.rotation.T + self.translation).astype(np.asarray(points).dtype, copy=False)

    def apply_world_to_camera(self, world_to_camera: np.ndarray) -> np.ndarray:
        """A world-to-camera 4×4 (or N×4×4) for the oriented frame; the view space scales with the world,
        so every pixel sees the same thing."""
        w2c = np.asarray(world_to_camera, dtype=np.float64)
        rot_c, t_c = w2c[..., :3, :3], w2c[..., :3, 3]
        new_rot = rot_c @ self.rotation.T
        out = np.array(w2c, copy=True)
        out[..., :3, :3] = new_rot
        out[..., :3, 3] = self.scale * t_c - (new_rot @ self.translation[:, None])[..., 0]
        return out

    def to_json(self) -> dict:
        """The record saved as ``orientation.json``."""
        return {
            "oriented_from_input": self.oriented_from_input.tolist(),
            "input_from_oriented": self.input_from_oriented.tolist(),
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "scale": self.scale,
            "methods": self.methods,
            "note": "x_oriented = scale * rotation @ x_input + translation; scene.ply and cameras.json are in the "
            "oriented frame (+Z up), sfm/ stays in the input (structure-from-motion) frame",
        }

    @classmethod
    def from_json(cls, record: dict) -> Orientation:
        """Inverse of ``to_json``."""
        return cls(np.asarray(record["rotation"], dtype=np.float64), np.asarray(record["translation"], dtype=np.float64),
                   float(record["scale"]), dict(record.get("methods", {})))  # fmt: skip


def save_orientation(path: str | Path, orientation: Orientation) -> None:
    """Write ``orientation.json`` atomically."""
    atomic_write_text(path, json.dumps(orientation.to_json(), indent=1) + "\n")


def load_orientation(path: str | Path) -> Orientation | None:
    """The orientation saved at ``path`` (None when there is no such file); InputError when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        o = Orientation.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a readable orientation record ({exc})") from None
    if o.rotation.shape != (3, 3) or o.translation.shape != (3,) or not (o.scale > 0 and math.isfinite(o.scale)):
        raise InputError(path, "orientation record needs a 3×3 rotation, a 3-vector translation and a positive scale")
    return o


# ----------------------------------------------------------------------------------------------------- maths
def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


def camera_centres_and_axes(world_to_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera centres (N×3), up vectors (N×3, OpenCV −y) and view directions (N×3, +z) in world coordinates."""
    w2c = np.asarray(world_to_camera, dtype=np.float64).reshape(-1, 4, 4)
    rot = w2c[:, :3, :3]
    centres = -np.einsum("nji,nj->ni", rot, w2c[:, :3, 3])
    return centres, -rot[:, 1, :], rot[:, 2, :]


def focus_point(centres: np.ndarray, forwards: np.ndarray) -> np.ndarray | None:
    """The point nearest (least squares) to every optical axis; None when the axes are near parallel."""
    d = forwards / np.linalg.norm(forwards, axis=1, keepdims=True)
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    a = proj.sum(0)
    b = np.einsum("nij,nj->i", proj, centres)
    if len(centres) < 2 or np.linalg.cond(a) > 1e4:
        return None
    return np.linalg.solve(a, b)


def orbit_normal(centres: np.ndarray, forwards: np.ndarray, up_hint: np.ndarray) -> np.ndarray | None:
    """The normal of the plane the cameras circle in (signed like ``up_hint``), or None when they don't.

    An orbit: the centres span a plane (a thin third singular value, not a line), most cameras look towards
    the centres' middle, and the normal is within 35° of the cameras' own up.
    """
    if len(centres) < 4:
        return None
    mid = centres.mean(0)
    _, sv, vt = np.linalg.svd(centres - mid, full_matrices=False)
    if sv[1] < 1e-9 or sv[2] > ORBIT_FLATNESS * sv[1] or sv[1] < 0.3 * sv[0]:
        return None
    inward = np.einsum("ni,ni->n", forwards, _unit_rows(mid - centres))
    if np.mean(inward > 0.2) < 0.75:
        return None
    n = vt[2]
    if abs(float(n @ up_hint)) < math.cos(math.radians(35.0)):
        return None
    return n if n @ up_hint > 0 else -n


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def fit_ground_plane(points: np.ndarray, up_hint: np.ndarray, threshold: float, *, max_tilt_deg: float =
                     GROUND_MAX_TILT_DEG, iterations: int = 400, seed: int = 0) -> tuple[np.ndarray, float, float] | None:  # fmt: skip
    """RANSAC for the plane ``n·x = d`` holding the most points among those tilted ≤ ``max_tilt_deg`` from
    ``up_hint``; returns (unit normal signed like ``up_hint``, d, inlier share) after a least-squares refit,
    or None when no such plane holds ``GROUND_MIN_INLIERS`` of the points."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 20:
        return None
    rng = np.random.default_rng(seed)
    cos_max = math.cos(math.radians(max_tilt_deg))
    best_count, best = 0, None
    sample = pts if len(pts) <= 20_000 else pts[rng.choice(len(pts), 20_000, replace=False)]
    for _ in range(iterations):
        a, b, c = sample[rng.choice(len(sample), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        if n @ up_hint < 0:
            n = -n
        if n @ up_hint < cos_max:
            continue
        count = int((np.abs(sample @ n - n @ a) < threshold).sum())
        if count > best_count:
            best_count, best = count, (n, float(n @ a))
    if best is None or best_count < GROUND_MIN_INLIERS * len(sample):
        return None
    n, d = best
    for _ in range(2):  # least-squares refit on the inliers (total least squares: the smallest singular vector)
        inl = sample[np.abs(sample @ n - d) < threshold]
        mid = inl.mean(0)
        n_new = np.linalg.svd(inl - mid, full_matrices=False)[2][2]
        n = n_new if n_new @ up_hint > 0 else -n_new
        d = float(n @ mid)
    if n @ up_hint < cos_max:
        return None
    share = float((np.abs(pts @ n - d) < threshold).mean())
    return n, d, share


def level_up(world_to_camera: np.ndarray) -> tuple[np.ndarray, str]:
    """Up from the cameras alone, and how it was found.

    People hold cameras level (no roll) but pitch them freely, so every camera's right axis (OpenCV +x) is
    horizontal: up is the direction perpendicular to all of them (the least singular vector of the stacked
    right axes), signed like the mean of the cameras' up vectors. A photo set looking up at a statue from one
    side gets a level frame this way, where the mean up vector leans with the common pitch. When the right
    axes are all nearly parallel (a forward-facing row of cameras) that direction is not determined, and the
    mean up vector, made perpendicular to the common right axis, is used.
    """
    w2c = np.asarray(world_to_camera, dtype=np.float64).reshape(-1, 4, 4)
    rights, ups = w2c[:, 0, :3], -w2c[:, 1, :3]
    mean_up = ups.mean(0)
    if not np.isfinite(mean_up).all() or np.linalg.norm(mean_up) < 1e-6:
        mean_up = np.array([0.0, 0.0, 1.0])
    mean_up = _unit(mean_up)
    _, sv, vt = np.linalg.svd(rights, full_matrices=False)
    if len(rights) >= 3 and sv[1] > 3.0 * sv[2] and sv[1] > 0.1 * sv[0]:
        n = vt[2]
        return (n if n @ mean_up > 0 else -n), "camera right axes (level cameras)"
    axis = vt[0]
    up = _unit(mean_up - (mean_up @ axis) * axis)
    return up, "camera up vectors"


def rotation_to_z_up(up: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """The rotation taking ``up`` to +Z and the horizontal part of ``forward`` to +Y."""
    z = _unit(np.asarray(up, dtype=np.float64))
    f = np.asarray(forward, dtype=np.float64)
    y = f - (f @ z) * z
    if np.linalg.norm(y) < 1e-6:  # looking straight down: any horizontal direction will do
        y = np.cross(z, [1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.cross(z, [0.0, 1.0, 0.0])
    y = _unit(y)
    x = np.cross(y, z)
    return np.stack([x, y, z])  # rows: the new axes in input coordinates


def compute_orientation(world_to_camera: np.ndarray, points: np.ndarray | None = None) -> Orientation:
    """The upright, centred frame of a capture from its OpenCV world-to-camera poses (N×4×4) and sparse
    points (P×3, may be None); see the module docstring for the rules."""
    centres, ups, forwards = camera_centres_and_axes(world_to_camera)
    pts = None if points is None or len(points) == 0 else np.asarray(points, dtype=np.float64)
    if pts is not None:
        pts = pts[np.isfinite(pts).all(1)]
    methods: dict = {}

    up_cam, methods["up"] = level_up(world_to_camera)
    up = up_cam
    orbit = orbit_normal(centres, forwards, up_cam)
    if orbit is not None:
        up, methods["up"] = orbit, "orbit plane of the cameras"

    # the scene's robust extent: sparse points between percentiles, else the cameras' spread
    if pts is not None and len(pts) >= 20:
        lo, hi = np.percentile(pts, [5, 95], axis=0)
        core = pts[((pts >= lo) & (pts <= hi)).all(1)]
        core = core if len(core) >= 20 else pts
    else:
        core = None
    extent_src = core if core is not None else centres
    extent = float(np.linalg.norm(np.percentile(extent_src, 95, axis=0) - np.percentile(extent_src, 5, axis=0)))
    extent = extent if extent > 1e-9 else 1.0

    ground = None
    if core is not None:
        ground = fit_ground_plane(core, up, threshold=0.01 * extent)
        if ground is not None:
            n, d, share = ground
            heights = centres @ n - d
            if np.mean(heights > 0) < 0.8:  # the cameras must look down onto it from above
                ground = None
            else:
                angle = math.degrees(math.acos(float(np.clip(n @ up, -1.0, 1.0))))
                up = n
                methods["up"] = f"ground plane of the sparse points ({share:.0%} of them, {angle:.1f}° from the " \
                    f"{'orbit plane' if orbit is not None else 'camera up vectors'})"
    methods["up_in_input_frame"] = up.tolist()

    rot = rotation_to_z_up(up, forwards[0])

    # horizontal centre
    focus = focus_point(centres, forwards)
    inside = False
    if focus is not None and core is not None:
        lo, hi = core.min(0), core.max(0)
        pad = 0.1 * (hi - lo)
        inside = bool(((focus >= lo - pad) & (focus <= hi + pad)).all())
    elif focus is not None:  # no points to check it against: the cameras must at least look towards it
        ahead = np.einsum("ni,ni->n", forwards, focus[None] - centres) > 0
        inside = bool(ahead.mean() >= 0.75)
    if focus is not None and inside:
        centre, methods["centre"] = focus, "focus of the cameras' optical axes"
    elif core is not None:
        centre, methods["centre"] = np.median(core, axis=0), "median of the sparse points"
    else:
        centre, methods["centre"] = centres.mean(0), "mean of the camera centres"

    # vertical: the ground at z = 0 when known
    if ground is not None:
        n, d, _ = ground
        centre = centre - (centre @ n - d) * n  # the centre's foot on the ground plane
        methods["centre"] += ", ground plane at z = 0"

    # scale
    if ground is not None:
        n, d, _ = ground
        height = float(np.median(centres @ n - d))
        scale = EYE_HEIGHT / height
        methods["scale"] = f"metric-ish: the cameras' median height above the ground ({height:.4g} input units) " \
            f"taken as {EYE_HEIGHT} m"
    else:
        dist = float(np.median(np.linalg.norm(centres - centre, axis=1)))
        dist = dist if dist > 1e-9 else 1.0
        scale = CAMERA_DISTANCE / dist
        methods["scale"] = f"normalised: the cameras' median distance from the centre ({dist:.4g} input units) " \
            f"set to {CAMERA_DISTANCE}"
    translation = -scale * rot @ centre
    return Orientation(rot, translation, float(scale), methods)


def resolve_orient(mode: str, kind: str) -> bool:
    """Whether to orient input of ``kind``: ``auto`` orients photo folders and video (an arbitrary SfM frame)
    and keeps the frame of COLMAP, nerfstudio and Blender inputs; ``up`` always; ``none`` never."""
    if mode not in ORIENT_MODES:
        raise InputError(None, f"orient must be one of {', '.join(ORIENT_MODES)}, not {mode!r}")
    if mode == "auto":
        return kind in ("photos", "video")
    return mode == "up"
