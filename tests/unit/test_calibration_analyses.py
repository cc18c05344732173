"""ZeroTuning and ACT analyses: the selection and calibration rules on planted values worked by hand, and
end-to-end runs on a tiny model whose reported numbers are recomputed independently from the reported heads,
signs and γ with hand-built interventions."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from interp.analyses import act, zerotuning
from interp.analyses._calibration_data import load_items
from interp.attention_edits import HiddenSinkCalibration, ScaleKeyAttention
from interp.choices import score_choices
from interp.params import ParamError
from interp.scores import ScoreTable
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", n_layers=2, seed=5)


def _value(scores, score, layer=-1, head=-1):
    r = scores[(scores["score"] == score) & (scores["layer"] == layer) & (scores["head"] == head)]
    assert len(r) == 1, score
    return float(r.value.iloc[0])


def test_head_signs_rule():
    deltas = {0.5: torch.tensor([-1.0, 1.0, -1.0, 0.2, 0.0]), 2.0: torch.tensor([2.0, -0.5, -0.1, 0.3, 1.0]),
              4.0: torch.tensor([0.1, -0.2, 0.4, 0.1, 1.0])}
    # head 0: up (down at γ<1, up at γ>1); 1: down; 2: mixed above 1; 3: same sign both sides; 4: zero at 0.5
    assert zerotuning.head_signs(deltas).tolist() == [1, -1, 0, 0, 0]


def test_pick_gammas_rule():
    t = pd.DataFrame({"gamma": [0.5, 1.0, 2.0, 4.0], "val_accuracy": [0.7, 0.6, 0.7, 0.65],
                      "val_entropy": [0.5, 0.6, 0.4, 0.4]})
    # accuracy tie 0.5 / 2.0 → equal |log γ| → first after the stable sort (0.5); entropy tie 2.0 / 4.0 → 2.0
    assert zerotuning.pick_gammas(t) == (0.5, 2.0)


def test_greedy_rule_on_a_planted_objective():
    gains = {"A": 1.0, "B": -1.0, "C": 0.5, "D": 0.0}
    bonus = lambda hs: 2.0 if {"A", "C"} <= set(hs) else 0.0
    kept, g = act.greedy(["A", "B", "C", "D"], lambda hs: sum(gains[h] for h in hs) + bonus(hs))
    assert kept == ["A", "C"] and g == [1.0, -1.0, 2.5, 0.0]


def test_zerotuning_end_to_end_numbers_recompute(tiny):
    p = zerotuning.ZeroTuningParams(tasks=("category",), n_candidates=3, sweep=(0.5, 3.0), grid=(0.5, 3.0),
                                    n_calibration=8, n_validation=8, n_test=12, n_random=1, batch_size=8)
    out = zerotuning.run(tiny, p)
    s = ScoreTable.validate(out["scores"], shape=tiny.shape)
    test, cal = load_items("category", "test", 12), load_items("category", "calibration", 8)
    assert _value(s, "category_accuracy_clean") == score_choices(tiny, test).accuracy
    signs = s[s["score"] == "category_zt_sign"]
    g = _value(s, "category_zt_gamma_supervised")
    items = [ScaleKeyAttention(int(r.layer), int(r.head), gamma=g if r.value > 0 else 1 / g)
             for r in signs.itertuples() if r.value != 0]
    assert _value(s, "category_accuracy_zerotuning_supervised") == score_choices(tiny, test,
                                                                                 interventions=items).accuracy
    # one sweep point by hand: Δ = mean label log-prob with the head scaled − clean, on the calibration items
    r = out["sweep"].iloc[0]
    lp = lambda sc: float(torch.log(sc.label_prob).mean())
    want = lp(score_choices(tiny, cal, interventions=[ScaleKeyAttention(int(r.layer), int(r["head"]),
                                                                         gamma=float(r.gamma))])) - lp(
        score_choices(tiny, cal))
    assert abs(r.delta - want) < 1e-9
    assert set(out["calibration"].gamma) == {0.5, 1.0, 3.0}
    lo, hi = s.loc[s["score"] == "category_accuracy_clean", ["ci_low", "ci_high"]].iloc[0]
    assert lo <= _value(s, "category_accuracy_clean") <= hi


def test_act_end_to_end_numbers_recompute(tiny):
    p = act.ActParams(tasks=("sentiment",), n_candidates=3, n_calibration=6, n_test=10, n_random=1, batch_size=6,
                      threshold=0.02)
    s = ScoreTable.validate(act.run(tiny, p)["scores"], shape=tiny.shape)
    test = load_items("sentiment", "test", 10)
    sel = s[(s["score"] == "sentiment_act_selected") & (s.value == 1)]
    items = [HiddenSinkCalibration(int(r.layer), int(r.head), beta=0.4, threshold=0.02) for r in sel.itertuples()]
    assert _value(s, "sentiment_act_n_heads") == len(items)
    assert _value(s, "sentiment_accuracy_act_selected") == score_choices(tiny, test, interventions=items).accuracy
    mass = s[s["score"] == "sentiment_act_sink_mass"]
    assert len(mass) == 3 and (mass.value > 0).all()  # early keys of the near-uniform tiny heads pass α > 0.02
    gains = s[s["score"] == "sentiment_act_gain"].value
    assert (gains.abs() > 1e-6).all()  # calibrating each visited head moved the calibration objective


def test_params_errors():
    with pytest.raises(ParamError, match="needs a value below 1 and one above 1"):
        zerotuning.ZeroTuningParams.coerce({"sweep": [2.0, 3.0]})
    with pytest.raises(ParamError, match="tasks"):
        act.ActParams.coerce({"tasks": ["mmlu"]})
    with pytest.raises(ParamError, match="beta"):
        act.ActParams.coerce({"beta": 1.5})


def test_registered_and_run_through_the_report(tmp_path):
    from interp.report import run_report

    params = {"act": {"tasks": ["compare"], "n_candidates": 2, "n_calibration": 4, "n_test": 6, "n_random": 0,
                      "threshold": 0.02}}
    res = run_report("tiny-llama", ["act"], tmp_path / "r", params=params, progress=False)
    s = res.scores
    assert set(s["analysis"]) == {"act"} and "compare_accuracy_act_selected" in set(s["score"])
    direct = act.run(tiny_model("llama"), params["act"])["scores"]
    assert _value(s, "compare_accuracy_clean") == _value(direct, "compare_accuracy_clean")
