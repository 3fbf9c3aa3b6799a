"""Loading a generator checkpoint and sampling scenes from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from .data import features_to_scene, from_reference_density
from .flow import sample_flow
from .model import ModelConfig, SetFlowTransformer, SlotQueryFlow, build_model


@dataclass
class Generator:
    """A trained generator: network, feature statistics and its default sampling settings."""

    model: SetFlowTransformer
    mean: torch.Tensor
    std: torch.Tensor
    encoder_name: str
    sample_defaults: dict
    step: int

    @torch.no_grad()
    def sample_features(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        pooled: torch.Tensor,
        *,
        num_gaussians: int,
        steps: int,
        guidance: float,
        seed: int,
        solver: str = "euler",
        extra: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """B×N×14 Gaussian features in world units for pre-encoded captions (``extra``: slot inputs)."""
        x = sample_flow(
            self.model, tokens, mask, pooled, num_gaussians=num_gaussians, steps=steps, guidance=guidance,
            seed=seed, solver=solver, feature_dim=self.model.cfg.feature_dim, extra=extra,
        )
        feats = x.cpu() * self.std + self.mean
        return from_reference_density(feats, num_gaussians)


def load_generator(path: str | Path, device: str = "cpu") -> Generator:
    """Load a shipped checkpoint (``export_weights`` format) or a training ``last.pt``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "generator checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which
        raise InputError(path, f"not a readable generator checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise InputError(path, "not a recon3d generator checkpoint")
    if "weights" in state:
        cfg, weights, sample = ModelConfig(**state["model_config"]), state["weights"], state["sample"]
    elif "ema" in state:
        cfg, weights, sample = ModelConfig(**state["config"]["model"]), state["ema"], state["config"]["sample"]
    else:
        raise InputError(path, "not a recon3d generator checkpoint (no 'weights' or 'ema')")
    model = build_model(cfg)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    except RuntimeError as exc:
        raise InputError(path, f"weights do not fit the model its config describes ({str(exc).splitlines()[0]})") from exc
    model.eval().to(device)
    cls = SlotGenerator if cfg.object_queries else Generator
    return cls(
        model, state["feature_mean"].float(), state["feature_std"].float(), state["encoder"], dict(sample),
        int(state.get("step", 0)),
    )


def prompt_inputs(generator: Generator, encoder, prompt: str, num_gaussians: int, encoded=None):
    """(tokens, mask, pooled, extra) of one prompt for ``generator``; ``encoded``: its whole-prompt encoding."""
    if not generator.model.cfg.slots:
        tokens, mask, pooled = encoded if encoded is not None else encoder.encode([prompt])
        return tokens, mask, pooled, None
    from .conditioning import encode_conditioning, slot_counts, slot_labels

    cond = encode_conditioning(encoder, [prompt], None if encoded is None else encoded[2])
    slots = slot_labels(slot_counts(prompt, num_gaussians, generator.model.cfg.slots))[None]
    return cond.tokens, cond.mask, cond.pooled, {"slots": slots, **cond.extra()}


def sample_scene(generator: Generator, encoder, prompt: str, **kwargs):
    """One GaussianScene for one prompt (kwargs: num_gaussians, steps, guidance, seed, solver)."""
    opts = {k: generator.sample_defaults[k] for k in ("num_gaussians", "steps", "guidance", "solver")} | kwargs
    opts.setdefault("seed", 0)
    tokens, mask, pooled, extra = prompt_inputs(generator, encoder, prompt, int(opts["num_gaussians"]))
    feats = generator.sample_features(tokens, mask, pooled, extra=extra, **opts)
    return features_to_scene(feats[0])


@dataclass
class SlotGenerator(Generator):
    """A round-2 (slot-query) generator: the network reads the whole prompt and decides the objects."""

    is_slot_query = True

    @torch.inference_mode()
    def generate(self, encoder, text: str | None, encoded, image: torch.Tensor | None, *, per_object: int,
                 steps: int, guidance: float, seed: int, solver: str = "euler", num_objects: int | None = None,
                 guidance_until: float = 1.0, precision: str = "float32"):
        """(GaussianScene, objects drawn) for a prompt and/or an image prompt (H×W×3 in [0, 1]).

        ``precision`` "bfloat16": the set transformer's velocity runs under autocast (``sample_slot_flow``).
        """
        from .flow import sample_slot_flow
        from .image import prepare_image

        model: SlotQueryFlow = self.model  # type: ignore[assignment]
        tokens = mask = images = None
        if text is not None:
            tokens, mask, _ = encoded if encoded is not None else encoder.encode([text])
        if image is not None:
            images = prepare_image(image)[None]
        x, _, drawn = sample_slot_flow(
            model, text_tokens=tokens, text_mask=mask, images=images, per_object=per_object, steps=steps,
            guidance=guidance, seed=seed, solver=solver, num_objects=num_objects, guidance_until=guidance_until,
            precision=precision,
        )
        feats = from_reference_density(x.cpu() * self.std + self.mean, per_object)
        return features_to_scene(feats), drawn
