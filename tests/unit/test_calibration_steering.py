"""VAR on a span (``attention_redistribution``) and context steering (``context_attention``) on tiny models: the
head-selection rule by hand, span masses recomputed from the dense pattern of single prompts, reported
accuracies recomputed with hand-built interventions."""

from __future__ import annotations

import math

import pytest
import torch

from interp.analyses import attention_redistribution as var
from interp.analyses import context_attention as ctx
from interp.analyses._calibration_data import load_items
from interp.attention_edits import Redistribute, ScaleKeyAttention
from interp.choices import score_choices, span_masks
from interp.hooks import run_with_cache
from interp.params import ParamError
from interp.sites import Site
from interp.testing import tiny_model


def _value(s, score, layer=-1, head=-1):
    r = s[(s["score"] == score) & (s["layer"] == layer) & (s["head"] == head)]
    assert len(r) == 1, score
    return float(r["value"].iloc[0])


def _with_chat(model):
    tok = model.tokenizer
    tok.chat_template = "<u>{content}</u>"
    tok.apply_chat_template = lambda msgs, tokenize=False, add_generation_prompt=True: (
        "<u>" + msgs[0]["content"] + "</u>\n")
    return model


def _last_row(model, item, layer, head, chat=False):
    """Dense last-position attention row ``[key_pos]`` of one prompt, and its span mask."""
    from interp.choices import encode_items

    row, _ = encode_items(model, [item], chat=chat)[0]
    ids = torch.tensor([row])
    _, c = run_with_cache(model, ids, [Site(layer, "pattern", head)])
    return c[Site(layer, "pattern", head)][0, -1].double(), span_masks(model, [item], ids, chat=chat)[0]


def test_select_heads_rule():
    share = torch.tensor([[0.9, 0.1], [0.4, 0.5], [0.2, 0.35]])
    assert var.select_heads(share, 0.3, 10, 1) == [(1, 1), (1, 0), (2, 1)]
    assert var.select_heads(share, 0.3, 2, 0) == [(0, 0), (1, 1)]


def test_var_end_to_end(tmp_path):
    m = tiny_model("llama", n_layers=2, seed=2)
    p = var.RedistributionParams(rho=0.0, max_heads=3, skip_layers=1, n_calibration=4, n_test=6, n_random=1,
                                 batch_size=3)
    s = var.run(m, p)["scores"]
    cal, test = load_items("context_qa", "calibration", 4), load_items("context_qa", "test", 6)
    # the span share of L1H0 from single-prompt dense rows: mean of a_T / (1 − a_first)
    want = 0.0
    for it in cal:
        a, span = _last_row(m, it, 1, 0)
        want += float(a[span].sum() / (1 - a[0])) / len(cal)
    assert abs(_value(s, "var_span_share", 1, 0) - want) < 1e-5
    heads = [(int(r.layer), int(r.head)) for r in s[(s["score"] == "var_selected") & (s.value == 1)].itertuples()]
    assert len(heads) == 3 and all(layer == 1 for layer, _ in heads)

    def per_batch(items, ids, mask):
        t = span_masks(m, items, ids)
        return [Redistribute(layer, h, p=0.6, target=t) for layer, h in heads]

    assert _value(s, "context_qa_accuracy_var_selected") == score_choices(m, test, per_batch=per_batch).accuracy
    assert _value(s, "var_span_mass_after") > _value(s, "var_span_mass_before")


def test_context_attention_end_to_end():
    m = _with_chat(tiny_model("llama", n_layers=2, seed=4))
    p = ctx.ContextAttentionParams(n_heads=2, grid=(4.0,), n_calibration=4, n_test=6, n_random=1, batch_size=3)
    s = ctx.run(m, p)["scores"]
    cal, test = load_items("context_qa", "calibration", 4), load_items("context_qa", "test", 6)
    for chat, score in ((False, "span_mass_plain"), (True, "span_mass_chat")):
        want = sum(float(_last_row(m, it, 0, 2, chat)[0][_last_row(m, it, 0, 2, chat)[1]].sum()) for it in cal) / 4
        assert abs(_value(s, score, 0, 2) - want) < 1e-5
    heads = [(int(r.layer), int(r.head)) for r in s[(s["score"] == "steer_selected") & (s.value == 1)].itertuples()]
    g = _value(s, "steer_gamma")

    def per_batch(items, ids, mask):
        keys = span_masks(m, items, ids, chat=True)
        return [ScaleKeyAttention(layer, h, gamma=g, keys=keys) for layer, h in heads] if g != 1 else []

    got = score_choices(m, test, per_batch=per_batch, chat=True).accuracy
    assert _value(s, "context_qa_accuracy_steered") == got
    plain, clean = score_choices(m, test).correct, score_choices(m, test, chat=True).correct
    row = s[s["score"] == "context_qa_accuracy_plain"].iloc[0]
    k, n = int(plain.sum()), len(test)
    z = 1.959963984540054  # Wilson by hand: (p + z²/2n ± z √(p(1−p)/n + z²/4n²)) / (1 + z²/n), exact at 0 and n
    centre, half = (k / n + z * z / (2 * n)), z * ((k / n) * (1 - k / n) / n + z * z / (4 * n * n)) ** 0.5
    lo, hi = (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)
    assert row.value == k / n and row.n_samples == n
    assert row.ci_low == pytest.approx(0.0 if k == 0 else lo) and row.ci_high == pytest.approx(1.0 if k == n else hi)
    b, c = int((clean & ~plain).sum()), int((~clean & plain).sum())
    assert _value(s, "context_qa_mcnemar_p_plain") == pytest.approx(
        1.0 if b + c == 0 else min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c)))
    if g > 1:
        assert _value(s, "steer_span_mass_after") > _value(s, "steer_span_mass_before")


def test_context_attention_needs_a_chat_template():
    with pytest.raises(ParamError, match="has no chat template"):
        ctx.run(tiny_model("llama", n_layers=1), {"n_calibration": 2, "n_test": 2})
