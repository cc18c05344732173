"""The score table contract: builders for every level, ``validate``'s level rules and checks (each one can
fail, with one line naming the row and column), and loading tables written before the ``level`` column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interp.scores import COLUMNS, ScoreTable, ScoreTableError

COMMON = dict(model="m", analysis="a", n_samples=3)


class Shape:
    n_layers, n_heads, n_kv_heads = 3, 4, 2


def all_levels() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return ScoreTable.concat([
        ScoreTable.from_matrix(rng.normal(size=(3, 4)), score="h", **COMMON),
        ScoreTable.from_matrix(rng.normal(size=(3, 2)), score="kv", kv=True, **COMMON),
        ScoreTable.from_layers(rng.normal(size=3), score="lay", **COMMON),
        ScoreTable.scalar(0.5, score="s", ci_low=0.4, ci_high=0.6, **COMMON),
        ScoreTable.from_heads([(0, 1), (2, 3)], [1.0, 2.0], score="sparse", **COMMON),
    ], shape=Shape)


def test_builders_set_levels_and_indices():
    df = all_levels()
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df["level"].value_counts().to_dict() == {"head": 14, "kv_head": 6, "layer": 3, "model": 1}
    assert df[["layer", "head", "kv_head", "n_samples"]].dtypes.map(str).eq("int64").all()
    kv = df[df["level"] == "kv_head"]
    assert (kv["head"] == -1).all() and sorted(set(kv["kv_head"])) == [0, 1]
    assert (df.loc[df["level"] != "kv_head", "kv_head"] == -1).all()  # NaN of concat → -1
    lay = df[df["level"] == "layer"]
    assert list(lay["layer"]) == [0, 1, 2] and (lay["head"] == -1).all()
    m = df[df["level"] == "model"].iloc[0]
    assert (m["layer"], m["head"], m["ci_low"], m["ci_high"]) == (-1, -1, 0.4, 0.6)
    np.testing.assert_array_equal(ScoreTable.vector(df, "lay", 3), lay["value"].to_numpy())
    mat = ScoreTable.matrix(df, "kv", 3, 2, kv=True)
    assert mat[2, 1] == kv[(kv.layer == 2) & (kv.kv_head == 1)]["value"].item()
    sparse = ScoreTable.matrix(df, "sparse", 3, 4)
    assert sparse[0, 1] == 1.0 and sparse[2, 3] == 2.0 and np.isnan(sparse).sum() == 10


def _row(**kw):
    row = dict(model="m", analysis="a", score="s", layer=0, head=0, value=1.0, n_samples=1, level="head")
    row.update(kw)
    return pd.DataFrame([row])


@pytest.mark.parametrize("kw, match", [
    (dict(level="layer"), "layer-level rows need head -1"),
    (dict(level="model"), "model-level rows need layer -1"),
    (dict(layer=-1, head=-1), "head-level rows need layer >= 0"),
    (dict(head=-1), "head-level rows need head >= 0"),
    (dict(level="kv_head", head=-1, kv_head=-1), "kv_head-level rows need kv_head >= 0"),
    (dict(level="kv_head", head=2, kv_head=1), "kv_head-level rows need head -1"),
    (dict(kv_head=1), "head-level rows need kv_head -1"),
    (dict(level="kv_head", head=-1), "need a kv_head column"),
    (dict(level="neuron"), "level = 'neuron'; choose one of model, layer, head, kv_head"),
    (dict(layer=-3), "layer = -3; indices are >= 0, or -1"),
    (dict(layer=1.5), "layer = 1.5 is not an integer"),
    (dict(layer="1"), "column 'layer' must hold integers"),
    (dict(value="x"), "column 'value' must hold numbers"),
    (dict(value=np.inf), "finite or NaN"),
    (dict(model=""), "model = ''; model must be a non-empty string"),
    (dict(score=None), "score = None"),
    (dict(n_samples=-1), "n_samples must be >= 0"),
])
def test_validate_rejects(kw, match):
    with pytest.raises(ScoreTableError, match=match) as e:
        ScoreTable.validate(_row(**kw))
    assert "\n" not in str(e.value)


def test_validate_accepts_nan_and_ratio_inf_and_checks_shape_and_duplicates():
    ScoreTable.validate(_row(value=np.nan))
    ScoreTable.validate(_row(score="x_ratio", layer=-1, head=-1, level="model", value=np.inf))
    with pytest.raises(ScoreTableError, match="head = 4 is out of range for a model with 4 heads"):
        ScoreTable.validate(_row(head=4), shape=Shape)
    with pytest.raises(ScoreTableError, match="appears twice"):
        ScoreTable.validate(pd.concat([_row(), _row(value=2.0)]))
    with pytest.raises(ScoreTableError, match="no 'level' column"):
        ScoreTable.validate(_row().drop(columns="level"))
    with pytest.raises(ScoreTableError, match="misses columns"):
        ScoreTable.validate(_row().drop(columns=["value"]))


def test_old_tables_load_with_derived_level(tmp_path):
    new = all_levels()
    old = new.drop(columns="level")
    old["kv_head"] = old["kv_head"].where(new["level"] == "kv_head")
    assert old["kv_head"].isna().any()  # as written before: NaN for the rows without a KV head
    old.to_parquet(tmp_path / "scores.parquet")
    old.to_csv(tmp_path / "scores.csv", index=False)
    for f in ("scores.parquet", "scores.csv"):
        got = ScoreTable.read(tmp_path / f)
        assert list(got["level"]) == list(new["level"])
        np.testing.assert_array_equal(got["kv_head"], new["kv_head"])


def test_concat_of_nothing_has_the_columns():
    df = ScoreTable.concat([None, pd.DataFrame()])
    assert list(df.columns) == COLUMNS and len(df) == 0
