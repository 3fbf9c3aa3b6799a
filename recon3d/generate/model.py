"""The generator network: a permutation-equivariant transformer over the set of Gaussians.

Each token is one Gaussian (14 features, no positional encoding). Tokens talk to each other only through a
small set of learned latent tokens (Perceiver / ISAB style), so one block costs O(N·L) instead of O(N²):
latents read the set, read the text (cross-attention to the caption's token embeddings), think among
themselves, and the set reads the latents back. Time and the pooled caption embedding enter every
normalisation as an adaptive scale/shift (adaLN, zero-initialised gates as in DiT). The network predicts
the rectified-flow velocity of every Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    """Sizes of the generator network."""

    feature_dim: int = 14
    text_dim: int = 384
    width: int = 128
    heads: int = 4
    latents: int = 32
    blocks: int = 3
    latent_layers: int = 2  # latent self-attention layers per block
    mlp_ratio: float = 2.0

    def to_dict(self) -> dict:
        """Plain dict (stored in checkpoints)."""
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of flow time t ∈ [0, 1] (B,) -> B×dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class Attention(nn.Module):
    """Multi-head attention from queries x to keys/values y (self-attention when y is x)."""

    def __init__(self, width: int, heads: int, kv_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_width or width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, w = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, w // h).transpose(1, 2)
        k, v = self.kv(y).view(b, y.shape[1], 2, h, w // h).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(b, n, w))


class AdaNorm(nn.Module):
    """LayerNorm whose scale, shift and residual gate come from the conditioning vector."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift, gate = self.mod(F.silu(cond))[:, None].chunk(3, -1)
        return self.norm(x) * (1 + scale) + shift, gate


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(width * ratio)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Latents read the set and the text, attend among themselves; the set reads the latents and the text."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w, h = cfg.width, cfg.heads
        self.read_set_norm = AdaNorm(w)
        self.read_set = Attention(w, h)
        self.set_kv_norm = nn.LayerNorm(w)
        self.read_text_norm = AdaNorm(w)
        self.read_text = Attention(w, h)
        self.latent_attn_norms = nn.ModuleList([AdaNorm(w) for _ in range(cfg.latent_layers)])
        self.latent_attns = nn.ModuleList([Attention(w, h) for _ in range(cfg.latent_layers)])
        self.latent_mlp_norms = nn.ModuleList([AdaNorm(w) for _ in range(cfg.latent_layers)])
        self.latent_mlps = nn.ModuleList([Mlp(w, cfg.mlp_ratio * 2) for _ in range(cfg.latent_layers)])
        self.write_norm = AdaNorm(w)
        self.write = Attention(w, h)
        self.latent_kv_norm = nn.LayerNorm(w)
        self.token_text_norm = AdaNorm(w)
        self.token_text = Attention(w, h)
        self.token_mlp_norm = AdaNorm(w)
        self.token_mlp = Mlp(w, cfg.mlp_ratio)

    def forward(self, tokens, latents, text, text_mask, cond):
        x, g = self.read_set_norm(latents, cond)
        latents = latents + g * self.read_set(x, self.set_kv_norm(tokens))
        x, g = self.read_text_norm(latents, cond)
        latents = latents + g * self.read_text(x, text, text_mask)
        for an, at, mn, mlp in zip(self.latent_attn_norms, self.latent_attns, self.latent_mlp_norms, self.latent_mlps):
            x, g = an(latents, cond)
            latents = latents + g * at(x, x)
            x, g = mn(latents, cond)
            latents = latents + g * mlp(x)
        x, g = self.write_norm(tokens, cond)
        tokens = tokens + g * self.write(x, self.latent_kv_norm(latents))
        x, g = self.token_text_norm(tokens, cond)
        tokens = tokens + g * self.token_text(x, text, text_mask)
        x, g = self.token_mlp_norm(tokens, cond)
        tokens = tokens + g * self.token_mlp(x)
        return tokens, latents


class SetFlowTransformer(nn.Module):
    """Velocity field v(x_t, t, text) over a set of Gaussians, equivariant to their order."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.token_in = nn.Sequential(nn.Linear(cfg.feature_dim, w), nn.GELU(approximate="tanh"), nn.Linear(w, w))
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.pooled_in = nn.Linear(cfg.text_dim, w)
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, w))
        # what the network sees when the caption is dropped (classifier-free guidance)
        self.null_pooled = nn.Parameter(torch.zeros(cfg.text_dim))
        self.null_token = nn.Parameter(torch.randn(1, cfg.text_dim) * 0.02)
        self.latents = nn.Parameter(torch.randn(cfg.latents, w) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.blocks)])
        self.out_norm = AdaNorm(w)
        self.out = nn.Linear(w, cfg.feature_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        pooled: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: B×N×F noisy Gaussians, t: B, text: B×T×D with mask B×T, pooled: B×D; drop: B bool (no caption)."""
        b = x.shape[0]
        text_tokens = text_tokens.float()
        pooled = pooled.float()
        text_mask = text_mask.bool()
        if drop is not None:
            # always through torch.where, so the null embeddings take part in every step (DDP needs it)
            d = drop.bool()
            pooled = torch.where(d[:, None], self.null_pooled.expand(b, -1), pooled)
            null_tok = self.null_token.expand(b, text_tokens.shape[1], -1)
            text_tokens = torch.where(d[:, None, None], null_tok, text_tokens)
            only_first = torch.zeros_like(text_mask)
            only_first[:, 0] = True
            text_mask = torch.where(d[:, None], only_first, text_mask)
        cond = self.time_in(timestep_embedding(t, self.cfg.width)) + self.pooled_in(pooled)
        text = self.text_in(text_tokens)
        tokens = self.token_in(x)
        latents = self.latents.expand(b, -1, -1)
        for block in self.blocks:
            tokens, latents = block(tokens, latents, text, text_mask, cond)
        h, _ = self.out_norm(tokens, cond)
        return self.out(h)

    def num_parameters(self) -> int:
        """Count of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
