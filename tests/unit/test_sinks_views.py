"""StreamingLLM outside mass, hidden and secondary sinks: each against a dense float64 recomputation."""

from __future__ import annotations

import pytest
import torch

from interp.analyses import hidden_sinks, secondary_sinks, streaming
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.testing import dense_patterns, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=3, seed=5)




@pytest.mark.parametrize("sink,window", [(4, 6), (2, 1), (0, 5)])
def test_outside_mass_matches_dense_every_row(model, sink, window):
    ids = torch.randint(2, 64, (2, 20), generator=torch.Generator().manual_seed(sink + window))
    A = dense_patterns(model, ids)
    i = torch.arange(20)[:, None]
    j = torch.arange(20)[None, :]
    union = ((j < sink) | (i - j < window)) & (j <= i)
    ref_out = 1 - (A * union.double()).sum(-1)
    m = streaming.streaming_masses(model, ids, sink=sink, window=window)
    torch.testing.assert_close(m["outside"], ref_out.clamp_min(0), atol=2e-6, rtol=0)
    torch.testing.assert_close(m["first"], A[..., :sink].sum(-1), atol=2e-6, rtol=0)


def test_streaming_scores_table(model):
    ids = torch.randint(2, 64, (2, 20), generator=torch.Generator().manual_seed(9))
    s, tok = streaming.streaming_scores(model, ids, sink=4, window=6, tau=0.5)
    A = dense_patterns(model, ids)
    i = torch.arange(20)[:, None]
    j = torch.arange(20)[None, :]
    out = 1 - (A * (((j < 4) | (i - j < 6)) & (j <= i)).double()).sum(-1)
    ref = out[..., 10:].mean((1, 3))  # rows i >= sink + window
    got = s[s.score == "stream_outside"].sort_values(["layer", "head"]).value.to_numpy()
    assert got == pytest.approx(ref.flatten().numpy(), abs=2e-6)
    frac = s[s.score == "stream_head_frac"].value.item()
    assert frac == pytest.approx(float((ref < 0.5).double().mean()))
    assert len(tok) == 3 * 2 * 4 * 20
    with pytest.raises(ValueError, match="non-empty outside"):
        streaming.streaming_scores(model, ids[:, :8], sink=4, window=6)


def test_hidden_sinks_match_dense(model):
    ids = torch.randint(2, 64, (2, 24), generator=torch.Generator().manual_seed(3))
    A = dense_patterns(model, ids)
    T = 24
    alpha = A.sum(-2) / (T - torch.arange(T)).double()  # [layer, batch, head, key]
    thr = float(alpha[..., 1:T - 4].quantile(0.9))
    want = {(la, b, h, j) for la, b, h, j in ((alpha > thr).nonzero().tolist()) if 1 <= j <= T - 4}
    s, sk = hidden_sinks.hidden_sinks(model, ids, threshold=thr, min_rows=4)
    got = set(zip(sk.layer, sk.batch, sk["head"], sk.position))
    assert got == want and len(want) > 0
    per_head = s[(s.score == "hidden_sinks") & (s.layer == 1) & (s["head"] == 0)].value.item()
    assert per_head == pytest.approx(sum(1 for w in want if w[0] == 1 and w[2] == 0) / 2)


@pytest.mark.parametrize("text,cls", [("Ċ", "newline"), ("\n\n", "newline"), (".", "punctuation"),
                                      ("?!", "punctuation"), (",", "delimiter"), ("Ġ(", "delimiter"),
                                      ("Ġ", "delimiter"), ("Ġthe", "other"), ("a.", "other")])
def test_classify_token(text, cls):
    assert hidden_sinks.classify_token(text) == cls


def test_sink_events_runs():
    m = torch.zeros(6, 1, 3, dtype=torch.bool)
    m[1:3, 0, 2] = True
    m[4, 0, 2] = True
    m[0:6, 0, 1] = True
    assert sorted(secondary_sinks.sink_events(m)) == [(0, 1, 0, 5), (0, 2, 1, 2), (0, 2, 4, 4)]


def test_secondary_sinks_match_dense(model):
    ids = torch.randint(2, 64, (2, 24), generator=torch.Generator().manual_seed(4))
    A = dense_patterns(model, ids)
    r_ref = (A.sum(-2) / (24 - torch.arange(24)).double()).mean(2)  # [layer, batch, key]
    torch.testing.assert_close(secondary_sinks.received_attention(model, ids), r_ref, atol=1e-6, rtol=0)
    thr = float(r_ref[1:, :, 1:20].quantile(0.8))
    s, ev = secondary_sinks.secondary_sinks(model, ids, threshold=thr, start_layer=1, min_rows=4)
    assert len(ev) > 0
    sites = [Site(la, c) for la in range(3) for c in ("mlp_out", "resid_post")]
    _, cache = run_with_cache(model, ids, sites)
    for row in ev.itertuples():
        assert r_ref[row.onset, row.batch, row.position] > thr
        assert row.onset == 1 or r_ref[row.onset - 1, row.batch, row.position] <= thr
        mo = cache[Site(row.onset - 1, "mlp_out")][row.batch, row.position].double()
        h0 = cache[Site(row.onset - 1, "resid_post")][row.batch, 0].double()
        assert row.mlp_cos == pytest.approx(float(mo @ h0 / (mo.norm() * h0.norm())), abs=1e-6)
        assert row.mlp_norm == pytest.approx(float(mo.norm()), rel=1e-6)
