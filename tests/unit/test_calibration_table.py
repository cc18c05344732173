"""The checkpointed ``score_choices`` of ``experiments/calibration_table.py``: a resumed result equals the
computed one, nothing is recomputed, and a spent budget stops only new work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from interp import io
from interp.analyses._calibration_data import load_items
from interp.attention_edits import ScaleKeyAttention
from interp.choices import score_choices
from interp.testing import tiny_model

PATH = Path(__file__).resolve().parents[2] / "experiments" / "calibration_table.py"


def _module():
    spec = importlib.util.spec_from_file_location("calibration_table", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_memoised_scores_resume_and_respect_the_budget(tmp_path):
    mod, model = _module(), tiny_model("llama", seed=2)
    items = load_items("sentiment", "calibration", 6)
    calls = []

    def real(*a, **k):
        calls.append(k.get("interventions"))
        return score_choices(*a, **k)

    edit = [ScaleKeyAttention(1, 2, gamma=3.0)]
    ck = lambda: io.JsonlCheckpoint(tmp_path / "c.jsonl", {"m": 1})
    first = mod.memoised(real, ck(), deadline=float("inf"))
    a, b = first(model, items, batch_size=4), first(model, items, interventions=edit, batch_size=4)
    assert len(calls) == 2 and not torch.equal(a.logprobs, b.logprobs)
    again = mod.memoised(real, ck(), deadline=0.0)  # a fresh process, budget already spent
    torch.testing.assert_close(again(model, items, interventions=edit, batch_size=4).logprobs, b.logprobs)
    assert torch.equal(again(model, items, batch_size=4).labels, a.labels) and len(calls) == 2
    with pytest.raises(mod.OutOfTime):
        again(model, items, batch_size=3)  # other settings: new work, refused once the budget is spent
