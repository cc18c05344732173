"""Direct logit attribution: per-head values against the hook runtime's head outputs and a hand-written final
RMSNorm; summed over every node it must reproduce the logit difference (linear once the norm scale is
frozen)."""

from __future__ import annotations

import torch

from interp.analyses.circuits import dla, dla_nodes
from interp.hooks import run_with_cache
from interp.metrics import mean_logit_diff
from interp.sites import Site
from interp.testing import tiny_model


def test_dla_per_head_and_sum():
    m = tiny_model("llama", n_layers=2, dtype=torch.float64, seed=2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 60, (3, 9), generator=gen)
    answer, wrong = torch.tensor([5, 9, 11]), torch.tensor([6, 2, 40])
    got = dla(m, ids, answer, wrong)
    assert got.shape == (2, 4)
    sites = [Site(layer, "head_out") for layer in range(2)] + [Site(1, "resid_post")]
    logits, cache = run_with_cache(m, ids, sites)
    x = cache[Site(1, "resid_post")][:, -1]  # [batch, d_model]
    norm = m.hf.model.norm
    scale = norm.weight / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    direction = m.hf.lm_head.weight[answer] - m.hf.lm_head.weight[wrong]  # [batch, d_model]
    for layer in range(2):
        heads = cache[Site(layer, "head_out")][:, -1]  # [batch, head, d_model]
        ref = torch.einsum("bhm,bm,bm->hb", heads, scale, direction).mean(1)
        torch.testing.assert_close(got[layer].double(), ref, atol=1e-5, rtol=1e-5)
    total = dla_nodes(m, ids, answer, wrong).sum()
    assert abs(total.item() - mean_logit_diff(logits, answer, wrong).item()) < 1e-4
