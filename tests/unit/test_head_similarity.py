"""head_similarity vs dense float64 patterns: pairwise JS, HyLRA overlap, ProxyAttn recall; planted identical
heads cluster together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.analyses import head_similarity as HS
from interp.testing import dense_patterns, tiny_model


@pytest.fixture(scope="module")
def model():
    m = tiny_model("llama", n_layers=3, n_heads=4, n_kv_heads=2)
    s = m.shape
    with torch.no_grad():  # plant: L2H1 is a copy of L2H0 (same KV head 0, same query weights)
        q = m.arch.attn(2).q_proj.weight.view(s.n_heads, s.d_head, s.d_model)
        q[1] = q[0]
    return m


@pytest.fixture(scope="module")
def ids():
    return torch.randint(2, 64, (2, 40), generator=torch.Generator().manual_seed(0))


def _js_dense(A, B):
    M = (A + B) / 2

    def kl(P, Q):
        return torch.where(P > 0, P * (P.clamp_min(1e-300).log() - Q.clamp_min(1e-300).log()), 0).sum(-1)

    return (0.5 * kl(A, M) + 0.5 * kl(B, M)).mean()


def test_pairwise_js_matches_dense(model, ids):
    s = model.shape
    js = HS.pairwise_js(HS.capture_qk(model, ids), model, pair_chunk=7)
    A = dense_patterns(model, ids)  # [layer, batch, head, query, key]
    flat = A.permute(1, 0, 2, 3, 4).reshape(ids.shape[0], -1, ids.shape[1], ids.shape[1])
    for a in range(s.n_layers * s.n_heads):
        for b in range(s.n_layers * s.n_heads):
            ref = 0.0 if a == b else float(_js_dense(flat[:, a], flat[:, b]))
            assert float(js[a, b]) == pytest.approx(ref, abs=2e-6)
    assert float(js[2 * 4 + 0, 2 * 4 + 1]) < 1e-9  # the planted copy


def test_clusters_and_summaries(model, ids):
    out = HS.run(model, {"n_samples": 2, "n_tokens": 40, "n_clusters": 11})
    cl = out["clusters"].set_index("head")["cluster"]
    assert cl["L2H0"] == cl["L2H1"]  # 12 heads into 11 clusters: the one merge is the planted pair
    assert out["clusters"]["cluster"].nunique() == 11
    js = out["js"].to_numpy()
    sc = out["scores"]
    near = sc[sc.score == "js_nearest"].set_index(["layer", "head"])["value"]
    m = js + np.diag(np.full(12, np.inf))
    assert near[(1, 3)] == pytest.approx(m[1 * 4 + 3].min())
    echo = sc[sc.score == "echo_js_prev"].set_index("layer")["value"]
    assert echo[2] == pytest.approx(m[8:12, 4:8].min(1).mean())


def test_average_linkage_hand_case():
    # points on a line 0, 1, 10, 11, 30: two tight pairs and a loner
    x = np.array([0.0, 1.0, 10.0, 11.0, 30.0])
    d = np.abs(x[:, None] - x[None, :])
    assert HS.average_linkage(d, 3).tolist() == [0, 0, 1, 1, 2]
    assert HS.average_linkage(d, 2).tolist() == [0, 0, 0, 0, 1]  # avg(0,1 | 10,11) = 10 < 24.5


def test_topk_overlap_and_proxy_recall_vs_dense(model, ids):
    s, k = model.shape, 3
    qk = HS.capture_qk(model, ids)
    got = HS.topk_scores(HS.topk_sets(qk, model, k), model, k)
    A = dense_patterns(model, ids)
    top = A.topk(k, dim=-1).indices  # [layer, batch, head, query, k]
    rows = slice(k, None)

    def overlap(x, y):
        return torch.tensor([[[len(set(x[b, h, i].tolist()) & set(y[b, h, i].tolist())) / k
                               for i in range(x.shape[2])] for h in range(x.shape[1])] for b in range(x.shape[0])],
                            dtype=torch.float64)

    for layer in range(1, s.n_layers):
        ref = overlap(top[layer][:, :, rows], top[layer - 1][:, :, rows]).mean((0, 2))
        assert torch.allclose(got["hylra_overlap"][layer], ref)
    assert torch.isnan(got["hylra_overlap"][0]).all()
    # proxy: the group-mean query's dense pattern, from the captured q and k
    q, kk, scale, _ = qk[1]
    qbar = q.double().view(q.shape[0], s.n_kv_heads, s.group_size, *q.shape[2:]).mean(2)
    logits = (qbar @ kk.double().transpose(-1, -2)) * scale
    n = ids.shape[1]
    logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    ptop = logits.topk(k, dim=-1).indices.repeat_interleave(s.group_size, dim=1)
    ref = overlap(ptop[:, :, rows], top[1][:, :, rows]).mean((0, 2))
    assert torch.allclose(got["proxy_recall"][1], ref)
    assert torch.allclose(got["proxy_recall_kv"][1], ref.view(s.n_kv_heads, -1).mean(-1))
