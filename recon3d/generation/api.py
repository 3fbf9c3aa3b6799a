"""``recon3d.generate(prompt)``: a GaussianScene from a sentence, with the shipped checkpoint."""

from __future__ import annotations

import json
import time
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import Recon3dError
from ..scene import GaussianScene

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "generator-small.pt"
MAX_PROMPT_CHARS = 300
MAX_PROMPT_TOKENS = 48
# below this cosine similarity to every caption form the model learned, a prompt is "far" from them
FAMILIAR_SIMILARITY = 0.6


class PromptError(Recon3dError, ValueError):
    """A prompt the generator refuses (empty, too long, not text)."""


class UnfamiliarPromptWarning(UserWarning):
    """The prompt is far from every concept the generator was trained on."""


@lru_cache(maxsize=4)
def _load(path: str, device: str):
    from .sample import load_generator

    return load_generator(path, device)


def _encoder():
    from .text import get_encoder

    return get_encoder()


def known_concepts(checkpoint: str | Path | None = None) -> list[str]:
    """The concept words and phrases the shipped generator was trained on (from its metadata JSON)."""
    from .data import COLOURS, RELATIONS, SHAPES

    meta = Path(checkpoint or DEFAULT_CHECKPOINT).with_suffix(".json")
    if meta.is_file():
        concepts = json.loads(meta.read_text()).get("known_concepts")
        if concepts:
            return list(concepts)
    return [*SHAPES, *COLOURS, "small", "large", *RELATIONS]


@lru_cache(maxsize=4)
def _reference_embeddings(checkpoint: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Pooled embeddings of the known concepts and of one caption per (shape, colour) form."""
    from .data import COLOURS, SHAPES, ObjectSpec

    concepts = known_concepts(checkpoint)
    shapes = [c for c in concepts if c not in COLOURS and c not in ("small", "large") and " of" not in c and c not in ("behind", "next to")]
    captions = [ObjectSpec(s, c).phrase() for s in shapes or SHAPES for c in COLOURS]
    enc = _encoder()
    return concepts, enc.encode(concepts)[2], enc.encode(captions)[2]


def check_prompt(prompt: object, checkpoint: str | Path | None = None) -> str:
    """Validate a prompt: raise PromptError when unusable, warn when far from what the model learned."""
    return _check_prompt(prompt, checkpoint)[0]


def _check_prompt(prompt: object, checkpoint: str | Path | None = None) -> tuple[str, tuple]:
    """``check_prompt`` that also returns the prompt's encoding (so it is encoded once)."""
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be text, got {type(prompt).__name__}")
    text = " ".join(prompt.split())
    if not text:
        raise PromptError("the prompt is empty; describe a scene, e.g. 'a red cube on top of a blue sphere'")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt is too long ({len(text)} characters; at most {MAX_PROMPT_CHARS})")
    enc = _encoder()
    n_tokens = enc.count_tokens(text)
    if n_tokens > MAX_PROMPT_TOKENS:
        raise PromptError(f"the prompt is too long ({n_tokens} tokens; at most {MAX_PROMPT_TOKENS})")
    concepts, concept_emb, caption_emb = _reference_embeddings(str(checkpoint or DEFAULT_CHECKPOINT))
    encoded = enc.encode([text])
    pooled = encoded[2][0]
    familiarity = float((caption_emb @ pooled).max())
    if familiarity < FAMILIAR_SIMILARITY:
        sims = concept_emb @ pooled
        closest = [concepts[i] for i in sims.argsort(descending=True)[:5].tolist()]
        warnings.warn(
            f"the prompt {text!r} is far from anything the generator learned (similarity {familiarity:.2f} < "
            f"{FAMILIAR_SIMILARITY}); the closest concepts it knows are: {', '.join(closest)}",
            UnfamiliarPromptWarning,
            stacklevel=4,
        )
    return text, encoded


def generate(
    prompt: str,
    *,
    seed: int = 0,
    num_gaussians: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
) -> GaussianScene:
    """Generate a GaussianScene (Z up, resting on z = 0) for ``prompt`` with the shipped generator."""
    from .data import features_to_scene

    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is None and not ckpt.is_file():
        raise Recon3dError(f"{ckpt}: the shipped generator checkpoint is missing from this installation")
    text, encoded = _check_prompt(prompt, ckpt)
    if num_gaussians is not None and not 1 <= int(num_gaussians) <= 200_000:
        raise PromptError(f"num_gaussians must be between 1 and 200000, got {num_gaussians}")
    if steps is not None and not 1 <= int(steps) <= 1000:
        raise PromptError(f"steps must be between 1 and 1000, got {steps}")
    gen = _load(str(ckpt), device)
    d = gen.sample_defaults
    from .sample import prompt_inputs

    count = int(num_gaussians if num_gaussians is not None else d["num_gaussians"])
    tokens, mask, pooled, extra = prompt_inputs(gen, _encoder(), text, count, encoded)
    feats = gen.sample_features(
        tokens, mask, pooled, extra=extra,
        num_gaussians=count,
        steps=int(steps if steps is not None else d["steps"]),
        guidance=float(guidance if guidance is not None else d["guidance"]),
        seed=int(seed),
        solver=d.get("solver", "euler"),
    )
    return features_to_scene(feats[0])


def timed_generate(prompt: str, **kwargs) -> tuple[GaussianScene, float]:
    """``generate`` and its wall time in seconds (for benchmarks)."""
    t = time.perf_counter()
    scene = generate(prompt, **kwargs)
    return scene, time.perf_counter() - t
