"""interp.graph: the edge-level forward reproduces HF (nothing patched) and the corrupt run (everything
patched)."""

from __future__ import annotations

import pytest
import torch

from interp.graph import Graph, corrupt_outputs, run_graph
from interp.testing import tiny_model


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def tiny64(request):
    # 12 positions > gemma3's sliding window of 8, so the sliding mask is exercised
    return tiny_model(request.param, n_layers=2, dtype=torch.float64)


def _ids(seed, batch=2, pos=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 60, (batch, pos), generator=g)


def test_unpatched_forward_matches_hf_logits(tiny64):
    ids = _ids(0)
    with torch.no_grad():
        ours = run_graph(tiny64, ids).logits
    ref = tiny64.logits(ids)  # HF forward through interp's attention function
    # HF casts RMSNorm inputs to fp32 inside a float64 model, so agreement is at fp32 rounding, not 1e-12
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_all_edges_removed_gives_corrupt_logits(tiny64):
    clean, corrupt = _ids(0), _ids(1)
    g = Graph.of(tiny64)
    with torch.no_grad():
        ours = run_graph(tiny64, clean, corrupt=corrupt_outputs(tiny64, corrupt), removed=g.valid).logits
    torch.testing.assert_close(ours, tiny64.logits(corrupt), atol=1e-6, rtol=1e-6)


def test_no_edge_removed_through_patch_path_is_clean(tiny64):
    clean, corrupt = _ids(2), _ids(3)
    g = Graph.of(tiny64)
    removed = torch.zeros(g.n_nodes, g.n_inputs, requires_grad=True)  # forces the patch arithmetic everywhere
    with torch.no_grad():
        ours = run_graph(tiny64, clean, corrupt=corrupt_outputs(tiny64, corrupt), removed=removed).logits
    torch.testing.assert_close(ours, tiny64.logits(clean), atol=1e-6, rtol=1e-6)


def test_head_outputs_sum_to_attention_output(tiny64):
    from interp.hooks import run_with_cache
    from interp.sites import Site

    ids = _ids(4)
    _, cache = run_with_cache(tiny64, ids, [Site(1, "attn_out")])
    with torch.no_grad():
        outs = run_graph(tiny64, ids).node_outputs
    g = Graph.of(tiny64)
    heads = outs[g.n_upstream_attn(1): g.n_upstream_attn(1) + g.n_heads].sum(0)
    ref = cache[Site(1, "attn_out")]
    if hasattr(tiny64.arch.layers[1], "pre_feedforward_layernorm"):  # gemma: attn_out is before its post-norm
        ref = tiny64.arch.layers[1].post_attention_layernorm(ref)
    torch.testing.assert_close(heads, ref, atol=1e-6, rtol=1e-6)


def test_graph_counts_by_hand():
    # 2 layers, 4 query heads, 2 KV heads: inputs per layer 4 q + 2 k + 2 v + 1 mlp = 9
    g = Graph(2, 4, 2)
    assert g.n_nodes == 1 + 2 * 5 and g.n_inputs == 2 * 9 + 1
    # L0 attention inputs see {input}: 8 edges; M0 sees input + 4 heads: 5; L1 attention inputs see 6 nodes:
    # 48; M1 sees 10; logits see all 11
    assert g.n_edges == 8 + 5 + 48 + 10 + 11 == len(g.edges())
    assert g.edge_index("L0H3", "L1KV1", "k") == (4, 9 + 4 + 1)
    with pytest.raises(ValueError, match="not upstream"):
        g.edge_index("L1H0", "L1H1", "q")
    with pytest.raises(ValueError, match="no edge"):
        g.edge_index("L0H9", "logits", "")


def test_bad_inputs_raise_clear_errors(tiny_llama):
    g = Graph.of(tiny_llama)
    ids = _ids(0)
    with pytest.raises(ValueError, match="corrupt"):
        run_graph(tiny_llama, ids, removed=g.valid)
    with pytest.raises(ValueError, match="n_nodes, n_inputs"):
        run_graph(tiny_llama, ids, corrupt=corrupt_outputs(tiny_llama, ids), removed=torch.ones(3, 3))
    with pytest.raises(ValueError, match="same shape"):
        run_graph(tiny_llama, ids, corrupt=corrupt_outputs(tiny_llama, _ids(1, pos=7)), removed=g.valid)
