"""``compare.html``: the page of ``interp compare`` (one self-contained file; the vendored plotly.js inlined once).

A table of every score with its Spearman ρ (sortable by eye: lowest first), one figure per score — a scatter of
the head (or layer) values A vs B for equal shapes, or both layer profiles over relative depth for different
shapes (drawn by ``static/compare.js``) — the heads that gained / lost a role, and the model-level numbers.
"""

from __future__ import annotations

import html as _html
import json
import math

import numpy as np
import pandas as pd

CSS = """body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4}td.l{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:.5em}
.fig{width:370px;height:330px}.meta{color:#555;font-size:13px}"""


def _clean(v):
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def _esc(x) -> str:
    return _html.escape(str(x))


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def _table(df: pd.DataFrame, cols: list[str], cls: str) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(
        f"<td>{_fmt(r[c])}</td>" if isinstance(r[c], (float, np.floating)) else f"<td class='l'>{_esc(r[c])}</td>"
        for c in cols) + "</tr>" for _, r in df.iterrows())
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"



def render_compare(label_a: str, label_b: str, table: pd.DataFrame, roles: pd.DataFrame, models: pd.DataFrame,
                   figs: list[dict]) -> str:
    from .atlas import _static

    order = table.sort_values("spearman", na_position="last", kind="stable")
    data = {"a": label_a, "b": label_b, "figs": [{k: _clean(v) for k, v in f.items()} for f in figs]}
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    if len(roles):
        counts = roles.groupby(["role", "change"]).size().unstack(fill_value=0).reset_index()
        role_html = (_table(counts, list(counts.columns), "roles-count") + "<details><summary>every head</summary>"
                     + _table(roles, list(roles.columns), "roles") + "</details>")
    else:
        role_html = "<p class='meta'>no role changed (roles are compared head by head for equal shapes only)</p>"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>interp compare</title>"
            f"<style>{CSS}</style></head><body><h1>Compare: {_esc(label_a)} → {_esc(label_b)}</h1>"
            "<p class='meta'>Spearman ρ of each score over heads (same shape) or of the layer profiles by relative "
            "depth (different shapes); see interp/report/compare.py.</p>"
            "<h2>Scores</h2>" + _table(order, list(order.columns), "compare") +
            "<h2>Roles gained / lost</h2>" + role_html +
            "<h2>Model-level numbers</h2>" + (_table(models, list(models.columns), "model-level") if len(models)
                                              else "<p class='meta'>none in common</p>") +
            "<h2>Figures</h2><div id='figs' class='figs'></div>"
            f"<script>{_static('plotly-cartesian.min.js')}</script>"
            f"<script id='cmp-data' type='application/json'>{blob}</script>"
            f"<script>{_static('compare.js')}</script></body></html>\n")
