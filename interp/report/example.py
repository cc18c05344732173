"""The head card's token-level attention view: for one example text, each head's top-k keys per query position.

Computed by the statistics engine (``interp.attention_stats(model, ids, ["topk"], top_k=k)``) in one forward pass
at the run's length; no ``[query_pos, key_pos]`` pattern is formed, and none goes into the page. For query row
``i`` of head ``(layer, head)`` the engine returns the ``k`` largest ``A_ij`` (``j ≤ i``) and their key positions.

The example text is the haystack prose (``interp/data/niah``): its first ``n/2`` tokens, then the same tokens again,
so that previous-token and induction heads show their pattern (query ``i`` in the second half attends to key
``i − n/2 + 1``).

Stored compactly for the page: key positions as little-endian uint16 and weights quantised to uint8
(``round(255 · A_ij)``, error ≤ 1/510), both ``[layer, head, query_pos, k]`` and base64-encoded.
Tested in ``tests/integration/test_report_atlas.py`` against the dense float64 pattern of a tiny model.
"""

from __future__ import annotations

import base64

import numpy as np
import torch

DEFAULT_TOKENS = 256
TOP_K = 3


def example_ids(model, n_tokens: int) -> torch.Tensor:
    """``[1, n_tokens]`` token ids: ``n_tokens // 2`` prose tokens, then the same tokens again (odd n: one more)."""
    from interp.analyses._text import long_prose_ids

    if n_tokens < 4:
        raise ValueError(f"example length {n_tokens} is too short; use at least 4 tokens")
    half = long_prose_ids(model, (n_tokens + 1) // 2)
    return torch.cat([half, half], dim=1)[:, :n_tokens]


def attention_topk(model, ids: torch.Tensor, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """``(key_pos, weight)``, each ``[layer, head, query_pos, k]`` (int64, float64), for ids ``[1, pos]``."""
    from interp.attention import attention_stats

    st = attention_stats(model, ids, ["topk"], top_k=k)
    idx = st["topk_idx"][:, 0].numpy().astype(np.int64)  # [layer, head, query_pos, k]
    prob = st["topk_prob"][:, 0].double().numpy()
    return idx, prob


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def encode(idx: np.ndarray, prob: np.ndarray) -> dict:
    """The page's compact form of ``idx, prob`` ``[layer, head, query_pos, k]`` (see the module docstring)."""
    if idx.max(initial=0) >= 2**16:
        raise ValueError(f"key position {idx.max()} does not fit the page's uint16 encoding (< 65536 tokens)")
    key = np.where(idx < 0, 0, idx).astype("<u2")
    w = np.round(np.clip(np.nan_to_num(prob), 0, 1) * 255).astype(np.uint8)
    return {"shape": list(idx.shape), "idx": _b64(key), "prob": _b64(w)}


def decode(payload: dict) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode`` (weights back to ``[0, 1]``, quantised)."""
    shape = tuple(payload["shape"])
    idx = np.frombuffer(base64.b64decode(payload["idx"]), dtype="<u2").reshape(shape).astype(np.int64)
    prob = np.frombuffer(base64.b64decode(payload["prob"]), dtype=np.uint8).reshape(shape) / 255.0
    return idx, prob


def build_example(model, n_tokens: int = DEFAULT_TOKENS, k: int = TOP_K) -> dict:
    """The page's example: tokens (strings), length, k and the encoded top-k of every head."""
    n_tokens = min(int(n_tokens), int(getattr(model.shape, "n_ctx", n_tokens) or n_tokens))
    ids = example_ids(model, n_tokens)
    idx, prob = attention_topk(model, ids, k)
    tokens = [model.tokenizer.decode([int(t)]) for t in ids[0]]
    return {"tokens": tokens, "n_tokens": int(ids.shape[1]), "k": k,
            "text": "haystack prose, first half repeated", **encode(idx, prob)}
