"""``--field tcnn``: the field's hash encoding from tiny-cuda-nn (``tinycudann``, NVIDIA's fused CUDA library),
everything else ours (MLPs in PyTorch, the occupancy grid, our CUDA marcher and compositing).

tiny-cuda-nn is an optional extra: it is not on PyPI (``pip install
git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch`` on a machine with a GPU and nvcc).
Without it, or without a GPU, ``--field tcnn`` is one line naming what is missing (``check_available``).

Its hash grid differs from ours in three conventions (facts of tcnn's ``GridEncoding``, our own code here):

* level ``l``'s scale is ``base · b^l − 1`` with ``b`` the per-level growth (ours: ``floor(base · b^l)``
  cells), its vertices per side ``ceil(scale) + 1``;
* a point's grid coordinate is ``x · scale + 0.5`` (ours: ``x · res``), so its lattice is offset by half a cell;
* each level's table holds ``min(next multiple of 8 of vertices³, 2^log2)`` rows (ours: ``min(vertices³, 2^log2)``),
  one flat parameter vector of rows × 2 features, level after level.

The dense/hashed choice, the hash (xor of coordinates times 1, 2654435761, 805459861, mod the table size) and the
trilinear weights are the same. ``tcnn_level_layout`` gives tcnn's scales and row offsets, and
``our_coordinates`` maps points to the coordinates at which our kernel reads the same lattice, so
``tests/test_nerf_tcnn.py`` compares the two on one table, level by level (a ``gpu`` test).
"""

from __future__ import annotations

import math

import torch

from ..errors import Recon3dError
from .field import NerfField
from .reference import HashGridSpec

FIELD_KINDS = ("ours", "tcnn")
INSTALL_HINT = "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"


def check_available(device: str = "auto") -> None:
    """One ``Recon3dError`` line unless tinycudann imports and a CUDA GPU is there (and ``device`` allows it)."""
    try:
        import tinycudann  # noqa: F401
    except Exception as exc:  # ImportError, or its CUDA extension failing to load
        raise Recon3dError(f"--field tcnn needs the tinycudann package and a CUDA GPU: tinycudann is not importable "
                           f"({type(exc).__name__}: {exc}); install it on a GPU machine with {INSTALL_HINT}, "
                           f"or leave --field out (our kernels)") from None
    if not torch.cuda.is_available():
        raise Recon3dError("--field tcnn needs a CUDA GPU: torch sees none on this machine; leave --field out "
                           "(our kernels run on the CPU)")
    if device == "cpu":
        raise Recon3dError("--field tcnn runs on the GPU only: drop run.device=cpu, or leave --field out")


def per_level_scale(spec: HashGridSpec) -> float:
    """tcnn's per-level growth ``b`` for our spec's coarsest and finest resolutions."""
    if spec.levels == 1:
        return 1.0
    return math.exp((math.log(spec.max_resolution) - math.log(spec.base_resolution)) / (spec.levels - 1))


def encoding_config(spec: HashGridSpec) -> dict:
    """The tcnn ``HashGrid`` encoding of the same shape as ``spec`` (levels, 2 features, table size, growth)."""
    return {"otype": "HashGrid", "n_levels": spec.levels, "n_features_per_level": 2,
            "log2_hashmap_size": spec.log2_table, "base_resolution": spec.base_resolution,
            "per_level_scale": per_level_scale(spec)}


def tcnn_level_layout(levels: int, log2_table: int, base_resolution: int,
                      growth: float) -> tuple[list[float], list[int], list[int]]:
    """tcnn's (scale, vertices per side) of each level and its row offsets (``levels + 1``) in the flat params."""
    scales, sides, offsets = [], [], [0]
    for level in range(levels):
        # float32 like tcnn: exp2(level · log2(growth)) · base − 1
        scale = float(torch.tensor(2.0, dtype=torch.float32) ** torch.tensor(level * math.log2(growth),
                                                                                dtype=torch.float32)
                      * base_resolution - 1.0)
        side = math.ceil(scale) + 1
        rows = min(side**3, (1 << 31) - 1)
        rows = (rows + 7) // 8 * 8
        rows = min(rows, 1 << log2_table)
        scales.append(scale)
        sides.append(side)
        offsets.append(offsets[-1] + rows)
    return scales, sides, offsets


def our_coordinates(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, int]:
    """Points ``x`` in [0, 1]³ -> (the points at which our one-level kernel of ``res`` cells reads what tcnn's
    level of this ``scale`` reads at ``x``, ``res``): tcnn's lattice coordinate ``x·scale + 0.5`` over ``res``.
    Valid where that coordinate stays ≤ res (ours clamps to the grid), i.e. x ≤ (res − 0.5) / scale."""
    res = math.ceil(scale)
    return (x * scale + 0.5) / res, res


class TcnnField(NerfField):
    """``NerfField`` with tcnn's hash encoding (float32 parameters and outputs) in place of our table."""

    kind = "tcnn"

    def __init__(self, spec: HashGridSpec, hidden: int = 64, geo_features: int = 15, dir_degree: int = 3) -> None:
        import tinycudann as tcnn

        super().__init__(spec, hidden, geo_features, dir_degree)
        del self.table  # the encoding's own parameters replace our table
        self.encoding = tcnn.Encoding(3, encoding_config(spec), dtype=torch.float32)

    @property
    def table(self) -> torch.Tensor:
        """tcnn's flat parameter vector (device, counts and the optimiser's groups read it as the table)."""
        return self.encoding.params

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        """Unit-cube points -> tcnn's hash features (float32)."""
        return self.encoding(u.float().contiguous().clamp(0, 1)).float()

    def encode_given(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """tcnn has no backward for given features: encode again with gradients."""
        return self.encode(u)


def make_field(kind: str, spec: HashGridSpec, hidden: int, dir_degree: int) -> NerfField:
    """Our field or tcnn's (``nerf.field``)."""
    if kind == "tcnn":
        return TcnnField(spec, hidden=hidden, dir_degree=dir_degree)
    if kind != "ours":
        raise Recon3dError(f"nerf.field must be one of {', '.join(FIELD_KINDS)}, not {kind!r}")
    return NerfField(spec, hidden=hidden, dir_degree=dir_degree)
