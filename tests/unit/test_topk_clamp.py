"""``top_k`` larger than the number of keys is clamped to it, on every route, with buffers sized by the real n.

Without the clamp a ``top_k`` of 10**12 asks the chunked path for a ``[batch, head, query_pos, 10**12]``
buffer and fails at once (the issue's 10**6 took 9.3 GB); the values are checked against the dense float64
pattern of the same forward (``run_with_cache``), by the definition: the keys of row i sorted by A[i, j]
descending, ties to the smaller j, padded with -1 / 0 beyond the i + 1 allowed keys.
"""

import pytest
import torch

import interp
from interp.hooks import run_with_cache
from interp.kernels.attention_stats import compute_attention_stats
from interp.sites import Site
from interp.testing import tiny_model

HUGE = 10**12


def _dense_topk(P: torch.Tensor):
    """``P [..., query_pos, key_pos]`` (causal) -> (idx, prob) ``[..., query_pos, key_pos]`` by the definition."""
    n = P.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    key = torch.where(allowed, P.double(), -1.0)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    prob = torch.gather(P.double(), -1, order)
    n_keys = torch.arange(1, n + 1)[:, None]
    keep = torch.arange(n)[None, :] < n_keys  # [query_pos, rank]
    return torch.where(keep, order, -1), torch.where(keep, prob, 0.0)


def test_huge_top_k_on_tiny_llama_equals_dense_definition():
    m = tiny_model("llama", n_layers=2)
    torch.manual_seed(0)
    ids = torch.randint(2, 60, (1, 48))
    st = interp.attention_stats(m, ids, stats=["topk"], top_k=HUGE)
    idx, prob = st["topk_idx"], st["topk_prob"]  # [layer, batch, head, query_pos, min(top_k, key_pos)]
    assert idx.shape == (2, 1, m.shape.n_heads, 48, 48)
    _, cache = run_with_cache(m, ids, [Site(layer, "pattern") for layer in range(2)])
    P = torch.stack([cache[Site(layer, "pattern")] for layer in range(2)])  # [layer, batch, head, q, k]
    ref_idx, ref_prob = _dense_topk(P)
    torch.testing.assert_close(prob.double(), ref_prob, rtol=1e-4, atol=1e-6)
    # indices agree wherever the probabilities are not (numerically) tied
    distinct = (ref_prob[..., 1:] - ref_prob[..., :-1]).abs() > 1e-5
    sure = torch.ones_like(ref_idx, dtype=torch.bool)
    sure[..., 1:] &= distinct
    sure[..., :-1] &= distinct
    assert (idx[sure] == ref_idx[sure]).all()
    assert ((idx >= 0).sum(-1) == torch.arange(1, 49)).all()  # row i: exactly its i + 1 keys, then -1


@pytest.mark.parametrize("impl", ["reference", "chunked", "auto"])
def test_engine_clamps_top_k_on_every_route(impl):
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 7, 8)  # query_pos 5 < key_pos 7 (KV-cache layout)
    big = compute_attention_stats(q, k, stats=["topk"], scale=0.3, top_k=HUGE, impl=impl)
    exact = compute_attention_stats(q.double(), k.double(), stats=["topk"], scale=0.3, top_k=7,
                                    impl="reference")
    assert big["topk_idx"].shape == (1, 2, 5, 7)
    assert torch.equal(big["topk_idx"], exact["topk_idx"])
    torch.testing.assert_close(big["topk_prob"].double(), exact["topk_prob"], rtol=1e-5, atol=1e-7)


def test_top_k_still_checked():
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="top_k must be an int >= 1, got -3"):
        compute_attention_stats(q, q, stats=["topk"], scale=1.0, top_k=-3)
