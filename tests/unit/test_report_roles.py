"""Every role rule on a planted score table: the planted heads (and only those) get the role, with the rule text
and value that fired; KV-head rules spread to their query-head group; circuit classes become roles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interp.report.roles import RULES, RoleRule, assign_roles, head_roles, readme_table, rule_table
from interp.scores import ScoreTable


class Shape:
    n_layers, n_heads, n_kv_heads, d_head = 4, 6, 2, 8


def planted(analysis, score, cells, base, hit, kv=False):
    """A [layer, head] (or [layer, kv_head]) grid of ``base`` with ``hit`` at the planted ``cells``."""
    n = Shape.n_kv_heads if kv else Shape.n_heads
    mat = np.full((Shape.n_layers, n), base, dtype=float)
    for (layer, h), v in zip(cells, np.broadcast_to(hit, len(cells))):
        mat[layer, h] = v
    return ScoreTable.from_matrix(mat, model="m", analysis=analysis, score=score, n_samples=3, kv=kv)


def fired(roles, role):
    return sorted(roles.loc[roles["role"] == role, ["layer", "head"]].itertuples(index=False, name=None))


THRESHOLD_CASES = [  # (role, analysis, score, value just inside, value just outside)
    ("retrieval", "retrieval", "retrieval_score", 0.11, 0.1),
    ("sink", "sinks", "sink_alpha_prose", 0.31, 0.3),
    ("previous_token", "taxonomy", "previous_token", 0.31, 0.3),
    ("induction", "taxonomy", "induction", 0.5, 0.3),
    ("duplicate_token", "taxonomy", "duplicate_token", 0.9, 0.29),
    ("streaming", "sinks", "stream_outside", 0.05, 0.1),
    ("local", "taxonomy", "local_head", 1.0, 0.0),
]


@pytest.mark.parametrize("role,analysis,score,inside,outside", THRESHOLD_CASES)
def test_threshold_rules_fire_exactly_on_planted_heads(role, analysis, score, inside, outside):
    cells = [(0, 1), (3, 5)]
    roles = assign_roles(planted(analysis, score, cells, outside, inside), Shape)
    assert fired(roles, role) == cells  # the boundary value itself (outside) never fires
    row = roles[(roles["role"] == role) & (roles["name"] == "L3H5")].iloc[0]
    assert row["value"] == pytest.approx(inside) and row["score"] == score and row["analysis"] == analysis
    rule = next(r for r in RULES if r.role == role)
    assert row["rule"] == rule.text() and row["source"] == rule.source


def test_sink_rule_reads_prose_and_a_glob_rule_names_the_score_that_fired():
    scores = ScoreTable.concat([planted("sinks", "sink_alpha_prose", [(1, 2)], 0.1, 0.8),
                                planted("sinks", "sink_alpha_random", [(2, 0)], 0.1, 0.4),
                                planted("other", "sink_alpha_prose", [(0, 0)], 0.1, 0.9)])  # other analysis
    roles = assign_roles(scores, Shape)
    assert head_roles(roles) == {"L1H2": ["sink"]}  # random tokens do not count
    glob = RoleRule("sink", "sinks", "sink_alpha_*", "gt", 0.3, "x")
    sink = assign_roles(scores, Shape, rules=(glob,))
    assert sorted(zip(sink["name"], sink["score"])) == [("L1H2", "sink_alpha_prose"), ("L2H0", "sink_alpha_random")]


def test_ships_top_k_is_membership_of_the_k_largest():
    rng = np.random.default_rng(0)
    mat = rng.random((Shape.n_layers, Shape.n_heads))
    scores = ScoreTable.from_matrix(mat, model="m", analysis="safety", score="ships_kl_sum", n_samples=2)
    roles = assign_roles(scores, Shape)
    flat = np.argsort(-mat.ravel())[:10]
    want = sorted((int(i) // Shape.n_heads, int(i) % Shape.n_heads) for i in flat)
    assert fired(roles, "safety") == want
    small = RoleRule("safety", "safety", "ships_kl_sum", "top_k", 3, "x")
    assert fired(assign_roles(scores, Shape, rules=(small,)), "safety") == sorted(want_i for want_i in (
        (int(i) // Shape.n_heads, int(i) % Shape.n_heads) for i in flat[:3]))


def test_percentile_rule_takes_the_top_5_percent_and_never_zero():
    mat = np.arange(Shape.n_layers * Shape.n_heads, dtype=float).reshape(Shape.n_layers, Shape.n_heads)
    scores = ScoreTable.from_matrix(mat, model="m", analysis="vhd", score="vhd", n_samples=1)
    cut = np.percentile(mat.ravel(), 95)  # 24 values 0..23: p95 = 21.85 -> heads with value 22, 23
    want = sorted(divmod(int(v), Shape.n_heads) for v in mat.ravel() if v >= cut)
    assert fired(assign_roles(scores, Shape), "value_heavy") == want == [(3, 4), (3, 5)]
    zeros = ScoreTable.from_matrix(np.zeros_like(mat), model="m", analysis="vhd", score="vhd", n_samples=1)
    assert fired(assign_roles(zeros, Shape), "value_heavy") == []  # an all-zero score marks no one


def test_kv_head_rule_gives_the_role_to_the_whole_query_group():
    scores = planted("duo_attention", "duo_retrieval_head", [(2, 1)], 0.0, 1.0, kv=True)
    roles = assign_roles(scores, Shape)
    assert fired(roles, "duo_retrieval") == [(2, 3), (2, 4), (2, 5)]  # 6 heads / 2 KV heads: group of 3


def test_nan_never_fires_and_circuit_classes_become_roles():
    mat = np.full((Shape.n_layers, Shape.n_heads), np.nan)
    mat[1, 1] = 0.9
    scores = ScoreTable.concat([
        ScoreTable.from_matrix(mat, model="m", analysis="taxonomy", score="induction", n_samples=1),
        planted("circuits", "circuit_class_name_mover", [(3, 0), (3, 1)], 0.0, 1.0)])
    roles = assign_roles(scores, Shape)
    assert fired(roles, "induction") == [(1, 1)]
    assert fired(roles, "name_mover") == [(3, 0), (3, 1)]
    assert head_roles(roles)["L3H0"] == ["name_mover"]


def test_model_and_layer_rows_are_ignored_and_empty_tables_work():
    scores = ScoreTable.concat([ScoreTable.scalar(0.9, model="m", analysis="retrieval", score="retrieval_score",
                                                  n_samples=1),
                                ScoreTable.from_layers([0.9] * 4, model="m", analysis="taxonomy",
                                                       score="induction", n_samples=1)])
    roles = assign_roles(scores, Shape)
    assert roles.empty and list(roles.columns) == ["layer", "head", "name", "role", "analysis", "score", "rule",
                                                   "value", "source"]


def test_rule_table_is_documented_once():
    table = rule_table()
    assert list(table["role"]) == [r.role for r in RULES] and table["source"].str.len().min() > 5
    md = readme_table()
    assert all(f"| {r.role} |" in md for r in RULES)
    with pytest.raises(ValueError, match="rule kind 'between' unknown"):
        RoleRule("x", "a", "s", "between", 1, "").fires(np.zeros((1, 1)))
    assert isinstance(table, pd.DataFrame)
