"""EAP / EAP-IG: vectorised scores equal the per-edge derivative of the metric w.r.t. that edge's patch mask.

EAP's score of u → v is defined as (out_u(corrupt) − out_u(clean)) · ∂M/∂in_v. Patching the edge by a fraction
α makes in_v = resid − α (out_u(clean) − out_u(corrupt)), so the same number is dM/dα at α = 0: computed here
with a separate forward + backward per edge through the graph's *patch* path (not the stream-gradient path EAP
uses).
"""

from __future__ import annotations

import pytest
import torch

from interp.analyses.circuits import eap_ig_scores, eap_scores
from interp.graph import Graph, corrupt_outputs, run_graph
from interp.metrics import mean_logit_diff
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def setup():
    m = tiny_model("llama", n_layers=2, n_heads=4, n_kv_heads=2, dtype=torch.float64, seed=3)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(2, 60, (3, 10), generator=g)
    corrupt = torch.randint(2, 60, (3, 10), generator=g)
    answer, wrong = torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
    return m, clean, corrupt, (lambda logits: mean_logit_diff(logits, answer, wrong))


def _edge_derivative(m, clean, corrupt_outs, metric, u, c):
    g = Graph.of(m)
    alpha = torch.zeros((), dtype=torch.float64, requires_grad=True)
    onehot = torch.zeros(g.n_nodes, g.n_inputs, dtype=torch.float64)
    onehot[u, c] = 1.0
    value = metric(run_graph(m, clean, corrupt=corrupt_outs, removed=alpha * onehot).logits)
    (d,) = torch.autograd.grad(value, alpha)
    return float(d)


def test_eap_equals_per_edge_gradients(setup):
    m, clean, corrupt, metric = setup
    g = Graph.of(m)
    scores = eap_scores(m, clean, corrupt, metric)
    outs = corrupt_outputs(m, corrupt)
    assert (scores[~g.valid] == 0).all()
    # one separate gradient per edge, for an edge of every kind: q of each query head, k/v of each KV head
    # (GQA: 4 heads share 2 KV heads), MLP and logits inputs, from input / heads / MLPs of both layers
    picks = [("input", "L0H2", "q"), ("input", "L0KV1", "k"), ("input", "L0KV0", "v"), ("L0H1", "M0", ""),
             ("L0H3", "L1H0", "q"), ("L0H0", "L1H3", "q"), ("M0", "L1KV0", "k"), ("L0H2", "L1KV1", "k"),
             ("input", "L1KV1", "v"), ("L0H3", "L1KV0", "v"), ("L1H2", "M1", ""), ("M0", "M1", ""),
             ("L1H1", "logits", ""), ("M1", "logits", ""), ("input", "logits", ""), ("L0H0", "logits", "")]
    for e in picks:
        u, c = g.edge_index(*e)
        ref = _edge_derivative(m, clean, outs, metric, u, c)
        assert scores[u, c].item() == pytest.approx(ref, rel=1e-6, abs=1e-9), e
    # and every edge at once: the gradient w.r.t. the whole patch mask at 0
    mask = torch.zeros(g.n_nodes, g.n_inputs, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(metric(run_graph(m, clean, corrupt=outs, removed=mask).logits), mask)
    torch.testing.assert_close(scores, grad * g.valid, rtol=1e-6, atol=1e-9)
    assert scores.abs().max() > 1e-3  # not trivially zero


def test_eap_ig_one_step_is_eap(setup):
    m, clean, corrupt, metric = setup
    torch.testing.assert_close(eap_ig_scores(m, clean, corrupt, metric, steps=1),
                               eap_scores(m, clean, corrupt, metric), rtol=1e-9, atol=1e-12)


def test_eap_ig_completeness(setup):
    """Σ_v score(input → v) = (e_corrupt − e_clean) · mean_k ∇_e M(e(α_k)), a Riemann sum of
    ∫ dM/dα = M(clean) − M(corrupt) (negated): it must converge to M(corrupt) − M(clean) as m grows."""
    m, clean, corrupt, metric = setup
    with torch.no_grad():
        target = float(metric(run_graph(m, corrupt).logits) - metric(run_graph(m, clean).logits))
    errs = [abs(eap_ig_scores(m, clean, corrupt, metric, steps=k)[0].sum().item() - target) for k in (2, 16)]
    assert errs[1] < errs[0] / 4  # right Riemann sum: error ~ 1/m
    assert errs[1] < 0.2 * abs(target)


def test_errors(setup):
    m, clean, corrupt, metric = setup
    with pytest.raises(ValueError, match="same"):
        eap_scores(m, clean, corrupt[:, :5], metric)
    with pytest.raises(ValueError, match="steps"):
        eap_ig_scores(m, clean, corrupt, metric, steps=0)
    with pytest.raises(TypeError, match="scalar"):
        eap_scores(m, clean, corrupt, lambda logits: logits[:, -1, :3])
