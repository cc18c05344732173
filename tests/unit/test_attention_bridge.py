"""attention_stats inside a real forward equals the same statistics computed densely from the eager pattern."""

import pytest
import torch

import interp
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.testing import tiny_model


def _dense(pattern, ids, valid):
    """Independent float64 statistics from a [layer, batch, head, query, key] pattern."""
    P = pattern.double()
    n = P.shape[-1]
    ent = -(P * torch.log(P.clamp_min(1e-300))).sum(-1)
    allowed = (P > 0).sum(-1)
    tok = ids[:, None, :, None]  # [batch, 1, query, 1]
    dup = (ids[:, None, None, :] == tok) & torch.ones(n, n, dtype=torch.bool).tril(-1)
    prev = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], 1)
    ind = (prev[:, None, None, :] == tok) & torch.ones(n, n, dtype=torch.bool).tril()
    return {
        "entropy": ent, "mass_first": P[..., :1].sum(-1), "argmax": P.argmax(-1),
        "duplicate": (P * dup).sum(-1), "induction": (P * ind).sum(-1), "col_sum": P.sum(-2),
        "n_allowed": allowed,
    }


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_bridge_matches_dense_pattern(family):
    m = tiny_model(family, n_layers=2, sliding_window=6)
    torch.manual_seed(1)
    ids = torch.randint(2, 60, (2, 20))
    ids[:, 10:] = ids[:, :10]  # repeats so duplicate/induction are non-trivial
    st = interp.attention_stats(m, ids, stats=["entropy", "mass_first", "argmax", "duplicate", "induction",
                                                "col_sum"], sink_k=1)
    _, cache = run_with_cache(m, ids, [Site(layer, "pattern") for layer in range(2)])
    P = torch.stack([cache[Site(layer, "pattern")] for layer in range(2)])
    ref = _dense(P, ids, None)
    for name in ["entropy", "mass_first", "duplicate", "induction", "col_sum"]:
        torch.testing.assert_close(st[name].double(), ref[name], atol=2e-5, rtol=1e-4, msg=name)
    assert torch.equal(st["argmax"], ref["argmax"])
    # the window really is in force on gemma3's sliding layer 0: no key beyond 6 back gets mass
    if family == "gemma3":
        assert int(ref["n_allowed"][0].max()) == 6


def test_bridge_left_padding_matches_unpadded_runs():
    m = tiny_model("llama", n_layers=2)
    a, b = [0, 5, 9, 12, 5, 9, 12, 7], [0, 33, 21, 21]
    st = interp.attention_stats(m, [a, b], stats=["entropy", "mass_first", "col_alpha"], sink_k=1)
    for row, seq in enumerate([a, b]):
        one = interp.attention_stats(m, torch.tensor([seq]), stats=["entropy", "mass_first", "col_alpha"],
                                     sink_k=1)
        n = len(seq)
        for name in ["entropy", "mass_first", "col_alpha"]:
            torch.testing.assert_close(st[name][:, row, :, -n:], one[name][:, 0], atol=1e-5, rtol=1e-5)


def test_head_mean_and_frame():
    m = tiny_model("llama", n_layers=2)
    ids = torch.randint(2, 60, (1, 12))
    st = interp.attention_stats(m, ids, stats=["entropy"])
    hm = st.head_mean("entropy")
    assert hm.shape == (2, m.shape.n_heads)
    torch.testing.assert_close(hm[1, 2], st["entropy"][1, 0, 2].double().mean())
    df = st.to_frame()
    assert len(df) == 2 * m.shape.n_heads * 12
    assert set(df.columns) >= {"statistic", "layer", "head", "position", "value"}


def test_bridge_bad_input():
    m = tiny_model("llama", n_layers=2)
    with pytest.raises(ValueError, match="unknown statistic"):
        interp.attention_stats(m, torch.ones(1, 4, dtype=torch.long), stats=["nope"])
    with pytest.raises(ValueError, match="layer 7 out of range"):
        interp.attention_stats(m, torch.ones(1, 4, dtype=torch.long), stats=["lse"], layers=[7])
    with pytest.raises(ValueError, match="longer than"):
        interp.attention_stats(m, torch.ones(1, 300, dtype=torch.long), stats=["lse"])


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_fused_path_gives_the_forward_output_and_the_stats(family, monkeypatch):
    """On CPU without padding the fused path replaces SDPA: the model's logits must not change, the statistics
    must equal those of the SDPA + second-pass route, and the fused path must really have run."""
    from interp.kernels.attention_stats import fused_cpu

    if not fused_cpu.available():
        pytest.skip("no C compiler")
    m = tiny_model(family, n_layers=2, sliding_window=6)
    ids = torch.randint(2, 60, (1, 24), generator=torch.Generator().manual_seed(3))
    calls = []
    real = fused_cpu.fused_stats
    monkeypatch.setattr(fused_cpu, "fused_stats", lambda *a, **kw: calls.append(kw.get("v") is not None)
                        or real(*a, **kw))
    stats = ["entropy", "col_alpha", "argmax", "induction", "attn_distance"]
    cap = interp.attention.StatsCapture(stats, layers=[0, 1], token_ids=ids, key_padding_mask=None, impl="auto",
                                        memory_budget_mb=256, params={"distance_cap": 8})
    plain = m.logits(ids)
    with torch.no_grad(), m.hooks({}, capture=cap):
        fused_logits = m.hf(ids, use_cache=False).logits
    # output + statistics from one fused pass; gemma3's layer 0 is a sliding layer that HF hands an explicit mask,
    # so it takes the SDPA + second-pass route (the fused kernel without v)
    assert calls == ([True, True] if family == "llama" else [False, True])
    torch.testing.assert_close(fused_logits, plain, rtol=1e-4, atol=1e-4)
    two_pass = interp.attention_stats(m, ids, stats=stats, impl="chunked", distance_cap=8)
    for i, layer in enumerate([0, 1]):
        for name in stats:
            torch.testing.assert_close(cap.results[layer][name].double(), two_pass[name][i].double(),
                                       rtol=1e-5, atol=1e-5, msg=f"{name} L{layer}")
