"""The first generate call's reference embeddings are cached on disk, keyed by the texts and the encoder."""

from __future__ import annotations

import torch

from recon3d.generation import api


class _CountingEncoder:
    """A stand-in text encoder: deterministic vectors, and a count of how many texts it encoded."""

    name = "counting"
    dim = 8

    def __init__(self):
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len(texts)
        g = torch.Generator().manual_seed(sum(map(len, texts)))
        pooled = torch.nn.functional.normalize(torch.randn(len(texts), self.dim, generator=g), dim=-1)
        return None, None, pooled


def test_reference_embeddings_are_read_back_from_the_cache(tmp_path, monkeypatch):
    enc = _CountingEncoder()
    monkeypatch.setenv("RECON3D_CACHE", str(tmp_path))
    monkeypatch.setattr(api, "_encoder", lambda: enc)
    concepts, captions = ["cube", "red"], ["a red cube", "a blue ball", "two cones"]
    first = api._cached_embeddings(concepts, captions)
    assert enc.encoded == 5 and len(list((tmp_path / "generator").glob("reference-*.pt"))) == 1
    again = api._cached_embeddings(concepts, captions)
    assert enc.encoded == 5  # nothing encoded the second time
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    api._cached_embeddings(concepts, captions[:2])  # other texts: another key, encoded afresh
    assert enc.encoded == 9
    # a damaged cache file is rebuilt, not trusted
    for f in (tmp_path / "generator").glob("reference-*.pt"):
        f.write_bytes(b"garbage")
    torch.testing.assert_close(api._cached_embeddings(concepts, captions), first, rtol=0, atol=0)
    assert enc.encoded == 14
