"""Head roles: which heads of a model do what, from the score table by ONE documented rule table.

Each rule names a role, the (analysis, score) it reads, a kind and a threshold, and its source:

    kind        fires for a head when                                        used for
    gt          value > threshold                                             a paper's threshold
    lt          value < threshold                                             streaming heads (outside mass)
    flag        value >= 0.5 (a 0/1 score)                                    DuoAttention gates, local heads
    top_k       the head is among the ``threshold`` highest values            Ships (top-k membership)
    percentile  value >= the ``threshold``-th percentile of the score         no published threshold
                (over the model's heads, NaN excluded; and value > 0)

``score`` may end in ``*`` (e.g. ``sink_alpha_*``: every condition; the row names the score that fired). The sink
rule reads natural text only (``sink_alpha_prose``): on random or repeated tokens nearly every head of a small
model sinks, which says little about the head. KV-head-level
scores (DuoAttention's α per KV head, GQA) give their role to every query head of the group:
``head // (n_heads // n_kv_heads) == kv_head``. Circuit classes: any score ``circuit_class_<name>`` of an analysis
marks membership (value >= 0.5) and gives the role ``<name>`` (e.g. ``name_mover``), with no table entry needed.

``assign_roles(scores, shape)`` → the ``roles.parquet`` table: one row per (head, role, score) that fired, columns
``layer, head, name (L{layer}H{head}), role, analysis, score, rule (text), value, source``.
Tested rule by rule on planted score tables in ``tests/unit/test_report_roles.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

KINDS = ("gt", "lt", "flag", "top_k", "percentile")
COLUMNS = ["layer", "head", "name", "role", "analysis", "score", "rule", "value", "source"]


@dataclass(frozen=True)
class RoleRule:
    """One row of the rule table: ``role`` fires for a head whose ``analysis/score`` passes ``kind threshold``."""

    role: str
    analysis: str
    score: str
    kind: str
    threshold: float
    source: str

    def text(self) -> str:
        t = f"{self.threshold:g}"
        return {"gt": f"{self.score} > {t}", "lt": f"{self.score} < {t}", "flag": f"{self.score} = 1",
                "top_k": f"{self.score} in top {int(self.threshold)}",
                "percentile": f"{self.score} ≥ p{t} (and > 0)"}[self.kind]

    def fires(self, values: np.ndarray) -> np.ndarray:
        """Bool mask of the same shape as ``values`` (``[layer, head]`` or ``[layer, kv_head]``; NaN never fires)."""
        v = np.asarray(values, dtype=float)
        ok = np.isfinite(v)
        if self.kind == "gt":
            return ok & (np.nan_to_num(v, nan=-np.inf) > self.threshold)
        if self.kind == "lt":
            return ok & (np.nan_to_num(v, nan=np.inf) < self.threshold)
        if self.kind == "flag":
            return ok & (np.nan_to_num(v) >= 0.5)
        if self.kind == "top_k":
            k = min(int(self.threshold), int(ok.sum()))
            out = np.zeros(v.shape, dtype=bool)
            if k > 0:  # stable: ties broken by (layer, head) order
                order = np.argsort(-np.where(ok, v, -np.inf).ravel(), kind="stable")[:k]
                out.ravel()[order] = True
            return out
        if self.kind == "percentile":
            if not ok.any():
                return np.zeros(v.shape, dtype=bool)
            cut = np.percentile(v[ok], self.threshold)
            return ok & (np.nan_to_num(v, nan=-np.inf) >= cut) & (np.nan_to_num(v) > 0)
        raise ValueError(f"rule kind {self.kind!r} unknown; choose one of {', '.join(KINDS)}")


RETRIEVAL = "Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality"
SINK = "Gu et al. 2025, When Attention Sink Emerges in Language Models (ε = 0.3, mean α over prose samples)"
TL = "TransformerLens head_detector (Nanda et al.); threshold 0.3 is interp's convention"
DUO = "Xiao et al. 2024, DuoAttention (gate α above the trained threshold)"
STREAM = "Xiao et al. 2024, StreamingLLM (outside-mass τ = 0.1, as stream_head_frac)"
SHIPS = "Zhou et al. 2025, On the Role of Attention Heads in LLM Safety (Ships top-k; k = 10 is interp's)"
WAAD = "Li et al. 2025, Attention Illuminates LLM Reasoning (local = WAAD below the median head)"
PCT = "no published threshold: top 5% of the model's heads (interp's rule)"

RULES: tuple[RoleRule, ...] = (
    RoleRule("retrieval", "retrieval", "retrieval_score", "gt", 0.1, RETRIEVAL),
    RoleRule("sink", "sinks", "sink_alpha_prose", "gt", 0.3, SINK),
    RoleRule("streaming", "sinks", "stream_outside", "lt", 0.1, STREAM),
    RoleRule("previous_token", "taxonomy", "previous_token", "gt", 0.3, TL),
    RoleRule("induction", "taxonomy", "induction", "gt", 0.3, TL),
    RoleRule("duplicate_token", "taxonomy", "duplicate_token", "gt", 0.3, TL),
    RoleRule("local", "taxonomy", "local_head", "flag", 1, WAAD),
    RoleRule("duo_retrieval", "duo_attention", "duo_retrieval_head", "flag", 1, DUO),
    RoleRule("safety", "safety", "ships_kl_sum", "top_k", 10, SHIPS),
    RoleRule("hidden_sink", "sinks", "hidden_sinks", "percentile", 95, PCT),
    RoleRule("value_drain", "sinks", "value_drain", "percentile", 95, PCT),
    RoleRule("divergent", "divergence", "context_rel", "percentile", 95, PCT),
    RoleRule("value_heavy", "vhd", "vhd", "percentile", 95, PCT),
)
CIRCUIT_PREFIX = "circuit_class_"


def rule_table(rules=RULES) -> pd.DataFrame:
    """The rule table as a DataFrame (role, analysis, score, kind, threshold, rule, source): README and legend."""
    return pd.DataFrame([{**asdict(r), "rule": r.text()} for r in rules])


def _matches(rule: RoleRule, score: str) -> bool:
    return score.startswith(rule.score[:-1]) if rule.score.endswith("*") else score == rule.score


def _grid(sub: pd.DataFrame, shape, kv: bool) -> np.ndarray:
    col, n = ("kv_head", shape.n_kv_heads) if kv else ("head", shape.n_heads)
    out = np.full((shape.n_layers, n), np.nan)
    out[sub["layer"].to_numpy(int), sub[col].to_numpy(int)] = sub["value"].to_numpy(float)
    return out


def _rows(rule: RoleRule, score: str, mat: np.ndarray, fired: np.ndarray, shape, kv: bool) -> list[dict]:
    group = max(1, shape.n_heads // max(1, shape.n_kv_heads))
    rows = []
    for layer, idx in zip(*np.nonzero(fired)):
        heads = range(idx * group, (idx + 1) * group) if kv else [idx]
        for head in heads:
            rows.append({"layer": int(layer), "head": int(head), "name": f"L{layer}H{head}", "role": rule.role,
                         "analysis": rule.analysis, "score": score, "rule": rule.text(),
                         "value": float(mat[layer, idx]), "source": rule.source})
    return rows


def _circuit_rules(scores: pd.DataFrame) -> list[RoleRule]:
    names = scores.loc[scores["score"].str.startswith(CIRCUIT_PREFIX), ["analysis", "score"]].drop_duplicates()
    return [RoleRule(s[len(CIRCUIT_PREFIX):], a, s, "flag", 1, f"circuit class from analysis {a!r}")
            for a, s in names.itertuples(index=False)]


def assign_roles(scores: pd.DataFrame, shape, rules=RULES) -> pd.DataFrame:
    """The roles table (``COLUMNS``) of a tidy score table. ``shape``: ``interp.Shape`` (n_layers, n_heads,
    n_kv_heads). Head-level scores are read as ``[layer, head]`` grids, KV-head-level as ``[layer, kv_head]``."""
    from interp.scores import ScoreTable

    scores = ScoreTable.with_level(scores)
    scores = scores[scores["level"].isin(["head", "kv_head"])]
    rows = []
    for rule in [*rules, *_circuit_rules(scores)]:
        sub = scores[scores["analysis"] == rule.analysis]
        for score in dict.fromkeys(sub["score"]):
            if not _matches(rule, score):
                continue
            for level in ("head", "kv_head"):
                part = sub[(sub["score"] == score) & (sub["level"] == level)]
                if len(part):
                    mat = _grid(part, shape, kv=level == "kv_head")
                    rows += _rows(rule, score, mat, rule.fires(mat), shape, kv=level == "kv_head")
    out = pd.DataFrame(rows, columns=COLUMNS)
    return out.sort_values(["layer", "head", "role", "score"], kind="stable").reset_index(drop=True)


def head_roles(roles: pd.DataFrame) -> dict[str, list[str]]:
    """``{"L{layer}H{head}": [role, ...]}`` (distinct roles, in rule-table order)."""
    order = {r.role: i for i, r in enumerate(RULES)}
    out: dict[str, list[str]] = {}
    for name, sub in roles.groupby("name", sort=False):
        out[name] = sorted(dict.fromkeys(sub["role"]), key=lambda r: (order.get(r, len(order)), r))
    return out


def readme_table(rules=RULES) -> str:
    """The rule table as Markdown (for README.md)."""
    lines = ["| role | analysis / score | rule | source |", "|---|---|---|---|"]
    lines += [f"| {r.role} | {r.analysis} / `{r.score}` | `{r.text()}` | {r.source} |" for r in rules]
    return "\n".join(lines)
