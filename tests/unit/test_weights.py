"""interp.weights: each per-head matrix reproduces the HF module's own projection on random inputs."""

from __future__ import annotations

import pytest
import torch

from interp.testing import tiny_model
from interp.weights import layer_weights, w_e, w_o, w_u


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_projections_match_modules(family):
    m = tiny_model(family, n_layers=2)
    s = m.shape
    x = torch.randn(5, s.d_model, dtype=torch.float64)
    for layer in range(s.n_layers):
        attn = m.arch.attn(layer).double()
        lw = layer_weights(m, layer, fold_norm=False)
        for proj, w, n in ((attn.q_proj, lw.w_q, s.n_heads), (attn.k_proj, lw.w_k, s.n_kv_heads),
                           (attn.v_proj, lw.w_v, s.n_kv_heads)):
            ref = torch.nn.functional.linear(x, proj.weight).view(5, n, s.d_head)  # bias excluded by definition
            assert torch.allclose(torch.einsum("tm,hmd->thd", x, w), ref, atol=1e-10)
        z = torch.randn(5, s.n_heads, s.d_head, dtype=torch.float64)
        out = attn.o_proj(z.reshape(5, -1))
        assert torch.allclose(torch.einsum("thd,hdm->tm", z, lw.w_o), out, atol=1e-10)
        assert torch.equal(w_o(m, layer), lw.w_o)
        m.hf.float()


def test_fold_norm_equals_norm_then_projection():
    m = tiny_model("llama", n_layers=1)
    norm = m.arch.layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.copy_(torch.rand_like(norm.weight) + 0.5)
        m.arch.final_norm.weight.copy_(torch.rand_like(m.arch.final_norm.weight) + 0.5)
    x = torch.randn(3, m.shape.d_model, dtype=torch.float64)
    xhat = x / x.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).sqrt()  # the 1/rms part, not folded
    raw, folded = layer_weights(m, 0, fold_norm=False), layer_weights(m, 0, fold_norm=True)
    normed = norm.double()(x)
    assert torch.allclose(torch.einsum("tm,hmd->thd", normed, raw.w_q), torch.einsum("tm,hmd->thd", xhat, folded.w_q))
    fnorm = m.arch.final_norm.double()
    assert torch.allclose(fnorm(x) @ w_u(m, fold_norm=False),
                          (x / x.pow(2).mean(-1, keepdim=True).add(fnorm.variance_epsilon).sqrt()) @ w_u(m))
    assert torch.equal(w_e(m), m.arch.embed.weight.double())


def test_bad_layer_is_one_line():
    m = tiny_model("llama", n_layers=2)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        layer_weights(m, 5)
