"""StreamingLLM view of each head: how much attention falls outside the first ``s`` tokens ∪ the recent window.

Paper: Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (ICLR 2024): a KV cache that keeps
only the first s = 4 "sink" tokens and the last w tokens preserves a head's output when its mass outside that set
is small (such heads are the "streaming heads" of DuoAttention, Xiao et al. 2024).

Formula, for query row i (0-indexed) of one head, with the engine's row statistics
``first_i = Σ_{j < s} A_ij`` (``mass_first``, sink_k = s) and ``recent_i = Σ_{i − j < w} A_ij`` (``mass_recent``):

    in_i      = Σ_j A_ij · [j < s  or  i − j < w] = first_i + recent_i − both_i,
    both_i    = Σ_{j < s, i − j < w} A_ij            (non-zero only for rows i < s + w − 1),
    outside_i = 1 − in_i.

``both_i`` is exact for the rows that need it: a causal model's first ``R = s + w`` rows depend only on the first
R tokens, so they are read from the dense eager pattern of a forward pass on the R-token prefix (R × R per head,
cheap); every other row uses ``first_i + recent_i``. Nothing of size pos × pos is formed for long inputs.

Per-head scores average over rows i ≥ s + w (the rows whose outside set is non-empty): ``stream_outside``,
``stream_first``, ``stream_recent``; model level ``stream_head_frac`` = fraction of heads with mean outside mass
below ``tau`` (default 0.1).

Validation: ``tests/unit/test_sinks_views.py`` compares ``outside_i`` with a float64 computation from the full
dense pattern of a tiny model for every row, including the overlapping rows i < s + w.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.kernels.attention_stats import causal_mask
from interp.params import ParamError, Params, check_context, param


@dataclass(frozen=True)
class StreamingParams(Params):
    """StreamingLLM outside-mass view (``[params.sinks.streaming]``)."""

    enabled: bool = param(True, "run this part of the sinks analysis")
    n_samples: int = param(4, "prose windows", ge=1)
    n_tokens: int = param(256, "tokens per window (> sink + window)", ge=2)
    sink: int = param(4, "the StreamingLLM sink tokens s", ge=0)
    window: int = param(64, "the recent window w", ge=1)
    tau: float = param(0.1, "outside mass below which a head counts as streaming", gt=0, lt=1)

    def check(self, where):
        if self.n_tokens <= self.sink + self.window:
            raise ParamError(f"{where}.n_tokens = {self.n_tokens}: must exceed sink + window = "
                             f"{self.sink + self.window}")

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)


def streaming_masses(model, ids: torch.Tensor, *, sink: int = 4, window: int = 64,
                     stats=None) -> dict[str, torch.Tensor]:
    """Per-row masses ``first, recent, inside, outside``: each ``[layer, batch, head, query_pos]`` float64.

    ``ids`` is ``[batch, pos]`` (unpadded). Memory O(pos) apart from an (sink + window)² prefix pattern.
    ``stats``: an ``AttentionStats`` of ``ids`` already holding ``mass_first`` (sink_k = sink) and ``mass_recent``
    (recent_w = window), to share one forward pass with other analyses.
    """
    import interp
    from interp.sites import Site

    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise TypeError("ids must be a [batch, pos] integer tensor")
    if not isinstance(sink, int) or sink < 0 or not isinstance(window, int) or window < 1:
        raise ValueError(f"sink must be an int >= 0 and window an int >= 1, got sink={sink!r}, window={window!r}")
    st = stats if stats is not None else interp.attention_stats(
        model, ids, stats=["mass_first", "mass_recent"], sink_k=sink, recent_w=window)
    if st.params.get("sink_k", 4) != sink or st.params.get("recent_w", 64) != window:
        raise ValueError(f"stats were computed with sink_k={st.params.get('sink_k', 4)}, recent_w="
                         f"{st.params.get('recent_w', 64)}; expected sink={sink}, window={window}")
    first, recent = st["mass_first"].double(), st["mass_recent"].double()
    T = ids.shape[1]
    R = min(T, sink + window)
    both = torch.zeros_like(first)
    if sink > 0:
        sites = [Site(layer, "pattern") for layer in range(model.shape.n_layers)]
        _, cache = interp.run_with_cache(model, ids[:, :R], sites)
        j = torch.arange(R)[None, :]
        mask = ((j < sink) & causal_mask(R, R, window=window)).double()  # [query_pos, key_pos]
        for layer in range(model.shape.n_layers):
            A = cache[Site(layer, "pattern")].double()  # [batch, head, R, R]
            both[layer, :, :, :R] = (A * mask).sum(-1)
    inside = first + recent - both
    return {"first": first, "recent": recent, "inside": inside, "outside": (1.0 - inside).clamp_min(0.0)}


def streaming_scores(model, ids: torch.Tensor | None = None, *, sink: int = 4, window: int = 64,
                     tau: float = 0.1, n_samples: int = 4, n_tokens: int = 256, seed: int = 0, stats=None):
    """(scores, per_token) tidy DataFrames. ``ids [batch, pos]`` default: ``n_samples`` prose windows."""
    import numpy as np
    import pandas as pd

    from interp.scores import ScoreTable

    if ids is None:
        from interp.analyses._text import domain_samples

        ids = domain_samples(model, "prose", n_samples, n_tokens, seed=seed)
    if ids.shape[1] <= sink + window:
        raise ValueError(f"inputs of {ids.shape[1]} tokens have no row with a non-empty outside set "
                         f"(need pos > sink + window = {sink + window}); use longer inputs or a smaller window")
    m = streaming_masses(model, ids, sink=sink, window=window, stats=stats)
    rows = slice(sink + window, None)
    head = {k: m[k][..., rows].mean((1, 3)) for k in ("outside", "first", "recent")}  # [layer, head]
    n = ids.shape[0] * (ids.shape[1] - sink - window)
    common = dict(model=model.name, analysis="sinks", n_samples=n)
    scores = ScoreTable.concat([
        ScoreTable.from_matrix(head["outside"], score="stream_outside", **common),
        ScoreTable.from_matrix(head["first"], score="stream_first", **common),
        ScoreTable.from_matrix(head["recent"], score="stream_recent", **common),
        ScoreTable.scalar(float((head["outside"] < tau).double().mean()), score="stream_head_frac", **common),
    ])
    L, B, H, T = m["outside"].shape
    idx = np.stack(np.meshgrid(np.arange(L), np.arange(B), np.arange(H), np.arange(T), indexing="ij"), -1)
    idx = idx.reshape(-1, 4)
    per_token = pd.DataFrame({
        "model": model.name, "analysis": "sinks", "score": "stream_outside", "layer": idx[:, 0],
        "head": idx[:, 2], "batch": idx[:, 1], "position": idx[:, 3],
        "value": m["outside"].reshape(-1).numpy(), "first": m["first"].reshape(-1).numpy(),
        "recent": m["recent"].reshape(-1).numpy()})
    return scores, per_token
