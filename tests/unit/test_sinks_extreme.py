"""Extreme-token statistics and the active/dormant intervention, against independent dense computations."""

from __future__ import annotations

import pytest
import torch

from interp.analyses import extreme_tokens
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2", n_layers=2, seed=7)  # GQA 4 query / 2 KV heads, QKV bias


def loss(model, ids, hooks=None):
    with torch.no_grad(), model.hooks(hooks or {}):
        logits = model.forward(ids).logits.double()
    lp = torch.log_softmax(logits[:, :-1], -1)
    return -lp.gather(-1, ids[:, 1:, None]).squeeze(-1).mean(-1)  # [batch]


def test_v0_replacement_equals_one_hot_pattern(model):
    ids = torch.randint(2, 64, (2, 14), generator=torch.Generator().manual_seed(0))
    got = extreme_tokens.dormant_dloss(model, ids)
    base = loss(model, ids)

    def one_hot(p, site):  # [batch, query_pos, key_pos]
        q = torch.zeros_like(p)
        q[..., 0] = 1
        return q

    for layer in range(2):
        for h in range(4):
            ref = (loss(model, ids, {Site(layer, "pattern", h): one_hot}) - base).mean()
            assert float(got[layer, h]) == pytest.approx(float(ref), abs=2e-6)
    assert float(got.abs().max()) > 1e-4  # the intervention does something


def test_value_drain_direct(model):
    ids = torch.randint(2, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    got = extreme_tokens.value_drains(model, ids)
    _, cache = run_with_cache(model, ids, [Site(1, "v")])
    v = cache[Site(1, "v")].double()  # [batch, pos, kv_head, d_head]
    w = model.hf.model.layers[1].self_attn.o_proj.weight.double()  # [d_model, head * d_head]
    h = 3  # reads KV head 1
    out = torch.einsum("bpd,md->bpm", v[:, :, 1], w[:, 24:32])
    n = out.norm(dim=-1)
    torch.testing.assert_close(got[1, :, h], n[:, 0] / n[:, 1:].mean(-1))


def test_massive_rule_planted():
    x = torch.full((5, 8), 0.05)
    x[2, 3] = 120.0  # > 100 and > 1000 * median(0.05) = 50
    x[4, 1] = -101.0
    x[0, 0] = 90.0  # large but < 100
    assert extreme_tokens.massive_mask(x).nonzero().tolist() == [[2, 3], [4, 1]]
    assert not extreme_tokens.massive_mask(x, ratio=3000.0).any()


def test_residual_stats_norms(model):
    ids = torch.randint(2, 64, (1, 9), generator=torch.Generator().manual_seed(2))
    norms, counts, _ = extreme_tokens.residual_stats(model, ids)
    _, cache = run_with_cache(model, ids, [Site(0, "resid_post")])
    torch.testing.assert_close(norms[0], cache[Site(0, "resid_post")].double().norm(dim=-1))
    assert counts.shape == (2, 1)


def test_active_dormant_tables(model):
    s, heads = extreme_tokens.active_dormant(model, n_samples=2, n_tokens=12, tol=1e9)
    assert {"dormant_dloss_prose", "dormant_dloss_code", "row_entropy_prose", "col_entropy_code"} <= set(s.score)
    assert len(heads) == 0  # every head is dormant under an infinite tolerance: none switches
