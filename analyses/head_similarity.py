"""Head similarity and clustering from attention on the same inputs: pairwise Jensen–Shannon, cross-layer
similarity (EchoAtt), top-k key-set overlap of consecutive layers (HyLRA), pooled proxy heads (ProxyAttn).

For heads a, b and query row i of the same input (attention rows A^a_i, A^b_i over the allowed keys)::

    JS(a, b) = mean_i JS(A^a_i, A^b_i)      natural log, 0 ≤ JS ≤ log 2; distance d(a, b) = √JS (a metric)

computed by the two-run divergence kernel (``kernels/attention_stats/divergence.py``: per-run row LSE from the
statistics engine, then key tiles; no [query_pos, key_pos] pattern), with the pairs batched as the kernel's head
axis. From the [head_total, head_total] JS matrix (heads in L{layer}H{head} order):

* ``js_nearest``: each head's smallest JS to another head (how redundant it is); ``js_nearest_same_layer``;
* EchoAtt (Rajabzadeh et al. 2024, "EchoAtt: Attend, Copy, then Adjust"), layer level: ``echo_js_prev`` =
  mean over heads h of layer l of min_{h'} JS(L{l}H{h}, L{l−1}H{h'}) — low values mark layers whose attention
  could be copied from the layer below;
* clusters: average-linkage agglomerative clustering on d = √JS cut at ``n_clusters`` (``cluster`` score,
  the label of each head; labels numbered by first appearance).

HyLRA (Hybrid Layer Reuse Attention): per head and query row, the top-k key sets of the same head in consecutive
layers, ``hylra_overlap`` = mean_i |TopK_l(i) ∩ TopK_{l−1}(i)| / k (engine ``topk``; rows i ≥ k, which have at
least k keys). ProxyAttn ("ProxyAttn: guided sparse attention via representative heads"): per KV group g the
proxy query is the mean of the group's post-RoPE queries, q̄ = mean_{h ∈ g} q_h, scored against the shared keys;
``proxy_recall`` of head h = mean_i |TopK_proxy(i) ∩ TopK_h(i)| / k (how well the pooled scores predict the
member's top-k); ``proxy_recall_kv`` is its mean over the group (kv_head level).

Validated in ``tests/unit/test_head_similarity.py`` against dense float64 patterns (JS, overlaps, proxy recall
by set intersection of dense top-k) and on planted heads (identical heads cluster together, JS 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interp.capture import Capture
from interp.params import Params, check_context, param
from interp.scores import ScoreTable


@dataclass(frozen=True)
class HeadSimilarityParams(Params):
    """Parameters of ``head_similarity``."""

    n_samples: int = param(1, "prose windows", ge=1)
    n_tokens: int = param(64, "tokens per window (cost ∝ head pairs × n_tokens²: all 36k pairs of the default "
                          "model)", ge=8)
    top_k: int = param(8, "k of the HyLRA / ProxyAttn top-k key sets", ge=1)
    n_clusters: int = param(12, "clusters of the average-linkage cut", ge=1)
    pair_chunk: int = param(512, "head pairs per divergence-kernel call", ge=1)
    seed: int = param(0, "sample seed", ge=0)

    def check_model(self, model, where=""):
        check_context(model, f"{where or 'head_similarity'}.n_tokens", self.n_tokens)


class QKCapture(Capture):
    """Keeps every layer's post-RoPE q ``[batch, head, query_pos, d_head]`` and k ``[batch, kv_head, key_pos,
    d_head]`` (float32, CPU) with its scale and window; no engine statistics, so the output comes from SDPA."""

    def __init__(self):
        super().__init__()
        self.qk: dict[int, tuple] = {}

    def capture(self, layer, module, query, key, attention_mask, *, scaling, softcap, window, row_lse=None):
        if softcap is not None:
            raise ValueError(f"layer {layer} uses logit soft-capping, which the divergence kernel does not model")
        self.qk[layer] = (query.detach().float().cpu(), key.detach().float().cpu(), float(scaling), window)


def capture_qk(model, ids: torch.Tensor) -> dict[int, tuple]:
    """``{layer: (q, k, scale, window)}`` of one forward on ids ``[batch, pos]``."""
    cap = QKCapture()
    with torch.no_grad(), model.hooks({}, capture=cap):
        model.forward(ids)
    return cap.qk


def _flat(qk, group: int):
    """All heads stacked: q ``[batch, head_total, pos, d_head]`` and their own keys (same layout)."""
    qs, ks = [], []
    for layer in sorted(qk):
        q, k, _, _ = qk[layer]
        qs.append(q)
        ks.append(k.repeat_interleave(group, dim=1))  # one key row per query head: the pair batch needs it
    return torch.cat(qs, 1), torch.cat(ks, 1)


def pairwise_js(qk: dict, model, *, pair_chunk: int = 512) -> torch.Tensor:
    """``[head_total, head_total]`` mean-over-rows JS between every two heads (float64, symmetric, 0 diagonal).
    Heads are ordered layer-major (index = layer · n_heads + head)."""
    from interp.kernels.attention_stats.divergence import pattern_divergence

    s = model.shape
    scales = {qk[layer][2] for layer in qk}
    windows = {qk[layer][3] for layer in qk}
    if len(scales) != 1 or len(windows) != 1:
        raise ValueError("pairwise JS needs one logit scale and one window for all layers (sliding-window models "
                         "mix windows); restrict the layers")
    q, k = _flat(qk, s.group_size)
    n = q.shape[1]
    a, b = torch.triu_indices(n, n, offset=1)
    js = torch.zeros(n, n, dtype=torch.float64)
    for c in range(0, len(a), pair_chunk):
        ia, ib = a[c:c + pair_chunk], b[c:c + pair_chunk]
        d = pattern_divergence(q[:, ia], k[:, ia], q[:, ib], k[:, ib], scale1=next(iter(scales)), stats=("js",),
                               window=next(iter(windows)))["js"]  # [batch, pair, query_pos]
        js[ia, ib] = d.double().mean((0, 2))
    return js + js.T


def average_linkage(dist: np.ndarray, n_clusters: int) -> np.ndarray:
    """Average-linkage agglomerative clustering of a ``[n, n]`` distance matrix into ``n_clusters`` labels
    (``[n]`` int, numbered by first appearance)."""
    n = dist.shape[0]
    clusters = [[i] for i in range(n)]
    d = dist.astype(float).copy()
    np.fill_diagonal(d, np.inf)
    sizes = np.ones(n)
    alive = np.ones(n, dtype=bool)
    while alive.sum() > max(1, n_clusters):
        sub = np.where(alive[:, None] & alive[None, :], d, np.inf)
        i, j = np.unravel_index(np.argmin(sub), sub.shape)
        i, j = min(i, j), max(i, j)
        d[i] = d[:, i] = (d[i] * sizes[i] + d[j] * sizes[j]) / (sizes[i] + sizes[j])  # Lance–Williams
        d[i, i] = np.inf
        sizes[i] += sizes[j]
        alive[j] = False
        clusters[i] += clusters[j]
    labels = np.empty(n, dtype=int)
    order = sorted((min(c), c) for idx, c in enumerate(clusters) if alive[idx])
    for lab, (_, members) in enumerate(order):
        labels[members] = lab
    return labels


def _overlap(idx_a: torch.Tensor, idx_b: torch.Tensor, k: int) -> torch.Tensor:
    """|A ∩ B| / k per row of two ``[..., k]`` index sets (−1 entries, padding, never match)."""
    hit = (idx_a[..., :, None] == idx_b[..., None, :]) & (idx_a[..., :, None] >= 0)
    return hit.any(-1).sum(-1).double() / k


def topk_sets(qk: dict, model, top_k: int) -> dict[str, torch.Tensor]:
    """Engine top-k key indices: ``heads [layer, batch, head, query_pos, k]`` and ``proxy [layer, batch, kv_head,
    query_pos, k]`` (the group-mean query against the group's keys)."""
    from interp.kernels.attention_stats import compute_attention_stats

    s = model.shape
    heads, proxy = [], []
    for layer in sorted(qk):
        q, k, scale, window = qk[layer]
        kw = dict(stats=["topk"], scale=scale, window=window, top_k=top_k)
        heads.append(compute_attention_stats(q, k, **kw)["topk_idx"])
        qbar = q.view(q.shape[0], s.n_kv_heads, s.group_size, *q.shape[2:]).mean(2)  # [batch, kv_head, pos, d]
        proxy.append(compute_attention_stats(qbar, k, **kw)["topk_idx"])
    return {"heads": torch.stack(heads), "proxy": torch.stack(proxy)}


def topk_scores(sets: dict, model, top_k: int) -> dict[str, torch.Tensor]:
    """``hylra_overlap [layer, head]`` (NaN at layer 0), ``proxy_recall [layer, head]``, ``proxy_recall_kv
    [layer, kv_head]``; rows i ≥ k only."""
    s = model.shape
    h, p = sets["heads"][..., top_k:, :], sets["proxy"][..., top_k:, :]
    hylra = torch.full((s.n_layers, s.n_heads), float("nan"), dtype=torch.float64)
    hylra[1:] = _overlap(h[1:], h[:-1], top_k).mean((1, 3))
    recall = _overlap(p.repeat_interleave(s.group_size, dim=2), h, top_k).mean((1, 3))
    return {"hylra_overlap": hylra, "proxy_recall": recall,
            "proxy_recall_kv": recall.view(s.n_layers, s.n_kv_heads, s.group_size).mean(-1)}


def js_summaries(js: torch.Tensor, n_layers: int, n_heads: int) -> dict[str, np.ndarray]:
    """``js_nearest`` / ``js_nearest_same_layer`` ``[layer, head]`` and ``echo_js_prev`` ``[layer]``."""
    m = js.numpy().copy()
    np.fill_diagonal(m, np.inf)
    blocks = m.reshape(n_layers, n_heads, n_layers, n_heads)
    same = np.stack([blocks[layer, :, layer].min(-1) for layer in range(n_layers)])
    echo = np.full(n_layers, np.nan)
    for layer in range(1, n_layers):
        echo[layer] = blocks[layer, :, layer - 1].min(-1).mean()
    return {"js_nearest": m.min(-1).reshape(n_layers, n_heads), "js_nearest_same_layer": same,
            "echo_js_prev": echo}


def run(model, params: HeadSimilarityParams | dict | None = None, out_dir=None):
    """Report entry: similarity scores per head / layer / KV head, the JS matrix (``js``) and the clusters."""
    from interp.analyses._text import domain_samples
    from interp.sites import head_name

    p = HeadSimilarityParams.coerce(params, where="head_similarity")
    p.check_model(model, "head_similarity")
    s = model.shape
    ids = domain_samples(model, "prose", p.n_samples, p.n_tokens, seed=p.seed)
    qk = capture_qk(model, ids)
    js = pairwise_js(qk, model, pair_chunk=p.pair_chunk)
    labels = average_linkage(js.clamp_min(0).sqrt().numpy(), p.n_clusters)
    tk = topk_scores(topk_sets(qk, model, p.top_k), model, p.top_k)
    summ = js_summaries(js, s.n_layers, s.n_heads)
    common = dict(model=model.name, analysis="head_similarity", n_samples=p.n_samples)
    tables = [ScoreTable.from_matrix(summ[k], score=k, **common) for k in ("js_nearest", "js_nearest_same_layer")]
    tables.append(ScoreTable.from_layers(summ["echo_js_prev"], score="echo_js_prev", **common))
    tables.append(ScoreTable.from_matrix(labels.reshape(s.n_layers, s.n_heads).astype(float), score="cluster",
                                         **common))
    tables += [ScoreTable.from_matrix(tk[k], score=k, **common) for k in ("hylra_overlap", "proxy_recall")]
    tables.append(ScoreTable.from_matrix(tk["proxy_recall_kv"], score="proxy_recall_kv", kv=True, **common))
    names = [head_name(layer, h) for layer in range(s.n_layers) for h in range(s.n_heads)]
    js_df = pd.DataFrame(js.numpy(), index=names, columns=names)
    clusters = pd.DataFrame({"head": names, "layer": np.repeat(np.arange(s.n_layers), s.n_heads),
                             "head_index": np.tile(np.arange(s.n_heads), s.n_layers), "cluster": labels})
    return {"scores": ScoreTable.concat(tables), "js": js_df, "clusters": clusters}
