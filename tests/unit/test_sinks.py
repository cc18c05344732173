"""Sink_k^ε (Gu et al. 2025) and the first-token removal check, against dense float64 recomputation."""

from __future__ import annotations

import pytest
import torch

from interp.analyses import _text, sinks
from interp.testing import dense_patterns, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2, seed=3)




def test_sink_alpha_matches_dense(model):
    ids = torch.randint(2, 64, (3, 24), generator=torch.Generator().manual_seed(0))
    A = dense_patterns(model, ids)
    T = ids.shape[1]
    for k in (1, 3):
        ref = A[..., :, k - 1].sum(-1) / (T - k + 1)  # Σ_{i ≥ k} A_{i,k}: rows above are 0 (causal)
        got = sinks.sink_alpha(model, ids, k=k)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_sink_rate_counts_over_threshold(model):
    ids = torch.randint(2, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    ref = dense_patterns(model, ids)[..., :, 0].sum(-1) / 16  # [layer, batch, head]
    eps = float(ref.median())  # half the (sample, layer, head) triples are above
    expected = 100.0 * sum(float(x) > eps for x in ref.flatten()) / ref.numel()
    alpha = sinks.sink_alpha(model, ids)
    assert sinks.sink_rate(alpha, eps) == pytest.approx(expected, abs=100.0 / ref.numel() + 1e-9)
    assert 0 < expected < 100


def test_sink_scores_table(model):
    df = sinks.sink_scores(model, conditions=("random", "repeated"), n_samples=3, n_tokens=12, eps=0.2)
    assert set(df.score) == {f"{a}_{c}" for a in ("sink_rate", "sink_alpha", "sink_frac") for c in
                             ("random", "repeated")}
    ids = _text.domain_samples(model, "random", 3, 12)
    alpha = sinks.sink_alpha(model, ids)
    rate = df[df.score == "sink_rate_random"].value.item()
    assert rate == pytest.approx(100 * float((alpha > 0.2).double().mean()))
    frac = df[(df.score == "sink_frac_random") & (df.layer == 1) & (df["head"] == 2)].value.item()
    assert frac == pytest.approx(float((alpha[1, :, 2] > 0.2).double().mean()))


def test_drop_first_key_by_hand():
    p = torch.tensor([[[1.0, 0, 0], [0.5, 0.5, 0], [0.6, 0.3, 0.1]]])
    got = sinks._drop_first_key(p)
    want = torch.tensor([[[1.0, 0, 0], [0.0, 1.0, 0], [0.0, 0.75, 0.25]]])
    torch.testing.assert_close(got, want)


def test_loss_without_first_token(model):
    ids = torch.randint(2, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model.forward(ids).logits.double()
    lp = torch.log_softmax(logits[:, :-1], -1)
    base = float(-lp.gather(-1, ids[:, 1:, None]).mean())
    assert sinks.loss_without_first_token(model, ids, []) == pytest.approx(base, rel=1e-5)
    assert sinks.loss_without_first_token(model, ids, [(0, 0), (1, 1)]) != pytest.approx(base, rel=1e-6)
    res = sinks.sink_removal_check(model, torch.rand(2, 4), ids, k=2, n_random=2)
    assert len(res["top_heads"]) == 2 and res["base_loss"] == pytest.approx(base, rel=1e-5)


def test_bad_inputs(model):
    ids = torch.randint(2, 64, (1, 8))
    with pytest.raises(ValueError, match="k must be"):
        sinks.sink_alpha(model, ids, k=0)
    with pytest.raises(ValueError, match="eps"):
        sinks.sink_rate(torch.zeros(1, 1, 1), 1.5)
    with pytest.raises(TypeError, match="ids must be"):
        sinks.sink_alpha(model, [1, 2, 3])
    with pytest.raises(ValueError, match="unknown text domain"):
        _text.domain_samples(model, "poetry", 1, 4)


def test_text_sources(model):
    a = _text.domain_samples(model, "prose", 3, 20, seed=4)
    b = _text.domain_samples(model, "prose", 3, 20, seed=4)
    assert a.shape == (3, 20) and torch.equal(a, b)
    rep = _text.domain_samples(model, "repeated", 2, 10)
    assert bool((rep == rep[:, :1]).all())
    rnd = _text.domain_samples(model, "random", 2, 10)
    assert int(rnd.min()) >= 2  # special ids 0, 1 of the tiny tokenizer excluded
    assert "def " in _text.code_text() and len(_text.prose_text()) > 300_000
    assert _text.domain_samples(model, "code", 1, 30).shape == (1, 30)
