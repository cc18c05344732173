"""The embedded default model: loading, shape summary, and interp's sites equal TransformerLens's and nnsight's."""

import pytest
import torch

from interp.hooks import run_with_cache
from interp.sites import Site

pytestmark = pytest.mark.slow


def test_default_model_shape(default_model):
    s = default_model.shape
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_model, s.d_head, s.n_ctx) == (30, 9, 3, 576, 64, 8192)
    assert s.positional == "rope" and s.d_vocab == 49152
    assert default_model.weights_hash.startswith("sha256:b179c952")
    assert default_model.tokenizer.chat_template


def test_sites_equal_transformer_lens_hooks(default_model):
    m = default_model
    ids = m.to_tokens("When Mary and John went to the store, John gave a drink to")
    layers = [0, 7, 29]
    comps = ["resid_pre", "q", "k", "v", "pattern", "z", "attn_out", "resid_mid", "mlp_out", "resid_post"]
    sites = [Site(layer, c) for layer in layers for c in comps]
    logits, ours = run_with_cache(m, ids, sites)
    names = {s.tl_name() for s in sites}
    with torch.no_grad():
        tl_logits, cache = m.tl.run_with_cache(ids, names_filter=lambda n: n in names)
    torch.testing.assert_close(logits, tl_logits, atol=1e-4, rtol=1e-4)
    for s in sites:
        theirs = cache[s.tl_name()]
        # SDPA vs eager rounding grows with the residual norm (~1e2 in late layers): tolerance relative to scale
        scale = float(theirs.abs().max())
        torch.testing.assert_close(ours[s], theirs.reshape(ours[s].shape), atol=1e-4 + 2e-6 * scale, rtol=1e-4,
                                   msg=lambda msg, s=s: f"{s}: {msg}")


def test_views_share_weights_and_nnsight_agrees(default_model):
    m = default_model
    w = m.arch.attn(3).q_proj.weight
    assert any(p.data_ptr() == w.data_ptr() for p in m.tl.parameters())
    ids = m.to_tokens("The capital of France is")
    _, ours = run_with_cache(m, ids, [Site(3, "attn_out"), Site(5, "resid_post")])
    with m.nn.trace(ids):
        attn = m.nn.model.layers[3].self_attn.output[0].save()
        resid = m.nn.model.layers[5].output.save()
    resid = resid[0] if isinstance(resid, tuple) else resid
    torch.testing.assert_close(ours[Site(3, "attn_out")], attn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[Site(5, "resid_post")], resid, atol=1e-5, rtol=1e-5)


def test_hooks_still_work_after_the_bridge_wrapped_the_model(default_model):
    """Booting the TL bridge wraps HF modules in place; interp must still reach its own hooks afterwards."""
    m = default_model
    _ = m.tl  # make sure the bridge exists
    ids = m.to_tokens("The capital of France is")
    logits, c = run_with_cache(m, ids, [Site(3, "z"), Site(3, "q"), Site(4, "resid_pre")])
    assert set(c) == {Site(3, "z"), Site(3, "q"), Site(4, "resid_pre")}
    with torch.no_grad():
        with m.hooks({Site(3, "z", 2): lambda z, s: torch.zeros_like(z)}):
            _, c2 = run_with_cache(m, ids, [Site(3, "z")])
        tl_logits = m.tl(ids)
    assert torch.all(c2[Site(3, "z")][:, :, 2] == 0)
    torch.testing.assert_close(logits, tl_logits, atol=1e-4, rtol=1e-4)  # and TL itself still works
