"""Densification strategies: objects with hooks around the backward step that edit the scene and the
optimiser state together (the shape of gsplat's ``Strategy``; our own code).

- ``DefaultStrategy`` — the 3DGS recipe: accumulate the screen-space gradient norm of the projected
  centres (in NDC units), clone small Gaussians and split large ones where it is high, prune faint and
  oversized ones, reset opacities periodically.
- ``MCMCStrategy`` — Kheradmand et al. 2024: a hard cap on the count; dead Gaussians are relocated onto
  live ones sampled by opacity, the count grows by 5 % per refinement until the cap, positions get noise
  scaled by the position learning rate and gated by opacity, and small opacity/scale regularisers join
  the loss.

The two dataclasses are also the ``strategy`` section of the config tree (``recon3d.train.config``): each
field is one setting with its one default, ``kind`` names the strategy in YAML (``strategy: {kind: mcmc,
cap: 150000}``), and the fields marked ``runtime`` (the training frame's scale, the random generator, a budget)
are filled in by the trainer, never read from a config.

Every hook takes ``optimizer`` (a ``GaussianAdam`` holding the parameters by name), a ``state`` dict of
tensors (checkpointed with the run) and ``step``; schedule lengths are multiplied by ``schedule_scale``
so a time-budgeted run compresses them together.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..configtree import runtime
from ..scene import quat_to_rotmat
from . import cpu_ops
from .optim import GaussianAdam

# A compressed schedule (short time budget) still leaves this many steps between refinements (and before
# the first): growing every few steps would add Gaussians faster than the optimiser can place them.
MIN_REFINE_INTERVAL = 25


def _every(value: int, scale: float) -> int:
    return max(1, min(value, MIN_REFINE_INTERVAL), int(round(value * scale)))


def _start(value: int, scale: float) -> int:
    return max(min(value, 2 * MIN_REFINE_INTERVAL), int(value * scale))


class Strategy:
    """Base class: no densification."""

    kind: ClassVar[str] = "none"

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when nothing is)."""
        bad = [f"strategy.{name} must be at least 1" for name in ("cap", "refine_every", "reset_every")
               if getattr(self, name, 1) < 1]
        if not 0 <= getattr(self, "reach_cap_at", 0.0) <= 1:
            bad.append(f"strategy.reach_cap_at must lie in [0, 1], not {self.reach_cap_at}")
        return bad

    def initialize_state(self, num_gaussians: int) -> dict[str, torch.Tensor]:
        """Fresh per-run state (tensors only)."""
        return {}

    def loss_terms(self, params: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """Regularisers added to the image loss."""
        return 0.0

    def step_pre_backward(self, optimizer: GaussianAdam, state: dict, step: int, info: dict) -> None:
        """Before ``loss.backward()``: ask for the gradients the strategy reads."""
        means2d = info.get("means2d")
        if means2d is not None and means2d.requires_grad and means2d.grad_fn is not None:
            means2d.retain_grad()

    def step_post_backward(self, optimizer: GaussianAdam, state: dict, step: int, info: dict,
                           schedule_scale: float = 1.0) -> dict[str, int]:
        """After the backward (before the optimiser step): densify/prune; returns counts of what it did."""
        return {}

    def step_post_optimizer(self, optimizer: GaussianAdam, state: dict, step: int, lr_means: float,
                            generator: torch.Generator | None = None) -> None:
        """After the optimiser step (MCMC noise)."""


def _sample_gaussians(params: dict[str, torch.Tensor], index: torch.Tensor, samples: int,
                      generator: torch.Generator | None) -> torch.Tensor:
    """``samples`` points drawn from each selected Gaussian, samples×K×3."""
    scales = torch.exp(params["scales"][index])
    quats = params["quats"][index]
    norm = quats.norm(dim=-1, keepdim=True)
    identity = torch.zeros_like(quats)
    identity[:, 0] = 1
    rot = quat_to_rotmat(torch.where(norm > 0, quats / norm.clamp_min(1e-12), identity))
    z = torch.randn(samples, len(index), 3, generator=generator, device=scales.device, dtype=scales.dtype)
    return torch.einsum("kij,skj->ski", rot, z * scales) + params["means"][index]


@dataclass
class DefaultStrategy(Strategy):
    """Clone/split from the mean NDC gradient of means2d, prune by opacity and size, reset opacities."""

    kind: ClassVar[str] = "default"
    cap: int = 3_000_000  # no growth beyond this many Gaussians
    refine_start: int = 500
    refine_stop: int = 15000
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_opacity: float = 0.005
    prune_scale3d: float = 0.1
    scene_scale: float = runtime(1.0)  # the scene's extent in training units (sizes are relative to it)
    seed_generator: torch.Generator | None = runtime()
    # data-parallel training: sums a tensor over the processes, so each accumulates every process's cameras
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = runtime()

    def initialize_state(self, num_gaussians: int) -> dict[str, torch.Tensor]:
        """Gradient accumulators, one entry per Gaussian."""
        return {
            "grad2d": torch.zeros(num_gaussians),
            "count": torch.zeros(num_gaussians),
        }

    @torch.no_grad()
    def _accumulate(self, state: dict, info: dict) -> None:
        means2d, radii = info["means2d"], info["radii"]
        if means2d.grad is None:
            if self.reduce is None:
                return
            grad = torch.zeros_like(means2d)  # still take part in the processes' sum
        else:
            grad = means2d.grad.clone()  # C×N×2 in pixels
        # d(loss)/d(ndc) = d(loss)/d(pixel) · W/2; the loss is a mean over the C cameras, so undo that too
        grad[..., 0] *= info["width"] / 2.0 * grad.shape[0]
        grad[..., 1] *= info["height"] / 2.0 * grad.shape[0]
        visible = radii > 0
        norms = grad.norm(dim=-1) * visible
        n = means2d.shape[1]
        if state["grad2d"].shape[0] != n:  # parameters were edited outside a refinement
            state["grad2d"] = torch.zeros(n, device=grad.device)
            state["count"] = torch.zeros(n, device=grad.device)
        norm_sum, visible_sum = norms.sum(0).float(), visible.sum(0).float()
        if self.reduce is not None:  # every process's cameras count, as one process's batch would
            both = self.reduce(torch.stack([norm_sum, visible_sum]))
            norm_sum, visible_sum = both[0], both[1]
        state["grad2d"] = state["grad2d"].to(grad.device) + norm_sum
        state["count"] = state["count"].to(grad.device) + visible_sum

    def step_post_backward(self, optimizer: GaussianAdam, state: dict, step: int, info: dict,
                           schedule_scale: float = 1.0) -> dict[str, int]:
        """Accumulate gradients; every ``refine_every`` steps grow and prune; reset opacities."""
        report: dict[str, int] = {}
        start = _start(self.refine_start, schedule_scale)
        stop = int(self.refine_stop * schedule_scale)
        every = _every(self.refine_every, schedule_scale)
        reset = _every(self.reset_every, schedule_scale)
        if step < stop:
            self._accumulate(state, info)
        if start < step < stop and step % every == 0:
            report.update(self.grow(optimizer, state))
            report["pruned"] = self.prune(optimizer, step > reset)
            n = optimizer.params["means"].shape[0]
            device = optimizer.params["means"].device
            state["grad2d"] = torch.zeros(n, device=device)
            state["count"] = torch.zeros(n, device=device)
        if step < stop and step > 0 and step % reset == 0:
            self.reset_opacities(optimizer)
            report["opacity_reset"] = 1
        return report

    @torch.no_grad()
    def grow(self, optimizer: GaussianAdam, state: dict) -> dict[str, int]:
        """Clone small and split large Gaussians whose mean NDC gradient exceeds ``grow_grad2d``."""
        p = optimizer.params
        n = p["means"].shape[0]
        grads = state["grad2d"] / state["count"].clamp_min(1)
        high = grads > self.grow_grad2d
        room = max(self.cap - n, 0)
        if int(high.sum()) > room:  # keep only the strongest gradients within the cap
            high = torch.zeros_like(high)
            if room > 0:
                high[torch.topk(grads, room).indices] = True
        small = torch.exp(p["scales"]).max(dim=-1).values <= self.grow_scale3d * self.scene_scale
        clone = high & small
        split = high & ~small
        # clone: an exact copy (the optimiser will pull the two apart)
        clone_idx = torch.nonzero(clone)[:, 0]
        split_idx = torch.nonzero(split)[:, 0]
        if len(clone_idx):
            optimizer.append({k: v[clone_idx] for k, v in p.items()})
        if len(split_idx):
            p = optimizer.params
            samples = _sample_gaussians(p, split_idx, 2, self.seed_generator)  # 2×K×3
            smaller = torch.log(torch.exp(p["scales"][split_idx]) / 1.6)
            new = {k: v[split_idx].repeat(2, *([1] * (v.ndim - 1))) for k, v in p.items()}
            new["means"] = samples.reshape(-1, 3)
            new["scales"] = smaller.repeat(2, 1)
            keep = torch.ones(p["means"].shape[0], dtype=torch.bool, device=p["means"].device)
            keep[split_idx] = False
            optimizer.keep(keep)
            optimizer.append(new)
        return {"cloned": len(clone_idx), "split": len(split_idx)}

    @torch.no_grad()
    def prune(self, optimizer: GaussianAdam, prune_large: bool) -> int:
        """Remove Gaussians fainter than ``prune_opacity`` (and, after the first reset, too large ones)."""
        p = optimizer.params
        bad = torch.sigmoid(p["opacities"]) < self.prune_opacity
        if prune_large:
            bad |= torch.exp(p["scales"]).max(dim=-1).values > self.prune_scale3d * self.scene_scale
        if bad.all():  # never prune to an empty scene
            return 0
        if bad.any():
            optimizer.keep(~bad)
        return int(bad.sum())

    @torch.no_grad()
    def reset_opacities(self, optimizer: GaussianAdam) -> None:
        """Clamp opacities to 2×prune_opacity (3DGS's periodic reset) and restart their moments."""
        ceiling = math.log(2 * self.prune_opacity / (1 - 2 * self.prune_opacity))
        optimizer.params["opacities"].clamp_(max=ceiling)
        optimizer.reset_moments("opacities")


_BINOMIAL_N = 51


@functools.lru_cache(maxsize=4)
def _binomials(device: torch.device) -> torch.Tensor:
    # built once per device: filling it entry by entry costs milliseconds, and every refinement needs it
    rows = [[float(math.comb(n, k)) if k <= n else 0.0 for k in range(_BINOMIAL_N)] for n in range(_BINOMIAL_N)]
    return torch.tensor(rows, dtype=torch.float64, device=device)


def relocation_values(opacities: torch.Tensor, scales: torch.Tensor, copies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MCMC relocation (Kheradmand et al. 2024, eq. 9): opacity and scale for each of ``copies`` Gaussians
    that replace one Gaussian of ``opacities`` (activated) and ``scales`` (activated) so the rendered
    footprint is preserved: o' = 1 − (1 − o)^(1/n), σ' = o / (Σᵢ Σₖ C(i−1,k)(−1)ᵏ o'^(k+1)/√(k+1)) · σ."""
    n = copies.clamp(1, _BINOMIAL_N).to(torch.float64)
    o = opacities.to(torch.float64).clamp(1e-6, 1 - 1e-6)
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n)
    # terms with i > n are masked out and those with k > i − 1 are zero, so the sums need only i, k below
    # the largest copy count (usually a handful, not 51: a G×51×51 float64 array is 20 MB per 1000 Gaussians)
    size = int(n.max()) if n.numel() else 1
    binom = _binomials(o.device)[:size, :size]  # [i-1, k]
    i = torch.arange(1, size + 1, dtype=torch.float64, device=o.device)  # i = 1..size
    k = torch.arange(size, dtype=torch.float64, device=o.device)
    sign = torch.where(k % 2 == 0, 1.0, -1.0)
    # term[g, i, k] = C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1), for k <= i-1 and i <= n_g
    powers = new_o[:, None] ** (k[None, :] + 1)  # G×K
    per_k = sign / torch.sqrt(k + 1)  # K
    inner = binom[None, :, :] * (powers * per_k)[:, None, :]  # G×I×K (binom is 0 where k > i-1)
    inner = inner.sum(-1)  # G×I
    mask = i[None, :] <= n[:, None]
    denom = (inner * mask).sum(-1)
    new_scale = (o / denom.clamp_min(1e-12))[:, None] * scales.to(torch.float64)
    return new_o.to(opacities.dtype), new_scale.to(scales.dtype)


@dataclass
class MCMCStrategy(Strategy):
    """3DGS as MCMC: relocate dead Gaussians, grow 5 % per refinement up to ``cap``, noise positions."""

    kind: ClassVar[str] = "mcmc"
    cap: int = 1_000_000  # the hard cap on the number of Gaussians
    refine_start: int = 500
    refine_stop: int = 25000
    refine_every: int = 100
    growth: float = 0.05
    # > 0: grow geometrically so the count reaches ``cap`` this fraction of the way through the refinement
    # window (never slower than ``growth``); a capture starting from a few thousand SfM points then trains
    # most of its steps at the count the budget affords instead of reaching it at the end (or never)
    reach_cap_at: float = 0.0
    # set by a time-budgeted run: the count at which the rest of the budget still affords the planned steps
    # (growth aims at min(cap, budget_cap) and stops there; relocation goes on)
    budget_cap: int | None = runtime()
    min_opacity: float = 0.005
    noise_lr: float = 5e5
    opacity_reg: float = 0.01
    scale_reg: float = 0.01
    seed_generator: torch.Generator | None = runtime()

    def loss_terms(self, params: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """L1 regularisers on opacity and scale that let unneeded Gaussians die and be relocated."""
        if params["means"].shape[0] == 0:
            return 0.0
        return (self.opacity_reg * torch.sigmoid(params["opacities"]).mean()
                + self.scale_reg * torch.exp(params["scales"]).mean())

    def step_post_backward(self, optimizer: GaussianAdam, state: dict, step: int, info: dict,
                           schedule_scale: float = 1.0) -> dict[str, int]:
        """Every ``refine_every`` steps in the refinement window: relocate dead ones, then grow."""
        start = _start(self.refine_start, schedule_scale)
        stop = int(self.refine_stop * schedule_scale)
        every = _every(self.refine_every, schedule_scale)
        if start < step < stop and step % every == 0:
            rate, limit = self.growth, self.cap
            if self.reach_cap_at > 0:
                if self.budget_cap is not None:
                    limit = max(1, min(self.cap, int(self.budget_cap)))
                reach = start + self.reach_cap_at * (stop - start)
                rate = max(rate, self.catch_up_rate(optimizer.params["means"].shape[0], step, reach, every, limit))
            return {"relocated": self.relocate(optimizer), "added": self.add(optimizer, rate, limit)}
        return {}

    def catch_up_rate(self, count: int, step: int, reach_step: float, every: int, limit: int | None = None) -> float:
        """The growth per refinement that takes ``count`` to ``limit`` (default ``cap``) by ``reach_step``."""
        limit = self.cap if limit is None else limit
        if count <= 0 or count >= limit:
            return 0.0
        left = max(1, int((reach_step - step) // every) + 1)  # refinements up to and including reach_step
        return (limit / count) ** (1.0 / left) - 1.0

    def _sample_sources(self, probs: torch.Tensor, count: int) -> torch.Tensor:
        return torch.multinomial(probs, count, replacement=True, generator=self.seed_generator)

    @torch.no_grad()
    def _split_onto(self, optimizer: GaussianAdam, sources: torch.Tensor) -> dict[str, torch.Tensor]:
        """Give each sampled source its relocated opacity/scale; return the rows its copies get."""
        p = optimizer.params
        counts = torch.bincount(sources, minlength=p["means"].shape[0])
        copies = counts[sources] + 1  # the source itself plus every copy of it
        new_o, new_s = relocation_values(torch.sigmoid(p["opacities"][sources]), torch.exp(p["scales"][sources]), copies)
        new_o = new_o.clamp(self.min_opacity, 1.0 - 1e-6)
        values = {"opacities": torch.logit(new_o), "scales": torch.log(new_s.clamp_min(1e-12))}
        optimizer.overwrite(sources, values)
        return {k: v[sources].clone() for k, v in optimizer.params.items()}

    @torch.no_grad()
    def relocate(self, optimizer: GaussianAdam) -> int:
        """Move Gaussians with opacity ≤ min_opacity onto live ones sampled by opacity."""
        p = optimizer.params
        opac = torch.sigmoid(p["opacities"])
        dead = (opac <= self.min_opacity) | ~torch.isfinite(opac)
        n_dead = int(dead.sum())
        alive = torch.nonzero(~dead)[:, 0]
        if n_dead == 0 or len(alive) == 0:
            return 0
        sources = alive[self._sample_sources(opac[alive], n_dead)]
        rows = self._split_onto(optimizer, sources)
        dead_idx = torch.nonzero(dead)[:, 0]
        optimizer.overwrite(dead_idx, rows)
        return n_dead

    @torch.no_grad()
    def add(self, optimizer: GaussianAdam, rate: float | None = None, limit: int | None = None) -> int:
        """Grow by ``rate`` (default ``growth``, 5 %) of the current count, never beyond ``limit`` (≤ ``cap``)."""
        p = optimizer.params
        n = p["means"].shape[0]
        limit = self.cap if limit is None else min(self.cap, limit)
        target = min(limit, int((1.0 + (self.growth if rate is None else rate)) * n))
        n_new = max(0, target - n)
        if n_new == 0 or n == 0:
            return 0
        sources = self._sample_sources(torch.sigmoid(p["opacities"]), n_new)
        rows = self._split_onto(optimizer, sources)
        optimizer.append(rows)
        return n_new

    @torch.no_grad()
    def step_post_optimizer(self, optimizer: GaussianAdam, state: dict, step: int, lr_means: float,
                            generator: torch.Generator | None = None) -> None:
        """Perturb positions by noise shaped by each covariance, strong only for nearly transparent ones."""
        p = optimizer.params
        if p["means"].shape[0] == 0 or self.noise_lr <= 0:
            return
        tensors = [p[k].detach() for k in ("means", "scales", "quats", "opacities")]
        if cpu_ops.mcmc_noise_applies(*tensors):
            # the same formula in one C pass (a dozen tensor ops below; 5 ms per 20k Gaussians on a CPU)
            noise = torch.randn(p["means"].shape, generator=generator or self.seed_generator,
                                device=p["means"].device, dtype=p["means"].dtype)
            cpu_ops.mcmc_noise_(*tensors, noise, self.noise_lr * lr_means)
            return
        opac = torch.sigmoid(p["opacities"])
        gate = torch.sigmoid(-100.0 * (opac - 0.005))  # ≈1 for dead Gaussians, ≈0 for opaque ones
        scales = torch.exp(p["scales"])
        quats = p["quats"]
        norm = quats.norm(dim=-1, keepdim=True)
        identity = torch.zeros_like(quats)
        identity[:, 0] = 1
        rot = quat_to_rotmat(torch.where(norm > 0, quats / norm.clamp_min(1e-12), identity))
        rs = rot * scales[:, None, :]
        cov = rs @ rs.transpose(1, 2)
        noise = torch.randn(p["means"].shape, generator=generator or self.seed_generator,
                            device=p["means"].device, dtype=p["means"].dtype)
        noise = torch.einsum("nij,nj->ni", cov, noise) * (gate * self.noise_lr * lr_means)[:, None]
        p["means"].add_(noise)
