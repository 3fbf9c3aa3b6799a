"""Rectified-flow matching: the training loss and the ODE sampler with classifier-free guidance."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def ot_pair_noise(
    noise: torch.Tensor, data: torch.Tensor, dims: slice = slice(0, 3), slots: torch.Tensor | None = None
) -> torch.Tensor:
    """Reorder each sample's noise points to match its data points (optimal assignment on ``dims``).

    The set is unordered, so any pairing of noise and data points is a valid coupling; the cheapest one
    makes the flow straighter (fewer sampling steps, faster training), as in equivariant OT flow matching.
    With ``slots`` (B×N) points are only paired within their slot: a slot is part of a token's identity.
    """
    from scipy.optimize import linear_sum_assignment

    out = noise.clone()
    for b in range(noise.shape[0]):
        groups = [torch.arange(noise.shape[1])]
        if slots is not None:
            groups = [torch.nonzero(slots[b] == s).flatten() for s in torch.unique(slots[b])]
        for idx in groups:
            d, n = data[b, idx][:, dims], noise[b, idx][:, dims]
            rows, cols = linear_sum_assignment(torch.cdist(d, n).pow(2).numpy())
            out[b, idx[torch.from_numpy(rows)]] = noise[b, idx[torch.from_numpy(cols)]]
    return out


def flow_matching_loss(
    model: nn.Module,
    data: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    pooled: torch.Tensor,
    *,
    generator: torch.Generator,
    cond_drop: float = 0.1,
    ot_pairing: bool = True,
    extra: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean squared error between predicted and straight-line velocity (data − noise) at a random time.

    ``extra``: further network inputs (a slot model's ``slots``, ``text_tags``, ``phrase_pooled``).
    """
    b = data.shape[0]
    extra = extra or {}
    noise = torch.randn(data.shape, generator=generator)
    if ot_pairing:
        noise = ot_pair_noise(noise, data, slots=extra.get("slots"))
    # logit-normal times put more training where the velocity is hardest to predict (mid-path)
    t = torch.sigmoid(torch.randn(b, generator=generator))
    drop = torch.rand(b, generator=generator) < cond_drop
    device = next(model.parameters()).device
    data, noise, t, drop = data.to(device), noise.to(device), t.to(device), drop.to(device)
    xt = (1 - t[:, None, None]) * noise + t[:, None, None] * data
    extra = {k: v.to(device) for k, v in extra.items()}
    v = model(xt, t, tokens.to(device), mask.to(device), pooled.to(device), drop, **extra)
    return (v - (data - noise)).pow(2).mean()


