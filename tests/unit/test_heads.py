"""interp.heads: top_heads on planted scores, random_heads (seeded, uniform, exclusions) and causal_check on a
tiny model whose planted heads carry the signal, against separate forwards under model.intervene."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from interp.heads import _T975, CausalCheck, causal_check, random_heads, top_heads
from interp.interventions import Zero
from interp.metrics import mean_next_token_loss
from interp.sites import Site
from interp.testing import tiny_model


def test_top_heads_recovers_planted_order_with_ties_and_nan():
    s = np.zeros((3, 4))
    s[2, 1], s[0, 3], s[1, 0], s[1, 2] = 5.0, 4.0, 3.0, 3.0  # a tie: layer 1 head 0 before head 2
    s[0, 0] = np.nan
    assert top_heads(s, 4) == [(2, 1), (0, 3), (1, 0), (1, 2)]
    assert top_heads(torch.tensor(s), 2) == [(2, 1), (0, 3)]
    assert top_heads(s, threshold=3.5) == [(2, 1), (0, 3)]
    assert top_heads(s)[-1] == (0, 0)  # NaN ranks last
    table = pd.DataFrame({"score": "x", "layer": [0, 0, 1, 1, -1], "head": [0, 1, 0, 1, -1],
                          "value": [0.1, 0.9, 0.5, 0.7, 99.0]})
    assert top_heads(table, 3, score="x") == [(0, 1), (1, 1), (1, 0)]  # the layer-level row is ignored
    with pytest.raises(ValueError, match="name the score"):
        top_heads(table, 2)
    with pytest.raises(ValueError, match="'y' has no head rows"):
        top_heads(table, 2, score="y")


def test_random_heads_are_seeded_uniform_and_respect_exclusions():
    m = tiny_model("llama", n_layers=2)  # 2 × 4 heads
    assert random_heads(m, 3, seed=4) == random_heads(m, 3, seed=4)
    ex = [(0, 0), (1, 3)]
    counts = Counter()
    n_draws = 4000
    for seed in range(n_draws):
        hs = random_heads(m, 3, exclude=ex, seed=seed)
        assert len(set(hs)) == 3 and not set(ex) & set(hs) and hs == sorted(hs)
        counts.update(hs)
    assert len(counts) == 6
    p = 3 / 6  # each of the 6 allowed heads is in a set with probability k / pool
    for c in counts.values():
        assert abs(c / n_draws - p) < 4 * math.sqrt(p * (1 - p) / n_draws)
    with pytest.raises(ValueError, match="1 ≤ k ≤ 6"):
        random_heads(m, 7, exclude=ex)


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 30):
        assert _T975[df - 1] == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)


def _planted():
    """Tiny llama whose heads L1H2 and L0H1 carry the output (o_proj columns × 8) and the others almost nothing."""
    m = tiny_model("llama", n_layers=2, dtype=torch.float64, seed=3)
    d = m.shape.d_head
    with torch.no_grad():
        for layer in range(2):
            w = m.arch.attn(layer).o_proj.weight
            for h in range(m.shape.n_heads):
                w[:, h * d:(h + 1) * d] *= 8.0 if (layer, h) in {(1, 2), (0, 1)} else 0.02
    return m


def test_causal_check_finds_planted_heads_and_equals_separate_forwards():
    m = _planted()
    ids = torch.randint(2, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    scores = torch.rand(2, 4, generator=torch.Generator().manual_seed(1))
    scores[1, 2], scores[0, 1] = 2.0, 1.5
    ablate = lambda layer, h: Zero(Site(layer, "z", h))  # noqa: E731
    loss = lambda o: mean_next_token_loss(o.logits, o.ids)  # noqa: E731
    res = causal_check(m, ids, scores, ablate, loss, k=2, n_random=4, seed=0, exclude_top=True)
    assert res.top == [(1, 2), (0, 1)]
    assert all(not set(res.top) & set(s) for s in res.random_sets)

    def sep(heads):
        with torch.no_grad(), m.intervene(*[ablate(*lh) for lh in heads]):
            return float(mean_next_token_loss(m.forward(ids).logits, ids))

    base = sep([])
    assert res.base == pytest.approx(base, rel=1e-12)
    assert res.d_top == pytest.approx(sep(res.top) - base, rel=1e-9)
    for s, d in zip(res.random_sets, res.d_random_draws):
        assert d == pytest.approx(sep(s) - base, rel=1e-9, abs=1e-12)
    assert abs(res.d_top) > 20 * max(abs(d) for d in res.d_random_draws)  # the planted heads carry the signal
    lo, hi = res.d_random_ci
    assert lo < res.d_random < hi
    out = res.to_dict()
    assert out["top_heads"] == ["L1H2", "L0H1"] and out["dloss_top"] == res.d_top


def test_causal_check_intervals_by_hand():
    r = CausalCheck(base=1.0, top=[(0, 0)], d_top=2.0, random_sets=[[], [], []], d_random_draws=[0.1, 0.2, 0.3])
    half = 4.303 * 0.1 / math.sqrt(3)  # sd of (0.1, 0.2, 0.3) is 0.1; t_{0.975, 2} = 4.303
    assert r.d_random_ci == pytest.approx((0.2 - half, 0.2 + half))
    assert r.ratio == pytest.approx(10.0)
    assert r.ratio_ci == (-math.inf, math.inf)  # the interval contains 0
    r2 = CausalCheck(1.0, [(0, 0)], 2.0, [[], []], [0.4, 0.6])
    lo, hi = r2.d_random_ci
    assert lo < 0 and r2.ratio_ci == (-math.inf, math.inf)
    r3 = CausalCheck(1.0, [(0, 0)], 2.0, [[]] * 4, [0.49, 0.5, 0.5, 0.51])
    lo, hi = r3.d_random_ci
    assert r3.ratio_ci == pytest.approx((2.0 / hi, 2.0 / lo))


def test_w_o_per_head_projection_sums_to_the_attention_output():
    m = tiny_model("llama", n_layers=2, dtype=torch.float64)
    ids = torch.randint(2, 60, (2, 6), generator=torch.Generator().manual_seed(2))
    seen = {}
    with torch.no_grad(), m.hooks({Site(1, "z"): lambda z, s: seen.setdefault("z", z.clone()),
                                   Site(1, "attn_out"): lambda x, s: seen.setdefault("out", x.clone())}):
        m.forward(ids)
    from interp.arch import head_outputs

    w = m.w_o(1)  # [head, d_head, d_model]
    assert w.shape == (m.shape.n_heads, m.shape.d_head, m.shape.d_model)
    o = head_outputs(seen["z"], w)  # [batch, pos, head, d_model]
    z, W = seen["z"], m.arch.attn(1).o_proj.weight
    h = 3
    by_hand = z[..., h, :] @ W[:, h * m.shape.d_head:(h + 1) * m.shape.d_head].T  # the d_head columns of head h
    torch.testing.assert_close(o[..., h, :], by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(o.sum(-2), seen["out"], rtol=1e-10, atol=1e-10)  # llama: no o_proj bias
