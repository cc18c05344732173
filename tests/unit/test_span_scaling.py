"""span_scaling: spans per length from one run vs separate prefix runs and a float64 dense pattern; the elastic
fit recovers planted α, β."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.analyses import span_scaling as S
from interp.params import ParamError
from interp.testing import dense_patterns, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2, n_ctx=256)


def _dense_spans(A, n, tail, w):
    """A: [layer, batch, head, query, key] float64 of an n-token run; the module's formulas by hand."""
    i = torch.arange(A.shape[-2], dtype=torch.float64)[:, None]
    j = torch.arange(A.shape[-1], dtype=torch.float64)[None, :]
    d = (i - j).clamp_min(0)
    rows = slice(n - tail, n)
    span = (A * d).sum(-1)[..., rows]
    keep = A[..., 1:] * d[:, 1:]
    nonsink = keep.sum(-1)[..., rows] / A[..., 1:].sum(-1)[..., rows]  # attention over keys >= 1, renormalised
    recent = (A * ((i - j) < w) * ((i - j) >= 0)).sum(-1)[..., rows]
    return span.mean((1, 3)), nonsink.mean((1, 3)), recent.mean((1, 3))


def test_one_run_equals_prefix_runs_and_dense(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 64, (2, 96), generator=g)
    lengths, tail, w = [32, 64, 96], 8, 5
    sp = S.spans_by_length(model, ids, lengths, tail=tail, recent_w=w)
    for i, n in enumerate(lengths):
        A = dense_patterns(model, ids[:, :n])  # separate prefix run, dense float64
        span, nonsink, recent = _dense_spans(A, n, tail, w)
        assert torch.allclose(sp["span"][i], span, atol=1e-4, rtol=1e-4)
        assert torch.allclose(sp["span_nonsink"][i], nonsink, atol=1e-4, rtol=1e-4)
        assert torch.allclose(sp["recent_mass"][i], recent, atol=1e-5)


def test_elastic_fit_recovers_planted():
    rng = np.random.default_rng(0)
    n = np.array([512, 1024, 2048, 4096, 8192])
    alpha, beta = rng.uniform(5, 50, (3, 4)), rng.uniform(0, 0.3, (3, 4))
    beta[0, 0] = 0.0  # a head whose span does not grow
    spans = alpha[None] + beta[None] * n[:, None, None]
    fit = S.elastic_fit(n, spans + rng.normal(0, 1e-3, spans.shape))
    assert np.allclose(fit["alpha"], alpha, atol=0.01) and np.allclose(fit["beta"], beta, atol=1e-5)
    assert fit["r2"][1:].min() > 0.999
    exact = S.elastic_fit(n, spans)
    assert np.allclose(exact["beta"], beta, atol=1e-10)
    spans[2, 1, 1] = np.nan  # a pure-sink head at one length: no fit for it, the others unchanged
    part = S.elastic_fit(n, spans)
    assert np.isnan(part["beta"][1, 1]) and np.allclose(np.delete(part["beta"].ravel(), 5), np.delete(beta.ravel(), 5))


def test_pure_sink_rows_are_skipped(model):
    ids = torch.randint(2, 64, (1, 64), generator=torch.Generator().manual_seed(1))
    st = S.spans_by_length(model, ids, [32, 64], tail=8, min_rest=0.0)
    everything = S.spans_by_length(model, ids, [32, 64], tail=8, min_rest=0.999999)
    assert torch.isfinite(st["span_nonsink"]).all() and torch.isnan(everything["span_nonsink"]).all()


def test_run_scores_and_params(model):
    out = S.run(model, {"lengths": [64, 128, 200], "tail": 16})
    sc = out["scores"]
    assert {"span_alpha", "span_beta", "span_r2", "span_growth", "span_nonsink_n200"} <= set(sc.score)
    per = out["per_length"]
    beta = sc[sc.score == "span_beta"].set_index(["layer", "head"])["value"]
    sub = per[(per.layer == 1) & (per["head"] == 2)]
    ref = np.polyfit(sub["length"], sub["span_nonsink"], 1)[0]
    assert beta[(1, 2)] == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ParamError, match="tail = 100"):
        S.SpanScalingParams.coerce({"lengths": [64, 128], "tail": 100})
    with pytest.raises(ParamError, match="lengths"):
        S.run(model, {"lengths": [128, 512], "tail": 16})  # 512 > the tiny model's 256-token context
