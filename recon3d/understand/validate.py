"""A validation set that measures what the search benchmark measures, on seeds and wordings of our own.

512 composed scenes (``validation_rules``, seed ``[VAL_SEED, k]``: neither the training seeds nor the
benchmark's), each with the scene encoder's input as indexing computes it, three orbit views at 32² as the
index renders them, one view from a random viewpoint (the image query), and two captions: one in our
validation-only wording (``data.VAL_ONLY_*``, never trained on; the benchmark's held-out wording is not
used here either) and one in the training wording. ``evaluate`` ranks the library's fused vectors
(``fusion.fuse`` / ``query_vector``, as ``library.embed`` uses them) as ``benchmarks/search.py recall`` does.

    python -m recon3d.understand.validate --build            # once (about two minutes)
    python -m recon3d.understand.validate --build --scenes 2048 --val runs/understand/val/val-2048.npz   # a larger one
    python -m recon3d.understand.validate runs/understand/snapshots/*.pt runs/understand/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

VAL_SEED = 424242
VAL_FILE = Path("runs/understand/val/val-512.npz")


def build(path: Path = VAL_FILE, scenes: int = 512, per_object: int = 128) -> None:
    """Compose, render, caption and embed the validation scenes; written atomically."""
    from ..generation.composer import compose_grammar
    from ..generation.data import features_to_scene
    from ..generation.grammar import caption, random_scene, training_rules, validation_rules
    from ..generation.text import get_encoder
    from ..generation.views import random_view, render_view, scene_frame
    from ..io_utils import atomic_open
    from .data import para_caption
    from .features import scene_features

    rules, wording = validation_rules(), training_rules()
    feats, orbit, query, held, trained = [], [], [], [], []
    for k in range(scenes):
        rng = np.random.default_rng([VAL_SEED, k])
        spec = random_scene(rng, rules)
        f, _, _ = compose_grammar(spec, per_object, rng)
        scene = features_to_scene(torch.from_numpy(f))
        feats.append(scene_features(scene))
        centre, radius = scene_frame(scene)
        orbit.append(np.stack([render_view(scene, 32, 2 * math.pi * v / 3, 0.35, centre=centre, radius=radius)[0].numpy()
                               for v in range(3)]))
        az, el = random_view(rng)
        query.append(render_view(scene, 32, az, el)[0].numpy())
        held.append(para_caption(spec, rng, validation=True))
        trained.append(caption(spec, rng, wording).text)
    enc = get_encoder()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, features=np.stack(feats).astype(np.float32), orbit=(np.stack(orbit) * 255).round().astype(np.uint8),
                 query=(np.stack(query) * 255).round().astype(np.uint8),
                 held_text=enc.encode(held)[2].numpy().astype(np.float32),
                 trained_text=enc.encode(trained)[2].numpy().astype(np.float32),
                 held=np.array(held), trained=np.array(trained))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@torch.no_grad()
def evaluate(model, val: dict) -> dict[str, float]:
    """recall@1 / @5 of text (our held-out and the training wording) and image queries over the fused library."""
    from .encode import image_query_embeddings
    from .fusion import fuse, query_vector

    model.eval()
    s = model.scene(torch.from_numpy(val["features"])).double().numpy()
    orbit = torch.from_numpy(val["orbit"]).float().div(255).flatten(0, 1).permute(0, 3, 1, 2)
    i = _unit(model.image(orbit).double().numpy().reshape(len(s), 3, -1).mean(1))
    qx = torch.from_numpy(val["query"]).float().div(255).permute(0, 3, 1, 2)
    q = image_query_embeddings(model, qx).double().numpy()  # as encode.encode_image embeds a query
    q1 = model.image(qx).double().numpy()  # without the shifts (for comparison)
    lib = np.stack([fuse(None, a, b) for a, b in zip(s, i)])

    def ranks(qv: np.ndarray) -> np.ndarray:
        scores = qv @ lib.T
        return (scores > np.diag(scores)[:, None]).sum(1)

    out = {}
    for name, qs in (("held_text", [query_vector(t, None) for t in val["held_text"]]),
                     ("trained_text", [query_vector(t, None) for t in val["trained_text"]]),
                     ("image", [query_vector(None, x) for x in q]),
                     ("image_unshifted", [query_vector(None, x) for x in q1])):
        r = ranks(np.stack(qs))
        out[f"{name}_r@1"] = round(float((r == 0).mean()), 4)
        out[f"{name}_r@5"] = round(float((r < 5).mean()), 4)
    return out


def load_val(path: Path = VAL_FILE) -> dict:
    """The validation arrays."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def main() -> None:
    """Command line: build the set, or evaluate checkpoints."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--val", default=str(VAL_FILE))
    ap.add_argument("--scenes", type=int, default=512, help="with --build: how many (the first 512 are the default set's)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.build:
        build(Path(a.val), scenes=a.scenes)
        return
    from .model import Encoders

    val = load_val(Path(a.val))
    for c in a.checkpoints:
        state = torch.load(c, map_location="cpu", weights_only=False)
        model = Encoders(state["config"])
        model.load_state_dict(state["model"])
        print(json.dumps({"checkpoint": c, "step": state["step"], **evaluate(model, val)}), flush=True)


if __name__ == "__main__":
    main()
