"""Behaviour preserved across refactors: today's numbers equal the goldens written before the core redesign
(``tests/golden/make_golden.py``, run on the tree of commit 3fc28e2).

Every golden row must come back with the same index (analysis, score, layer, head, kv_head) and a value within
1e-6 (absolute, or relative for large values); the run may not lose a row nor add one to an analysis that the
golden covers. A deliberate change of a number needs a new golden and a line in the commit that says why.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden  # noqa: E402

TOL = 1e-6
# Sahara's angles (degrees) on the tiny model are ~1e-4: the ε-scaled heads barely move the float32 hidden states,
# so the angle sits at float32's floor, where a new transformers/torch build moved them by up to 1.4e-6 (the same
# tree, 419476c, gives the same shift). They are held at 1e-5 degrees; every other score keeps 1e-6.
# Ships' KL on the default model (a 30-layer float32 forward with an ε-scaled query) moved by up to 3.4e-6 of 0.174
# (2e-5 relative) with the same build change; it is held at 1e-4.
SCORE_TOL = {"sahara_angle": 1e-5, "sahara_single_angle": 1e-5, "ships_kl": 1e-4}


def assert_same_scores(now: pd.DataFrame, golden: pd.DataFrame) -> None:
    key = make_golden.INDEX
    now = now[now["analysis"].isin(set(golden["analysis"]))]
    g = golden.set_index(key)["value"]
    n = now.set_index(key)["value"]
    missing = g.index.difference(n.index)
    extra = n.index.difference(g.index)
    assert not len(missing), f"{len(missing)} golden rows missing, e.g. {list(missing[:5])}"
    assert not len(extra), f"{len(extra)} rows not in the golden, e.g. {list(extra[:5])}"
    a, b = n.loc[g.index].to_numpy(float), g.to_numpy(float)
    same_nan = np.isnan(a) == np.isnan(b)
    assert same_nan.all(), f"NaN pattern differs at {list(g.index[~same_nan][:5])}"
    with np.errstate(invalid="ignore"):
        diff = np.where(np.isnan(b) | (a == b), 0.0, np.abs(a - b))  # a == b also holds for equal infinities
    tol = np.array([SCORE_TOL.get(score, TOL) for score in g.index.get_level_values("score")])
    ok = diff <= tol * np.maximum(1.0, np.abs(np.nan_to_num(b)))
    worst = int(np.argmax(np.nan_to_num(diff, nan=np.inf)))
    assert ok.all(), (f"{int((~ok).sum())} values differ by > {TOL}; worst {g.index[worst]}: "
                      f"{a[worst]!r} vs golden {b[worst]!r}")


def test_assert_same_scores_can_fail():
    golden = pd.read_csv(GOLDEN / "tiny_llama_report.csv")
    bumped = golden.copy()
    bumped.loc[3, "value"] += 1e-5
    with pytest.raises(AssertionError, match="differ"):
        assert_same_scores(bumped, golden)
    with pytest.raises(AssertionError, match="missing"):
        assert_same_scores(golden.drop(index=5), golden)


def test_tiny_llama_report_equals_golden():
    assert_same_scores(make_golden.tiny_report(), pd.read_csv(GOLDEN / "tiny_llama_report.csv"))


@pytest.mark.slow
def test_default_model_scores_equal_golden():
    assert_same_scores(make_golden.default_scores(), pd.read_csv(GOLDEN / "default_scores.csv"))


@pytest.mark.slow
def test_default_report_equals_golden(default_model):
    """The README's job (``interp report --model default``, default analyses): every score as on 2eb11b8."""
    assert_same_scores(make_golden.default_report(default_model),
                       pd.read_parquet(GOLDEN / "default_report_scores.parquet"))
