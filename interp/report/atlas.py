"""The head atlas page: "which heads of this model do what?" on one screen (the default ``report.html``).

Layout (drawn by ``static/atlas.js`` from one compact JSON payload; plotly.js — the vendored cartesian bundle
``static/plotly-cartesian.min.js``, MIT — is inlined once, so the page works offline):

* head map: a layer × head grid, each cell with the head's role badges (``interp.report.roles``), KV-head groups
  shaded for GQA models, a legend with counts per role that doubles as role filters, and a search box (``L18H6``);
* head card (click a cell): every head- and KV-head-level score with value, rank (1 = largest) and percentile
  (share of the model's heads with a value ≤ this one), the roles and the rule that fired, the layer's values of
  a chosen score with this head marked, and the token-level attention view (top-k keys per query position from
  ``interp.report.example``; never an n×n pattern);
* score browser: pick a score (grouped by analysis) → heatmap + distribution + top heads (head / KV-head level),
  a bar chart + table (layer level); the model-level numbers of every analysis in tables;
* head clusters (``static/atlas_clusters.js``; when ``head_similarity`` ran): each average-linkage cluster of heads
  with its size, the roles its members carry and its members; clicking a cluster shows its heads on the map, and
  the map can be coloured by cluster ("which heads cluster with the retrieval heads?" at a glance).

Values are stored at full float64 precision (shortest repr: ranks and ties in the page equal the table's), NaN
as ``null``; ±inf (``*_ratio`` scores; not JSON) as ``null`` with the model-level tables showing ``inf``.
Browser-tested (selenium + headless Chromium) in ``tests/integration/test_report_atlas.py``.
"""

from __future__ import annotations

import html as _html
import json
import math
from importlib import resources

import pandas as pd

LEVEL_ORDER = ("head", "kv_head", "layer", "model")


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _static(name: str) -> str:
    return resources.files("interp.report").joinpath("static", name).read_text(encoding="utf-8")


def _grid_values(part: pd.DataFrame, level: str, shape) -> list:
    """Row-major ``[layer, head]`` / ``[layer, kv_head]`` / ``[layer]`` values (``None`` where absent)."""
    cols = {"head": shape.n_heads, "kv_head": shape.n_kv_heads, "layer": 1}[level]
    out = [None] * (shape.n_layers * cols)
    col = {"head": "head", "kv_head": "kv_head", "layer": None}[level]
    for r in part.itertuples(index=False):
        i = int(r.layer) * cols + (int(getattr(r, col)) if col else 0)
        out[i] = _num(r.value)
    return out


def score_entries(scores: pd.DataFrame, shape) -> list[dict]:
    """One entry per (analysis, score, level) below model level: ``values`` row-major over the level's grid."""
    out = []
    for (a, s, level), part in scores[scores["level"] != "model"].groupby(["analysis", "score", "level"],
                                                                         sort=False):
        out.append({"analysis": a, "score": s, "level": level, "n_samples": int(part["n_samples"].max()),
                    "values": _grid_values(part, level, shape)})
    return out


def model_entries(scores: pd.DataFrame) -> list[dict]:
    rows = scores[scores["level"] == "model"]
    get = lambda r, c: _num(r[c]) if c in rows.columns and pd.notna(r[c]) else None  # noqa: E731
    return [{"analysis": r["analysis"], "score": r["score"], "value": _num(r["value"]), "ci_low": get(r, "ci_low"),
             "ci_high": get(r, "ci_high"), "n_samples": int(r["n_samples"]),
             "text": None if math.isfinite(r["value"]) else str(r["value"])} for _, r in rows.iterrows()]


def role_entries(roles: pd.DataFrame) -> dict:
    """``{"L{layer}H{head}": [[role, analysis, score, rule, value], ...]}``."""
    out: dict[str, list] = {}
    for r in roles.itertuples(index=False):
        out.setdefault(r.name, []).append([r.role, r.analysis, r.score, r.rule, _num(r.value)])
    return out


CLUSTER_SCORE = ("head_similarity", "cluster")  # (analysis, score) of the head-level cluster labels


def cluster_entry(scores: pd.DataFrame, shape) -> dict | None:
    """The clustering the atlas shows: ``{"analysis", "score", "labels"}`` with ``labels`` the integer cluster of
    each head, row-major over ``[layer, head]`` (``None`` where a head has no label); ``None`` when the report
    has no head-level ``head_similarity/cluster`` score."""
    a, s = CLUSTER_SCORE
    part = scores[(scores["analysis"] == a) & (scores["score"] == s) & (scores["level"] == "head")]
    if part.empty:
        return None
    labels = [None if v is None else int(round(v)) for v in _grid_values(part, "head", shape)]
    return {"analysis": a, "score": s, "labels": labels}


def payload(scores: pd.DataFrame, roles: pd.DataFrame, *, model_name: str, shape, params: dict | None = None,
            example: dict | None = None) -> dict:
    """Everything the page draws, as one JSON-able dict."""
    from interp.scores import ScoreTable

    from .roles import RULES, rule_table

    scores = ScoreTable.with_level(scores)
    used = set(roles["role"])
    rules = [{k: r[k] for k in ("role", "analysis", "score", "rule", "source")}
             for r in rule_table().to_dict("records")]
    extra = sorted(used - {r.role for r in RULES})  # circuit classes
    rules += [{"role": c, "analysis": "", "score": "circuit_class_" + c, "rule": f"circuit_class_{c} = 1",
               "source": "circuit class"} for c in extra]
    return {"model": model_name,
            "shape": {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_kv_heads": shape.n_kv_heads,
                      "d_head": getattr(shape, "d_head", None)},
            "analyses": list(dict.fromkeys(scores["analysis"])), "params": params or {},
            "scores": score_entries(scores, shape), "model_scores": model_entries(scores),
            "roles": role_entries(roles), "rules": rules, "example": example,
            "clusters": cluster_entry(scores, shape)}


def _json(data: dict) -> str:
    # compact, and safe inside <script>: no "</" can close the tag early
    return json.dumps(data, separators=(",", ":"), allow_nan=False, default=str).replace("</", "<\\/")


def render_atlas(scores: pd.DataFrame, roles: pd.DataFrame | None = None, *, model_name: str, shape,
                 params: dict | None = None, example: dict | None = None) -> str:
    """The atlas page as one self-contained HTML string. ``scores``: the tidy score table; ``roles``: the table
    of ``interp.report.roles.assign_roles`` (computed here when ``None``); ``shape``: ``interp.Shape``;
    ``example``: ``interp.report.example.build_example`` output (the attention view; omitted when ``None``)."""
    from .roles import assign_roles

    if roles is None:
        roles = assign_roles(scores, shape)
    data = payload(scores, roles, model_name=model_name, shape=shape, params=params, example=example)
    title = _html.escape(f"interp head atlas: {model_name}")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{title}</title><style>{_static('atlas.css')}</style></head><body>"
            "<div id='app'></div>"
            f"<script>{_static('plotly-cartesian.min.js')}</script>"
            f"<script id='atlas-data' type='application/json'>{_json(data)}</script>"
            f"<script>{_static('atlas_clusters.js')}</script>"
            f"<script>{_static('atlas.js')}</script></body></html>\n")
