"""Sahara (Zhou et al. 2025): principal angles vs hand-built subspaces; greedy selection vs a brute-force
reference (q_proj weight surgery, one unpadded prompt at a time, float64 numpy SVD)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp.analyses._safety_data import PAPER_TEMPLATE
from interp.analyses.sahara import principal_angles, sahara, subspace_angle
from interp.testing import tiny_model

PROMPTS = ["how to bake bread", "write a poem about rain", "explain how magnets work in detail", "list three colours",
           "teach me chess"]




def basis(n, cols):
    """Orthonormal columns in R^n from a list of coefficient vectors (Gram-Schmidt not needed: given orthonormal)."""
    return np.stack(cols, axis=1)


def with_left_vectors(u, sing, d=6, seed=0):
    """A [n, d] matrix whose left singular vectors are the columns of ``u`` with singular values ``sing``."""
    rng = np.random.default_rng(seed)
    v, _ = np.linalg.qr(rng.normal(size=(d, u.shape[1])))
    return torch.tensor(u @ np.diag(sing) @ v.T)


def test_principal_angle_rank1_known_angle_and_sign_invariance():
    theta = 30.0
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    e = np.eye(4)
    a = with_left_vectors(basis(4, [e[0], e[3]]), [5.0, 1.0])
    b = with_left_vectors(basis(4, [c * e[0] + s * e[1], e[2]]), [4.0, 0.5], seed=1)
    assert subspace_angle(a, b, r=1) == pytest.approx(theta, abs=1e-9)
    assert subspace_angle(a, -b, r=1) == pytest.approx(theta, abs=1e-9)
    assert subspace_angle(a, a, r=1) == pytest.approx(0.0, abs=1e-6)


def test_principal_angles_two_dimensional_subspaces():
    # span{e0, e1} vs span{e0, cos t e1 + sin t e2}: principal angles (0, t)
    theta = 50.0
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    e = np.eye(5)
    a = with_left_vectors(basis(5, [e[0], e[1]]), [3.0, 2.0])
    b = with_left_vectors(basis(5, [c * e[1] + s * e[2], e[0]]), [3.0, 2.0], seed=2)
    got = principal_angles(a, b, r=2).numpy()
    np.testing.assert_allclose(got, [0.0, theta], atol=1e-6)
    assert subspace_angle(a, b, r=2) == pytest.approx(theta, abs=1e-6)
    # orthogonal rank-1 subspaces: 90 degrees
    a1 = with_left_vectors(basis(5, [e[4]]), [2.0])
    b1 = with_left_vectors(basis(5, [e[3]]), [2.0], seed=3)
    assert subspace_angle(a1, b1) == pytest.approx(90.0, abs=1e-6)


def test_principal_angle_errors():
    a = torch.randn(4, 6)
    with pytest.raises(ValueError, match="same shape"):
        principal_angles(a, torch.randn(3, 6))
    with pytest.raises(ValueError, match="r must be"):
        principal_angles(a, a, r=5)


def sharp_tiny():
    m = tiny_model("qwen2", n_layers=2, n_heads=2, n_kv_heads=1, d_head=8, seed=4)
    g = torch.Generator().manual_seed(5)
    for p in m.hf.parameters():
        if p.ndim == 2:
            p.data.normal_(0, 0.3, generator=g)
    return m


def reference_hidden(model, heads, eps=1e-5):
    """[prompt, d_model] final (post-norm) hidden state at the last token, heads ablated by q_proj surgery."""
    d = model.shape.d_head
    saved = []
    for layer, head in heads:
        q = model.arch.attn(layer).q_proj
        saved.append((q, q.weight.data.clone(), q.bias.data.clone()))
        q.weight.data[head * d:(head + 1) * d] *= eps
        q.bias.data[head * d:(head + 1) * d] *= eps
    try:
        out = []
        with torch.no_grad():
            for p in PROMPTS:
                ids = torch.tensor([model.tokenizer.encode(PAPER_TEMPLATE.format(q=p))])
                out.append(model.hf(ids, output_hidden_states=True).hidden_states[-1][0, -1].double().numpy())
    finally:
        for q, w, b in saved:
            q.weight.data.copy_(w)
            q.bias.data.copy_(b)
    return np.stack(out)


def np_angle(a, b):
    ua = np.linalg.svd(a, full_matrices=False)[0][:, :1]
    ub = np.linalg.svd(b, full_matrices=False)[0][:, :1]
    return math.degrees(math.acos(min(1.0, np.linalg.svd(ua.T @ ub, compute_uv=False)[0])))


def test_greedy_selection_matches_brute_force_reference():
    m = sharp_tiny()
    res = sahara(m, PROMPTS, set_size=3, memory_budget_mb=0.02)  # tiny budget: many chunks of (set, prompt) rows
    clean = reference_hidden(m, [])
    heads = [(layer, h) for layer in range(2) for h in range(2)]
    chosen, angles = [], []
    for _ in range(3):
        scores = {c: np_angle(clean, reference_hidden(m, chosen + [c])) for c in heads if c not in chosen}
        ranked = sorted(scores.values(), reverse=True)
        assert len(ranked) == 1 or ranked[0] - ranked[1] > 1e-3, "tie: the test would be ambiguous"
        best = max(scores, key=scores.get)
        chosen.append(best)
        angles.append(scores[best])
    assert max(angles) > 1.0, "degenerate model: ablations do not move the subspace"
    assert res.heads == chosen
    np.testing.assert_allclose(res.angles, angles, atol=1e-3)
    df = res.scores(m.name)
    ranks = df[df["score"] == "sahara_rank"].sort_values("value")
    assert list(zip(ranks["layer"], ranks["head"])) == chosen
    assert len(df[df["score"] == "sahara_single_angle"]) == 4


def test_sahara_input_errors(tiny_llama):
    with pytest.raises(ValueError, match="exceeds"):
        sahara(tiny_llama, PROMPTS, set_size=2, candidates=[(0, 1)])
    with pytest.raises(ValueError, match="needs at least r prompts"):
        sahara(tiny_llama, PROMPTS[:2], r=3)
    with pytest.raises(ValueError, match="chat template"):
        sahara(tiny_llama, PROMPTS, template="chat")
    with pytest.raises(ValueError, match="set_size"):
        sahara(tiny_llama, PROMPTS, set_size=0)
