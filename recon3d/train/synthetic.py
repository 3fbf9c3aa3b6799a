"""A small analytic scene rendered by recon3d itself, packaged like ``recon3d.data.SceneData``.

Tests and benchmarks use it to train on data whose ground truth is known without any data reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, look_at_world_to_camera
from ..data import SceneData
from ..data.images import DecodedView
from ..io_utils import atomic_open
from ..render import render
from ..scene import GaussianScene, rgb_to_sh0


@dataclass
class SyntheticSceneData(SceneData):
    """A SceneData whose images are held in memory (rendered from ``truth``), not decoded from files."""

    images: list[torch.Tensor] = field(default_factory=list)
    truth: GaussianScene | None = None

    def load_image(self, index: int) -> torch.Tensor:
        """H×W×3 float32 image of camera ``index``."""
        return self.images[index]

    def load_alpha(self, index: int) -> torch.Tensor | None:
        """Rendered images are opaque RGB: no alpha."""
        return None

    def decode_view(self, index: int) -> DecodedView:
        """The held image (opaque RGB) and its mask, if any."""
        return DecodedView(self.images[index], None, self.load_mask(index), None)

    def decode_view_u8(self, index: int, alloc) -> None:
        """None: the held images are floats (rendered, not decoded), so the image store rounds them itself."""
        return None


def truth_scene(num: int = 300, seed: int = 0, center=(0.0, 0.0, 0.0), radius: float = 1.0) -> GaussianScene:
    """Coloured Gaussians on a sphere's surface (colour varies smoothly with direction)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(num, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    means = torch.tensor(center) + radius * d
    colors = (0.5 + 0.45 * torch.stack([d[:, 0], d[:, 1], d[:, 2]], -1)).clamp(0, 1)
    scene = GaussianScene.from_points(means, colors, scale=0.18 * radius, opacity=0.9)
    return scene


def make_synthetic_data(root: str | Path, *, num_views: int = 16, size: int = 40, num_gaussians: int = 300,
                        center=(0.0, 0.0, 0.0), radius: float = 1.0, seed: int = 0, test_every: int = 8,
                        background=(1.0, 1.0, 1.0), with_points: bool = True, backend: str = "reference") -> SyntheticSceneData:
    """Render ``truth_scene`` from ``num_views`` cameras on two rings and write the PNGs under ``root``."""
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    truth = truth_scene(num_gaussians, seed, center, radius)
    c = torch.tensor(center)
    w2cs = []
    for k in range(num_views):
        theta = 2 * math.pi * k / num_views
        elevation = math.radians(20 if k % 2 == 0 else -10)
        dist = 4.0 * radius
        eye = c + dist * torch.tensor([math.cos(elevation) * math.cos(theta), math.cos(elevation) * math.sin(theta),
                                       math.sin(elevation)])
        w2cs.append(look_at_world_to_camera(eye, c, (0.0, 0.0, 1.0)))
    cameras = Cameras.from_fov(torch.stack(w2cs), 0.9, size, size)
    bg = torch.tensor(background, dtype=torch.float32)
    images, paths = [], []
    with torch.no_grad():
        for k in range(num_views):
            img = render(truth, cameras[k], background=bg, backend=backend).rgb[0].clamp(0, 1)
            img8 = (img.numpy() * 255).round().astype(np.uint8)
            path = root / f"view_{k:03d}.png"
            with atomic_open(path, "wb") as f:
                Image.fromarray(img8).save(f, format="PNG")
            images.append(torch.from_numpy(img8.astype(np.float32) / 255.0))
            paths.append(path)
    split = ["test" if k % test_every == 0 else "train" for k in range(num_views)]
    g = torch.Generator().manual_seed(seed + 7)
    points = colors = None
    if with_points:
        # noisy "SfM" points near the surface, grey: the trainer must still learn colours and positions
        points = truth.means + 0.05 * radius * torch.randn(truth.means.shape, generator=g)
        colors = torch.full_like(points, 0.5)
    return SyntheticSceneData(
        cameras=cameras, image_paths=paths, split=split, points=points, point_colors=colors,
        source="synthetic", root=root, background=bg, images=images, truth=truth,
    )


def sh0_for(colors: torch.Tensor) -> torch.Tensor:
    """DC coefficients for colours (re-exported for tests)."""
    return rgb_to_sh0(colors)


def write_blender(data: SyntheticSceneData, root: str | Path) -> Path:
    """Write ``data`` as Blender/NeRF-synthetic data (transforms_train.json + transforms_val.json + PNGs)."""
    import json
    import shutil

    from ..cameras import OPENGL_TO_OPENCV
    from ..io_utils import atomic_write_text

    root = Path(root)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "val").mkdir(parents=True, exist_ok=True)
    width = int(data.cameras.width[0])
    fov_x = 2 * math.atan(0.5 * width / float(data.cameras.fx[0]))
    frames: dict[str, list] = {"train": [], "val": []}
    c2w_cv = data.cameras.camera_to_world().double()
    for i, split in enumerate(data.split):
        folder = "train" if split == "train" else "val"
        name = f"r_{i}"
        shutil.copyfile(data.image_paths[i], root / folder / f"{name}.png")
        c2w_gl = c2w_cv[i] @ OPENGL_TO_OPENCV.double()  # the OpenCV→OpenGL flip is its own inverse
        frames[folder].append({"file_path": f"./{folder}/{name}", "transform_matrix": c2w_gl.tolist()})
    for folder, items in frames.items():
        atomic_write_text(root / f"transforms_{folder}.json",
                          json.dumps({"camera_angle_x": fov_x, "frames": items}, indent=1))
    return root