@torch.no_grad()
def sample_flow(
    model: nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    pooled: torch.Tensor,
    *,
    num_gaussians: int,
    steps: int = 24,
    guidance: float = 3.0,
    seed: int = 0,
    solver: str = "euler",
    feature_dim: int = 14,
    extra: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate the guided flow from noise (t=0) to data (t=1); returns B×N×F in normalised units.

    ``extra``: further network inputs with a leading batch dimension (a slot model's slots and phrases).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    device = next(model.parameters()).device
    b = pooled.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn((b, num_gaussians, feature_dim), generator=gen).to(device)
    tokens, mask, pooled = tokens.to(device), mask.to(device), pooled.to(device)
    extra = {k: v.to(device) for k, v in (extra or {}).items()}
    use_cfg = guidance != 1.0
    if use_cfg:
        tokens2, mask2, pooled2 = torch.cat([tokens, tokens]), torch.cat([mask, mask]), torch.cat([pooled, pooled])
        extra2 = {k: torch.cat([v, v]) for k, v in extra.items()}
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(device)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=device)
        if not use_cfg:
            return model(x, tt, tokens, mask, pooled, **extra)
        v = model(torch.cat([x, x]), torch.cat([tt, tt]), tokens2, mask2, pooled2, drop, **extra2)
        cond, uncond = v[:b], v[b:]
        return uncond + guidance * (cond - uncond)

    return _integrate(velocity, x, steps, solver)


def slot_flow_loss(
    model: nn.Module,
    data: torch.Tensor,
    slots: torch.Tensor,
    num_objects: torch.Tensor,
    *,
    generator: torch.Generator,
    text_tokens: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    images: torch.Tensor | None = None,
    use_text: torch.Tensor | None = None,
    use_image: torch.Tensor | None = None,
    cond_drop: float = 0.1,
    ot_pairing: bool = True,
    exist_weight: float = 0.1,
    attributes: dict[str, torch.Tensor] | None = None,
    attribute_weight: float = 0.0,
    parts: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, flow, existence) losses of a SlotQueryFlow batch; every sample holds ``num_objects`` objects.

    ``attributes`` (``bank.Bank.sample``'s ``attr_shape`` B×n, ``attr_values`` B×n×9) with ``attribute_weight``
    > 0 adds the slot-attribute loss (the model's attribute head): each live slot state must name its own
    object's shape (cross-entropy) and give its colour, centre and extent (squared error); ``parts`` receives
    the attribute loss's value.
    """
    b = data.shape[0]
    noise = torch.randn(data.shape, generator=generator)
    if ot_pairing:
        noise = ot_pair_noise(noise, data, slots=slots)
    t = torch.sigmoid(torch.randn(b, generator=generator))
    drop = torch.rand(b, generator=generator) < cond_drop
    device = next(model.parameters()).device
    data, noise, t, drop = data.to(device), noise.to(device), t.to(device), drop.to(device)
    xt = (1 - t[:, None, None]) * noise + t[:, None, None] * data

    def dev(v):
        return None if v is None else v.to(device)

    use_attr = attributes is not None and attribute_weight > 0
    out = model(xt, t, dev(slots), dev(num_objects), dev(text_tokens), dev(text_mask), dev(images), drop,
                dev(use_text), dev(use_image), **({"with_attributes": True} if use_attr else {}))
    v, exists = out[0], out[1]
    flow = (v - (data - noise)).pow(2).mean()
    k = exists.shape[1]
    target = (torch.arange(k, device=device)[None] < num_objects.to(device)[:, None]).float()
    # a dropped caption says nothing about the count: no existence loss there
    keep = (~drop).float()[:, None]
    exist = (nn.functional.binary_cross_entropy_with_logits(exists, target, reduction="none") * keep).sum() / keep.sum().clamp_min(1) / k
    total = flow + exist_weight * exist
    if use_attr:
        if out[2] is None:
            raise ValueError("attribute targets given to a model without an attribute head (model.attributes)")
        from .bank import ATTRIBUTE_DIM

        # a head wider than shapes + values also classifies each object's colour name (bank.ATTRIBUTE_DIM_COLOURS)
        colour_classes = out[2].shape[-1] - ATTRIBUTE_DIM if out[2].shape[-1] > ATTRIBUTE_DIM else 0
        colour = dev(attributes.get("attr_colour")) if colour_classes else None
        attr = attribute_loss(out[2], dev(attributes["attr_shape"]), dev(attributes["attr_values"]), ~drop,
                              colour=colour, colour_classes=colour_classes)
        total = total + attribute_weight * attr
        if parts is not None:
            parts["attributes"] = float(attr.detach())
    return total, flow, exist


def attribute_loss(pred: torch.Tensor, shape: torch.Tensor, values: torch.Tensor, keep: torch.Tensor,
                   colour: torch.Tensor | None = None, colour_classes: int = 0) -> torch.Tensor:
    """Slot-attribute loss: ``pred`` B×K×(S+C+V) against shape classes B×n (S logits), colour classes B×n
    (C = ``colour_classes`` logits, when ``colour`` is given) and values B×n×V for the n ≤ K live slots, over the
    samples ``keep`` (B bool; a dropped context says nothing about the objects)."""
    n, nv = shape.shape[1], values.shape[-1]
    pred = pred[:, :n]
    nc = colour_classes if colour is not None else 0
    ns = pred.shape[-1] - nv - colour_classes
    logits, vals = pred[..., :ns], pred[..., pred.shape[-1] - nv :]
    ce = nn.functional.cross_entropy(logits.reshape(-1, ns), shape.reshape(-1), reduction="none")
    if nc:
        colour_logits = pred[..., ns : ns + nc]
        ce = ce + nn.functional.cross_entropy(colour_logits.reshape(-1, nc), colour.reshape(-1), reduction="none")
    se = (vals - values).pow(2).mean(-1).reshape(-1)
    w = keep.float()[:, None].expand(-1, n).reshape(-1)
    return ((ce + se) * w).sum() / w.sum().clamp_min(1)


@torch.no_grad()
def sample_slot_flow(
    model: nn.Module,
    *,
    text_tokens: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    images: torch.Tensor | None,
    per_object: int,
    steps: int = 16,
    guidance: float = 2.0,
    seed: int = 0,
    solver: str = "euler",
    num_objects: int | None = None,
    guidance_until: float = 1.0,
    precision: str = "float32",
    blocked: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sample one scene: (x N×F in normalised units, slots N, objects). The network decides how many
    objects (its existence logits) unless ``num_objects`` is given.

    ``guidance_until``: guidance (a second, unconditional pass in the same batch) only for steps starting at
    t < this; later steps, where the objects are laid out and only refined, run the conditional pass alone.
    ``precision`` "bfloat16": the velocity network runs under autocast; the context, the slot states (hence
    the object count) and the ODE state stay float32. ``blocked`` False: the one-hot slot path (reference).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
    device = next(model.parameters()).device
    ctx, ctx_mask = model.context(text_tokens, text_mask, images, 1)
    states, exists = model.slot_states(ctx, ctx_mask)
    if num_objects is None:
        alive = (exists[0] > 0).long()
        num_objects = max(1, int(torch.cumprod(alive, 0).sum()))  # the leading run of live slots
    n_obj = torch.tensor([num_objects], device=device)
    slots = torch.arange(num_objects, device=device).repeat_interleave(per_object)[None]
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn((1, num_objects * per_object, model.cfg.feature_dim), generator=gen).to(device)
    use_cfg = guidance != 1.0
    if use_cfg:
        null_ctx, null_mask = model.context(text_tokens, text_mask, images, 1, drop=torch.ones(1, dtype=torch.bool))
        null_states, _ = model.slot_states(null_ctx, null_mask)
        ctx2 = torch.cat([ctx, null_ctx])
        mask2 = torch.cat([ctx_mask, null_mask])
        states2 = torch.cat([states, null_states])
        slots2, n2 = torch.cat([slots, slots]), torch.cat([n_obj, n_obj])

    layout = per_object if blocked else None  # the sampler lays out blocks of per_object Gaussians per object
    words = 0 if text_tokens is None else text_tokens.shape[1]  # context() puts the words first
    low = precision == "bfloat16"

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
            if not use_cfg or t >= guidance_until:
                v = model.velocity(x, torch.full((1,), t, device=device), slots, states, ctx, ctx_mask, n_obj,
                                   per_object=layout, words=words)
                return v.float()
            v = model.velocity(torch.cat([x, x]), torch.full((2,), t, device=device), slots2, states2, ctx2, mask2,
                               n2, per_object=layout, words=words).float()
        return v[1:] + guidance * (v[:1] - v[1:])

    x = _integrate(velocity, x, steps, solver)
    return x[0], slots[0], num_objects


def _integrate(velocity, x: torch.Tensor, steps: int, solver: str) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 0 to 1 in ``steps`` steps (Euler, or Heun but for the last)."""
    times = np.linspace(0.0, 1.0, steps + 1)
    for i in range(steps):
        t0, t1 = float(times[i]), float(times[i + 1])
        v0 = velocity(x, t0)
        if solver == "heun" and i < steps - 1:
            x1 = x + (t1 - t0) * v0
            x = x + (t1 - t0) * 0.5 * (v0 + velocity(x1, t1))
        else:
            x = x + (t1 - t0) * v0
    return x
