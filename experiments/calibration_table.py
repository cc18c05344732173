"""Test-half accuracy of attention calibration on a real model: clean vs ZeroTuning (supervised, unsupervised)
vs ACT vs the same edits on as many random heads, with Wilson 95% intervals and the exact McNemar test vs clean.

    python experiments/calibration_table.py [--model default] [--analyses zerotuning act] [--budget-s 540]

Runs each analysis's own ``run`` (``analyses/zerotuning.py``, ``analyses/act.py``: heads and γ chosen on the
calibration / validation splits only, the test half scored once per condition) with the sizes of ``SIZES``.
Every ``interp.choices.score_choices`` call is memoised in a JSONL checkpoint (``interp.io.JsonlCheckpoint``,
key = model, items, batch size, chat flag and the printed interventions), so a run stopped by ``--budget-s``
(exit 3, "resume") or killed resumes where it stopped, and pieces of < 10 min add up to the whole run; the
statistics passes (a_0, hidden-sink mass) are recomputed on resume (a few seconds). When an analysis finishes,
``reports/experiments/calibration_<analysis>_<model>.json`` (all its tables, uptime before / after each piece)
and, for ZeroTuning, the γ-sweep figure ``calibration_sweep_<model>.html`` are written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "experiments"
SIZES = {
    "zerotuning": dict(tasks=["sentiment", "category"], n_candidates=6, sweep=[0.5, 2.0], grid=[0.5, 2.0, 4.0],
                       n_calibration=24, n_validation=24, n_test=100, n_random=3, batch_size=25),
    "act": dict(tasks=["sentiment", "category"], n_candidates=6, n_calibration=24, n_test=100, n_random=3,
                batch_size=25),
    "context_attention": dict(n_heads=8, grid=[1.5, 2.0, 4.0], n_calibration=32, n_test=32, n_random=3,
                              batch_size=16),
}


class OutOfTime(Exception):
    pass


def uptime() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def memoised(real, ckpt, deadline):
    """``score_choices`` with every result kept in ``ckpt``; refuses new work after ``deadline``."""
    from interp.choices import ChoiceScores

    def score(model, items, *, interventions=(), batch_size=16, chat=False, per_batch=None):
        if per_batch is not None:  # closures have no stable key: not memoised (not used by these analyses)
            return real(model, items, interventions=interventions, batch_size=batch_size, chat=chat,
                        per_batch=per_batch)
        raw = json.dumps([model.name, [it["id"] for it in items], batch_size, chat, [repr(i) for i in interventions]])
        key = hashlib.sha1(raw.encode()).hexdigest()
        if key in ckpt:
            r = ckpt.get(key)
            return ChoiceScores(torch.tensor(r["logprobs"], dtype=torch.float64), torch.tensor(r["labels"]))
        if time.time() > deadline:
            raise OutOfTime
        sc = real(model, items, interventions=interventions, batch_size=batch_size, chat=chat)
        ckpt.add({"key": key, "what": raw[:300], "logprobs": sc.logprobs.tolist(), "labels": sc.labels.tolist()})
        return sc

    return score


def sweep_figure(sweep, calib, path, model_name):
    import pandas as pd
    import plotly.express as px
    from plotly.subplots import make_subplots

    s = pd.DataFrame(sweep).sort_values("gamma")
    s["head"] = s["task"] + " L" + s["layer"].astype(str) + "H" + s["head"].astype(str)
    c = pd.DataFrame(calib).sort_values("gamma")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "per-head sweep: Δ mean label log-prob (calibration split)", "joint γ on kept heads (validation split)"))
    for tr in px.line(s, x="gamma", y="delta", color="head", markers=True).data:
        fig.add_trace(tr, row=1, col=1)
    for (task, col), part in ((k, c[c["task"] == k[0]]) for k in
                              [(t, col) for t in c["task"].unique() for col in ("val_accuracy", "val_entropy")]):
        fig.add_scatter(x=part["gamma"], y=part[col], mode="lines+markers", name=f"{task} {col}", row=1, col=2)
    fig.update_xaxes(type="log", title="γ")
    fig.update_layout(title=f"ZeroTuning γ sweep on {model_name}", height=420, width=1100)
    from interp import io

    io.write_text(path, fig.to_html(include_plotlyjs="cdn", full_html=True))


def run_one(model, name, up0, t0):
    from interp import io
    from interp.analyses import registry

    out = registry.get(name).run(model, SIZES[name])
    doc = {"model": model.name, "analysis": name, "params": SIZES[name], "seconds_last_piece": time.time() - t0,
           "uptime_before": up0, "uptime_after": uptime(),
           "tables": {k: json.loads(v.to_json(orient="records")) for k, v in out.items()}}
    io.write_json(OUT / f"calibration_{name}_{model.name}.json", doc)
    if name == "zerotuning":
        sweep_figure(doc["tables"]["sweep"], doc["tables"]["calibration"],
                     OUT / f"calibration_sweep_{model.name}.html", model.name)
    s = out["scores"]
    acc = s[s["score"].str.contains("_accuracy_") & ~s["score"].str.contains("delta|random_mean")]
    print(f"\n{name} on {model.name}")
    for r in acc.itertuples():
        p = s.loc[s["score"] == r.score.replace("_accuracy_", "_mcnemar_p_"), "value"]
        print(f"  {r.score:45s} {r.value:.3f} [{r.ci_low:.2f}, {r.ci_high:.2f}] n={r.n_samples}"
              + (f"  McNemar p={p.iloc[0]:.3f}" if len(p) else ""))


def main(argv=None):
    import interp
    import interp.choices
    from interp import io

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--analyses", nargs="+", default=["zerotuning", "act"], choices=sorted(SIZES))
    ap.add_argument("--budget-s", type=float, default=540, help="start no new forward batch after this")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", nargs="+", default=None, help="replace the tasks of SIZES (e.g. sentiment)")
    a = ap.parse_args(argv)
    if a.tasks:
        for size in SIZES.values():
            if "tasks" in size:
                size["tasks"] = list(a.tasks)
    t0, up0 = time.time(), uptime()
    torch.set_num_threads(a.threads)
    model = interp.load_model(a.model)
    ckpt = io.JsonlCheckpoint(OUT / f"calibration_{model.name}.ckpt.jsonl", {"model": model.name},
                              hint="delete it to start over")
    interp.choices.score_choices = memoised(interp.choices.score_choices, ckpt, t0 + a.budget_s)
    try:
        for name in a.analyses:
            run_one(model, name, up0, t0)
    except OutOfTime:
        print(f"budget of {a.budget_s:.0f} s spent ({len(ckpt.done())} results checkpointed); rerun to resume")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
