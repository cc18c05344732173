"""WAAD (windowed average attention distance) and FAI (future attention influence), per token and per head.

Paper: Li et al. 2025, "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables Fine-Grained
Policy Optimization". Locally focused heads show a saw-tooth WAAD (short-range chunking, spikes at "preplan"
tokens); globally focused heads single out "anchor" tokens that many later tokens attend to (high FAI).
The definitions below are those of the brief (the paper itself could not be consulted offline); the window W and
the head split are our documented choices.

For one head with pattern A over a sequence of T tokens (0-indexed):

    WAAD_i = Σ_{j ≤ i} A_ij · min(i − j, W)                 (engine ``attn_distance`` with distance_cap = W)
    FAI_j  = 1 / (T − 1 − j) · Σ_{i > j} A_ij                (for j < T − 1; the last token has no future)
           = (col_sum_j − A_jj) / (T − 1 − j)               (engine ``col_sum`` and row ``mass_self``)

Head split: a head is *local* when its mean WAAD over all tokens is below the median over all heads, else
*global*. Token-level signals: WAAD_i averaged over local heads, FAI_j averaged over global heads (and layers).
Default W = 10.

Validation: ``tests/unit/test_taxonomy_waad.py`` recomputes WAAD and FAI in float64 from the dense eager pattern
of a tiny model (every head, every token) and checks the local/global split rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.params import Params, check_context, param


@dataclass(frozen=True)
class WaadParams(Params):
    """WAAD / FAI on prose (``[params.taxonomy.waad]``)."""

    enabled: bool = param(True, "run this part of the taxonomy analysis")
    window: int = param(10, "distance cap W of WAAD", ge=1)
    n_samples: int = param(2, "prose windows", ge=1)
    n_tokens: int = param(256, "tokens per window", ge=2)

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)


def waad_fai(model, ids: torch.Tensor, *, window: int = 10, stats=None) -> dict[str, torch.Tensor]:
    """``waad [layer, batch, head, pos]`` and ``fai [layer, batch, head, pos]`` (FAI of the last token is NaN),
    float64, from ``ids [batch, pos]`` (unpadded). O(pos) memory. ``stats``: a precomputed ``AttentionStats``
    holding ``attn_distance`` (distance_cap = window), ``col_sum`` and ``mass_self``."""
    import interp

    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError("ids must be a [batch, pos] integer tensor with pos >= 2")
    st = stats if stats is not None else interp.attention_stats(
        model, ids, stats=["attn_distance", "col_sum", "mass_self"], distance_cap=window)
    if st.params.get("distance_cap") != window:
        raise ValueError(f"stats were computed with distance_cap={st.params.get('distance_cap')}, not {window}")
    T = ids.shape[1]
    n_future = (T - 1 - torch.arange(T)).double()
    fai = (st["col_sum"].double() - st["mass_self"].double()) / n_future.clamp_min(1)
    fai[..., -1] = float("nan")
    return {"waad": st["attn_distance"].double(), "fai": fai}


def local_heads(waad: torch.Tensor) -> torch.Tensor:
    """Bool ``[layer, head]``: mean WAAD (over batch and tokens of ``waad [layer, batch, head, pos]``) below the
    median over all heads."""
    m = waad.mean((1, 3))
    return m < torch.quantile(m.flatten(), 0.5)  # the midpoint median for an even number of heads


def waad_fai_scores(model, ids: torch.Tensor, *, window: int = 10, stats=None):
    """(scores, per_token): per head ``waad``, ``fai``, ``local_head`` (1/0); per token the local-head WAAD and
    the global-head FAI (``score`` column ``waad_local`` / ``fai_global``)."""
    import numpy as np
    import pandas as pd

    from interp.scores import ScoreTable

    r = waad_fai(model, ids, window=window, stats=stats)
    loc = local_heads(r["waad"])
    common = dict(model=model.name, analysis="taxonomy", n_samples=ids.shape[0])
    scores = ScoreTable.concat([
        ScoreTable.from_matrix(r["waad"].mean((1, 3)), score="waad", **common),
        ScoreTable.from_matrix(torch.nanmean(r["fai"], dim=3).mean(1), score="fai", **common),
        ScoreTable.from_matrix(loc.double(), score="local_head", **common),
    ])
    lw = loc[:, None, :, None].double()
    waad_tok = (r["waad"] * lw).sum((0, 2)) / lw.sum((0, 2))  # [batch, pos]
    gw = (~loc)[:, None, :, None].double()
    fai_tok = (torch.nan_to_num(r["fai"]) * gw).sum((0, 2)) / gw.sum((0, 2))
    fai_tok[:, -1] = float("nan")
    B, T = ids.shape
    bb, pp = np.meshgrid(np.arange(B), np.arange(T), indexing="ij")
    toks = [str(t) for row in ids.tolist() for t in model.tokenizer.convert_ids_to_tokens(row)]
    frames = [pd.DataFrame({"model": model.name, "analysis": "taxonomy", "score": name, "layer": -1, "head": -1,
                            "batch": bb.ravel(), "position": pp.ravel(), "token": toks,
                            "value": v.reshape(-1).numpy()})
              for name, v in (("waad_local", waad_tok), ("fai_global", fai_tok))]
    return scores, pd.concat(frames, ignore_index=True)
