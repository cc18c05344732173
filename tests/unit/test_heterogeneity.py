"""heterogeneity: head outputs vs the head_out / attn_out sites, distances by hand, a planted distant head."""

from __future__ import annotations

import pytest
import torch

from interp.analyses import heterogeneity as HT
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.testing import tiny_model


def test_outputs_match_sites_and_distances_by_hand():
    m = tiny_model("llama", n_layers=2)
    s = m.shape
    ids = torch.randint(2, 64, (2, 20), generator=torch.Generator().manual_seed(0))
    o = HT.head_outputs_at(m, ids)  # [layer, batch, head, d_model]
    sites = [Site(layer, c) for layer in range(s.n_layers) for c in ("head_out", "attn_out")]
    _, cache = run_with_cache(m, ids, sites)
    for layer in range(s.n_layers):
        ref = cache[Site(layer, "head_out")][:, -1].double()
        assert torch.allclose(o[layer], ref, atol=1e-5)
        assert torch.allclose(o[layer].sum(1), cache[Site(layer, "attn_out")][:, -1].double(), atol=1e-5)
    d = HT.distances(o)
    for layer in range(s.n_layers):
        for b in range(2):
            heads = [o[layer, b, h] for h in range(s.n_heads)]
            c = sum(heads) / s.n_heads
            mean_norm = sum(float(x.norm()) for x in heads) / s.n_heads
            for h in range(s.n_heads):
                assert float(d["l2"][layer, b, h]) == pytest.approx(float((heads[h] - c).norm()) / mean_norm)
                cos = float(heads[h] @ c / (heads[h].norm() * c.norm()))
                assert float(d["cos"][layer, b, h]) == pytest.approx(1 - cos, abs=1e-10)


def test_planted_distant_head_ranks_first():
    m = tiny_model("llama", n_layers=2)
    s = m.shape
    with torch.no_grad():
        m.arch.attn(1).o_proj.weight.view(s.d_model, s.n_heads, s.d_head)[:, 2] *= 20
    prompts = [torch.randint(2, 64, (1, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    sc = HT.heterogeneity_scores(m, prompts)
    assert sc["hetero_rank"][1, 2] == 0
    assert sc["hetero_l2"][1, 2] > 2 * sorted(sc["hetero_l2"][1])[-2]
    assert sorted(sc["hetero_rank"][0].tolist()) == [0, 1, 2, 3]
