"""Generator checkpoints are read with weights_only=True: a pickled object is refused, not executed."""

from __future__ import annotations

import pytest
import torch

from recon3d.errors import InputError
from recon3d.generation.sample import load_generator


class Payload:
    """Stands for an attacker's object: a class outside torch's weights-only allow-list."""


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": {}, "payload": Payload()}, path)
    with pytest.raises(InputError, match="evil.pt"):
        load_generator(path)


def test_shipped_checkpoint_loads_with_weights_only():
    from pathlib import Path

    import recon3d.generation as gen_pkg

    shipped = Path(gen_pkg.__file__).parent / "weights" / "generator-small.pt"
    state = torch.load(shipped, map_location="cpu", weights_only=True)
    assert "weights" in state and all(isinstance(v, torch.Tensor) for v in state["weights"].values())
