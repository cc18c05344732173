"""Ships: Safety Head ImPortant Score (Zhou et al., "On the Role of Attention Heads in Large Language Model
Safety", ICLR 2025; official code github ydyjya/SafetyHeadAttribution, ``lib/SHIPS``).

For a harmful query ``q`` and head ``(l, h)``::

    Ships(q, l, h) = KL(p ‖ p̃_{l,h}) = Σ_v p(v) (log p(v) − log p̃_{l,h}(v))

``p`` is the next-token distribution at the last position of the prompt, ``p̃_{l,h}`` the same with head
``(l, h)`` ablated. Default ablation as in the official code (``scale_mask`` on ``q``, ``scale_factor``):
the head's query is multiplied by ``eps = 1e-5`` so its attention becomes ~uniform over the prefix; ``"zero"``
(z = 0) and ``"mean"`` (z = its mean over positions) are selectable (``analyses._safety_data``). The KL
direction is the official ``kl_divergence(base_pd, mask_pd)``; we compute it in float64 from log-softmax
(``interp.metrics.kl_div``) instead of adding 1e-12 to the probabilities.

Dataset level (official ``ships_res_stats``): per head, ``ships_top10_count`` = number of queries whose
top-``k`` heads (k = 10) contain it and ``ships_top10_kl_sum`` = its KL summed over those queries; we also
give ``ships_kl_sum`` / ``ships_kl_mean`` over all queries.

All heads of a model are scored for a query in batched forwards: each head's ablation is a variant of
``interp.variants.run_variants`` (the query replicated, row ``r`` ablating head ``r``, chunks sized by the
memory budget, the layers below a chunk's first ablated layer run once). Validated in
``tests/unit/test_safety_ships.py`` against a sequential loop of single-head ablations done by weight surgery
(q_proj rows × eps / o_proj columns = 0), on tiny models and, marked slow, on a subset of the default model's heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.metrics import kl_div
from interp.variants import run_variants

from ._safety_data import check_heads, check_method, encode, head_ablation, load_prompts

ANALYSIS = "safety"


@torch.no_grad()
def last_logprobs(model, ids: torch.Tensor, handlers: dict | None = None,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """float64 log-probabilities ``[batch, d_vocab]`` of the next token after ``ids [batch, pos]``."""
    kw = {"logits_to_keep": 1}
    if attention_mask is not None:
        from interp.batching import position_ids

        kw["position_ids"] = position_ids(attention_mask).to(model.device)
    with model.hooks(handlers or {}):
        logits = model.forward(ids, attention_mask, **kw).logits[:, -1]
    return torch.log_softmax(logits.double(), dim=-1)


def all_heads(model) -> list[tuple[int, int]]:
    s = model.shape
    return [(layer, head) for layer in range(s.n_layers) for head in range(s.n_heads)]


@torch.no_grad()
def ships_kl(model, query: str | Sequence[int], *, heads: Sequence[tuple[int, int]] | None = None,
             method: str = "scale", eps: float = 1e-5, template: str = "paper",
             memory_budget_mb: float = 1024, max_rows: int | None = None) -> torch.Tensor:
    """Ships KL of each head for one query: ``[layer, head]`` float64 (NaN for heads not in ``heads``).

    ``query``: a request string (formatted with ``template``: "paper", "chat" or "none") or its token ids.
    ``heads``: the heads to score (default all). At most ``max_rows`` heads (else as many as
    ``memory_budget_mb`` allows) share one forward.
    """
    check_method(method, eps)
    row = list(query) if not isinstance(query, str) else encode(model, [query], template)[0]
    if not row:
        raise ValueError("the query has no tokens")
    ids = torch.tensor([row], dtype=torch.long)
    model.check_tokens(ids)
    heads = all_heads(model) if heads is None else check_heads(model, heads)
    clean = last_logprobs(model, ids)  # [1, d_vocab]
    out = torch.full((model.shape.n_layers, model.shape.n_heads), float("nan"), dtype=torch.float64)
    if not heads:
        return out
    variants = [[head_ablation(layer, head, method=method, eps=eps)] for layer, head in heads]
    ablated = run_variants(model, ids, variants, lambda o: torch.log_softmax(o.logits[:, -1].double(), dim=-1),
                           memory_budget_mb=memory_budget_mb, max_variants=max_rows, logits_to_keep=1)[:, 0]
    kl = kl_div(clean.expand_as(ablated), ablated)  # [head]
    for (layer, head), v in zip(heads, kl.tolist()):
        out[layer, head] = v
    return out


@dataclass
class ShipsResult:
    """``kl [query, layer, head]`` (float64) and the dataset-level tidy score table."""

    kl: torch.Tensor
    queries: list[str]
    scores: object  # pandas.DataFrame (interp.scores.ScoreTable format)
    top_k: int

    def top_heads(self, k: int = 5, score: str = "ships_kl_sum") -> list[tuple[int, int]]:
        """The ``k`` heads with the highest dataset-level ``score`` (ties: lower layer, then head, first)."""
        return top_heads(self.scores, k, score)


def dataset_scores(kl: torch.Tensor, *, model_name: str, top_k: int = 10):
    """Tidy score table from per-query Ships ``kl [query, layer, head]`` (NaN = not scored)."""
    from interp.scores import ScoreTable

    if kl.ndim != 3 or kl.shape[0] == 0:
        raise ValueError(f"expected kl of shape [query, layer, head] with at least one query, got {tuple(kl.shape)}")
    n_q, n_layers, n_heads = kl.shape
    flat = torch.nan_to_num(kl.reshape(n_q, -1), nan=float("-inf"))
    k = min(top_k, flat.shape[1])
    top = torch.zeros_like(flat, dtype=torch.bool)
    top.scatter_(1, flat.topk(k, dim=1).indices, True)
    top &= torch.isfinite(flat)
    finite = torch.nan_to_num(kl.reshape(n_q, -1), nan=0.0)
    mats = {
        "ships_kl_sum": finite.sum(0),
        "ships_kl_mean": finite.sum(0) / (~kl.reshape(n_q, -1).isnan()).sum(0).clamp(min=1),
        f"ships_top{top_k}_count": top.sum(0).double(),
        f"ships_top{top_k}_kl_sum": (finite * top).sum(0),
    }
    return ScoreTable.concat([
        ScoreTable.from_matrix(m.reshape(n_layers, n_heads), model=model_name, analysis=ANALYSIS, score=name,
                               n_samples=n_q) for name, m in mats.items()])


def top_heads(scores, k: int = 5, score: str = "ships_kl_sum") -> list[tuple[int, int]]:
    """The ``k`` heads with the highest ``score`` in a tidy score table, best first (``interp.heads.top_heads``)."""
    from interp import heads

    return heads.top_heads(scores, k, score=score)


def ships_dataset(model, queries: str | Sequence[str] = "advbench", *, n: int | None = None,
                  heads: Sequence[tuple[int, int]] | None = None, top_k: int = 10, method: str = "scale",
                  eps: float = 1e-5, template: str = "paper", memory_budget_mb: float = 1024,
                  progress: bool = False) -> ShipsResult:
    """Ships of every head on every query (a built-in set name, a file path or a list of requests).

    Returns ``ShipsResult`` with ``kl [query, layer, head]`` and scores ``ships_kl_sum``, ``ships_kl_mean``,
    ``ships_top{k}_count``, ``ships_top{k}_kl_sum`` (analysis "safety").
    """
    prompts = load_prompts(queries, n)
    rows = encode(model, prompts, template)  # raises early for a missing chat template / too-long prompts
    kl = []
    for i, row in enumerate(rows):
        kl.append(ships_kl(model, row, heads=heads, method=method, eps=eps, memory_budget_mb=memory_budget_mb))
        if progress:
            print(f"ships: query {i + 1}/{len(rows)}", flush=True)
    kl = torch.stack(kl)
    return ShipsResult(kl=kl, queries=prompts, scores=dataset_scores(kl, model_name=model.name, top_k=top_k),
                       top_k=top_k)
