"""``recon3d.generate(prompt)``: a GaussianScene from a sentence, with the shipped checkpoint."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
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


class GeneratorWarning(UserWarning):
    """Base class of the generator's warnings about a prompt."""


class UnfamiliarPromptWarning(GeneratorWarning):
    """The prompt is far from every concept the generator was trained on."""


class UnhonouredPromptWarning(GeneratorWarning):
    """The prompt asks for something this generator cannot draw (a relation, a count, an extra object)."""


MAX_OBJECTS = 5
# the first shipped model (no "capabilities" in its metadata): two objects, one relation from these phrases
_LEGACY_RELATION_PHRASES = ("on top of", "to the left of", "to the right of", "in front of", "behind", "next to")


@dataclass
class Capabilities:
    """What a checkpoint can draw: objects per scene, objects per phrase, relations, image prompts."""

    max_objects: int
    max_count: int
    relations: tuple[str, ...]  # canonical relations (grammar.RELATIONS), or phrases for the legacy model
    relation_phrases_only: bool  # legacy: only these exact phrases split a prompt
    max_relations: int
    image: bool
    concepts: tuple[str, ...]  # what the closest-concepts list may offer: things it can draw


@lru_cache(maxsize=8)
def capabilities(checkpoint: str | Path | None = None) -> Capabilities:
    """The checkpoint's capabilities, from its metadata JSON (the first shipped model's when absent)."""
    from .data import COLOURS, SHAPES

    meta_path = Path(checkpoint or DEFAULT_CHECKPOINT).with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    caps = meta.get("capabilities")
    if caps:
        return Capabilities(int(caps["max_objects"]), int(caps["max_count"]), tuple(caps["relations"]), False,
                            int(caps.get("max_relations", 3)), bool(caps.get("image", False)), tuple(caps["concepts"]))
    # meshes trained at a 3 % share are not offered: the benchmark never showed the model can draw them
    drawable = {*SHAPES, *COLOURS, "small", "large", *_LEGACY_RELATION_PHRASES}
    known = meta.get("known_concepts") or sorted(drawable)
    return Capabilities(2, 1, _LEGACY_RELATION_PHRASES, True, 1, False, tuple(c for c in known if c in drawable))


@lru_cache(maxsize=4)
def _load(path: str, device: str):
    from .sample import load_generator

    return load_generator(path, device)


def _encoder():
    from .text import get_encoder

    return get_encoder()


def known_concepts(checkpoint: str | Path | None = None) -> list[str]:
    """The concepts the generator can draw (shapes, colours, sizes, relations), from its metadata JSON."""
    return list(capabilities(checkpoint).concepts)


