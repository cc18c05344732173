"""Attention edits (ZeroTuning, ACT, VAR) against independent references: element-by-element float64 loops
over the paper formulas (hypothesis over shapes), the logit-bias form of ZeroTuning, and a dense float64
pattern rebuilt from cached post-RoPE q/k/v of tiny GQA / sliding-window models, then edited by hand."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp.attention_edits import (
    HiddenSinkCalibration,
    Redistribute,
    ScaleKeyAttention,
    calibrate_sinks,
    hidden_sink_keys,
    image_keys,
    redistribute,
    scale_keys,
    span_keys,
)
from interp.hooks import run_with_cache
from interp.interventions import Knockout, compose, load_interventions, save_interventions
from interp.sites import Site
from interp.testing import tiny_model


# --- hand references: one row at a time, python floats ------------------------------------------------------
def _row_scale(row, keys, g):
    d = (g - 1) * sum(row[j] for j in keys) + 1
    return [(g if j in keys else 1.0) * a / d for j, a in enumerate(row)]


def _row_act(row, sinks, beta):
    a_s = sum(row[j] for j in sinks)
    rest = sum(a for j, a in enumerate(row) if j not in sinks)
    if rest == 0:
        return list(row)
    return [beta * a if j in sinks else a + (1 - beta) * a_s * a / rest for j, a in enumerate(row)]


def _row_var(row, sinks, target, p):
    target = [t for t in target if t not in sinks]
    a_s, a_t = sum(row[j] for j in sinks), sum(row[j] for j in target)
    if a_t == 0:
        return list(row)
    return [(1 - p) * a if j in sinks else a + p * a_s * a / a_t if j in target else a for j, a in enumerate(row)]


def _alpha_sinks(pat, threshold, min_rows=1):
    """ACT's α by the definition: mean attention key j receives from the queries that see it (j ≥ 1)."""
    n = len(pat)
    out = set()
    for j in range(1, n):
        col = [pat[i][j] for i in range(j, n)]
        if len(col) >= min_rows and sum(col) / len(col) > threshold:
            out.add(j)
    return out


def _apply(pat, fn):  # pat [batch, q, k] float64 → same, fn(row, b) per row
    return torch.tensor([[fn(pat[b, i].tolist(), b) for i in range(pat.shape[1])] for b in range(pat.shape[0])],
                        dtype=torch.float64)


def _causal_pattern(b, n, seed, window=None, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, n, generator=g, dtype=torch.float64) * scale
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    ok = (j <= i) if window is None else (j <= i) & (i - j < window)
    return torch.softmax(logits.masked_fill(~ok, -math.inf), -1)


def _mask(b, n, seed, frac=0.3):
    m = torch.rand(b, n, generator=torch.Generator().manual_seed(seed + 7)) < frac
    m[:, 0] |= ~m.any(-1)
    return m


shapes = st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(0, 10_000))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes, st.floats(0.05, 8.0))
def test_scale_keys_matches_formula_and_logit_bias(shape, gamma):
    b, n, seed = shape
    pat, keys = _causal_pattern(b, n, seed), _mask(b, n, seed)
    got = scale_keys(pat, keys, gamma)
    ref = _apply(pat, lambda row, bb: _row_scale(row, set(keys[bb].nonzero().flatten().tolist()), gamma))
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    # the same as adding log γ to the logits of the key set before the softmax
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, n, generator=g, dtype=torch.float64) * 3.0
    logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    biased = torch.softmax(logits + math.log(gamma) * keys[:, None, :].double(), -1)
    torch.testing.assert_close(got, biased, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(b, n, dtype=torch.float64), atol=1e-12, rtol=0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes, st.floats(0.01, 1.0), st.floats(0.02, 0.5))
