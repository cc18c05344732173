"""Experiment: ``interp compare`` of a model's report vs the same model with its top-k induction heads ablated.

The base report's ``taxonomy/induction`` score picks the top-k heads; the same analyses (same parameters) run
again with ``Zero(Site(layer, "z", head))`` on those heads for every forward pass (``Model.intervene``); then
``compare_reports`` gives per-score Spearman ρ (same shape: over heads) and the heads that gained / lost a role.
Writes the ablated report, the comparison folder, and ``reports/experiments/compare_<model>_induction_ablated.json``
(the per-score table, the role changes, timings).

    python experiments/compare_ablation.py BASE_REPORT --out DIR [--k 5] [--analyses taxonomy,sinks]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from interp import io


def top_heads(scores, k: int, score: str = "induction") -> list[tuple[int, int]]:
    sub = scores[(scores["analysis"] == "taxonomy") & (scores["score"] == score) & (scores["level"] == "head")]
    if sub.empty:
        raise SystemExit(f"the base report has no taxonomy/{score} score; run `interp report -a taxonomy` first")
    from interp import heads

    return heads.top_heads(sub, k, score=score)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the base report folder")
    ap.add_argument("--out", required=True, help="folder for the ablated report and the comparison")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--analyses", default=None, help="default: the base report's analyses")
    args = ap.parse_args()

    from interp import Site, load_model
    from interp.interventions import Zero
    from interp.report import run_report
    from interp.report.compare import compare_reports, summary
    from interp.scores import ScoreTable

    base = Path(args.base)
    manifest = io.read_json(base / "manifest.json")
    heads = top_heads(ScoreTable.read(base / "scores.parquet"), args.k)
    names = args.analyses.split(",") if args.analyses else manifest["analyses"]
    params = {n: p for n, p in manifest["params"].items() if n in names}
    model = load_model(manifest.get("model_source") or manifest["model"])
    out = Path(args.out)
    t0 = time.perf_counter()
    with model.intervene(*[Zero(Site(layer, "z", head)) for layer, head in heads]):
        run_report(model, names, out / "ablated", params=params, seed=manifest.get("seed", 0), progress=False)
    seconds = time.perf_counter() - t0
    table = compare_reports(base, out / "ablated", out / "compare")
    print(f"ablated {', '.join(f'L{l}H{h}' for l, h in heads)}")
    print(summary(table))
    roles = pd.read_parquet(out / "compare" / "roles_diff.parquet")
    io.write_json(f"reports/experiments/compare_{manifest['model']}_induction_ablated.json", {
        "model": manifest["model"], "ablated": [f"L{l}H{h}" for l, h in heads], "analyses": names,
        "ablated_report_seconds": round(seconds, 1), "scores": table.to_dict("records"),
        "role_changes": roles.to_dict("records"), "uptime": os.popen("uptime").read().strip()})


if __name__ == "__main__":
    main()
