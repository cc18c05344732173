"""``interp compare REPORT_A REPORT_B --out DIR``: two report folders of the same analyses, score by score.

Use: base vs instruct, two sizes, or a model vs itself under an intervention. Per (analysis, score, level) found
in both reports:

* same shape (equal ``n_layers`` and heads at that level): ``head`` / ``kv_head`` scores — Spearman rank
  correlation ρ over the heads where both values are finite; ``layer`` scores — ρ over layers;
* different shapes: ρ of the **layer profiles by relative depth**. A head-level score's profile is its mean over
  the layer's heads, ``p(l)``; each layer sits at depth ``d = l / (n_layers − 1)``. The profile of the model with
  more layers is linearly interpolated at the other model's depths (``np.interp``), and ρ is taken over those
  points;
* ``model`` scores: value A, value B and B − A.

Spearman ρ = Pearson correlation of the ranks (ties get their average rank), as ``scipy.stats.spearmanr``;
NaN when fewer than 3 pairs or a constant side. Roles (``roles.parquet``, same shape only): the heads that
gained or lost each role from A to B. Runs of different interp versions or different parameters for a shared
analysis are refused with one line unless ``force``.

Writes into ``DIR`` (atomically; a second run into a folder holding a comparison needs ``force``):
``compare.parquet`` / ``compare.csv`` (analysis, score, level, method, n, spearman), ``roles_diff.parquet``,
``model_level.parquet``, ``compare.html`` (scatter plots A vs B, or the two profiles by depth) and
``compare.json`` (what was compared). Tested on tiny planted reports in ``tests/integration/test_compare.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from interp import io

COLUMNS = ["analysis", "score", "level", "method", "n", "spearman"]


class CompareError(ValueError):
    """Bad input to ``compare_reports`` (one line: which report, what differs, what to do)."""


@dataclass
class Report:
    """One report folder: its score table, roles and manifest."""

    path: Path
    scores: pd.DataFrame
    roles: pd.DataFrame
    manifest: dict

    @property
    def shape(self) -> dict:
        return self.manifest.get("shape") or {}

    @property
    def label(self) -> str:
        return f"{self.manifest.get('model', '?')} ({self.path.name})"


def load_report(path) -> Report:
    """Read ``scores.parquet``, ``roles.parquet`` (derived when absent) and ``manifest.json`` of a report folder."""
    from interp.scores import ScoreTable

    path = Path(path)
    for f in ("scores.parquet", "manifest.json"):
        if not (path / f).is_file():
            raise CompareError(f"{path} is not an interp report folder (no {f}); pass the --out folder of "
                               "`interp report`")
    manifest = io.read_json(path / "manifest.json")
    scores = ScoreTable.read(path / "scores.parquet")
    if (path / "roles.parquet").is_file():
        roles = pd.read_parquet(path / "roles.parquet")
    else:
        from types import SimpleNamespace

        from .roles import assign_roles

        roles = assign_roles(scores, SimpleNamespace(**manifest["shape"]))
    return Report(path, scores, roles, manifest)


def check_comparable(a: Report, b: Report, force: bool = False) -> list[str]:
    """Differences that make the runs incomparable (interp version; parameters of shared analyses). Raises
    ``CompareError`` (one line) unless ``force``; returns them (for compare.json)."""
    why = []
    va, vb = a.manifest.get("interp_version"), b.manifest.get("interp_version")
    if va != vb:
        why.append(f"interp {va} vs {vb}")
    pa, pb = a.manifest.get("params") or {}, b.manifest.get("params") or {}
    for name in sorted(set(pa) & set(pb)):
        if pa[name] != pb[name]:
            keys = sorted(k for k in set(pa[name]) | set(pb[name]) if pa[name].get(k) != pb[name].get(k))
            why.append(f"params.{name} differ in {', '.join(keys)}")
    if why and not force:
        raise CompareError(f"reports {a.path} and {b.path} are not comparable: {'; '.join(why)}; rerun one of "
                           "them or pass --force")
    return why


def spearman(x, y) -> tuple[float, int]:
    """(ρ, n) over the pairs where both are finite; ρ NaN when n < 3 or a side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return float("nan"), n
    rx, ry = pd.Series(x[ok]).rank().to_numpy(), pd.Series(y[ok]).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan"), n
    return float(np.corrcoef(rx, ry)[0, 1]), n


def _grid(sub: pd.DataFrame, level: str, n_layers: int, n_cols: int) -> np.ndarray:
    """``[layer, head]`` / ``[layer, kv_head]`` / ``[layer, 1]`` values of one score (NaN where absent)."""
    out = np.full((n_layers, n_cols), np.nan)
    col = {"head": sub["head"], "kv_head": sub.get("kv_head"), "layer": 0 * sub["layer"]}[level]
    out[sub["layer"].to_numpy(int), np.asarray(col, dtype=int)] = sub["value"].to_numpy(float)
    return out


def _cols(shape: dict, level: str) -> int:
    return {"head": shape["n_heads"], "kv_head": shape["n_kv_heads"], "layer": 1}[level]


