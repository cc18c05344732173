"""Secondary attention sinks: non-initial tokens that start receiving heavy attention in middle layers.

Paper: Wong et al. 2025, "Towards understanding multiple attention sinks in LLMs" (secondary sinks are formed
by middle-layer MLPs that push a semantically uninformative token towards the first token's residual
direction; they are weaker than the first-token sink and live for a span of layers). No official code exists;
this file fixes the procedure exactly:

1. Received attention, per sample, layer l and key j:  r^l_j = mean_h α^{l,h}_j, α = engine ``col_alpha``
   (mean attention from the queries i ≥ j).
2. Token j ≥ 1 is a secondary sink at layer l when r^l_j > ``threshold`` (default 0.1), l ≥ ``start_layer``
   (default 2: "after the first few layers") and at least ``min_rows`` (16) queries see it.
3. Lifetime: each maximal run of contiguous sink layers [onset, end] of a token is one secondary-sink event;
   lifetime = end − onset + 1.
4. Forming MLP: the MLP of layer ``onset − 1`` (the last write to the residual stream before the onset
   attention layer reads it). Reported: ``mlp_cos`` = cos(mlp_out^{onset−1}_j, resid_post^{onset−1}_0) (its
   alignment with the first token's residual direction), ``mlp_norm`` = ‖mlp_out^{onset−1}_j‖, and
   ``resid_cos`` = cos(resid_post^{onset−1}_j, resid_post^{onset−1}_0). Also ``best_mlp_layer``: the layer
   l < onset whose MLP output at j has the largest projection on the first-token direction
   mlp_out^l_j · resid_post^l_0 / ‖resid_post^l_0‖ (value ``best_mlp_proj``).

Only the positions needed (the first token and the sink tokens) are kept from ``Site(l, "mlp_out")`` and
``Site(l, "resid_post")``, so the analysis runs at full context without O(pos × d_model × layers) memory.

Validation: ``tests/unit/test_sinks_views.py`` recomputes r^l_j from the dense float64 pattern of a tiny
model, checks the run/lifetime logic on a planted mask, and recomputes the cosines from full activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.params import ParamError, Params, check_context, param


@dataclass(frozen=True)
class SecondarySinksParams(Params):
    """Secondary sinks and their forming MLP (``[params.sinks.secondary]``)."""

    enabled: bool = param(True, "run this part of the sinks analysis")
    n_samples: int = param(4, "prose windows", ge=1)
    n_tokens: int = param(256, "tokens per window (> min_rows)", ge=2)
    threshold: float = param(0.1, "head-mean α above which a token is a secondary sink", gt=0, lt=1)
    start_layer: int = param(2, "first layer searched", ge=0)
    min_rows: int = param(16, "queries a key needs before its α counts", ge=1)

    def check(self, where):
        if self.n_tokens <= self.min_rows:
            raise ParamError(f"{where}.n_tokens = {self.n_tokens}: must exceed min_rows = {self.min_rows}")

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)


def received_attention(model, ids: torch.Tensor, stats=None) -> torch.Tensor:
    """r^l_j: ``[layer, batch, key_pos]`` float64, head-mean of ``col_alpha`` (``stats``: precomputed)."""
    import interp

    st = stats if stats is not None else interp.attention_stats(model, ids, stats=["col_alpha"])
    return st["col_alpha"].double().mean(2)


def sink_events(is_sink: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Runs of contiguous layers: ``is_sink [layer, batch, pos]`` bool → list of (batch, pos, onset, end)."""
    L = is_sink.shape[0]
    events = []
    for b, j in (is_sink.any(0)).nonzero().tolist():
        col = is_sink[:, b, j].tolist()
        layer = 0
        while layer < L:
            if col[layer]:
                start = layer
                while layer + 1 < L and col[layer + 1]:
                    layer += 1
                events.append((b, j, start, layer))
            layer += 1
    return events


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1))


def secondary_sinks(model, ids: torch.Tensor | None = None, *, threshold: float = 0.1, start_layer: int = 2,
                    min_rows: int = 16, n_samples: int = 4, n_tokens: int = 256, seed: int = 0):
    """(scores, events) DataFrames. ``ids [batch, pos]`` default: ``n_samples`` prose windows."""
    import pandas as pd

    from interp.scores import ScoreTable
    from interp.sites import Site

    if ids is None:
        from interp.analyses._text import domain_samples

        ids = domain_samples(model, "prose", n_samples, n_tokens, seed=seed)
    r = received_attention(model, ids)  # [layer, batch, pos]
    L, B, T = r.shape
    j = torch.arange(T)
    ok = (j >= 1) & (T - j >= min_rows)
    lay = torch.arange(L)[:, None, None] >= start_layer
    is_sink = (r > threshold) & ok & lay
    events = sink_events(is_sink)
    # activations at the needed positions only
    need = sorted({jj for _, jj, _, _ in events} | {0})
    pos = torch.tensor(need)
    kept: dict[Site, torch.Tensor] = {}

    def keep(x, site):
        kept[site] = x[:, pos].detach().double().cpu()

    if len(need) > 1:
        sites = [Site(layer, c) for layer in range(L) for c in ("mlp_out", "resid_post")]
        with torch.no_grad(), model.hooks({s: keep for s in sites}):
            model.forward(ids)
    col = {p: i for i, p in enumerate(need)}
    rows = []
    for b, jj, onset, end in events:
        row = {"model": model.name, "batch": b, "position": jj, "token": str(model.tokenizer.convert_ids_to_tokens(
            [int(ids[b, jj])])[0]), "onset": onset, "end": end, "lifetime": end - onset + 1,
            "peak_received": float(r[onset:end + 1, b, jj].max())}
        src = onset - 1
        if src >= 0:
            m = kept[Site(src, "mlp_out")][b, col[jj]]
            h0 = kept[Site(src, "resid_post")][b, col[0]]
            row.update(mlp_layer=src, mlp_cos=_cos(m, h0), mlp_norm=float(m.norm()),
                       resid_cos=_cos(kept[Site(src, "resid_post")][b, col[jj]], h0))
            proj = [float(kept[Site(la, "mlp_out")][b, col[jj]] @ kept[Site(la, "resid_post")][b, col[0]]
                          / kept[Site(la, "resid_post")][b, col[0]].norm()) for la in range(onset)]
            best = max(range(onset), key=lambda la: proj[la])
            row.update(best_mlp_layer=best, best_mlp_proj=proj[best])
        rows.append(row)
    ev = pd.DataFrame(rows)
    common = dict(model=model.name, analysis="sinks", n_samples=B)
    count = is_sink.double().sum(2).mean(1)  # [layer]: sinks per sample per layer
    tables = [ScoreTable.from_layers(count, score="secondary_sinks", **common)]
    tables.append(ScoreTable.scalar(len(events) / B, score="secondary_sink_events", **common))
    if len(ev):
        tables.append(ScoreTable.scalar(float(ev["lifetime"].mean()), score="secondary_sink_lifetime", **common))
        if "mlp_cos" in ev:
            tables.append(ScoreTable.scalar(float(ev["mlp_cos"].mean()), score="secondary_sink_mlp_cos",
                                            **common))
    return ScoreTable.concat(tables), ev
