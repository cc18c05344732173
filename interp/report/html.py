"""The report page: one self-contained HTML file (plotly.js inlined once, no CDN, no network at view time).

Per analysis, one section per score, by its ``level`` (``interp.scores``): head level — a layer × head heatmap,
the score's distribution (histogram) and a top-heads table; KV-head level — the same over layer × KV head;
layer level — a bar chart over layers and a top-layers table; model level — the analysis's model-level numbers
(value, interval, n_samples) in one table. Tables written before the ``level`` column get it derived.
The "atlas" compares head-level scores: Jaccard overlap of their top-k head sets, ``|A ∩ B| / |A ∪ B|``, and
Spearman rank correlation over heads where both are defined, shown as two heatmaps in one figure.
Figure div ids are deterministic, so equal inputs give byte-equal pages.
Rendered in a real headless Chromium in ``tests/integration/test_report_html.py``.
"""

from __future__ import annotations

import html as _html

import numpy as np
import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em} table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} .meta{color:#555;font-size:14px} .score{display:flex;gap:1.5em;align-items:flex-start}
.score .fig{flex:1 1 0;min-width:0} .score .top{flex:0 0 190px;order:2} nav a{margin-right:1em}
"""


def _esc(x) -> str:
    return _html.escape(str(x))


def _levels(scores: pd.DataFrame) -> pd.DataFrame:
    from interp.scores import ScoreTable

    return ScoreTable.with_level(scores)


def head_level(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows with a (layer, query head)."""
    scores = _levels(scores)
    return scores[scores["level"] == "head"]


def kv_level(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows with a (layer, KV head)."""
    scores = _levels(scores)
    return scores[scores["level"] == "kv_head"]


def layer_level(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows with a layer only (head = -1)."""
    scores = _levels(scores)
    return scores[scores["level"] == "layer"]


def top_k_jaccard(wide: pd.DataFrame, k: int) -> pd.DataFrame:
    """Jaccard index of the top-``k`` index sets (largest values) of every pair of columns of ``wide``."""
    sets = {c: set(wide[c].dropna().nlargest(min(k, wide[c].notna().sum())).index) for c in wide.columns}
    cols = list(wide.columns)
    out = pd.DataFrame(np.nan, index=cols, columns=cols)
    for a in cols:
        for b in cols:
            union = sets[a] | sets[b]
            out.loc[a, b] = len(sets[a] & sets[b]) / len(union) if union else np.nan
    return out


def atlas_tables(scores: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Jaccard of top-k head sets, Spearman rank correlation) between all head-level analysis/score pairs."""
    hl = head_level(scores).copy()
    hl["key"] = hl["analysis"] + "/" + hl["score"]
    wide = hl.pivot_table(index=["layer", "head"], columns="key", values="value", aggfunc="mean", sort=False)
    return top_k_jaccard(wide, k), wide.corr(method="spearman", min_periods=3)


class _Figs:
    """Turns plotly figures into divs; the first one carries plotly.js inline."""

    def __init__(self):
        self.n = 0

    def div(self, fig) -> str:
        self.n += 1
        return fig.to_html(full_html=False, include_plotlyjs=self.n == 1, div_id=f"fig{self.n}",
                           config={"displaylogo": False, "responsive": True})


def _score_figure(mat: np.ndarray, name: str, head_label: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_layers = mat.shape[0]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.16,
                        subplot_titles=(f"{name}: layer × {head_label}", "distribution over heads"))
    fig.add_trace(go.Heatmap(z=mat, x=list(range(mat.shape[1])), y=list(range(n_layers)),
                             colorscale="Viridis",
                             colorbar=dict(x=0.52, len=0.9, thickness=14),
                             hovertemplate=f"L%{{y}} {head_label} %{{x}}<br>value %{{z:.4g}}<extra></extra>"),
                  row=1, col=1)
    vals = mat[np.isfinite(mat)].ravel()
    fig.add_trace(go.Histogram(x=vals, nbinsx=min(40, max(5, vals.size // 3)), marker_color="#4c72b0",
                               showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text=head_label, dtick=1 if mat.shape[1] <= 16 else None, row=1, col=1)
    fig.update_yaxes(title_text="layer", dtick=1 if n_layers <= 16 else None, row=1, col=1)
    fig.update_xaxes(title_text="value", row=1, col=2)
    fig.update_yaxes(title_text=f"{head_label}s", row=1, col=2)
    fig.update_layout(height=max(320, 120 + 14 * n_layers), margin=dict(l=50, r=20, t=50, b=40))
    return fig


def _layer_figure(values: np.ndarray, name: str):
    import plotly.graph_objects as go

    layers = list(range(values.shape[0]))
    fig = go.Figure(go.Bar(x=layers, y=values, marker_color="#4c72b0",
                           hovertemplate="layer %{x}<br>value %{y:.4g}<extra></extra>"))
    fig.update_layout(title=dict(text=f"{name}: per layer", font=dict(size=14)), height=300,
                      margin=dict(l=50, r=20, t=50, b=40), showlegend=False)
    fig.update_xaxes(title_text="layer", dtick=1 if len(layers) <= 32 else None)
    fig.update_yaxes(title_text="value")
    return fig


def _layer_table(sub: pd.DataFrame, k: int) -> str:
    top = sub.sort_values("value", ascending=False, kind="stable").head(k)
    rows = "".join(f"<tr><td>{i + 1}</td><td>L{int(r.layer)}</td><td>{r.value:.4g}</td></tr>"
                   for i, r in enumerate(top.itertuples()))
    return f"<table><tr><th>#</th><th>layer</th><th>value</th></tr>{rows}</table>"


def _model_table(rows: pd.DataFrame) -> str:
    ci = [c for c in ("ci_low", "ci_high") if c in rows.columns and rows[c].notna().any()]
    head = "".join(f"<th>{c}</th>" for c in ["score", "value", *ci, "n_samples"])
    body = "".join(
        "<tr><td>" + _esc(r["score"]) + f"</td><td>{r['value']:.6g}</td>"
        + "".join(f"<td>{r[c]:.4g}</td>" if pd.notna(r[c]) else "<td></td>" for c in ci)
        + f"<td>{int(r['n_samples'])}</td></tr>" for _, r in rows.iterrows())
    return f"<table class='model-level'><tr>{head}</tr>{body}</table>"


def _top_table(sub: pd.DataFrame, k: int, head_col: str) -> str:
    top = sub.sort_values("value", ascending=False, kind="stable").head(k)
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>L{int(r.layer)}{'KV' if head_col == 'kv_head' else 'H'}"
        f"{int(getattr(r, head_col))}</td><td>{r.value:.4g}</td></tr>"
        for i, r in enumerate(top.itertuples()))
    return f"<table><tr><th>#</th><th>head</th><th>value</th></tr>{rows}</table>"


def _atlas_figure(jac: pd.DataFrame, rho: pd.DataFrame, k: int):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = list(jac.columns)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=(f"Jaccard of top-{k} head sets", "Spearman rank correlation"))
    fig.add_trace(go.Heatmap(z=jac.to_numpy(), x=labels, y=labels, zmin=0, zmax=1, colorscale="Blues",
                             colorbar=dict(x=0.455, len=0.9, thickness=14), texttemplate="%{z:.2f}",
                             hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=rho.to_numpy(), x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu",
                             colorbar=dict(x=1.0, len=0.9, thickness=14), texttemplate="%{z:.2f}",
                             hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(autorange="reversed")  # matrix layout: diagonal from top left
    fig.update_yaxes(showticklabels=False, row=1, col=2)  # same labels as the left panel
    fig.update_layout(height=max(420, 200 + 40 * len(labels)), margin=dict(l=200, r=20, t=50, b=200))
    return fig


def _head_block(part: pd.DataFrame, score: str, shape, figs: _Figs, top_k: int, kv: bool) -> str:
    head_col, n_cols, label = ("kv_head", shape.n_kv_heads, "KV head") if kv else ("head", shape.n_heads, "head")
    mat = np.full((shape.n_layers, n_cols), np.nan)
    mat[part["layer"].to_numpy(), part[head_col].astype(int).to_numpy()] = part["value"].to_numpy()
    # the table comes first in the DOM so that plotly sizes the figure to the space left over
    return (f"<div class='score'><div class='top'><b>top {top_k}</b>" + _top_table(part, top_k, head_col)
            + "</div><div class='fig'>" + figs.div(_score_figure(mat, score, label)) + "</div></div>")


def _layer_block(part: pd.DataFrame, score: str, shape, figs: _Figs, top_k: int) -> str:
    values = np.full(shape.n_layers, np.nan)
    values[part["layer"].to_numpy()] = part["value"].to_numpy()
    return (f"<div class='score'><div class='top'><b>top {top_k} layers</b>" + _layer_table(part, top_k)
            + "</div><div class='fig'>" + figs.div(_layer_figure(values, score)) + "</div></div>")


def _section(sid: str, title: str, n: int, content: str) -> str:
    return (f"<section class='score-section' id='{_esc(sid)}'><h3>{_esc(title)}</h3>"
            f"<p class='meta'>n_samples {n}</p>{content}</section>")


def _analysis_sections(sub_a: pd.DataFrame, a: str, shape, figs: _Figs, top_k: int) -> list[str]:
    """One section per head / KV-head / layer-level score, then one table of the model-level numbers."""
    out = []
    for score in dict.fromkeys(sub_a["score"]):
        sub = sub_a[(sub_a["score"] == score) & (sub_a["level"] != "model")]
        blocks = []
        for level in ("head", "kv_head"):
            part = sub[sub["level"] == level]
            if len(part):
                blocks.append(_head_block(part, score, shape, figs, top_k, kv=level == "kv_head"))
        part = sub[sub["level"] == "layer"]
        if len(part):
            blocks.append(_layer_block(part, score, shape, figs, top_k))
        if blocks:
            out.append(_section(f"{a}-{score}", score, int(sub["n_samples"].max()), "".join(blocks)))
    model_rows = sub_a[sub_a["level"] == "model"]
    if len(model_rows):
        out.append(_section(f"{a}-model-level", "model-level numbers", int(model_rows["n_samples"].max()),
                            _model_table(model_rows)))
    return out


def render_report(scores: pd.DataFrame, *, model_name: str, shape, params: dict | None = None,
                  top_k: int = 10) -> str:
    """The report page as one HTML string. ``scores``: the tidy score table (with or without ``level``);
    ``shape``: ``interp.Shape``. Every score section holds a figure or a table."""
    figs = _Figs()
    scores = _levels(scores)
    analyses = list(dict.fromkeys(scores["analysis"]))
    body = [f"<h1>Attention-head report: {_esc(model_name)}</h1>",
            f"<p class='meta'>{shape.n_layers} layers × {shape.n_heads} heads ({shape.n_kv_heads} KV heads), "
            f"d_head {shape.d_head}. Analyses: {', '.join(map(_esc, analyses)) or '(none)'}. "
            f"Provenance in manifest.json; tables in scores.parquet / scores.csv.</p>",
            "<nav>" + "".join(f"<a href='#{_esc(a)}'>{_esc(a)}</a>" for a in analyses)
            + "<a href='#atlas'>atlas</a></nav>"]
    for a in analyses:
        sub_a = scores[scores["analysis"] == a]
        body.append(f"<h2 id='{_esc(a)}'>{_esc(a)}</h2>")
        if params and a in params:
            body.append(f"<p class='meta'>params: {_esc(params[a])}</p>")
        body += _analysis_sections(sub_a, a, shape, figs, top_k)
    body.append("<h2 id='atlas'>Atlas: how head sets overlap</h2>")
    jac, rho = atlas_tables(scores, top_k) if len(head_level(scores)) else (pd.DataFrame(), pd.DataFrame())
    if jac.shape[0] >= 2:
        body.append(f"<p class='meta'>Jaccard |A∩B|/|A∪B| of the top-{top_k} heads of each score, and "
                    "Spearman rank correlation of the scores over heads.</p>")
        body.append(figs.div(_atlas_figure(jac, rho, top_k)))
    else:
        body.append("<p class='meta'>The atlas needs at least two head-level scores.</p>")
    if figs.n == 0:  # keep the page self-contained and consistent even without figures
        body.append("<p class='meta'>No head- or layer-level scores to plot.</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>interp report: {_esc(model_name)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