@lru_cache(maxsize=4)
def _reference_embeddings(checkpoint: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Pooled embeddings of the drawable concepts and of captions of the kind the model learned."""
    from .data import COLOURS, SHAPES, ObjectSpec

    concepts = known_concepts(checkpoint)
    caps = capabilities(checkpoint)
    if caps.relation_phrases_only:
        shapes = [c for c in concepts if c in SHAPES]
        captions = [ObjectSpec(s, c).phrase() for s in shapes or SHAPES for c in COLOURS]
    else:
        import numpy as np

        from .grammar import Rules, caption, random_scene

        rng = np.random.default_rng(0)
        rules = Rules(pairs=set())
        captions = [caption(random_scene(rng, rules), rng, rules).text for _ in range(400)]
    concept_emb, caption_emb = _cached_embeddings(concepts, captions)
    return concepts, concept_emb, caption_emb


def _cached_embeddings(concepts: list[str], captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled embeddings of ``concepts`` and ``captions``, kept on disk (<cache root>/generator/) keyed by the
    texts and the encoder: encoding ~600 phrases is most of the first ``generate`` call's cost otherwise."""
    import hashlib
    import io

    from ..io_utils import atomic_write_bytes
    from ..native import cache_root

    enc = _encoder()
    key = hashlib.sha256(json.dumps([enc.name, concepts, captions]).encode()).hexdigest()[:24]
    path = cache_root() / "generator" / f"reference-{key}.pt"
    try:
        c, p = torch.load(path, weights_only=True)
        if c.shape == (len(concepts), enc.dim) and p.shape == (len(captions), enc.dim):
            return c, p
    except Exception:  # absent, truncated or foreign: encode again and rewrite it
        pass
    c, p = enc.encode(concepts)[2], enc.encode(captions)[2]
    try:
        buf = io.BytesIO()
        torch.save((c, p), buf)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:  # a read-only home: the cache is an optimisation only
        pass
    return c, p


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
    caps = capabilities(str(checkpoint or DEFAULT_CHECKPOINT))
    unhonoured = _unhonoured(text, caps)
    concepts, concept_emb, caption_emb = _reference_embeddings(str(checkpoint or DEFAULT_CHECKPOINT))
    encoded = enc.encode([text])
    pooled = encoded[2][0]
    familiarity = float((caption_emb @ pooled).max())
    if familiarity < FAMILIAR_SIMILARITY:
        sims = concept_emb @ pooled
        closest = [concepts[i] for i in sims.argsort(descending=True)[:5].tolist()]
        warnings.warn(
            f"the prompt {text!r} is far from anything the generator learned (similarity {familiarity:.2f} < "
            f"{FAMILIAR_SIMILARITY}); the closest concepts it can draw are: {', '.join(closest)}",
            UnfamiliarPromptWarning,
            stacklevel=4,
        )
    if unhonoured:
        warnings.warn(
            f"this generator cannot honour part of the prompt {text!r}: {'; '.join(unhonoured)}",
            UnhonouredPromptWarning,
            stacklevel=4,
        )
    return text, encoded


def _unhonoured(text: str, caps: Capabilities) -> list[str]:
    """What the prompt asks for beyond ``caps``; raises PromptError for a count above ``MAX_OBJECTS``."""
    from .mentions import scan_prompt

    m = scan_prompt(text)
    for o in m.objects:
        if o.count > MAX_OBJECTS:
            raise PromptError(f"the prompt asks for {o.count} objects ({o.phrase!r}); the generator draws at most "
                              f"{MAX_OBJECTS} objects per scene")
    out = []
    for o in m.objects:
        if not o.reference and o.count > caps.max_count:
            what = "one object per phrase" if caps.max_count == 1 else f"at most {caps.max_count} of a kind"
            out.append(f"the count {o.count} in {o.phrase!r} (it draws {what})")
    # objects past the limit, counting each phrase's count: "a cube, ..., and a sixth ball" names the ball
    beyond, seen = [], 0
    for o in m.objects:
        if o.reference:
            continue
        drawn = min(o.count, caps.max_count)
        if seen + drawn > caps.max_objects:
            left = max(0, caps.max_objects - seen)
            beyond.append(repr(o.phrase) if left == 0 else f"{drawn - left} of {o.phrase!r}")
        seen += drawn
    if beyond:
        out.append(f"objects beyond its {caps.max_objects} per scene: {', '.join(beyond)}")
    if caps.relation_phrases_only:
        known = [p for p in m.relation_phrases if p in caps.relations]
        for p in m.relation_phrases:
            if p not in caps.relations:
                out.append(f"the relation {p!r} (it knows: {', '.join(caps.relations)})")
        if len(known) > caps.max_relations:
            out.append(f"relations after the first ({', '.join(repr(p) for p in known[caps.max_relations:])})")
    else:
        for r, p in zip(m.relations, m.relation_phrases):
            if r not in caps.relations:
                out.append(f"the relation {p!r}")
        if len(m.relations) > caps.max_relations:
            later = ", ".join(repr(p) for p in m.relation_phrases[caps.max_relations:])
            out.append(f"relations after the first {caps.max_relations} ({later})")
    for w in m.unknown_relations:
        out.append(f"the spatial word {w!r} (not a relation it knows)")
    return out


def generate(
    prompt: str | None = None,
    *,
    image=None,
    seed: int = 0,
    num_gaussians: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    sampler: dict | None = None,
) -> GaussianScene:
    """Generate a GaussianScene (Z up, resting on z = 0) for a text ``prompt``, an ``image`` (path or array), or both.

    ``num_gaussians``: the scene's Gaussians for the first model; Gaussians *per object* for slot-query
    models (round 2), whose scenes hold up to five objects. ``sampler``: overrides of the checkpoint's other
    sampling defaults (``solver``: euler/heun; slot-query models also ``guidance_until``: guidance only for
    t below it, ``precision``: float32/bfloat16).
    """
    from .data import features_to_scene

    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is None and not ckpt.is_file():
        raise Recon3dError(f"{ckpt}: the shipped generator checkpoint is missing from this installation")
    if prompt is None and image is None:
        raise PromptError("give a text prompt, an image, or both")
    text, encoded = _check_prompt(prompt, ckpt) if prompt is not None else (None, None)
    picture = None
    if image is not None:
        from .image import load_image_prompt

        picture = load_image_prompt(image)
        if not capabilities(str(ckpt)).image:
            raise PromptError(f"{ckpt.name} has no image encoder; give a text prompt (or a checkpoint trained with images)")
    if num_gaussians is not None and not 1 <= int(num_gaussians) <= 200_000:
        raise PromptError(f"num_gaussians must be between 1 and 200000, got {num_gaussians}")
    if steps is not None and not 1 <= int(steps) <= 1000:
        raise PromptError(f"steps must be between 1 and 1000, got {steps}")
    gen = _load(str(ckpt), device)
    d = gen.sample_defaults
    count = int(num_gaussians if num_gaussians is not None else d["num_gaussians"])
    extra = dict(sampler or {})
    unknown = set(extra) - {"solver", "guidance_until", "precision"}
    if unknown:
        raise PromptError(f"unknown sampler settings {sorted(unknown)}; known: solver, guidance_until, precision")
    opts = dict(steps=int(steps if steps is not None else d["steps"]),
                guidance=float(guidance if guidance is not None else d["guidance"]), seed=int(seed),
                solver=extra.pop("solver", d.get("solver", "euler")))
    if getattr(gen, "is_slot_query", False):
        slot_opts = {k: extra[k] if k in extra else d[k] for k in ("guidance_until", "precision") if k in extra or k in d}
        scene, drawn = gen.generate(_encoder(), text, encoded, picture, per_object=count, **opts, **slot_opts)
        if text is not None:
            _warn_if_count_differs(text, drawn)
        return scene
    from .sample import prompt_inputs

    tokens, mask, pooled, extra = prompt_inputs(gen, _encoder(), text, count, encoded)
    feats = gen.sample_features(tokens, mask, pooled, extra=extra, num_gaussians=count, **opts)
    return features_to_scene(feats[0])


def _warn_if_count_differs(text: str, drawn: int) -> None:
    """Say so when the network drew another number of objects than the prompt seems to name."""
    from .mentions import scan_prompt

    named = scan_prompt(text).num_objects
    if named and named != drawn:
        warnings.warn(f"the prompt {text!r} names {named} object(s) but the generator drew {drawn}",
                      UnhonouredPromptWarning, stacklevel=3)


def timed_generate(prompt: str | None = None, **kwargs) -> tuple[GaussianScene, float]:
    """``generate`` and its wall time in seconds (for benchmarks)."""
    t = time.perf_counter()
    scene = generate(prompt, **kwargs)
    return scene, time.perf_counter() - t