def depth_profiles(pa: np.ndarray, pb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer profiles ``[layer]`` of two depths on one relative-depth grid: ``(depth, a, b)``, the longer one
    interpolated at the shorter one's depths ``l / (n − 1)``."""
    da, db = np.linspace(0, 1, len(pa)), np.linspace(0, 1, len(pb))
    if len(pa) <= len(pb):
        ok = np.isfinite(pb)
        return da, pa, np.interp(da, db[ok], pb[ok]) if ok.sum() >= 2 else np.full(len(pa), np.nan)
    ok = np.isfinite(pa)
    return db, np.interp(db, da[ok], pa[ok]) if ok.sum() >= 2 else np.full(len(pb), np.nan), pb


def _pair(a: Report, b: Report, key, sa, sb) -> tuple[dict, dict]:
    """One compare row and its figure data for score ``key = (analysis, score, level)``."""
    level = key[2]
    ga = _grid(sa, level, a.shape["n_layers"], _cols(a.shape, level))
    gb = _grid(sb, level, b.shape["n_layers"], _cols(b.shape, level))
    if ga.shape == gb.shape:
        rho, n = spearman(ga.ravel(), gb.ravel())
        method, fig = ("heads" if level != "layer" else "layers"), {"x": ga.ravel(), "y": gb.ravel()}
        fig["labels"] = [f"L{l}H{h}" if level == "head" else (f"L{l}KV{h}" if level == "kv_head" else f"L{l}")
                         for l in range(ga.shape[0]) for h in range(ga.shape[1])]
    else:
        with warnings.catch_warnings():  # a layer without values: NaN, no warning
            warnings.simplefilter("ignore", RuntimeWarning)
            pa, pb = np.nanmean(ga, axis=1), np.nanmean(gb, axis=1)
        depth, xa, xb = depth_profiles(pa, pb)
        rho, n = spearman(xa, xb)
        method = "layer profile by relative depth"
        fig = {"depth_a": np.linspace(0, 1, len(pa)), "a": pa, "depth_b": np.linspace(0, 1, len(pb)), "b": pb}
    row = {"analysis": key[0], "score": key[1], "level": level, "method": method, "n": n, "spearman": rho}
    return row, {"key": "/".join(key[:2]) + f" ({level})", "rho": rho, "method": method, **fig}


def role_changes(a: Report, b: Report) -> pd.DataFrame:
    """Heads that gained / lost a role from A to B (same shape only; roles of analyses both ran): name, layer,
    head, role, change."""
    cols = ["name", "layer", "head", "role", "change"]
    if (a.shape.get("n_layers"), a.shape.get("n_heads")) != (b.shape.get("n_layers"), b.shape.get("n_heads")):
        return pd.DataFrame(columns=cols)
    common = set(a.scores["analysis"]) & set(b.scores["analysis"])  # a role of an analysis B did not run is not lost

    def heads(r):
        rows = r.roles[r.roles["analysis"].isin(common)]
        return set(rows[["name", "layer", "head", "role"]].itertuples(index=False, name=None))

    sa, sb = heads(a), heads(b)
    rows = [(*r, "gained") for r in sb - sa] + [(*r, "lost") for r in sa - sb]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["role", "change", "layer", "head"]).reset_index(drop=True)


def model_level(a: Report, b: Report) -> pd.DataFrame:
    ma = a.scores[a.scores["level"] == "model"].set_index(["analysis", "score"])["value"]
    mb = b.scores[b.scores["level"] == "model"].set_index(["analysis", "score"])["value"]
    both = pd.concat({"a": ma, "b": mb}, axis=1, join="inner").reset_index()
    return both.assign(diff=both["b"] - both["a"])


def compare_tables(a: Report, b: Report) -> tuple[pd.DataFrame, list[dict]]:
    """(the per-score table ``COLUMNS``, figure data) for every non-model score in both reports."""

    def keyed(r):
        s = r.scores[r.scores["level"] != "model"]
        return {k: g for k, g in s.groupby(["analysis", "score", "level"], sort=False)}

    ka, kb = keyed(a), keyed(b)
    rows, figs = [], []
    for key in [k for k in ka if k in kb]:
        row, fig = _pair(a, b, key, ka[key], kb[key])
        rows.append(row)
        figs.append(fig)
    return pd.DataFrame(rows, columns=COLUMNS), figs


def compare_reports(report_a, report_b, out, *, force: bool = False) -> pd.DataFrame:
    """Compare two report folders and write ``out`` (see the module docstring); returns the per-score table."""
    a, b = load_report(report_a), load_report(report_b)
    why = check_comparable(a, b, force)
    out = Path(out)
    if (out / "compare.json").exists() and not force:
        raise CompareError(f"{out} already holds a comparison; choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out} exists and is not a folder")
    table, figs = compare_tables(a, b)
    roles, models = role_changes(a, b), model_level(a, b)
    io.write_parquet(out / "compare.parquet", table)
    io.write_csv(out / "compare.csv", table)
    io.write_parquet(out / "roles_diff.parquet", roles)
    io.write_parquet(out / "model_level.parquet", models)
    from .compare_html import render_compare

    io.write_html(out / "compare.html", render_compare(a.label, b.label, table, roles, models, figs))
    io.write_json(out / "compare.json", {"a": str(a.path), "b": str(b.path), "model_a": a.manifest.get("model"),
                                         "model_b": b.manifest.get("model"), "forced_over": why,
                                         "n_scores": len(table)})
    return table


def summary(table: pd.DataFrame) -> str:
    """A few lines for the terminal."""
    if table.empty:
        return "no score in common"
    t = table.dropna(subset=["spearman"]).sort_values("spearman")
    lines = [f"{len(table)} scores compared; median Spearman {t['spearman'].median():.3f}"]
    lines += [f"  {r.analysis}/{r.score} ({r.level}, {r.method}): ρ = {r.spearman:.3f} (n {r.n})"
              for r in t.itertuples()]
    return "\n".join(lines)
