"""ACDC against a from-scratch reference on a 1-layer GQA llama (2 query heads sharing 1 KV head, 11 edges).

The reference recomputes every node output explicitly: each downstream input is the *sum over its upstream
nodes* of either that node's output in the current run or its output in the corrupt run (patched edge) —
a different formulation from the graph's ``resid − Σ removed·(out − out_corrupt)`` — with attention written
out per query head (ungrouped, MHA style). It is checked on random subsets of patched edges, then ACDC's kept
set is compared with a plain greedy loop over the documented order that uses the reference forward.
"""

from __future__ import annotations

import pytest
import torch

from interp.analyses.circuits import acdc, acdc_order
from interp.graph import Graph, corrupt_outputs, run_graph
from interp.metrics import mean_kl_to_clean
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def small():
    m = tiny_model("llama", n_layers=1, n_heads=2, n_kv_heads=1, d_head=8, dtype=torch.float64, seed=5)
    g = torch.Generator().manual_seed(1)
    return m, torch.randint(2, 60, (2, 6), generator=g), torch.randint(2, 60, (2, 6), generator=g)


def reference_forward(m, ids, corrupt=None, removed=frozenset()):
    """Logits and node outputs {name: [batch, pos, d_model]}; ``removed`` holds (upstream, downstream,
    input)."""
    dec, attn = m.arch.layers[0], m.arch.layers[0].self_attn
    dh, H = m.shape.d_head, m.shape.n_heads
    b, p = ids.shape
    out = {"input": m.arch.embed(ids)}

    def inp(names, down, kind):
        return sum(corrupt[n] if (n, down, kind) in removed else out[n] for n in names)

    cos, sin = m.hf.model.rotary_emb(out["input"], torch.arange(p)[None])
    rot = lambda x: torch.cat([-x[..., dh // 2:], x[..., : dh // 2]], -1)
    rope = lambda x: x * cos + rot(x) * sin  # x [batch, pos, d_head]
    wq, wk, wv = (w.weight.view(-1, dh, m.shape.d_model) for w in (attn.q_proj, attn.k_proj, attn.v_proj))
    k = rope(dec.input_layernorm(inp(["input"], "L0KV0", "k")) @ wk[0].T)
    v = dec.input_layernorm(inp(["input"], "L0KV0", "v")) @ wv[0].T
    causal = torch.ones(p, p, dtype=torch.bool).tril()
    for h in range(H):
        q = rope(dec.input_layernorm(inp(["input"], f"L0H{h}", "q")) @ wq[h].T)
        scores = (q @ k.transpose(-1, -2) * attn.scaling).masked_fill(~causal, float("-inf"))
        z = torch.softmax(scores, -1) @ v
        out[f"L0H{h}"] = z @ attn.o_proj.weight[:, h * dh:(h + 1) * dh].T
    mlp_in = inp(["input", "L0H0", "L0H1"], "M0", "")
    out["M0"] = dec.mlp(dec.post_attention_layernorm(mlp_in))
    final = inp(["input", "L0H0", "L0H1", "M0"], "logits", "")
    return m.hf.lm_head(m.hf.model.norm(final)), out


def test_patched_forward_matches_reference_on_random_edge_subsets(small):
    m, clean, corrupt_ids = small
    g = Graph.of(m)
    edges = g.edges()
    assert len(edges) == 11
    with torch.no_grad():
        _, ref_corrupt = reference_forward(m, corrupt_ids)
        outs = corrupt_outputs(m, corrupt_ids)
        gen = torch.Generator().manual_seed(0)
        for _ in range(12):
            keep = torch.rand(len(edges), generator=gen) < 0.5
            removed = {e for e, k in zip(edges, keep, strict=True) if k}
            mask = torch.zeros(g.n_nodes, g.n_inputs, dtype=torch.bool)
            for e in removed:
                mask[g.edge_index(*e)] = True
            ref, _ = reference_forward(m, clean, ref_corrupt, removed)
            ours = run_graph(m, clean, corrupt=outs, removed=mask).logits
            torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_acdc_matches_greedy_reference(small):
    m, clean, corrupt_ids = small
    g = Graph.of(m)
    with torch.no_grad():
        clean_logits, _ = reference_forward(m, clean)
        _, ref_corrupt = reference_forward(m, corrupt_ids)
        dist = lambda removed: float(mean_kl_to_clean(reference_forward(m, clean, ref_corrupt, removed)[0],
                                                      clean_logits))
        # the single-edge effects, to put tau where the decision is non-trivial
        single = sorted(dist({e}) for e in g.edges())
        tau = (single[5] + single[6]) / 2
        removed, current = set(), dist(set())
        for u, c in acdc_order(g):  # documented order: inputs last-first, upstream nodes latest-first
            e = (g.nodes[u], *g.inputs[c])
            new = dist(removed | {e})
            if new - current < tau:
                removed, current = removed | {e}, new
    circ = acdc(m, clean, corrupt_ids, tau=tau, metric="kl")
    assert set(circ.edges) == set(g.edges()) - removed
    assert 0 < len(circ.edges) < 11  # the greedy decision was not trivial
    assert circ.meta["d_final"] == pytest.approx(current, rel=1e-5, abs=1e-9)


def test_acdc_order_is_reverse_topological():
    g = Graph(1, 2, 1)
    order = [(g.nodes[u], *g.inputs[c]) for u, c in acdc_order(g)]
    assert order[:4] == [("M0", "logits", ""), ("L0H1", "logits", ""), ("L0H0", "logits", ""),
                         ("input", "logits", "")]
    assert order[-1] == ("input", "L0H0", "q")


def test_acdc_errors(small):
    m, clean, corrupt_ids = small
    with pytest.raises(ValueError, match="level"):
        acdc(m, clean, corrupt_ids, tau=0.1, level="head")
    with pytest.raises(ValueError, match="tau"):
        acdc(m, clean, corrupt_ids, tau=-1)
    with pytest.raises(ValueError, match="metric"):
        acdc(m, clean, corrupt_ids, tau=0.1, metric="logit_diff")


def test_acdc_on_candidate_edges_matches_greedy_reference(small):
    """Restricted ACDC (Syed et al.: search only a candidate edge set) equals the brute-force greedy loop over the
    candidates, in the documented order, with every non-candidate edge patched from the start."""
    m, clean, corrupt_ids = small
    g = Graph.of(m)
    edges = g.edges()
    cand_edges = [edges[i] for i in (0, 2, 3, 5, 7, 8, 10)]  # 7 of the 11 edges
    cand = torch.zeros(g.n_nodes, g.n_inputs, dtype=torch.bool)
    for e in cand_edges:
        cand[g.edge_index(*e)] = True
    with torch.no_grad():
        clean_logits, _ = reference_forward(m, clean)
        _, ref_corrupt = reference_forward(m, corrupt_ids)
        dist = lambda removed: float(mean_kl_to_clean(reference_forward(m, clean, ref_corrupt, removed)[0],
                                                      clean_logits))
        base = set(edges) - set(cand_edges)
        single = sorted(dist(base | {e}) - dist(base) for e in cand_edges)
        tau = (single[2] + single[3]) / 2
        removed, current, tried = set(base), dist(base), 0
        for u, c in acdc_order(g):
            e = (g.nodes[u], *g.inputs[c])
            if e not in cand_edges:
                continue
            tried += 1
            new = dist(removed | {e})
            if new - current < tau:
                removed, current = removed | {e}, new
    circ = acdc(m, clean, corrupt_ids, tau=tau, metric="kl", candidates=cand)
    assert set(circ.edges) == set(edges) - removed
    assert set(circ.edges) <= set(cand_edges) and 0 < len(circ.edges) < len(cand_edges)
    assert circ.meta["n_tried"] == tried == 7 and circ.meta["n_candidates"] == 7
    assert circ.meta["d_final"] == pytest.approx(current, rel=1e-5, abs=1e-9)
    # all edges as candidates is plain ACDC
    full = acdc(m, clean, corrupt_ids, tau=tau, metric="kl")
    assert set(acdc(m, clean, corrupt_ids, tau=tau, metric="kl", candidates=g.valid).edges) == set(full.edges)
    with pytest.raises(ValueError, match="candidates"):
        acdc(m, clean, corrupt_ids, tau=tau, candidates=torch.ones(3, 3, dtype=torch.bool))
