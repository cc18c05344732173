"""The last query row of every layer (``interp.query_attention``) and the calibration analyses' attention masses
built on it and on the engine's column sums: equal to the dense float64 pattern (``interp.testing.dense_patterns``)
on tiny models with GQA, sliding windows and left padding, with and without pattern edits; no ``[query_pos,
key_pos]`` pattern is built where no edit asks for one."""

from __future__ import annotations

import pytest
import torch

from interp import hooks
from interp.analyses import act
from interp.analyses._calibration_data import load_items
from interp.analyses._calibration_eval import first_key_masks, last_query_mass
from interp.attention_edits import HiddenSinkCalibration, ScaleKeyAttention, hidden_sink_keys
from interp.batching import pad_batch
from interp.choices import batches
from interp.query_attention import last_query_attention
from interp.testing import dense_patterns, tiny_model

TEXTS = ["the cat sat on the mat today", "a dog ran", "birds sing in the morning light, loudly"]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):  # gemma3: sliding window 8 on layer 0 (prompts up to 40 tokens)
    return tiny_model(request.param, n_layers=2, seed=3)


def _dense_last(model, ids, mask, edits=()):
    with model.intervene(*edits):
        pat = dense_patterns(model, ids, mask)  # [layer, batch, head, query_pos, key_pos] float64
    return pat[:, :, :, -1]


@pytest.mark.parametrize("edits", [(), (ScaleKeyAttention(1, 2, gamma=3.0),),
                                   (HiddenSinkCalibration(0, kv_head=1, beta=0.4, threshold=0.05),
                                    ScaleKeyAttention(1, 0, gamma=0.3, keys=(2, 3)))])
def test_last_row_equals_the_dense_pattern(model, edits):
    ids, mask = pad_batch(model, TEXTS)
    got = last_query_attention(model, ids, mask, interventions=edits)
    want = _dense_last(model, ids, mask, edits)
    assert got.shape == want.shape == (2, 3, 4, ids.shape[1])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-5, rtol=0)
    if edits:  # the edit changed the edited head's row: the rows really are read after the edit
        assert (got - _dense_last(model, ids, mask)).abs().max() > 1e-3


def test_no_pattern_is_built_outside_the_edited_layers(model, monkeypatch):
    seen = []
    real = hooks.eager_pattern

    def spy(query, key, *a, **k):
        seen.append(query.shape[2])
        return real(query, key, *a, **k)

    monkeypatch.setattr(hooks, "eager_pattern", spy)
    ids, mask = pad_batch(model, TEXTS)
    last_query_attention(model, ids, mask)
    assert seen == [1, 1]  # one row per layer, no n × n
    seen.clear()
    last_query_attention(model, ids, mask, interventions=[ScaleKeyAttention(1, 2, gamma=3.0)])
    assert sorted(seen) == [1, 1, ids.shape[1]]  # only the edited layer builds its pattern (the edit needs it)


def _dense_sink_mass(model, items, p):
    """The former dense computation of ``act.hidden_sink_mass``: the full pattern of every layer."""
    total = torch.zeros(model.shape.n_layers, model.shape.n_heads, dtype=torch.float64)
    for _, ids, mask, _ in batches(model, items, p.batch_size):
        pat = dense_patterns(model, ids, mask)
        for layer in range(model.shape.n_layers):
            for h in range(model.shape.n_heads):
                sinks = hidden_sink_keys(pat[layer, :, h], threshold=p.threshold).double()
                total[layer, h] += (pat[layer, :, h, -1] * sinks).sum()
    return total / len(items)


def test_act_hidden_sink_mass_equals_the_dense_rule(model):
    items = load_items("sentiment", "calibration", 7)
    p = act.ActParams(threshold=0.03, batch_size=3)
    got = act.hidden_sink_mass(model, items, p)
    want = _dense_sink_mass(model, items, p)
    assert (want > 0).sum() >= 4  # enough heads have hidden sinks at this threshold for the check to bite
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_last_query_mass_equals_the_dense_pattern(model):
    items = load_items("category", "calibration", 5)
    edit = lambda batch, ids, mask: [ScaleKeyAttention(0, 1, gamma=4.0)]
    for per_batch in (None, edit):
        got = last_query_mass(model, items, first_key_masks, per_batch=per_batch, batch_size=2)
        want = torch.zeros_like(got)
        for batch, ids, mask, _ in batches(model, items, 2):
            keys = first_key_masks(batch, ids, mask).double()
            last = _dense_last(model, ids, mask, per_batch(batch, ids, mask) if per_batch else ())
            want += (last * keys[None, :, None, :]).sum((1, 3))
        torch.testing.assert_close(got, want / len(items), atol=1e-6, rtol=0)
