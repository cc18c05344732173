"""Chunked two-run pattern divergence vs the dense float64 reference, and hand-worked cases."""

import math

import pytest
import torch

from interp.kernels.attention_stats.divergence import divergence_reference, pattern_divergence


def test_hand_worked_two_keys():
    # one head, d_head 1, query 1 sees keys 0 and 1. Run 1: logits (0, 0) → A = (½, ½); run 2: logits (0, log 3)
    # → B = (¼, ¾). KL(A‖B) = ½ log 2 + ½ log(2/3); TV = ¼; JS with M = (3/8, 5/8).
    q1 = torch.tensor([[[[0.0], [1.0]]]], dtype=torch.float64)
    k1 = torch.tensor([[[[1.0], [1.0]]]], dtype=torch.float64) * 0.0
    q2 = torch.tensor([[[[0.0], [1.0]]]], dtype=torch.float64)
    k2 = torch.tensor([[[[0.0], [math.log(3)]]]], dtype=torch.float64)
    out = pattern_divergence(q1, k1, q2, k2, scale1=1.0, stats=("kl", "tv", "js"))
    A, B, M = [0.5, 0.5], [0.25, 0.75], [0.375, 0.625]
    kl = sum(a * math.log(a / b) for a, b in zip(A, B))
    js = 0.5 * sum(a * math.log(a / m) for a, m in zip(A, M)) + 0.5 * sum(b * math.log(b / m) for b, m in zip(B, M))
    assert out["kl"][0, 0, 1].item() == pytest.approx(kl, abs=1e-12)
    assert out["tv"][0, 0, 1].item() == pytest.approx(0.25, abs=1e-12)
    assert out["js"][0, 0, 1].item() == pytest.approx(js, abs=1e-12)
    assert out["js"][0, 0, 0].item() == pytest.approx(0.0, abs=1e-12)  # row 0 attends only itself in both


@pytest.mark.parametrize("n,d,heads,kv1,kv2,window,pad,dtype", [
    (37, 16, 4, 2, 4, None, False, torch.float32),
    (130, 32, 6, 3, 1, 20, False, torch.float32),
    (90, 64, 2, 1, 1, None, True, torch.float64),
    (64, 16, 4, 4, 2, 7, True, torch.float16),
])
def test_chunked_matches_reference(n, d, heads, kv1, kv2, window, pad, dtype):
    g = torch.Generator().manual_seed(n)
    q1, q2 = (torch.randn(2, heads, n, d, generator=g) for _ in range(2))
    k1, k2 = torch.randn(2, kv1, n, d, generator=g), torch.randn(2, kv2, n, d, generator=g)
    kpm = None
    if pad:
        kpm = torch.ones(2, n, dtype=torch.bool)
        kpm[1, :9] = False
    args = dict(scale1=d**-0.5, scale2=0.7 * d**-0.5, window=window, key_padding_mask=kpm)
    ref = divergence_reference(q1, k1, q2, k2, **args)
    got = pattern_divergence(*(t.to(dtype) for t in (q1, k1, q2, k2)), stats=("js", "kl", "kl_rev", "tv"),
                             memory_budget_mb=0.05, **args)
    tol = {torch.float16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-9}[dtype]
    if dtype == torch.float16:  # compare with the reference on the rounded inputs
        ref = divergence_reference(*(t.half().double() for t in (q1, k1, q2, k2)), **args)
    for name in ("js", "kl", "kl_rev", "tv"):
        torch.testing.assert_close(got[name].double(), ref[name], atol=tol, rtol=tol, msg=name)
    assert float(got["js"].max()) <= math.log(2) + 1e-4


def test_errors():
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 5, 8)
    with pytest.raises(ValueError, match="same"):
        pattern_divergence(q, k, torch.randn(1, 2, 6, 8), torch.randn(1, 1, 6, 8), scale1=1.0)
    with pytest.raises(ValueError, match="unknown divergence"):
        pattern_divergence(q, k, q, k, scale1=1.0, stats=("hellinger",))
