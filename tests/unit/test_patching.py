"""patch_sweep against a naive loop (one ``model.intervene(Patch(...))`` forward per site) and metrics against
float64 computations by hand, on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch

from interp.interventions import Patch
from interp.metrics import answer_prob, kl_to_clean, logit_diff, next_token_loss, next_token_loss_per_token
from interp.patching import patch_sweep
from interp.sites import Site
from interp.testing import tiny_model


def _ids(batch=2, n=7, seed=0, vocab=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, n), generator=g)


def _metric(lg):
    return logit_diff(lg, [5, 9][: lg.shape[0]] if lg.shape[0] <= 2 else 5, 7)


def naive_sweep(model, clean, corrupt, comp, positions, metric):
    """One patched forward per (layer, head, pos) through model.intervene(Patch(...))."""
    from interp.hooks import run_with_cache

    s = model.shape
    per_head = comp in ("q", "k", "v", "z", "pattern")
    n_h = s.n_kv_heads if comp in ("k", "v") else s.n_heads
    n_pos = clean.shape[1]
    out = torch.zeros([s.n_layers] + ([n_h] if per_head else []) + ([n_pos] if positions == "each" else []))
    for L in range(s.n_layers):
        _, cache = run_with_cache(model, clean, [Site(L, comp, h) for h in (range(n_h) if per_head else [None])])
        for h in range(n_h) if per_head else [None]:
            site = Site(L, comp, h)
            val = cache[site]
            pos_dim = 1
            for p in range(n_pos) if positions == "each" else [None]:
                v = val if p is None else val.narrow(pos_dim, p, 1)
                with model.intervene(Patch(site, v, pos=p)):
                    m = metric(model.logits(corrupt)).mean()
                idx = (L,) + ((h,) if per_head else ()) + ((p,) if p is not None else ())
                out[idx] = m
    return out


CASES = [("llama", "z", "all"), ("llama", "z", "each"), ("llama", "resid_pre", "each"), ("llama", "pattern", "each"),
         ("llama", "v", "all"), ("llama", "q", "all"), ("llama", "mlp_out", "all"), ("llama", "attn_out", "each"),
         ("qwen2", "z", "all"), ("qwen2", "resid_pre", "each"), ("gemma3", "z", "all"),
         ("gemma3", "resid_pre", "each"), ("gemma3", "k", "all")]


@pytest.mark.parametrize("family,comp,positions", CASES)
def test_batched_sweep_equals_naive_loop(family, comp, positions):
    model = tiny_model(family, n_layers=3, seed=1, sliding_window=3)
    clean, corrupt = _ids(seed=1, n=5), _ids(seed=2, n=5)
    ref = naive_sweep(model, clean, corrupt, comp, positions, _metric)
    for kw in (dict(batch_size=3, reuse_prefix=True), dict(reuse_prefix=False)):
        res = patch_sweep(model, clean, corrupt, comp, _metric, positions, **kw)
        assert res.values.shape == ref.shape
        torch.testing.assert_close(res.values, ref, atol=2e-6, rtol=1e-5)
    # the sweep must actually move the metric, well above the tolerance (else the comparison proves nothing)
    assert (ref - res.corrupt_value).abs().max() > 1e-4


SHARED = [("llama", "z", "all"), ("llama", "z", "each"), ("llama", "pattern", "each"), ("llama", "k", "each"),
          ("llama", "resid_pre", "each"), ("llama", "mlp_out", "all"), ("qwen2", "v", "all"),
          ("gemma3", "z", "all"), ("gemma3", "q", "each"), ("gemma3", "resid_mid", "each")]


@pytest.mark.parametrize("family,comp,positions", SHARED)
def test_shared_prefix_kv_cache_equals_naive_loop(family, comp, positions):
    """Clean and corrupt agree on the first 3 of 6 tokens (as IOI pairs do): the sweep then runs only the last
    positions on the corrupt prefix's KV cache and skips the no-op patches before them; the naive loop runs
    every patch on the full prompt. (gemma3: sliding window 3 < prompt, so the cached keys must be masked.)"""
    model = tiny_model(family, n_layers=3, seed=1, sliding_window=3)
    clean = _ids(seed=1, n=6)
    corrupt = torch.cat([clean[:, :3], _ids(seed=2, n=3)], 1)
    corrupt[1, 3] = clean[1, 3]  # row 1 differs later than row 0: the prefix is the batch's common part
    ref = naive_sweep(model, clean, corrupt, comp, positions, _metric)
    res = patch_sweep(model, clean, corrupt, comp, _metric, positions, batch_size=4)
    torch.testing.assert_close(res.values, ref, atol=2e-6, rtol=1e-5)
    assert (ref - res.corrupt_value).abs().max() > 1e-4
    if positions == "each":  # positions before the first difference change nothing
        assert (ref[..., :3] - res.corrupt_value).abs().max() < 1e-5


@pytest.mark.parametrize("which", ["loss_all_positions", "logit_diff_pos4", "last_position"])
def test_shared_prefix_metric_positions(which):
    """The patched runs compute the last position's logits only when the metric provably reads nothing else
    (NaN probe); metrics reading earlier positions (every one, or position 4 of 6) get them all."""
    model = tiny_model("llama", n_layers=3, seed=1)
    clean = _ids(seed=1, n=6)
    corrupt = torch.cat([clean[:, :2], _ids(seed=2, n=4)], 1)
    metric = {"loss_all_positions": lambda lg: next_token_loss(lg, corrupt),
              "logit_diff_pos4": lambda lg: logit_diff(lg, 5, 7, pos=4),
              "last_position": lambda lg: answer_prob(lg, 5)}[which]
    ref = naive_sweep(model, clean, corrupt, "z", "each", metric)
    res = patch_sweep(model, clean, corrupt, "z", metric, "each")
    torch.testing.assert_close(res.values, ref, atol=2e-6, rtol=1e-5)
    assert (ref - res.corrupt_value).abs().max() > 1e-4


def test_identical_inputs_give_the_corrupt_value(tiny_llama):
    ids = _ids(batch=1)
    res = patch_sweep(tiny_llama, ids, ids, "z", _metric, "each")
    assert torch.all(res.values == res.corrupt_value) and res.clean_value == res.corrupt_value


def test_result_layout_and_frame(tiny_llama):
    clean, corrupt = _ids(batch=1), _ids(batch=1, seed=3)
    res = patch_sweep(tiny_llama, clean, corrupt, "z", _metric, "each", layers=[1], heads=[0, 2])
    assert res.dims == ("layer", "head", "pos") and res.values.shape == (1, 2, 7)
    df = res.to_frame()
    assert list(df.columns) == ["layer", "head", "pos", "value"] and len(df) == 14
    row = df[(df["head"] == 2) & (df["pos"] == 4)].iloc[0]
    assert row.layer == 1 and math.isclose(row.value, float(res.values[0, 1, 4]), rel_tol=1e-6)
    assert res.sites[5] == (Site(1, "z", 0), 5)
    # patching every layer's resid_pre at layer 0 with clean at all positions restores the clean metric
    full = patch_sweep(tiny_llama, clean, corrupt, "resid_pre", _metric, "all", layers=[0])
    assert math.isclose(float(full.values[0]), full.clean_value, rel_tol=1e-4, abs_tol=1e-4)


def test_sweep_errors(tiny_llama):
    a, b = _ids(n=7), _ids(n=6)
    with pytest.raises(ValueError, match=r"\(2, 7\).*\(2, 6\)"):
        patch_sweep(tiny_llama, a, b, "z", _metric)
    with pytest.raises(ValueError, match="head_out is read-only"):
        patch_sweep(tiny_llama, a, a, "head_out", _metric)
    with pytest.raises(ValueError, match="head 9 out of range"):
        patch_sweep(tiny_llama, a, a, "z", _metric, heads=[9])
    with pytest.raises(ValueError, match="KV head 2 out of range"):
        patch_sweep(tiny_llama, a, a, "v", _metric, heads=[2])
    with pytest.raises(ValueError, match="positions"):
        patch_sweep(tiny_llama, a, a, "z", _metric, positions="some")
    with pytest.raises(TypeError, match="metric"):
        patch_sweep(tiny_llama, a, a, "z", None)


# --- metrics against float64 by hand -------------------------------------------------------------------------
def _logits(seed=0, shape=(3, 4, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_logit_diff_and_answer_prob():
    lg = _logits()
    d = logit_diff(lg, [1, 2, 3], [4, 5, 6], pos=-1)
    for b in range(3):
        assert math.isclose(float(d[b]), float(lg[b, 3, 1 + b] - lg[b, 3, 4 + b]), abs_tol=1e-6)
    d2 = logit_diff(lg, 2, 7, pos=1)
    torch.testing.assert_close(d2, lg[:, 1, 2] - lg[:, 1, 7])
    p = answer_prob(lg, [0, 1, 2])
    x = lg.double()[:, -1]
    ref = torch.exp(x[torch.arange(3), torch.tensor([0, 1, 2])]) / torch.exp(x).sum(-1)
    torch.testing.assert_close(p.double(), ref, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="answer_ids"):
        logit_diff(lg, [1, 2], 3)


def test_kl_and_loss():
    lg, cl = _logits(1), _logits(2)
    kl = kl_to_clean(lg, cl)
    for b in range(3):
        pc = torch.softmax(cl[b, -1].double(), -1)
        p = torch.softmax(lg[b, -1].double(), -1)
        assert math.isclose(float(kl[b]), float((pc * (pc / p).log()).sum()), rel_tol=1e-5)
    assert torch.all(kl_to_clean(cl, cl).abs() < 1e-6)
    ids = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(0))
    per = next_token_loss_per_token(lg, ids)
    for b in range(3):
        for t in range(3):
            ref = -torch.log_softmax(lg[b, t].double(), -1)[ids[b, t + 1]]
            assert math.isclose(float(per[b, t]), float(ref), rel_tol=1e-5)
    torch.testing.assert_close(next_token_loss(lg, ids), per.mean(1))
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]])
    # the mask drops predictions whose *target* is padding
    torch.testing.assert_close(next_token_loss(lg, ids, mask=mask)[2], per[2, 1:].mean())
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(next_token_loss(lg, ids, mask=mask)[1], per[1, 0])
    torch.testing.assert_close(next_token_loss(lg, ids, mask=mask)[0], per[0, :2].mean())
