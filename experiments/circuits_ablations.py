"""The same IOI circuits under four ablation types: how much faithfulness moves with the ablation.

EAP scores every edge of the model's graph on ``--n`` IOI prompts (ABC corruption, logit difference); the top-n
edges by |score| form circuits of several sizes. Each circuit is evaluated with every edge outside it ablated
by ``resample`` (the paired corrupt prompt), ``mean`` (position mean over the corrupt prompts), ``zero`` and
``cama`` (context-aware mean over the clean prompts, Mamidanna et al. 2025), with
``faithfulness = (M(C) − M(∅)) / (M(clean) − M(∅))``, M(∅) = every edge ablated the same way
(``interp.analyses.circuits.ablations.faithfulness_by_ablation``). The circuits are found with resample-style
EAP, so the resample column is the one they were selected for.

``--spot-checks`` adds the completeness and minimality spot checks of Wang et al. (``circuits.completeness``)
for the largest circuit, under resample ablation.

Prints a table and writes reports/experiments/circuits_ablations_<model>.json.

    python experiments/circuits_ablations.py --model default --sizes 100 1000 3000 10000 21521
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from interp import io


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=16, help="IOI prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000, 10000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spot-checks", action="store_true", help="completeness / minimality of the largest circuit")
    ap.add_argument("--skip-ablations", action="store_true", help="only the spot checks")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    import interp
    from interp.analyses.circuits import Circuit, eap_scores, ioi_task
    from interp.analyses.circuits.ablations import ABLATIONS, faithfulness_by_ablation
    from interp.analyses.circuits.completeness import completeness, minimality
    from interp.graph import Graph

    t0 = time.perf_counter()
    model = interp.load_model(a.model)
    g = Graph.of(model)
    tok = ioi_task(model, a.n, seed=a.seed).tokens(model)
    t1 = time.perf_counter()
    scores = eap_scores(model, tok.clean, tok.corrupt, tok.metric)
    t_eap = time.perf_counter() - t1
    circuit = Circuit.from_scores(g, scores, method="eap", metric="logit_diff", task="ioi")
    rows = []
    for n in [] if a.skip_ablations else sorted(set(a.sizes)):
        if n > g.n_edges:
            raise SystemExit(f"--sizes: {n} exceeds the graph's {g.n_edges} edges")
        df = faithfulness_by_ablation(model, tok, circuit.top(n), types=ABLATIONS)
        for r in df.to_dict(orient="records"):
            rows.append({"size": n, "fraction": n / g.n_edges, **r})
            print(f"{n:>7d} edges ({n / g.n_edges:6.1%})  {r['ablation']:>8s}  faithfulness {r['faithfulness']:+.3f}  "
                  f"M(C) {r['m_circuit']:+.3f}  M(∅) {r['m_empty']:+.3f}  M(clean) {r['m_clean']:+.3f}", flush=True)
    table = {n: {r["ablation"]: r["faithfulness"] for r in rows if r["size"] == n} for n in sorted(set(a.sizes))
             if not a.skip_ablations}
    spread = {n: max(v.values()) - min(v.values()) for n, v in table.items()}
    print("\nfaithfulness by size (rows) and ablation (columns):")
    print(f"{'size':>7s} " + " ".join(f"{k:>9s}" for k in ABLATIONS) + "   spread")
    for n, v in table.items():
        print(f"{n:>7d} " + " ".join(f"{v[k]:+9.3f}" for k in ABLATIONS) + f"   {spread[n]:.3f}")
    spot = None
    if a.spot_checks:
        big = circuit.top(max(a.sizes))
        t2 = time.perf_counter()
        comp = completeness(model, tok, big, n_random=5, p=0.3, seed=a.seed)
        mini = minimality(model, tok, big, top=10, n_random=1, p=0.3, seed=a.seed)
        print(f"\ncompleteness of the {max(a.sizes)}-edge circuit (K = ∅ and 5 random node subsets, p = 0.3):")
        print(comp.drop(columns=["removed"]).to_string(index=False))
        print("\nminimality of its 10 highest-scoring nodes (K = ∅ and one random K):")
        print(mini.to_string(index=False))
        spot = {"size": max(a.sizes), "seconds": time.perf_counter() - t2,
                "completeness": comp.to_dict(orient="records"), "minimality": mini.to_dict(orient="records")}
    out = Path(a.out or f"reports/experiments/circuits_ablations_{model.name}.json")
    res = {"model": model.name, "n_prompts": a.n, "seed": a.seed, "n_edges": g.n_edges, "threads": a.threads,
           "selection": "top-n edges by |EAP score| (resample/ABC corruption, logit difference)",
           "eap_s": t_eap, "total_s": time.perf_counter() - t0, "table": {str(k): v for k, v in table.items()},
           "spread": {str(k): v for k, v in spread.items()}, "rows": rows, "spot_checks": spot}
    if a.skip_ablations and out.exists():  # keep the ablation table of an earlier run
        res = dict(json.loads(out.read_text()), spot_checks=spot)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, res, indent=1, sort_keys=False)
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
