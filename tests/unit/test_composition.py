"""Composition scores vs an explicit float64 loop on ungrouped d_model × d_model circuits, TransformerLens's
``composition_scores``, the copying score vs the full vocab × vocab circuit, planted heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp.analyses import composition as C
from interp.scores import ScoreTable
from interp.testing import tiny_model


def _dense(m, layer):
    """Per query head [d_model, d_model] circuits from the raw HF weights, KV heads repeated by hand."""
    s, attn = m.shape, m.arch.attn(layer)
    g = m.arch.layers[layer].input_layernorm.weight.detach().double()
    wq = attn.q_proj.weight.detach().double().view(s.n_heads, s.d_head, s.d_model)
    wk = attn.k_proj.weight.detach().double().view(s.n_kv_heads, s.d_head, s.d_model)
    wv = attn.v_proj.weight.detach().double().view(s.n_kv_heads, s.d_head, s.d_model)
    wo = attn.o_proj.weight.detach().double().view(s.d_model, s.n_heads, s.d_head)
    ov, qk = [], []
    for h in range(s.n_heads):
        kv = h * s.n_kv_heads // s.n_heads
        ov.append(torch.diag(g) @ wv[kv].T @ wo[:, h].T)  # x ↦ (γ⊙x) W_V W_O
        qk.append(torch.diag(g) @ wq[h].T @ wk[kv] @ torch.diag(g))
    return ov, qk


def _comp(x, y):
    return float(torch.linalg.matrix_norm(x @ y) / (torch.linalg.matrix_norm(x) * torch.linalg.matrix_norm(y)))


@pytest.fixture(scope="module")
def model():
    m = tiny_model("llama", n_layers=3, n_heads=4, n_kv_heads=2)
    with torch.no_grad():
        for layer in m.arch.layers:  # non-trivial norm weights so that folding is tested
            layer.input_layernorm.weight.copy_(torch.rand_like(layer.input_layernorm.weight) + 0.5)
    return m


def test_pairs_match_explicit_loop(model):
    pairs = C.composition_pairs(model, n_random=8)
    base = pairs.attrs["baseline"]
    dense = [_dense(model, layer) for layer in range(model.shape.n_layers)]
    assert len(pairs) == 3 * 16  # layer pairs (0,1), (0,2), (1,2) × 4 × 4 heads
    for r in pairs.itertuples():
        ov_a = dense[r.src_layer][0][r.src_head]
        ov_b, qk_b = dense[r.dst_layer][0][r.dst_head], dense[r.dst_layer][1][r.dst_head]
        assert r.q == pytest.approx(_comp(ov_a, qk_b), rel=1e-9)
        assert r.k == pytest.approx(_comp(ov_a, qk_b.T), rel=1e-9)
        assert r.v == pytest.approx(_comp(ov_a, ov_b), rel=1e-9)
        assert r.q_adj == pytest.approx(r.q - base["q"], rel=1e-9)


def test_kv_level_scores_match_explicit(model):
    pairs = C.composition_pairs(model, n_random=8)
    s, base = model.shape, pairs.attrs["baseline"]
    attn = model.arch.attn(2)
    g = model.arch.layers[2].input_layernorm.weight.detach().double()
    wk = attn.k_proj.weight.detach().double().view(s.n_kv_heads, s.d_head, s.d_model)
    ov_a = _dense(model, 0)[0][3]
    for kv in range(s.n_kv_heads):
        ref = _comp(ov_a, torch.diag(g) @ wk[kv].T)
        row = pairs[(pairs.src_layer == 0) & (pairs.src_head == 3) & (pairs.dst_layer == 2) & (pairs.dst_kv_head == kv)]
        assert np.allclose(row["k_kv_adj"], ref - base["k_kv"], rtol=1e-9)


def test_matches_transformer_lens_composition_scores(model):
    from transformer_lens.FactoredMatrix import FactoredMatrix
    from transformer_lens.utilities import composition_scores

    from interp.weights import all_layer_weights

    lws = all_layer_weights(model)
    wv = torch.stack([lw.w_v[lw.kv_of()] for lw in lws])  # ungrouped, as TL requires
    wk = torch.stack([lw.w_k[lw.kv_of()] for lw in lws])
    wq, wo = torch.stack([lw.w_q for lw in lws]), torch.stack([lw.w_o for lw in lws])
    left, qk = FactoredMatrix(wv, wo), FactoredMatrix(wq, wk.transpose(-2, -1))
    tl = {"q": composition_scores(left, qk), "k": composition_scores(left, qk.T), "v": composition_scores(left, left)}
    pairs = C.composition_pairs(model, n_random=4)
    for kind in C.KINDS:
        got = tl[kind][pairs.src_layer, pairs.src_head, pairs.dst_layer, pairs.dst_head].numpy()
        assert np.allclose(pairs[kind], got, rtol=1e-8)


def test_random_baseline_is_mean_of_gaussian_scores():
    base = C.random_baseline(64, 8, n_random=16)
    # the factored R-form must agree with a direct Monte-Carlo over dense [64, 64] products of Gaussian factors
    g = torch.Generator().manual_seed(1)
    vals = []
    for _ in range(64):
        a = torch.randn(64, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 64, generator=g, dtype=torch.float64)
        b = torch.randn(64, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 64, generator=g, dtype=torch.float64)
        vals.append(_comp(a, b))
    assert base["q"] == pytest.approx(np.mean(vals), rel=0.05)
    assert base["v"] == pytest.approx(np.mean(vals), rel=0.05)


def test_copying_matches_full_vocab_circuit(model):
    from interp.weights import layer_weights, w_e, w_u

    cop = C.ov_copying(model)
    tok = C.qk_token_match(model)
    e, u = w_e(model), w_u(model)
    for layer in range(model.shape.n_layers):
        lw = layer_weights(model, layer)
        for h in range(model.shape.n_heads):
            kv = int(lw.kv_of()[h])
            lam = torch.linalg.eigvals(e @ lw.w_v[kv] @ lw.w_o[h] @ u)  # [d_vocab] complex
            assert float(cop[layer, h]) == pytest.approx(float(lam.real.sum() / lam.abs().sum()), abs=1e-8)
            lam = torch.linalg.eigvals(e @ lw.w_q[h] @ lw.w_k[kv].T @ e.T)
            assert float(tok[layer, h]) == pytest.approx(float(lam.real.sum() / lam.abs().sum()), abs=1e-8)


def test_planted_copying_head():
    from interp.weights import layer_weights, w_e, w_u

    m = tiny_model("llama", n_layers=1)
    s, lw = m.shape, layer_weights(m, 0)
    ue_wv = w_u(m) @ w_e(m) @ lw.w_v[0]  # [d_model, d_head] for head 0 (KV head 0)
    w_o = torch.linalg.pinv(ue_wv)  # [d_head, d_model]: W_O W_U W_E W_V = I
    with torch.no_grad():
        o = m.arch.attn(0).o_proj.weight.view(s.d_model, s.n_heads, s.d_head)
        o[:, 0] = w_o.T.float()
        o[:, 1] = -w_o.T.float()  # head 1 also reads KV head 0: anti-copying
    cop = C.ov_copying(m)
    assert float(cop[0, 0]) == pytest.approx(1.0, abs=1e-4)
    assert float(cop[0, 1]) == pytest.approx(-1.0, abs=1e-4)


def test_planted_rope_planes():
    m = tiny_model("llama", n_layers=1)
    s = m.shape
    theta = C.rope_theta(m)
    wavelengths = 2 * math.pi / theta ** (-2 * torch.arange(s.d_head // 2) / s.d_head)
    assert wavelengths[0] < 64 < wavelengths[-1]
    with torch.no_grad():
        q = m.arch.attn(0).q_proj.weight.view(s.n_heads, s.d_head, s.d_model)
        q[0, 1:s.d_head // 2] = 0  # head 0 keeps only plane 0 (the shortest wavelength)
        q[0, s.d_head // 2 + 1:] = 0
        q[1, : s.d_head // 2 - 1] = 0  # head 1 keeps only the last plane (the longest)
        q[1, s.d_head // 2: s.d_head - 1] = 0
    hf = C.qk_rope_high_freq(m, short_wavelength=64)
    assert float(hf[0, 0]) == pytest.approx(1.0)
    assert float(hf[0, 1]) == pytest.approx(0.0)


def test_run_table_levels(model):
    out = C.run(model, {"n_random": 4})
    sc = out["scores"]
    assert set(sc.loc[sc.score.str.startswith("baseline"), "level"]) == {"model"}
    kin = ScoreTable.matrix(sc, "k_comp_in", 3, 4)
    assert np.isnan(kin[0]).all()  # layer 0 has no earlier writer
    pairs = out["pairs"]
    want = pairs[pairs.dst_layer == 2].groupby("dst_head")["k_adj"].max().to_numpy()
    assert np.allclose(kin[2], want)


@pytest.mark.slow
def test_default_model_matches_transformer_lens_bridge(default_model):
    """TransformerLens's own weights (the bridge's W_Q/W_K/W_V/W_O; K/V ungrouped by hand, as TL's
    composition_scores requires) and TL's composition_scores, on layers 15-18 of the default model."""
    from transformer_lens.FactoredMatrix import FactoredMatrix
    from transformer_lens.utilities import composition_scores

    from interp.weights import layer_weights

    m, layers = default_model, [15, 16, 17, 18]
    b = m.tl
    wq, wk, wv, wo = (getattr(b, n)[layers].detach().double() for n in ("W_Q", "W_K", "W_V", "W_O"))
    g = m.shape.group_size
    wk, wv = wk.repeat_interleave(g, 1), wv.repeat_interleave(g, 1)
    left, qk = FactoredMatrix(wv, wo), FactoredMatrix(wq, wk.transpose(-2, -1))
    tl = {"q": composition_scores(left, qk), "k": composition_scores(left, qk.T), "v": composition_scores(left, left)}
    f = {la: C._Factors.of(lw) for la, lw in zip(layers, (layer_weights(m, la, fold_norm=False) for la in layers))}
    for i, la in enumerate(layers):
        for j, lb in enumerate(layers[i + 1:], start=i + 1):
            sc = C.pair_scores(f[la], f[lb])
            for kind in C.KINDS:
                assert torch.allclose(sc[kind], tl[kind][i, :, j, :], rtol=1e-9, atol=1e-12)
