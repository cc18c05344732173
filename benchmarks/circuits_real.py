"""IOI circuits on a real model: accuracy, EAP (and EAP-IG) circuits, faithfulness vs size, and component reuse
between IOI and Colored Objects (``interp.analyses.circuits``).

  accuracy      on ``--n-acc`` generated IOI prompts: P(logit IO > logit S) at END and P(IO is the top-1 token);
                the same for Colored Objects (answer colour vs the other queried colour)
  eap / eap-ig  scores for every edge of the graph on ``--n`` IOI prompts (ABC corruption, logit difference)
  faithfulness  (M(C_n) − M(corrupt)) / (M(clean) − M(corrupt)) of the top-n edges by |score| over a log grid
                of n (``--grid`` points), its area over n / n_edges, and the smallest n reaching 0.85 (on the grid,
                then refined by bisection between the neighbouring grid points; the curve need not be monotone)
  reuse         node and head Jaccard (``component_reuse``) of the top-n EAP circuits of IOI and Colored Objects
                at the same n (matched size), for several n

Writes reports/bench/circuits_<model>.json and the IOI EAP circuit (top ``--save-top`` edges) as
reports/bench/circuits_<model>_ioi_eap_top<N>.json. Intermediate score matrices are cached in ``--cache``.

    OMP_NUM_THREADS=1 python benchmarks/circuits_real.py --model qwen2.5-coder-0.5b --n 16 --ig-steps 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from interp import io


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=16, help="prompts for EAP and faithfulness")
    ap.add_argument("--n-acc", type=int, default=64, help="prompts for accuracy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=int, default=16, help="log-spaced circuit sizes on the curve")
    ap.add_argument("--bisect", type=int, default=4, help="bisection steps for the smallest size reaching 0.85")
    ap.add_argument("--ig-steps", type=int, default=0, help="EAP-IG steps m (0: skip)")
    ap.add_argument("--curves", nargs="+", default=None,
                    help="methods whose curve to (re)compute (eap, eap_ig_m<K>); others are kept from the existing "
                         "JSON when present (default: all)")
    ap.add_argument("--reuse-sizes", type=int, nargs="+", default=[100, 300, 1000, 3000])
    ap.add_argument("--save-top", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/circuits_cache")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import interp
    from interp.analyses.circuits import (
        Circuit,
        colored_objects_task,
        component_reuse,
        eap_ig_scores,
        eap_scores,
        faithfulness_curve,
        ioi_task,
    )
    from interp.analyses.circuits.faithfulness import circuit_metric
    from interp.graph import Graph, corrupt_outputs

    t_start = time.perf_counter()
    model = interp.load_model(args.model)
    g = Graph.of(model)
    out = Path(args.out or f"reports/bench/circuits_{model.name}.json")
    cache = Path(args.cache) / model.name
    cache.mkdir(parents=True, exist_ok=True)
    res = {"model": model.name, "n": args.n, "n_acc": args.n_acc, "seed": args.seed, "n_edges": g.n_edges,
           "threads": args.threads, "timings_s": {}}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        io.write_json(out, res, indent=1, sort_keys=False)

    def timed(name, fn):
        t0 = time.perf_counter()
        v = fn()
        res["timings_s"][name] = time.perf_counter() - t0
        print(f"[{name}] {res['timings_s'][name]:.1f} s", flush=True)
        return v

    def accuracy(make, what):
        tk = make(model, args.n_acc, seed=args.seed + 1).tokens(model)  # held-out seed
        with torch.no_grad():
            last = model.logits(tk.clean)[:, -1]
        idx = torch.arange(len(tk.answer))
        acc = {"n": len(tk.answer), "p_answer_over_wrong": float((last[idx, tk.answer] > last[idx, tk.wrong])
                                                                 .float().mean()),
               "p_answer_top1": float((last.argmax(-1) == tk.answer).float().mean()),
               "mean_logit_diff": float((last[idx, tk.answer] - last[idx, tk.wrong]).mean())}
        print(f"{what} accuracy on {acc['n']} prompts: P(answer > wrong) {acc['p_answer_over_wrong']:.3f}, "
              f"P(top-1) {acc['p_answer_top1']:.3f}, mean logit diff {acc['mean_logit_diff']:.3f}", flush=True)
        return acc

    prev = json.loads(out.read_text()) if out.exists() else {}
    if prev.get("n_acc") == args.n_acc and prev.get("seed") == args.seed and "colored_objects_accuracy" in prev:
        print(f"accuracy loaded from {out}")  # a re-run (e.g. with other curve settings) reuses it
        for k in ("ioi_accuracy", "colored_objects_accuracy"):
            res[k] = prev[k]
        res["timings_s"].update({k: v for k, v in prev.get("timings_s", {}).items() if k.endswith("accuracy")})
    else:
        res["ioi_accuracy"] = timed("ioi_accuracy", lambda: accuracy(ioi_task, "IOI"))
        res["colored_objects_accuracy"] = timed("co_accuracy",
                                                lambda: accuracy(colored_objects_task, "Colored Objects"))
    save()

    tasks = {"ioi": ioi_task(model, args.n, seed=args.seed),
             "colored_objects": colored_objects_task(model, args.n, seed=args.seed)}
    toks = {k: t.tokens(model) for k, t in tasks.items()}
    res["examples"] = {k: [t.clean[0], t.corrupt[0], t.answer[0], t.wrong[0]] for k, t in tasks.items()}

    def scores_of(name, fn):
        f = cache / f"{name}_n{args.n}_s{args.seed}.pt"
        if f.exists():
            print(f"[{name}] scores loaded from {f}")
            if f.with_suffix(".s").exists():
                res["timings_s"][name] = float(f.with_suffix(".s").read_text())
            return torch.load(f)
        sc = timed(name, fn)
        torch.save(sc, f)
        io.write_text(f.with_suffix(".s"), str(res["timings_s"][name]))
        return sc

    ioi = toks["ioi"]
    sc_eap = scores_of("ioi_eap", lambda: eap_scores(model, ioi.clean, ioi.corrupt, ioi.metric))
    sc_co = scores_of("co_eap", lambda: eap_scores(model, toks["colored_objects"].clean,
                                                   toks["colored_objects"].corrupt, toks["colored_objects"].metric))
    methods = {"eap": sc_eap}
    if args.ig_steps:
        methods[f"eap_ig_m{args.ig_steps}"] = scores_of(
            f"ioi_eap_ig{args.ig_steps}",
            lambda: eap_ig_scores(model, ioi.clean, ioi.corrupt, ioi.metric, steps=args.ig_steps))

    # component reuse at matched size (before the curves, which are the slow part)
    c_ioi = Circuit.from_scores(g, sc_eap, method="eap", metric="logit_diff", task="ioi")
    c_co = Circuit.from_scores(g, sc_co, method="eap", metric="logit_diff", task="colored_objects")
    res["reuse"] = []

    def reuse_at(n):
        a, b = c_ioi.top(n), c_co.top(n)
        nodes, heads = component_reuse(a, b), component_reuse(a, b, heads_only=True)
        row = {"n_edges": n, "node_jaccard": nodes["jaccard"], "head_jaccard": heads["jaccard"],
               "n_nodes_ioi": nodes["n_a"], "n_nodes_co": nodes["n_b"], "n_heads_ioi": heads["n_a"],
               "n_heads_co": heads["n_b"], "shared_heads": heads["shared"][:40]}
        res["reuse"].append(row)
        print(f"reuse at {n} edges: node Jaccard {row['node_jaccard']:.2f} ({nodes['n_a']} vs {nodes['n_b']} nodes), "
              f"head Jaccard {row['head_jaccard']:.2f} ({heads['n_a']} vs {heads['n_b']})", flush=True)

    for n in sorted(args.reuse_sizes):
        reuse_at(n)
    top_path = out.with_name(f"circuits_{model.name}_ioi_eap_top{args.save_top}.json")
    c_ioi.top(args.save_top).to_json(top_path)
    res["circuit_json"] = str(top_path)
    save()

    grid = torch.unique(torch.logspace(0, torch.log10(torch.tensor(float(g.n_edges))), args.grid).round().long())
    sizes = sorted({0, *grid.tolist(), g.n_edges})
    corrupt = corrupt_outputs(model, ioi.corrupt)
    res["faithfulness"] = {k: v for k, v in prev.get("faithfulness", {}).items()
                           if args.curves is not None and k not in args.curves and prev.get("n") == args.n}
    for name, sc in methods.items():
        if name in res["faithfulness"]:
            print(f"{name}: curve kept from {out}")
            if f"curve_{name}" in prev.get("timings_s", {}):
                res["timings_s"][f"curve_{name}"] = prev["timings_s"][f"curve_{name}"]
            continue
        curve = timed(f"curve_{name}", lambda sc=sc: faithfulness_curve(model, ioi.clean, ioi.corrupt, sc,
                                                                         ioi.metric, sizes=sizes))
        flat = sc.abs().masked_fill(~g.valid, -1.0).flatten()
        order = torch.argsort(flat, descending=True, stable=True)

        def faith(n, order=order, curve=curve):
            keep = torch.zeros(g.n_nodes * g.n_inputs, dtype=torch.bool)
            keep[order[:n]] = True
            m = circuit_metric(model, ioi.clean, ioi.corrupt, keep.view(g.n_nodes, g.n_inputs), ioi.metric,
                               corrupt)
            return (m - curve.m_corrupt) / (curve.m_clean - curve.m_corrupt)

        grid_best = curve.smallest(0.85)
        refined, probes = grid_best, {}
        if grid_best is not None and grid_best > 0:
            lo = max(s for s in curve.sizes if s < grid_best)
            hi = grid_best
            for _ in range(args.bisect):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                probes[mid] = faith(mid)
                lo, hi = (lo, mid) if probes[mid] >= 0.85 else (mid, hi)
            refined = hi
        res["faithfulness"][name] = {
            "sizes": curve.sizes, "values": curve.values, "area": curve.area, "m_clean": curve.m_clean,
            "m_corrupt": curve.m_corrupt, "max_value": max(curve.values),
            "argmax_size": curve.sizes[max(range(len(curve.values)), key=curve.values.__getitem__)],
            "smallest_085_grid": grid_best, "smallest_085_refined": refined,
            "bisection_probes": {str(k): v for k, v in probes.items()}}
        print(f"{name}: faithfulness AUC {curve.area:.3f}; max {max(curve.values):.3f}; smallest circuit ≥ 0.85: "
              f"{refined if refined is not None else 'none'} of {g.n_edges} edges", flush=True)
        print("   " + "  ".join(f"{s}:{v:.2f}" for s, v in zip(curve.sizes, curve.values, strict=True)), flush=True)
        save()

    best = res["faithfulness"]["eap"]["smallest_085_refined"]
    if best:
        reuse_at(best)
    res["total_seconds"] = time.perf_counter() - t_start
    save()
    print(f"wrote {out} and {top_path} ({res['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
