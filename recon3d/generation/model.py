"""The generator network: a permutation-equivariant transformer over the set of Gaussians.

Each token is one Gaussian (14 features, no positional encoding). Tokens talk to each other only through a
small set of learned latent tokens (Perceiver / ISAB style), so one block costs O(N·L) instead of O(N²):
latents read the set, read the text (cross-attention to the caption's token embeddings), think among
themselves, and the set reads the latents back. Time and the pooled caption embedding enter every
normalisation as an adaptive scale/shift (adaLN, zero-initialised gates as in DiT). The network predicts
the rectified-flow velocity of every Gaussian.

With ``slots = 2`` (object slots, in the spirit of object-centric generation and Composable Diffusion's
per-phrase conditions) the caption arrives split into phrase A / relation / phrase B, each encoded on its
own and tagged (``text_tags`` 0 / 1 / 2). Every Gaussian token carries its slot (``slots``: 0 or 1) as a
learned embedding; its adaptive norms take the pooled embedding of its own phrase plus the relation's, and
its cross-attention sees only its own phrase and the relation. The latents see the whole tagged caption
and are how the two objects learn where they stand relative to each other. Within a slot the set stays
permutation-equivariant. New parameters are zero-initialised, so a slot model starts as the slot-less
model on single objects (warm start).
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
    # object slots (0 = none, the first shipped model). With 2, every Gaussian carries a slot (0 = the first
    # object named, 1 = the second); each slot's Gaussians condition on their own object phrase and the
    # relation phrase only, so which colour/shape goes with which object is wired in, not learned
    slots: int = 0
    # round 2 (SlotQueryFlow): object queries that cross-attend to the prompt's tokens (and an image's);
    # 0 = the models above. Each Gaussian belongs to one query's object; no parser splits the prompt
    object_queries: int = 0
    query_layers: int = 2
    image: bool = False  # a small image encoder trained with the rest (generate(image=...))
    # > 0: a head reading each slot state back into its object's attributes (shape logits, colour, place,
    # extent; ``bank.ATTRIBUTE_DIM``), trained as an auxiliary loss so each query binds its own object's words
    attributes: int = 0
    # what each Gaussian's cross-attention (Block.token_text) reads in SlotQueryFlow: "all" = every context
    # token (the prompt's words, image tokens) and every live slot state; "own" = its own object's state and the
    # image tokens only, never the raw words, so no neighbour's word can reach it except through the queries
    token_context: str = "all"
    # > 0: a learned embedding of each word's position in the prompt (up to this many words), added to the word
    # tokens of SlotQueryFlow's context (zero-initialised), so a query that found its noun can find the words
    # beside it (its colour, its size). Over the prompt's words only: the set of Gaussians has no positions
    word_positions: int = 0

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
        # B×T: one mask for every query; B×N×T: a mask per query (slot tokens see their own phrase)
        mask = None if key_mask is None else key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask[:, None]
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

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, slots: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cond B×W for all tokens, or B×S×W per slot with ``slots`` B×N×S one-hot giving each token's slot.

        ``slots`` an int P: the tokens are contiguous blocks of P per slot (slot 0 first), as the sampler lays
        them out; each block is modulated by broadcasting its slot's row (no per-token copy, no product), and
        the gate comes back B×S×1×W for ``gated``.
        """
        m = self.mod(F.silu(cond))
        if slots is None:
            m = m[:, None]
        elif isinstance(slots, int):
            b, n, w = x.shape
            m = m[:, : n // slots, None]  # B×S×1×3W: the live slots' rows
            scale, shift, gate = m.chunk(3, -1)
            h = self.norm(x).view(b, n // slots, slots, w) * (1 + scale) + shift
            return h.view(b, n, w), gate
        else:  # modulate once per slot, then hand each token its slot's row (a one-hot product: faster than gather)
            m = torch.bmm(slots, m)
        scale, shift, gate = m.chunk(3, -1)
        return self.norm(x) * (1 + scale) + shift, gate


def gated(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y, where gate is B×N×W / B×1×W, or B×S×1×W over contiguous blocks of tokens (AdaNorm's int slots)."""
    if gate.dim() == 4:
        b, n, w = x.shape
        s = gate.shape[1]
        return (x.view(b, s, n // s, w) + gate * y.view(b, s, n // s, w)).view(b, n, w)
    return x + gate * y


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

    def forward(self, tokens, latents, text, text_mask, cond, token_cond=None, slots=None, token_mask=None,
                token_memory=None):
        """token_cond (B×S×W), slots (B×N×S one-hot, or an int block size: AdaNorm), token_mask (B×N×T): the
        set's per-slot conditioning. ``token_memory`` (memory, mask): what the set's cross-attention reads
        instead of ``text``: B×M×W with a per-token mask B×N×M, or per object B×S×M×W with mask B×S×M for
        tokens laid out as S contiguous blocks."""
        if token_cond is None:
            token_cond, token_mask = cond, text_mask
        x, g = self.read_set_norm(latents, cond)
        latents = latents + g * self.read_set(x, self.set_kv_norm(tokens))
        x, g = self.read_text_norm(latents, cond)
        latents = latents + g * self.read_text(x, text, text_mask)
        for an, at, mn, mlp in zip(self.latent_attn_norms, self.latent_attns, self.latent_mlp_norms, self.latent_mlps):
            x, g = an(latents, cond)
            latents = latents + g * at(x, x)
            x, g = mn(latents, cond)
            latents = latents + g * mlp(x)
        x, g = self.write_norm(tokens, token_cond, slots)
        tokens = gated(tokens, g, self.write(x, self.latent_kv_norm(latents)))
        x, g = self.token_text_norm(tokens, token_cond, slots)
        if token_memory is None:
            read = self.token_text(x, text, token_mask if token_mask is not None else text_mask)
        elif token_memory[0].dim() == 4:  # one memory per block of tokens: attend block by block
            mem, mem_mask = token_memory
            b, s, m, w = mem.shape
            read = self.token_text(x.reshape(b * s, -1, w), mem.reshape(b * s, m, w), mem_mask.reshape(b * s, m))
            read = read.reshape(x.shape)
        else:
            read = self.token_text(x, *token_memory)
        tokens = gated(tokens, g, read)
        x, g = self.token_mlp_norm(tokens, token_cond, slots)
        tokens = gated(tokens, g, self.token_mlp(x))
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
        if cfg.slots:
            # all zero: a warm-started slot model begins exactly as the slot-less one on single objects
            self.slot_embed = nn.Parameter(torch.zeros(cfg.slots, w))  # added to each Gaussian token
            self.slot_cond = nn.Parameter(torch.zeros(cfg.slots, w))  # added to each slot's adaLN input
            self.tag_embed = nn.Parameter(torch.zeros(3, w))  # phrase A / relation / phrase B on text tokens
            self.relation_in = nn.Linear(cfg.text_dim, w)
            nn.init.zeros_(self.relation_in.weight)
            nn.init.zeros_(self.relation_in.bias)
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
        slots: torch.Tensor | None = None,
        text_tags: torch.Tensor | None = None,
        phrase_pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: B×N×F noisy Gaussians, t: B, text: B×T×D with mask B×T, pooled: B×D; drop: B bool (no caption).

        Slot models also take ``slots`` (B×N, 0/1), ``text_tags`` (B×T: 0 phrase A, 1 relation, 2 phrase B)
        and ``phrase_pooled`` (B×3×D: pooled A, relation, B; zeros where absent); without them every token
        is in slot 0 and the whole caption is phrase A.
        """
        b, n = x.shape[:2]
        text_tokens = text_tokens.float()
        pooled = pooled.float()
        text_mask = text_mask.bool()
        use_slots = bool(self.cfg.slots)
        if use_slots:
            if slots is None:
                slots = torch.zeros(b, n, dtype=torch.long, device=x.device)
            if text_tags is None:
                text_tags = torch.zeros(text_mask.shape, dtype=torch.long, device=x.device)
            if phrase_pooled is None:
                phrase_pooled = torch.stack([pooled, torch.zeros_like(pooled), torch.zeros_like(pooled)], 1)
            slots, text_tags, phrase_pooled = slots.long(), text_tags.long(), phrase_pooled.float()
        if drop is not None:
            # always through torch.where, so the null embeddings take part in every step (DDP needs it)
            d = drop.bool()
            pooled = torch.where(d[:, None], self.null_pooled.expand(b, -1), pooled)
            null_tok = self.null_token.expand(b, text_tokens.shape[1], -1)
            text_tokens = torch.where(d[:, None, None], null_tok, text_tokens)
            only_first = torch.zeros_like(text_mask)
            only_first[:, 0] = True
            text_mask = torch.where(d[:, None], only_first, text_mask)
            if use_slots:
                null = self.null_pooled.expand(b, -1)
                phrase_pooled = torch.stack(
                    [
                        torch.where(d[:, None], null, phrase_pooled[:, 0]),
                        torch.where(d[:, None], torch.zeros_like(null), phrase_pooled[:, 1]),
                        torch.where(d[:, None], null, phrase_pooled[:, 2]),
                    ],
                    1,
                )
                text_tags = torch.where(d[:, None], torch.zeros_like(text_tags), text_tags)
        time_cond = self.time_in(timestep_embedding(t, self.cfg.width))
        cond = time_cond + self.pooled_in(pooled)
        text = self.text_in(text_tokens)
        tokens = self.token_in(x)
        token_cond = token_mask = slot_onehot = None
        if use_slots:
            slot_onehot = F.one_hot(slots, self.cfg.slots).to(tokens.dtype)
            text = text + self.tag_embed[text_tags]
            tokens = tokens + self.slot_embed[slots]
            # slot s conditions on its own phrase (A for slot 0, B for slot 1) plus the relation
            own = torch.stack([phrase_pooled[:, 0], phrase_pooled[:, 2]], 1)[:, : self.cfg.slots]
            token_cond = (
                time_cond[:, None] + self.pooled_in(own) + self.relation_in(phrase_pooled[:, 1])[:, None]
                + self.slot_cond[None]
            )
            own_tag = torch.tensor([0, 2], device=x.device)[: self.cfg.slots]
            per_slot = (text_tags[:, None, :] == own_tag[None, :, None]) | (text_tags[:, None, :] == 1)
            per_slot = per_slot & text_mask[:, None, :]
            # a slot with no phrase of its own (a dropped caption) reads what the latents read
            empty = ~per_slot.any(-1, keepdim=True)
            per_slot = torch.where(empty, text_mask[:, None, :], per_slot)
            token_mask = torch.gather(per_slot, 1, slots[..., None].expand(-1, -1, per_slot.shape[-1]))
        latents = self.latents.expand(b, -1, -1)
        for block in self.blocks:
            tokens, latents = block(tokens, latents, text, text_mask, cond, token_cond, slot_onehot, token_mask)
        if use_slots:
            h, _ = self.out_norm(tokens, token_cond, slot_onehot)
        else:
            h, _ = self.out_norm(tokens, cond)
        return self.out(h)

    def num_parameters(self) -> int:
        """Count of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class QueryLayer(nn.Module):
    """One layer of the object-query decoder: queries attend among themselves, then read the context."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads)
        self.cross_norm = nn.LayerNorm(width)
        self.cross = Attention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = Mlp(width, mlp_ratio)

    def forward(self, q: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        x = self.self_norm(q)
        q = q + self.self_attn(x, x)
        q = q + self.cross(self.cross_norm(q), ctx, ctx_mask)
        return q + self.mlp(self.mlp_norm(q))


class SlotQueryFlow(nn.Module):
    """Round-2 generator: object queries read the prompt, then a set flow transformer draws each object.

    - Context: the prompt's MiniLM token embeddings (all of them; nothing splits the prompt) and, with
      ``image``, an 8×8 grid of image tokens from a small CNN, each tagged by a learned type embedding.
    - ``object_queries`` learned queries (one per possible object, in the order the caption names the
      objects) self-attend and cross-attend to the context (``query_layers`` layers): slot states S, B×K×W,
      and an existence logit per slot (how many objects the prompt asks for).
    - Every Gaussian carries the index of its object (``slots``, B×N). Its token adds its slot's state and
      its adaptive norms take time + its slot's state; latents read the whole set, the context and all
      slot states. Within an object the set is permutation-equivariant (no positional encoding).
    - Classifier-free guidance: ``drop`` replaces the context by one learned null token.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.object_queries < 1:
            raise ValueError("SlotQueryFlow needs object_queries >= 1")
        self.cfg = cfg
        w, k = cfg.width, cfg.object_queries
        self.token_in = nn.Sequential(nn.Linear(cfg.feature_dim, w), nn.GELU(approximate="tanh"), nn.Linear(w, w))
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, w))
        self.type_embed = nn.Parameter(torch.randn(3, w) * 0.02)  # text / image / null
        self.null_ctx = nn.Parameter(torch.randn(1, w) * 0.02)
        if cfg.word_positions:
            self.word_pos = nn.Parameter(torch.zeros(cfg.word_positions, w))
        self.queries = nn.Parameter(torch.randn(k, w) * 0.5)
        self.query_layers = nn.ModuleList([QueryLayer(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.query_layers)])
        self.query_out = nn.LayerNorm(w)
        self.exists = nn.Linear(w, 1)
        self.slot_token = nn.Linear(w, w)
        self.slot_cond = nn.Linear(w, w)
        self.ctx_pool = nn.Linear(w, w)
        self.latents = nn.Parameter(torch.randn(cfg.latents, w) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.blocks)])
        self.image_encoder = None
        if cfg.image:
            from .image import ImageEncoder

            self.image_encoder = ImageEncoder(w)
        self.attribute_head = None
        if cfg.attributes:
            self.attribute_head = nn.Sequential(nn.Linear(w, w), nn.GELU(approximate="tanh"), nn.Linear(w, cfg.attributes))
        self.out_norm = AdaNorm(w)
        self.out = nn.Linear(w, cfg.feature_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def context(self, text_tokens: torch.Tensor | None, text_mask: torch.Tensor | None,
                images: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None,
                use_text: torch.Tensor | None = None, use_image: torch.Tensor | None = None):
        """Context tokens B×T×W and mask from text and/or images; ``drop`` (B bool) gives the null context.

        ``use_text`` / ``use_image`` (B bool) switch each source off per sample (training mixes them).
        """
        parts, masks = [], []
        device = self.queries.device
        if text_tokens is not None:
            words = self.text_in(text_tokens.float()) + self.type_embed[0]
            if self.cfg.word_positions:
                if words.shape[1] > self.cfg.word_positions:
                    raise ValueError(f"{words.shape[1]} prompt tokens; this model reads at most {self.cfg.word_positions}")
                words = words + self.word_pos[: words.shape[1]]
            parts.append(words)
            m = text_mask.bool()
            masks.append(m if use_text is None else m & use_text[:, None])
        if images is not None:
            if self.image_encoder is None:
                raise ValueError("this model has no image encoder")
            tok = self.image_encoder(images.float()) + self.type_embed[1]
            parts.append(tok)
            m = torch.ones(tok.shape[:2], dtype=torch.bool, device=device)
            masks.append(m if use_image is None else m & use_image[:, None])
        null = (self.null_ctx + self.type_embed[2]).expand(batch, 1, -1)
        parts.append(null)
        none_left = torch.stack([~m.any(1) for m in masks], 1).all(1) if masks else torch.ones(batch, dtype=torch.bool, device=device)
        d = none_left if drop is None else (drop.bool() | none_left)
        masks = [m & ~d[:, None] for m in masks]
        masks.append(d[:, None])  # the null token is the only key of a dropped (or empty) context
        return torch.cat(parts, 1), torch.cat(masks, 1)

    def slot_states(self, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot states B×K×W and existence logits B×K from the context."""
        q = self.queries.expand(ctx.shape[0], -1, -1)
        for layer in self.query_layers:
            q = layer(q, ctx, ctx_mask)
        q = self.query_out(q)
        return q, self.exists(q)[..., 0]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, slots: torch.Tensor, states: torch.Tensor,
                 ctx: torch.Tensor, ctx_mask: torch.Tensor, num_objects: torch.Tensor,
                 per_object: int | None = None, words: int | None = None) -> torch.Tensor:
        """Velocity of B×N×F Gaussians whose objects are ``slots`` (B×N, < ``num_objects`` B).

        ``per_object``: the sampler's layout (every sample holds the same objects, ``per_object`` contiguous
        Gaussians each, object 0 first, i.e. ``slots`` is ``arange(n).repeat_interleave(per_object)``); the
        per-object conditioning is then broadcast over blocks instead of gathered per token (same maths).
        ``words``: how many leading context tokens are the prompt's words (``context`` puts them first); a
        ``token_context: "own"`` model needs it, to keep them from the Gaussians.
        """
        b, k = states.shape[:2]
        time_cond = self.time_in(timestep_embedding(t, self.cfg.width))
        live = torch.arange(k, device=x.device)[None] < num_objects[:, None]  # B×K
        m = ctx_mask[..., None].float()
        pooled_ctx = (ctx * m).sum(1) / m.sum(1).clamp_min(1.0)
        cond = time_cond + self.ctx_pool(pooled_ctx)
        token_cond = time_cond[:, None] + self.slot_cond(states)  # B×K×W
        if per_object is not None:
            n, w = x.shape[1] // per_object, self.cfg.width
            if n * per_object != x.shape[1] or n > k:
                raise ValueError(f"{x.shape[1]} Gaussians are not blocks of {per_object} for at most {k} objects")
            tokens = self.token_in(x).view(b, n, per_object, w) + self.slot_token(states[:, :n])[:, :, None]
            tokens, layout = tokens.view(b, n * per_object, w), per_object
        else:
            layout = F.one_hot(slots.long(), k).to(x.dtype)
            tokens = self.token_in(x) + torch.bmm(layout, self.slot_token(states))
        memory = torch.cat([ctx, states], 1)
        memory_mask = torch.cat([ctx_mask, live], 1)
        token_memory = None
        if self.cfg.token_context == "own":
            token_memory = self._own_memory(ctx, ctx_mask, states, x.shape[1], layout, words)
        elif self.cfg.token_context != "all":
            raise ValueError(f"model.token_context must be 'all' or 'own', got {self.cfg.token_context!r}")
        latents = self.latents.expand(b, -1, -1)
        for block in self.blocks:
            tokens, latents = block(tokens, latents, memory, memory_mask, cond, token_cond, layout, None, token_memory)
        h, _ = self.out_norm(tokens, token_cond, layout)
        return self.out(h)

    def _own_memory(self, ctx, ctx_mask, states, tokens, layout, words):
        """What each Gaussian reads with ``token_context: "own"``: the non-word context (image tokens, the
        null token of a dropped context, each as masked in ``ctx_mask``) and its own object's state."""
        if words is None:
            raise ValueError("a token_context 'own' model needs words= (how many context tokens are words)")
        rest, rest_mask = ctx[:, words:], ctx_mask[:, words:]
        b, m, w = rest.shape
        if isinstance(layout, int):  # blocks of per-object Gaussians: one memory per object
            n = tokens // layout
            mem = torch.cat([rest[:, None].expand(b, n, m, w), states[:, :n, None]], 2)
            mask = torch.cat([rest_mask[:, None].expand(b, n, m), rest_mask.new_ones(b, n, 1)], 2)
            return mem, mask
        mem = torch.cat([rest, states], 1)  # B×(M+K)×W, each token sees the rest and its own state
        own = layout.bool()  # B×N×K one-hot
        mask = torch.cat([rest_mask[:, None].expand(b, own.shape[1], m), own], 2)
        return mem, mask

    def forward(self, x, t, slots, num_objects, text_tokens=None, text_mask=None, images=None, drop=None,
                use_text=None, use_image=None, with_attributes: bool = False):
        """Velocity and existence logits for a training batch (context built here); with ``with_attributes``
        also the attribute head's B×K×A predictions from the slot states (None without a head)."""
        ctx, ctx_mask = self.context(text_tokens, text_mask, images, x.shape[0], drop, use_text, use_image)
        states, exists = self.slot_states(ctx, ctx_mask)
        words = 0 if text_tokens is None else text_tokens.shape[1]
        v = self.velocity(x, t, slots, states, ctx, ctx_mask, num_objects, words=words)
        if not with_attributes:
            return v, exists
        return v, exists, None if self.attribute_head is None else self.attribute_head(states)

    def num_parameters(self) -> int:
        """Count of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network a config describes: SlotQueryFlow with object queries, else SetFlowTransformer."""
    return SlotQueryFlow(cfg) if cfg.object_queries else SetFlowTransformer(cfg)
