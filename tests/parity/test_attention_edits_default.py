"""ZeroTuning on the default model: the post-softmax edit of ``ScaleKeyAttention`` equals adding log γ to the
first key's logit before the softmax, computed in float64 from the cached post-RoPE q and k; γ = 1 leaves the
logits unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from interp.attention_edits import HiddenSinkCalibration, ScaleKeyAttention
from interp.hooks import run_with_cache
from interp.sites import Site


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [0.25, 3.0])
def test_zerotuning_equals_logit_bias_on_default(default_model, gamma):
    m = default_model
    ids = m.to_tokens("The capital of France is Paris, and the capital of Italy is Rome. The capital of Spain is")
    layer, head = 14, 4
    kv = m.shape.kv_head_of(head)
    _, c = run_with_cache(m, ids, [Site(layer, "q", head), Site(layer, "k", kv)])
    q, k = c[Site(layer, "q", head)][0].double(), c[Site(layer, "k", kv)][0].double()
    n = ids.shape[1]
    logits = (q @ k.T) * m.arch.attn(layer).scaling
    logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    logits[:, 0] += math.log(gamma)
    want = torch.softmax(logits, -1)
    with m.intervene(ScaleKeyAttention(layer, head, gamma=gamma)):
        _, got = run_with_cache(m, ids, [Site(layer, "pattern", head)])
    torch.testing.assert_close(got[Site(layer, "pattern", head)][0].double(), want, atol=2e-5, rtol=1e-4)
    assert (want[1:, 0] - torch.softmax(logits - math.log(gamma) * (torch.arange(n) == 0), -1)[1:, 0]).abs().max() \
        > 1e-3  # the edit is not a no-op here


@pytest.mark.slow
def test_identity_settings_leave_default_logits_unchanged(default_model):
    m = default_model
    ids = m.to_tokens("Attention sinks hold most of the attention in late layers of small models.")
    clean = m.logits(ids)
    with m.intervene(ScaleKeyAttention(20, 2, gamma=1.0), HiddenSinkCalibration(10, kv_head=1, beta=1.0)):
        torch.testing.assert_close(m.logits(ids), clean, atol=1e-4, rtol=1e-5)
