"""On the default model, statistics captured in the forward equal those computed from TransformerLens's
``hook_pattern`` (the bridge runs eager attention and exposes the full pattern) at a short length."""

import pytest
import torch

import interp

pytestmark = pytest.mark.slow


def test_stats_equal_tl_hook_pattern(default_model):
    m = default_model
    text = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again."
    ids = m.to_tokens(text)
    st = interp.attention_stats(m, ids, stats=["entropy", "mass_first", "col_alpha", "argmax", "induction",
                                                "prev_token"], sink_k=1)
    with torch.no_grad():
        _, cache = m.tl.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
    n = ids.shape[1]
    prev = torch.cat([torch.tensor([-1]), ids[0, :-1]])
    ind = (prev[None, :] == ids[0][:, None]) & torch.ones(n, n, dtype=torch.bool).tril()
    for layer in range(m.shape.n_layers):
        P = cache[f"blocks.{layer}.attn.hook_pattern"][0].double()  # [head, query_pos, key_pos]
        ent = -(P * torch.log(P.clamp_min(1e-300))).sum(-1)
        torch.testing.assert_close(st["entropy"][layer, 0].double(), ent, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(st["mass_first"][layer, 0].double(), P[..., 0], atol=1e-5, rtol=1e-4)
        alpha = P.sum(-2) / torch.arange(n, 0, -1, dtype=torch.float64)
        torch.testing.assert_close(st["col_alpha"][layer, 0].double(), alpha, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(st["induction"][layer, 0].double(), (P * ind).sum(-1), atol=1e-5, rtol=1e-4)
        diag = torch.diagonal(P, offset=-1, dim1=-2, dim2=-1)
        torch.testing.assert_close(st["prev_token"][layer, 0, :, 1:].double(), diag, atol=1e-5, rtol=1e-4)
        # argmax agrees wherever the top two probabilities are not (numerically) tied
        top2 = P.topk(2, dim=-1).values
        clear = (top2[..., 0] - top2[..., 1]) > 1e-5
        assert torch.equal(st["argmax"][layer, 0][clear], P.argmax(-1)[clear])
    assert float(st["mass_first"][-5:].mean()) > 0.3  # the model's well-known sinks are visible
