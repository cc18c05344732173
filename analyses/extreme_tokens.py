"""Extreme-token phenomena: value-state drains, residual-state peaks, massive activations, active/dormant heads.

Papers: Guo et al. 2024, "Active-Dormant Attention Heads: Mechanistically Demystifying Extreme-Token Phenomena
in LLMs" (attention sinks come with small value states of the sink token — value-state drains — and large
residual norms — residual-state peaks; a head is *dormant* on an input when it parks its attention on the sink
and *active* otherwise, and the same head can be dormant on one domain and active on another); Sun et al. 2024,
"Massive Activations in Large Language Models".

Formulas (per sample; head h of layer l reads KV head g(h); W_O^h = the d_head columns of o_proj for head h):

    drain^{l,h}     = ‖v^{l,g(h)}_0 W_O^hᵀ‖ / mean_{j ≥ 1} ‖v^{l,g(h)}_j W_O^hᵀ‖      (< 1: value-state drain)
    peak^l          = ‖resid_post^l_0‖ / median_{j ≥ 1} ‖resid_post^l_j‖                (≫ 1: residual peak)
    massive^l       = #{(j, d): |x^l_{jd}| > 100 and |x^l_{jd}| > 1000 · median_{j,d} |x^l|}  (x = resid_post)
    row_entropy^{l,h} = mean_i −Σ_j A_ij log A_ij ;  col_entropy^{l,h} = mean_j −Σ_i p_ij log p_ij,
                       p_ij = A_ij / Σ_i A_ij  (engine ``entropy`` / ``col_entropy``)
    Δloss^{l,h}(domain) = loss(z^{l,h}_i := v^{l,g(h)}_0 for all i) − loss(clean)

Setting z to v_0 is *exactly* the output of a head attending only to token 0 (one-hot on key 0), so no pattern is
materialised. A head is dormant on a domain when |Δloss| < ``tol`` (default 0.01 nats) and active otherwise.
Heads are intervened one at a time, packed into batched forwards by ``interp.variants.run_variants`` (one copy
of the inputs per head, the layers below a chunk's first edited layer run once).

Validation: ``tests/unit/test_sinks_extreme.py`` checks the drain ratio against a direct float64 computation from
the o_proj weight and cached v, the massive-activation rule on a planted tensor, and that the v_0 replacement
equals a one-hot-on-key-0 pattern hook (dense) on a tiny model, head by head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.params import ParamError, Params, check_context, param


@dataclass(frozen=True)
class ExtremeTokensParams(Params):
    """Value drains, residual peaks, massive activations (``[params.sinks.extreme]``)."""

    enabled: bool = param(True, "run this part of the sinks analysis")
    n_samples: int = param(2, "prose windows", ge=1)
    n_tokens: int = param(256, "tokens per window", ge=2)

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)


@dataclass(frozen=True)
class ActiveDormantParams(Params):
    """Active/dormant heads: Δloss of moving each head's attention to token 0, per domain
    (``[params.sinks.dormant]``; off by default: one forward per layer per domain)."""

    enabled: bool = param(False, "run this part of the sinks analysis")
    domains: tuple[str, ...] = param(("prose", "code"), "text domains compared (at least two)",
                                     choices=("prose", "code", "random", "repeated"))
    n_samples: int = param(4, "samples per domain", ge=1)
    n_tokens: int = param(128, "tokens per sample", ge=2)
    tol: float = param(0.01, "|Δloss| below which a head is dormant (nats)", gt=0)

    def check(self, where):
        if len(set(self.domains)) < 2:
            raise ParamError(f"{where}.domains = {list(self.domains)}: give at least two different domains")

    def check_model(self, model, where=""):
        check_context(model, f"{where}.n_tokens", self.n_tokens)


def value_drains(model, ids: torch.Tensor) -> torch.Tensor:
    """drain ratio ``[layer, batch, head]`` float64 (first token's head-output norm / mean of the others)."""
    from interp.hooks import run_with_cache
    from interp.sites import Site

    s = model.shape
    _, cache = run_with_cache(model, ids, [Site(layer, "v") for layer in range(s.n_layers)])
    out = torch.zeros(s.n_layers, ids.shape[0], s.n_heads, dtype=torch.float64)
    for layer in range(s.n_layers):
        v = cache[Site(layer, "v")].double()  # [batch, pos, kv_head, d_head]
        w_o = model.w_o(layer, torch.float64)  # [head, d_head, d_model]
        for h in range(s.n_heads):
            norms = (v[:, :, s.kv_head_of(h)] @ w_o[h]).norm(dim=-1)  # [batch, pos]
            out[layer, :, h] = norms[:, 0] / norms[:, 1:].mean(-1).clamp_min(1e-30)
    return out


def massive_mask(x: torch.Tensor, *, abs_min: float = 100.0, ratio: float = 1000.0) -> torch.Tensor:
    """Sun et al.'s rule on one hidden state ``x [pos, d_model]``: bool mask of massive activations."""
    a = x.abs().double()
    return (a > abs_min) & (a > ratio * a.median())


def residual_stats(model, ids: torch.Tensor, *, abs_min: float = 100.0, ratio: float = 1000.0):
    """Per layer: ``norms [layer, batch, pos]`` of resid_post, ``massive [layer, batch]`` counts, and the list of
    massive activations (layer, batch, position, dim, value). Only reductions are kept (O(pos) memory)."""
    from interp.sites import Site

    s = model.shape
    norms = torch.zeros(s.n_layers, *ids.shape, dtype=torch.float64)
    counts = torch.zeros(s.n_layers, ids.shape[0], dtype=torch.float64)
    found = []

    def keep(x, site):
        norms[site.layer] = x.detach().double().norm(dim=-1).cpu()
        for b in range(x.shape[0]):
            m = massive_mask(x[b].detach(), abs_min=abs_min, ratio=ratio)
            counts[site.layer, b] = float(m.sum())
            for p, d in m.nonzero().tolist()[:32]:
                found.append((site.layer, b, p, d, float(x[b, p, d])))

    with torch.no_grad(), model.hooks({Site(layer, "resid_post"): keep for layer in range(s.n_layers)}):
        model.forward(ids)
    return norms, counts, found


def dormant_dloss(model, ids: torch.Tensor, *, layers=None, memory_budget_mb: float = 1024) -> torch.Tensor:
    """Δloss ``[layer, head]`` (mean over samples ``ids [batch, pos]``) of moving each head's attention entirely
    to token 0 (``interp.ablations.AttendToKey``, one ``run_variants`` variant per head)."""
    from interp.ablations import AttendToKey
    from interp.metrics import next_token_loss
    from interp.variants import run_variants

    s = model.shape
    layers = range(s.n_layers) if layers is None else layers
    heads = [(layer, h) for layer in layers for h in range(s.n_heads)]
    out = torch.full((s.n_layers, s.n_heads), float("nan"), dtype=torch.float64)
    if not heads:
        return out
    loss = lambda o: next_token_loss(o.logits, o.ids)  # noqa: E731  [batch]
    base = run_variants(model, ids, [[]], loss)[0]
    moved = run_variants(model, ids, [[AttendToKey(layer, h, 0)] for layer, h in heads], loss,
                         memory_budget_mb=memory_budget_mb)  # [head, batch]
    for (layer, h), d in zip(heads, (moved - base[None]).mean(1).tolist()):
        out[layer, h] = d
    return out


def active_dormant(model, domains=("prose", "code"), *, n_samples: int = 4, n_tokens: int = 128, tol: float = 0.01,
                   seed: int = 0, layers=None):
    """(scores, heads) — per domain per head Δloss, row/column entropy; ``heads`` lists heads dormant on one domain
    and active on another."""
    import pandas as pd

    import interp
    from interp.analyses._text import domain_samples
    from interp.scores import ScoreTable

    tables, d = [], {}
    for dom in domains:
        ids = domain_samples(model, dom, n_samples, n_tokens, seed=seed)
        d[dom] = dormant_dloss(model, ids, layers=layers)
        st = interp.attention_stats(model, ids, stats=["entropy", "col_entropy"])
        common = dict(model=model.name, analysis="sinks", n_samples=n_samples)
        tables += [ScoreTable.from_matrix(d[dom], score=f"dormant_dloss_{dom}", **common),
                   ScoreTable.from_matrix(st.head_mean("entropy", from_pos=1), score=f"row_entropy_{dom}", **common),
                   ScoreTable.from_matrix(st.head_mean("col_entropy"), score=f"col_entropy_{dom}", **common)]
    rows = []
    for a in domains:
        for b in domains:
            if a == b:
                continue
            both = (d[a].abs() < tol) & (d[b].abs() >= tol)
            for layer, h in both.nonzero().tolist():
                rows.append({"head": f"L{layer}H{h}", "layer": layer, "head_idx": h, "dormant_on": a,
                             "active_on": b, f"dloss_{a}": float(d[a][layer, h]), f"dloss_{b}": float(d[b][layer, h])})
    return ScoreTable.concat(tables), pd.DataFrame(rows)


def extreme_token_scores(model, ids: torch.Tensor | None = None, *, n_samples: int = 2, n_tokens: int = 256,
                         seed: int = 0):
    """(scores, per_token): per-head ``value_drain``, per-layer ``resid_peak`` and ``massive_acts``; per-token
    residual norms."""
    import numpy as np
    import pandas as pd

    from interp.scores import ScoreTable

    if ids is None:
        from interp.analyses._text import domain_samples

        ids = domain_samples(model, "prose", n_samples, n_tokens, seed=seed)
    drains = value_drains(model, ids)
    norms, counts, _ = residual_stats(model, ids)
    L, B, T = norms.shape
    peak = norms[:, :, 0] / norms[:, :, 1:].median(-1).values
    common = dict(model=model.name, analysis="sinks", n_samples=B)
    scores = ScoreTable.concat([
        ScoreTable.from_matrix(drains.mean(1), score="value_drain", **common),
        ScoreTable.from_layers(peak.mean(1), score="resid_peak", **common),
        ScoreTable.from_layers(counts.mean(1), score="massive_acts", **common)])
    idx = np.stack(np.meshgrid(np.arange(L), np.arange(B), np.arange(T), indexing="ij"), -1).reshape(-1, 3)
    per_token = pd.DataFrame({"model": model.name, "analysis": "sinks", "score": "resid_norm", "layer": idx[:, 0],
                              "head": -1, "batch": idx[:, 1], "position": idx[:, 2],
                              "value": norms.reshape(-1).numpy()})
    return scores, per_token
