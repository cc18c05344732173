"""Test helpers: tiny randomly initialised models (``interp.tiny``) wrapped as ``interp.Model``, and the dense
reference patterns the O(n) statistics are checked against.

``tiny_model("llama")`` / ``"qwen2"`` / ``"gemma3"`` / ``"llava"``: see ``interp.tiny``. Deterministic under ``seed``.
"""

from __future__ import annotations

import torch

from .model import Model
from .tiny import FAMILIES, CharTokenizer, build_tiny, tiny_config

__all__ = ["FAMILIES", "CharTokenizer", "dense_patterns", "tiny_config", "tiny_model"]


def tiny_model(family: str = "llama", *, seed: int = 0, dtype=torch.float32, **config_kwargs) -> Model:
    """A randomly initialised tiny model wrapped as an ``interp.Model`` (milliseconds to build)."""
    hf, tok = build_tiny(family, seed=seed, dtype=dtype, **config_kwargs)
    return Model(hf, tok, name=f"tiny-{family}", weights_hash=f"random-seed{seed}")


def dense_patterns(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference attention patterns ``[layer, batch, head, query_pos, key_pos]`` (float64) from the eager
    ``pattern`` site of every layer — the dense O(n²) spec that tests hold the O(n) statistics against."""
    from .hooks import run_with_cache
    from .sites import Site

    sites = [Site(layer, "pattern") for layer in range(model.shape.n_layers)]
    _, cache = run_with_cache(model, ids, sites, attention_mask)
    return torch.stack([cache[s].double() for s in sites])
