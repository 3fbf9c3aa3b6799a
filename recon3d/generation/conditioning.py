"""Per-object text conditioning for slot generators: split a caption into phrase A / relation / phrase B.

The split is a parse of the prompt at one of the composer's relation phrases ("on top of", …); it only
decides which words each object slot reads. Everything the scene looks like (shapes, colours, sizes, where
each object stands for a relation) is still produced by the network. Prompts that do not split (one
object, free text) put the whole prompt in phrase A and every Gaussian in slot 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import RELATIONS

TAG_A, TAG_RELATION, TAG_B = 0, 1, 2
# longest first, so "to the left of" is never read as a shorter phrase inside it
_RELATION_RE = re.compile(r"\s(" + "|".join(sorted(map(re.escape, RELATIONS), key=len, reverse=True)) + r")\s")


def split_prompt(prompt: str) -> tuple[str, str | None, str | None]:
    """(phrase A, relation, phrase B) at the first relation phrase; (prompt, None, None) when none fits."""
    text = " ".join(prompt.split())
    m = _RELATION_RE.search(text.lower())  # lower() keeps the length of the composer's ASCII words
    if m is None:
        return text, None, None
    a, b = text[: m.start()].strip(), text[m.end() :].strip()
    if not a or not b:
        return text, None, None
    return a, m.group(1), b


def slot_counts(prompt: str, num_gaussians: int, slots: int = 2) -> list[int]:
    """Gaussians per slot: all in slot 0 for one object, halves for two (as the training scenes)."""
    if slots < 2 or split_prompt(prompt)[1] is None:
        return [num_gaussians]
    return [num_gaussians // 2, num_gaussians - num_gaussians // 2]


def slot_labels(counts: list[int]) -> torch.Tensor:
    """N slot indices, slot 0 first."""
    return torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in enumerate(counts)])


@dataclass
class Conditioning:
    """What a slot generator reads: tagged phrase tokens, their mask, per-phrase and whole-caption pooled."""

    tokens: torch.Tensor  # B×T×D
    mask: torch.Tensor  # B×T bool
    tags: torch.Tensor  # B×T long (TAG_A / TAG_RELATION / TAG_B)
    phrase_pooled: torch.Tensor  # B×3×D (A, relation, B; zeros where absent)
    pooled: torch.Tensor  # B×D, the whole caption

    def extra(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of the network besides the whole-caption ones."""
        return {"text_tags": self.tags, "phrase_pooled": self.phrase_pooled}


PhraseTable = dict[str, tuple[torch.Tensor, torch.Tensor]]  # phrase -> (L×D tokens, D pooled)


def encode_phrases(encoder, phrases: list[str], batch_size: int = 256) -> PhraseTable:
    """Each phrase encoded on its own (so no word of one object colours the other's embedding)."""
    table: PhraseTable = {}
    unique = sorted(set(phrases))
    for s in range(0, len(unique), batch_size):
        chunk = unique[s : s + batch_size]
        tokens, mask, pooled = encoder.encode(chunk)
        for i, p in enumerate(chunk):
            table[p] = (tokens[i, mask[i]], pooled[i])
    return table


def assemble(prompts: list[str], table: PhraseTable, pooled: torch.Tensor) -> Conditioning:
    """Concatenate each prompt's phrase tokens (A, relation, B) with their tags; ``pooled``: whole captions."""
    rows = []
    for p in prompts:
        a, rel, b = split_prompt(p)
        rows.append([(x, tag) for x, tag in ((a, TAG_A), (rel, TAG_RELATION), (b, TAG_B)) if x is not None])
    lengths = [sum(table[x][0].shape[0] for x, _ in r) for r in rows]
    t, d = max(lengths), pooled.shape[-1]
    tokens = torch.zeros(len(prompts), t, d)
    mask = torch.zeros(len(prompts), t, dtype=torch.bool)
    tags = torch.zeros(len(prompts), t, dtype=torch.long)
    phrase_pooled = torch.zeros(len(prompts), 3, d)
    for i, r in enumerate(rows):
        at = 0
        for x, tag in r:
            tok, pool = table[x]
            tokens[i, at : at + len(tok)] = tok.float()
            mask[i, at : at + len(tok)] = True
            tags[i, at : at + len(tok)] = tag
            phrase_pooled[i, tag] = pool.float()
            at += len(tok)
    return Conditioning(tokens, mask, tags, phrase_pooled, pooled.float())


def encode_conditioning(encoder, prompts: list[str], pooled: torch.Tensor | None = None) -> Conditioning:
    """Split, encode and assemble prompts at sampling time (``pooled``: the whole prompts, if encoded)."""
    phrases = [x for p in prompts for x in split_prompt(p) if x is not None]
    table = encode_phrases(encoder, phrases)
    return assemble(prompts, table, pooled if pooled is not None else encoder.encode(list(prompts))[2])


def phrase_table_for(data_dir: str | Path, captions: list[str], encoder_name: str) -> PhraseTable:
    """The phrase table of a training set, cached in ``phrases.pt`` beside it (built on first use)."""
    from ..io_utils import atomic_open
    from .text import encoder_by_name

    path = Path(data_dir) / "phrases.pt"
    needed = {x for c in captions for x in split_prompt(c) if x is not None}
    if path.is_file():
        state = torch.load(path, weights_only=True)
        if state.get("encoder") == encoder_name and needed <= set(state["phrases"]):
            return {p: (state["tokens"][i], state["pooled"][i]) for i, p in enumerate(state["phrases"])}
    # float16 like the caption embeddings of the training set (embeddings.pt), also on the first run
    table = {p: (t.half(), q.half()) for p, (t, q) in encode_phrases(encoder_by_name(encoder_name), sorted(needed)).items()}
    names = sorted(table)
    with atomic_open(path, "wb") as f:
        torch.save(
            {"encoder": encoder_name, "phrases": names, "tokens": [table[p][0] for p in names],
             "pooled": [table[p][1] for p in names]},
            f,
        )
    return table