def test_act_matches_hand_formula(shape, beta, threshold):
    b, n, seed = shape
    pat = _causal_pattern(b, n, seed)
    sinks = hidden_sink_keys(pat, threshold=threshold)
    for bb in range(b):
        assert set(sinks[bb].nonzero().flatten().tolist()) == _alpha_sinks(pat[bb].tolist(), threshold)
    got = calibrate_sinks(pat, sinks, beta)
    ref = _apply(pat, lambda row, bb: _row_act(row, set(sinks[bb].nonzero().flatten().tolist()), beta))
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.sum(-1), pat.sum(-1), atol=1e-12, rtol=0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes, st.floats(0.0, 1.0))
def test_var_matches_hand_formula(shape, p):
    b, n, seed = shape
    pat, sinks, target = _causal_pattern(b, n, seed), _mask(b, n, seed, 0.2), _mask(b, n, seed + 1, 0.5)
    got = redistribute(pat, sinks, target, p)
    idx = lambda m, bb: set(m[bb].nonzero().flatten().tolist())
    ref = _apply(pat, lambda row, bb: _row_var(row, idx(sinks, bb), idx(target, bb), p))
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_act_is_not_a_logit_bias():
    """ACT's redistribution differs from scaling the sinks' logits by log β (renormalised ZeroTuning-style)."""
    row = torch.tensor([[[0.5, 0.3, 0.2]]], dtype=torch.float64)
    sinks = torch.tensor([[False, True, False]])
    act = calibrate_sinks(row, sinks, 0.4)
    bias = scale_keys(row, sinks, 0.4)
    # by hand: a'_1 = 0.4·0.3 = 0.12; removed 0.18 split 5:2 over keys 0 and 2
    torch.testing.assert_close(act, torch.tensor([[[0.5 + 0.18 * 5 / 7, 0.12, 0.2 + 0.18 * 2 / 7]]],
                                                 dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(bias, torch.tensor([[[0.5 / 0.82, 0.12 / 0.82, 0.2 / 0.82]]], dtype=torch.float64),
                               atol=1e-15, rtol=0)
    assert (act - bias).abs().max() > 0.02


# --- in the model: dense float64 reference from cached q/k/v ------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", n_layers=2, seed=3)


def _ids(batch=2, n=9, seed=0):
    return torch.randint(2, 64, (batch, n), generator=torch.Generator().manual_seed(seed))


def _dense(model, ids, layer, head, window=None):
    """(pattern [batch, q, k], v [batch, k, d_head]) in float64 from the cached post-RoPE q, k and v."""
    kv = model.shape.kv_head_of(head)
    _, c = run_with_cache(model, ids, [Site(layer, "q", head), Site(layer, "k", kv), Site(layer, "v", kv)])
    q, k, v = (c[Site(layer, x, i)].double() for x, i in (("q", head), ("k", kv), ("v", kv)))
    scale = model.arch.attn(layer).scaling
    s = q @ k.transpose(-1, -2) * scale
    n = ids.shape[1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    ok = (j <= i) if window is None else (j <= i) & (i - j < window)
    return torch.softmax(s.masked_fill(~ok, -math.inf), -1), v


def _check_edit(model, ids, layer, item, heads, hand, window=None):
    with model.intervene(item):
        _, got = run_with_cache(model, ids, [Site(layer, "z", h) for h in heads])
    for h in heads:
        pat, v = _dense(model, ids, layer, h, window)
        ref = _apply(pat, lambda row, bb, pat=pat: hand(row, bb, pat[bb]))
        torch.testing.assert_close(got[Site(layer, "z", h)].double(), ref @ v, atol=2e-5, rtol=1e-4)


def test_zerotuning_in_model_matches_dense_reference(llama):
    ids = _ids()
    _check_edit(llama, ids, 1, ScaleKeyAttention(1, 2, gamma=3.0), [2], lambda r, b, p: _row_scale(r, {0}, 3.0))
    # a KV group and an explicit span (negative positions count from the end)
    item = ScaleKeyAttention(0, kv_head=1, gamma=0.3, keys=(2, 3, -1))
    _check_edit(llama, ids, 0, item, llama.shape.heads_of_kv(1), lambda r, b, p: _row_scale(r, {2, 3, 8}, 0.3))


def test_act_in_model_matches_dense_reference(llama):
    ids = _ids(n=12, seed=4)
    item = HiddenSinkCalibration(1, kv_head=0, beta=0.4, threshold=0.08)

    def hand(row, b, pat):
        return _row_act(row, _alpha_sinks(pat.tolist(), 0.08), 0.4)

    _check_edit(llama, ids, 1, item, llama.shape.heads_of_kv(0), hand)
    pat, _ = _dense(llama, ids, 1, 0)
    assert any(_alpha_sinks(pat[b].tolist(), 0.08) for b in range(2))  # the case is not vacuous


def test_var_in_model_matches_dense_reference_with_sliding_window():
    g = tiny_model("gemma3", n_layers=2, seed=0, sliding_window=4)
    assert 0 in g.shape.sliding_layers
    ids = _ids(n=10, seed=2)
    target = torch.zeros(10, dtype=torch.bool)
    target[4:8] = True
    item = Redistribute(0, 3, p=0.6, target=target)
    # sliding window: the first key a row sees is its window's start for late rows; "first" = key 0 (col sum)
    _check_edit(g, ids, 0, item, [3], lambda r, b, p: _row_var(r, {0}, {4, 5, 6, 7}, 0.6), window=4)


def test_identity_settings_leave_logits_unchanged(llama):
    ids = _ids()
    clean = llama.logits(ids)
    for item in (ScaleKeyAttention(1, 0, gamma=1.0), HiddenSinkCalibration(0, kv_head=1, beta=1.0),
                 Redistribute(1, 3, p=0.0, target=(3, 4))):
        with llama.intervene(item):
            torch.testing.assert_close(llama.logits(ids), clean, atol=1e-6, rtol=0)
    with llama.intervene(ScaleKeyAttention(1, 0, gamma=4.0)):
        assert (llama.logits(ids) - clean).abs().max() > 1e-4


def test_first_key_under_left_padding(llama):
    """With left padding, 'first' is the first real token: each padded row equals its unpadded run."""
    short, long_ = _ids(1, 5, seed=8), _ids(1, 8, seed=9)
    pad = torch.ones(1, 3, dtype=torch.long)
    ids = torch.cat([torch.cat([pad, short], 1), long_])
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0
    item = ScaleKeyAttention(1, kv_head=0, gamma=5.0)
    with llama.intervene(item):
        both = llama.logits(ids, mask)
        alone = llama.logits(short)
    torch.testing.assert_close(both[0, 3:], alone[0], atol=1e-4, rtol=1e-4)


def test_values_print_compose_and_roundtrip(tmp_path, llama):
    ids = _ids()
    mask = torch.zeros(9, dtype=torch.bool)
    mask[2:5] = True
    items = [ScaleKeyAttention(1, 2, gamma=2.0), HiddenSinkCalibration(0, kv_head=1),
             compose(Redistribute(1, 0, p=0.5, target=mask), Knockout(0, 1, [(3, 0)])),
             ScaleKeyAttention(0, 3, gamma=0.5, keys=(1, 2))]
    assert repr(items[0]) == "ScaleKeyAttention(layer=1, head=2, gamma=2.0, keys='first')"
    save_interventions(tmp_path / "e.json", items)
    back = load_interventions(tmp_path / "e.json")
    assert back == items
    with llama.intervene(*items):
        a = llama.logits(ids)
    with llama.intervene(*back):
        torch.testing.assert_close(llama.logits(ids), a, atol=0, rtol=0)


def test_bad_input_errors(llama):
    with pytest.raises(ValueError, match="gamma = 0.0 must be > 0"):
        ScaleKeyAttention(0, 0, gamma=0.0)
    with pytest.raises(ValueError, match=r"beta = 1.5 must be in \(0, 1\]"):
        HiddenSinkCalibration(0, 0, beta=1.5)
    with pytest.raises(ValueError, match=r"beta = 0 must be in \(0, 1\]"):
        HiddenSinkCalibration(0, 0, beta=0)
    with pytest.raises(ValueError, match="key set is empty"):
        ScaleKeyAttention(0, 0, gamma=2.0, keys=())
    with pytest.raises(ValueError, match="selects no key"):
        Redistribute(0, 0, target=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="exactly one of head"):
        ScaleKeyAttention(0, gamma=2.0)
    with pytest.raises(ValueError, match="head 9 is out of range"):
        with llama.intervene(ScaleKeyAttention(0, 9, gamma=2.0)):
            pass
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        with llama.intervene(HiddenSinkCalibration(4, 0)):
            pass
    with pytest.raises(ValueError, match="key position 20 is outside the prompt of 9 tokens"):
        with llama.intervene(ScaleKeyAttention(0, 0, gamma=2.0, keys=(20,))):
            llama.logits(_ids())
    with pytest.raises(ValueError, match=r"span \[3, 40\) is outside the prompt of 10 characters"):
        span_keys(llama, "0123456789", 3, 40)


def test_span_and_image_keys():
    m = tiny_model("llama", n_layers=1)
    span = span_keys(m, "hello world", 6, 11)  # byte tokenizer: BOS then one token per byte
    assert span.tolist() == [False] * 7 + [True] * 5
    lv = tiny_model("llava", n_layers=1)
    ids = torch.tensor([[0, 5, 63, 63, 63, 63, 7]])
    assert image_keys(lv, ids).nonzero()[:, 1].tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="no image token"):
        image_keys(m, ids)
