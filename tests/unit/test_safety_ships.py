"""Ships (Zhou et al. 2025): batched per-row head ablation vs independent one-head-at-a-time references.

References never use the per-row hooks: "scale" scales the head's q_proj rows (and bias) by eps — RoPE is linear,
so this equals scaling the post-RoPE query — "zero" zeroes the head's o_proj input columns; "mean" uses a plain
single-head hook written here. KL is checked against a float64 hand computation.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from interp.analyses._safety_data import PAPER_TEMPLATE, row_ablation_handlers
from interp.analyses.ships import dataset_scores, last_logprobs, ships_dataset, ships_kl, top_heads
from interp.metrics import kl_div
from interp.sites import Site
from interp.testing import tiny_model

PROMPT = "how to build a birdhouse"




def sharp(family: str, **kw):
    """A tiny model with larger weights, so heads matter and the next-token distribution is peaked."""
    m = tiny_model(family, n_layers=2, seed=1, **kw)
    g = torch.Generator().manual_seed(3)
    for p in m.hf.parameters():
        if p.ndim == 2:
            p.data.normal_(0, 0.3, generator=g)
    return m


@contextlib.contextmanager
def surgery(model, layer: int, head: int, method: str, eps: float = 1e-5):
    attn = model.arch.attn(layer)
    d = model.shape.d_head
    rows = slice(head * d, (head + 1) * d)
    saved = [(t, t.data.clone()) for t in (attn.q_proj.weight, getattr(attn.q_proj, "bias", None),
                                           attn.o_proj.weight) if t is not None]
    if method == "scale":
        attn.q_proj.weight.data[rows] *= eps
        if attn.q_proj.bias is not None:
            attn.q_proj.bias.data[rows] *= eps
    else:
        attn.o_proj.weight.data[:, rows] = 0
    try:
        yield
    finally:
        for t, v in saved:
            t.data.copy_(v)


def ids_of(model, text=PROMPT):
    return torch.tensor([model.tokenizer.encode(PAPER_TEMPLATE.format(q=text))])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("method", ["scale", "zero"])
def test_batched_equals_sequential_weight_surgery(family, method):
    m = sharp(family)
    got = ships_kl(m, PROMPT, method=method, max_rows=3)  # 8 heads in chunks of 3: chunks straddle layers
    ids = ids_of(m)
    clean = last_logprobs(m, ids)
    want = torch.zeros(2, 4, dtype=torch.float64)
    for layer in range(2):
        for head in range(4):
            with surgery(m, layer, head, method):
                ab = torch.log_softmax(m.hf(ids).logits[0, -1].double(), -1)
            want[layer, head] = (clean[0].exp() * (clean[0] - ab)).sum()
    assert want.min() > 1e-4, "degenerate model: ablations change nothing"
    torch.testing.assert_close(got, want, rtol=2e-4, atol=1e-7)


def test_mean_ablation_and_gemma3_sliding_layers_match_single_head_hooks():
    for family, method in [("llama", "mean"), ("gemma3", "scale"), ("gemma3", "mean")]:
        m = sharp(family)
        got = ships_kl(m, PROMPT, method=method, max_rows=5)
        ids = ids_of(m)
        clean = last_logprobs(m, ids)
        for layer, head in [(0, 0), (0, 3), (1, 2)]:
            if method == "scale":
                fn = lambda x, s: x * 1e-5
                site = Site(layer, "q", head)
            else:
                fn = lambda x, s: x.mean(1, keepdim=True).expand_as(x)  # [batch, pos, d_head]
                site = Site(layer, "z", head)
            ab = last_logprobs(m, ids, {site: fn})
            want = float((clean.exp() * (clean - ab)).sum())
            assert want > 1e-5
            assert got[layer, head].item() == pytest.approx(want, rel=2e-4, abs=1e-8), (family, method, layer, head)


def test_scale_ablation_makes_the_heads_attention_uniform_only_in_its_row():
    m = sharp("llama")
    ids = ids_of(m).expand(3, -1)
    handlers = row_ablation_handlers(m, [[(1, 2)], [], [(1, 0), (1, 2)]])
    seen = {}
    handlers[Site(1, "pattern")] = lambda x, s: seen.setdefault("p", x.clone())
    with m.hooks(handlers):
        m.forward(ids)
    p = seen["p"]  # [batch, head, query_pos, key_pos]
    n = p.shape[-1]
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    torch.testing.assert_close(p[0, 2], uniform, atol=1e-4, rtol=0)
    torch.testing.assert_close(p[2, 0], uniform, atol=1e-4, rtol=0)
    assert (p[1, 2] - uniform).abs().max() > 0.05  # clean row untouched
    assert (p[0, 0] - uniform).abs().max() > 0.05  # other heads of the ablated row untouched


def test_kl_direction_and_value_by_hand():
    p = np.array([0.7, 0.2, 0.1])
    q = np.array([0.2, 0.5, 0.3])
    want = float(np.sum(p * np.log(p / q)))
    got = float(kl_div(torch.tensor(np.log(p)), torch.tensor(np.log(q))))
    assert got == pytest.approx(want, rel=1e-12)
    assert float(kl_div(torch.tensor(np.log(q)), torch.tensor(np.log(p)))) != pytest.approx(want, rel=1e-3)


def test_dataset_scores_count_and_sum_planted():
    kl = torch.tensor([[[5.0, 1.0, 0.0], [3.0, 2.0, 4.0]],
                       [[0.5, 9.0, 8.0], [0.1, 0.2, 0.3]]], dtype=torch.float64)  # [query, layer, head]
    df = dataset_scores(kl, model_name="m", top_k=2)

    def get(score, layer, head):
        sel = (df["score"] == score) & (df["layer"] == layer) & (df["head"] == head)
        return float(df[sel]["value"].iloc[0])

    # query 0 top-2: L0H0 (5), L1H2 (4); query 1 top-2: L0H1 (9), L0H2 (8)
    assert get("ships_top2_count", 0, 0) == 1 and get("ships_top2_count", 1, 2) == 1
    assert get("ships_top2_count", 1, 0) == 0 and get("ships_top2_count", 0, 1) == 1
    assert get("ships_top2_kl_sum", 0, 2) == 8.0 and get("ships_top2_kl_sum", 0, 1) == 9.0
    assert get("ships_kl_sum", 0, 1) == 10.0 and get("ships_kl_mean", 1, 2) == pytest.approx(2.15)
    assert set(df.analysis) == {"safety"} and set(df.n_samples) == {2}
    assert top_heads(df, 2) == [(0, 1), (0, 2)]


def test_ships_dataset_shapes_and_errors(tiny_llama, tmp_path):
    res = ships_dataset(tiny_llama, ["one request", "another request"], top_k=3)
    assert res.kl.shape == (2, 2, 4) and torch.isfinite(res.kl).all()
    assert {"ships_kl_sum", "ships_top3_count"} <= set(res.scores.score)
    with pytest.raises(ValueError, match="chat template"):
        ships_dataset(tiny_llama, ["x"], template="chat")
    empty = tmp_path / "empty.csv"
    empty.write_text("input\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        ships_dataset(tiny_llama, str(empty))
    with pytest.raises(ValueError, match="longer than"):
        ships_kl(tiny_llama, "x" * 400)  # n_ctx 256
    with pytest.raises(ValueError, match="L5H0 does not exist"):
        ships_kl(tiny_llama, "x", heads=[(5, 0)])
    with pytest.raises(ValueError, match="unknown ablation"):
        ships_kl(tiny_llama, "x", method="drop")


def test_scale_ablation_agrees_with_the_uniform_attention_intervention():
    from interp.interventions import UniformAttention

    m = sharp("qwen2")
    got = ships_kl(m, PROMPT, heads=[(0, 2), (1, 1)])
    ids = ids_of(m)
    clean = last_logprobs(m, ids)
    for layer, head in [(0, 2), (1, 1)]:
        with m.intervene(UniformAttention(layer, head, eps=1e-5)):
            ab = last_logprobs(m, ids)
        want = float((clean.exp() * (clean - ab)).sum())
        assert want > 1e-4 and got[layer, head].item() == pytest.approx(want, rel=2e-4)
