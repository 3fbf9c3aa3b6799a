"""The scene encoder (a set transformer over Gaussians) and the image encoder (a small CNN over
thumbnails), both into the 384-d MiniLM caption space, trained together contrastively (``train``).

Scene encoder: a per-Gaussian MLP, two induced set-attention blocks (ISAB: the set attends to a few
learned inducing points and back; Lee et al. 2019, "Set Transformer"), and pooling by multi-head attention
with learned seeds; no positional encoding over the set, so the output does not depend on the order of
the Gaussians. Image encoder: four strided convolutions over a 32² view, global average pooling, a
linear map. Both outputs are unit vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import Recon3dError
from .features import FEATURES

EMBED_DIM = 384
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "understand.pt"
IMAGE_SIZE = 32


class MAB(nn.Module):
    """Multi-head attention block: X attends to Y, then a feed-forward layer (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.nq, self.nk = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.n2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """B×N×D attending to B×M×D."""
        k = self.nk(y)
        x = x + self.attn(self.nq(x), k, k, need_weights=False)[0]
        return x + self.ff(self.n2(x))


class ISAB(nn.Module):
    """Induced set attention: inducing points summarise the set, the set reads them back (O(N·m))."""

    def __init__(self, dim: int, heads: int, inducing: int):
        super().__init__()
        self.points = nn.Parameter(torch.randn(1, inducing, dim) * 0.1)
        self.down, self.up = MAB(dim, heads), MAB(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×N×D -> B×N×D."""
        h = self.down(self.points.expand(len(x), -1, -1), x)
        return self.up(x, h)


class SceneEncoder(nn.Module):
    """Gaussians (B×N×FEATURES) -> unit B×384 in the MiniLM space."""

    def __init__(self, width: int = 64, heads: int = 4, inducing: int = 16, blocks: int = 2, seeds: int = 4):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(FEATURES, width), nn.GELU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList([ISAB(width, heads, inducing) for _ in range(blocks)])
        self.seeds = nn.Parameter(torch.randn(1, seeds, width) * 0.1)
        self.pool = MAB(width, heads)
        self.out = nn.Sequential(nn.LayerNorm(seeds * width), nn.Linear(seeds * width, EMBED_DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of a batch of Gaussian sets."""
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        p = self.pool(self.seeds.expand(len(x), -1, -1), h).flatten(1)
        return nn.functional.normalize(self.out(p), dim=-1)


class ThumbEncoder(nn.Module):
    """Views (B×3×32×32 in [0, 1], over white) -> unit B×384 in the MiniLM space."""

    def __init__(self, width: int = 32):
        super().__init__()
        c = width
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GELU(),
            nn.Conv2d(2 * c, 4 * c, 3, 2, 1), nn.GELU(),
            nn.Conv2d(4 * c, 4 * c, 3, 2, 1), nn.GELU(),
        )
        self.out = nn.Sequential(nn.LayerNorm(8 * c), nn.Linear(8 * c, EMBED_DIM))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of a batch of views."""
        h = self.net(images * 2 - 1)
        # mean and max over the cells: the colour of a small object survives the max
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return nn.functional.normalize(self.out(h), dim=-1)


# what the structure heads read off a scene (``describe``): its kind, the first group (the subject of a
# relation) and the second (its anchor), each group's shape, count and colour (CIELAB / 100)
FAMILIES = ("single", "group", "pair", "other")
HEAD_RELATIONS = ("on", "above", "under", "beside", "near", "left", "right", "front", "behind", "around")
MAX_COUNT = 5


class StructureHeads(nn.Module):
    """Small heads on the two embeddings (scene and view, 768-d): kind, per-group shape/count/colour, relation."""

    def __init__(self, shapes: int = 13, hidden: int = 256):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(2 * EMBED_DIM, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.family = nn.Linear(hidden, len(FAMILIES))
        self.shape = nn.Linear(hidden, 2 * shapes)
        self.count = nn.Linear(hidden, 2 * MAX_COUNT)
        self.colour = nn.Linear(hidden, 6)
        self.relation = nn.Linear(hidden, len(HEAD_RELATIONS))
        self.shapes = shapes

    def forward(self, scene: torch.Tensor, view: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits (family, shape B×2×S, count B×2×C, relation) and colours (B×2×3, Lab / 100)."""
        h = self.trunk(torch.cat([scene, view], 1))
        return {"family": self.family(h), "shape": self.shape(h).view(-1, 2, self.shapes),
                "count": self.count(h).view(-1, 2, MAX_COUNT), "colour": self.colour(h).view(-1, 2, 3),
                "relation": self.relation(h)}


class Encoders(nn.Module):
    """The two encoders, the structure heads and the contrastive temperature, saved and loaded together."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = dict(config or {})
        self.scene = SceneEncoder(**self.config.get("scene", {}))
        self.image = ThumbEncoder(**self.config.get("image", {}))
        self.heads = StructureHeads()
        self.log_scale = nn.Parameter(torch.tensor(2.66))  # exp = 1/τ, τ = 0.07 to start


def save_encoders(model: Encoders, path: Path, info: dict) -> None:
    """Weights in float16 (small enough to ship) and the config, atomically."""
    from ..io_utils import atomic_open

    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    with atomic_open(Path(path), "wb") as f:
        torch.save({"config": model.config, "state": state, "info": info}, f)


def update_info(extra: dict, path: Path = WEIGHTS_FILE) -> None:
    """Merge ``extra`` into the shipped weights' info (e.g. describe's familiarity threshold)."""
    from ..io_utils import atomic_open

    blob = torch.load(path, map_location="cpu", weights_only=False)
    blob["info"] = {**blob.get("info", {}), **extra}
    with atomic_open(Path(path), "wb") as f:
        torch.save(blob, f)
    _CACHE.clear()


_CACHE: dict[str, Encoders] = {}


class EncoderMissing(Recon3dError, RuntimeError):
    """The shipped weights are absent (a source checkout without them)."""


def load_encoders(path: str | Path | None = None) -> Encoders:
    """The trained encoders (cached per process), in float32 eval mode."""
    path = Path(path) if path is not None else WEIGHTS_FILE
    key = str(path.resolve())
    if key not in _CACHE:
        if not path.is_file():
            raise EncoderMissing(f"{path}: the scene/image encoder weights are missing; train them with "
                                 "`python -m recon3d.understand.train`")
        blob = torch.load(path, map_location="cpu", weights_only=False)
        model = Encoders(blob["config"])
        model.load_state_dict({k: v.float() for k, v in blob["state"].items()})
        model.eval()
        model.info = blob.get("info", {})
        _CACHE[key] = model
    return _CACHE[key]


def weights_version(path: str | Path | None = None) -> str:
    """A short tag naming the weights (for the index's embedding version)."""
    import hashlib

    path = Path(path) if path is not None else WEIGHTS_FILE
    if not path.is_file():
        return "none"
    return hashlib.blake2b(path.read_bytes(), digest_size=6).hexdigest()


def describe_config(model: Encoders) -> str:
    """The config as one JSON line (for logs)."""
    return json.dumps(model.config, sort_keys=True)
