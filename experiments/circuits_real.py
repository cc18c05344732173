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

Writes reports/experiments/circuits_<model>.json and the IOI EAP circuit (top ``--save-top`` edges) as
reports/experiments/circuits_<model>_ioi_eap_top<N>.json. Intermediate score matrices are cached in ``--cache``.

    OMP_NUM_THREADS=1 python experiments/circuits_real.py --model qwen2.5-coder-0.5b --n 16 --ig-steps 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

from interp import io


def _parser():
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
    return ap


def save(c):
    c.out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(c.out, c.res, indent=1, sort_keys=False)


def timed(c, name, fn):
    t0 = time.perf_counter()
    v = fn()
    c.res["timings_s"][name] = time.perf_counter() - t0
    print(f"[{name}] {c.res['timings_s'][name]:.1f} s", flush=True)
    return v


def accuracy(c, make, what) -> dict:
    import torch

    model = c.model
    tk = make(model, c.args.n_acc, seed=c.args.seed + 1).tokens(model)  # held-out seed
    with torch.no_grad():
        last = model.logits(tk.clean)[:, -1]
    idx = torch.arange(len(tk.answer))
    acc = {"n": len(tk.answer),
           "p_answer_over_wrong": float((last[idx, tk.answer] > last[idx, tk.wrong]).float().mean()),
           "p_answer_top1": float((last.argmax(-1) == tk.answer).float().mean()),
           "mean_logit_diff": float((last[idx, tk.answer] - last[idx, tk.wrong]).mean())}
    print(f"{what} accuracy on {acc['n']} prompts: P(answer > wrong) {acc['p_answer_over_wrong']:.3f}, "
          f"P(top-1) {acc['p_answer_top1']:.3f}, mean logit diff {acc['mean_logit_diff']:.3f}", flush=True)
    return acc


def accuracies(c):
    from interp.analyses.circuits import colored_objects_task, ioi_task

    prev, args = c.prev, c.args
    if prev.get("n_acc") == args.n_acc and prev.get("seed") == args.seed and "colored_objects_accuracy" in prev:
        print(f"accuracy loaded from {c.out}")  # a re-run (e.g. with other curve settings) reuses it
        for k in ("ioi_accuracy", "colored_objects_accuracy"):
            c.res[k] = prev[k]
        c.res["timings_s"].update({k: v for k, v in prev.get("timings_s", {}).items() if k.endswith("accuracy")})
    else:
        c.res["ioi_accuracy"] = timed(c, "ioi_accuracy", lambda: accuracy(c, ioi_task, "IOI"))
        c.res["colored_objects_accuracy"] = timed(c, "co_accuracy",
                                                  lambda: accuracy(c, colored_objects_task, "Colored Objects"))
    save(c)


def scores_of(c, name, fn):
    import torch

    f = c.cache / f"{name}_n{c.args.n}_s{c.args.seed}.pt"
    if f.exists():
        print(f"[{name}] scores loaded from {f}")
        if f.with_suffix(".s").exists():
            c.res["timings_s"][name] = float(f.with_suffix(".s").read_text())
        return torch.load(f)
    sc = timed(c, name, fn)
    io.save_torch(f, sc)
    io.write_text(f.with_suffix(".s"), str(c.res["timings_s"][name]))
    return sc


def method_scores(c, toks) -> tuple[dict, object]:
    """EAP (and EAP-IG with --ig-steps) scores on IOI, and EAP on Colored Objects (cached)."""
    from interp.analyses.circuits import eap_ig_scores, eap_scores

    ioi, co, model = toks["ioi"], toks["colored_objects"], c.model
    sc_eap = scores_of(c, "ioi_eap", lambda: eap_scores(model, ioi.clean, ioi.corrupt, ioi.metric))
    sc_co = scores_of(c, "co_eap", lambda: eap_scores(model, co.clean, co.corrupt, co.metric))
    methods = {"eap": sc_eap}
    if c.args.ig_steps:
        m = c.args.ig_steps
        methods[f"eap_ig_m{m}"] = scores_of(
            c, f"ioi_eap_ig{m}", lambda: eap_ig_scores(model, ioi.clean, ioi.corrupt, ioi.metric, steps=m))
    return methods, sc_co


def reuse_at(c, c_ioi, c_co, n):
    from interp.analyses.circuits import component_reuse

    a, b = c_ioi.top(n), c_co.top(n)
    nodes, heads = component_reuse(a, b), component_reuse(a, b, heads_only=True)
    row = {"n_edges": n, "node_jaccard": nodes["jaccard"], "head_jaccard": heads["jaccard"],
           "n_nodes_ioi": nodes["n_a"], "n_nodes_co": nodes["n_b"], "n_heads_ioi": heads["n_a"],
           "n_heads_co": heads["n_b"], "shared_heads": heads["shared"][:40]}
    c.res["reuse"].append(row)
    print(f"reuse at {n} edges: node Jaccard {row['node_jaccard']:.2f} ({nodes['n_a']} vs {nodes['n_b']} nodes), "
          f"head Jaccard {row['head_jaccard']:.2f} ({heads['n_a']} vs {heads['n_b']})", flush=True)


def bisect_085(curve, faith, steps: int):
    """The smallest circuit size reaching faithfulness 0.85: the grid's, refined by bisection."""
    grid_best = curve.smallest(0.85)
    refined, probes = grid_best, {}
    if grid_best is not None and grid_best > 0:
        lo, hi = max(s for s in curve.sizes if s < grid_best), grid_best
        for _ in range(steps):
            if hi - lo <= 1:
                break
            mid = (lo + hi) // 2
            probes[mid] = faith(mid)
            lo, hi = (lo, mid) if probes[mid] >= 0.85 else (mid, hi)
        refined = hi
    return grid_best, refined, probes


def curve_for(c, name, sc, sizes, corrupt, ioi) -> dict:
    import torch

    from interp.analyses.circuits import faithfulness_curve
    from interp.analyses.circuits.faithfulness import circuit_metric

    model, g = c.model, c.g
    curve = timed(c, f"curve_{name}", lambda: faithfulness_curve(model, ioi.clean, ioi.corrupt, sc, ioi.metric,
                                                                  sizes=sizes))
    order = torch.argsort(sc.abs().masked_fill(~g.valid, -1.0).flatten(), descending=True, stable=True)

    def faith(n):
        keep = torch.zeros(g.n_nodes * g.n_inputs, dtype=torch.bool)
        keep[order[:n]] = True
        m = circuit_metric(model, ioi.clean, ioi.corrupt, keep.view(g.n_nodes, g.n_inputs), ioi.metric, corrupt)
        return (m - curve.m_corrupt) / (curve.m_clean - curve.m_corrupt)

    grid_best, refined, probes = bisect_085(curve, faith, c.args.bisect)
    print(f"{name}: faithfulness AUC {curve.area:.3f}; max {max(curve.values):.3f}; smallest circuit ≥ 0.85: "
          f"{refined if refined is not None else 'none'} of {g.n_edges} edges", flush=True)
    print("   " + "  ".join(f"{s}:{v:.2f}" for s, v in zip(curve.sizes, curve.values, strict=True)), flush=True)
    return {"sizes": curve.sizes, "values": curve.values, "area": curve.area, "m_clean": curve.m_clean,
            "m_corrupt": curve.m_corrupt, "max_value": max(curve.values),
            "argmax_size": curve.sizes[max(range(len(curve.values)), key=curve.values.__getitem__)],
            "smallest_085_grid": grid_best, "smallest_085_refined": refined,
            "bisection_probes": {str(k): v for k, v in probes.items()}}


def curves(c, methods, ioi):
    import torch

    from interp.graph import corrupt_outputs

    g, prev, args = c.g, c.prev, c.args
    grid = torch.unique(torch.logspace(0, torch.log10(torch.tensor(float(g.n_edges))), args.grid).round().long())
    sizes = sorted({0, *grid.tolist(), g.n_edges})
    corrupt = corrupt_outputs(c.model, ioi.corrupt)
    c.res["faithfulness"] = {k: v for k, v in prev.get("faithfulness", {}).items()
                             if args.curves is not None and k not in args.curves and prev.get("n") == args.n}
    for name, sc in methods.items():
        if name in c.res["faithfulness"]:
            print(f"{name}: curve kept from {c.out}")
            if f"curve_{name}" in prev.get("timings_s", {}):
                c.res["timings_s"][f"curve_{name}"] = prev["timings_s"][f"curve_{name}"]
            continue
        c.res["faithfulness"][name] = curve_for(c, name, sc, sizes, corrupt, ioi)
        save(c)


def setup(args) -> SimpleNamespace:
    import torch

    import interp
    from interp.graph import Graph

    torch.set_num_threads(args.threads)
    c = SimpleNamespace(args=args, t_start=time.perf_counter())
    c.model = interp.load_model(args.model)
    c.g = Graph.of(c.model)
    c.out = Path(args.out or f"reports/experiments/circuits_{c.model.name}.json")
    c.cache = Path(args.cache) / c.model.name
    c.cache.mkdir(parents=True, exist_ok=True)
    c.res = {"model": c.model.name, "n": args.n, "n_acc": args.n_acc, "seed": args.seed, "n_edges": c.g.n_edges,
             "threads": args.threads, "timings_s": {}}
    c.prev = json.loads(c.out.read_text()) if c.out.exists() else {}
    return c


def main() -> None:
    from interp.analyses.circuits import Circuit, colored_objects_task, ioi_task

    c = setup(_parser().parse_args())
    model, args = c.model, c.args
    accuracies(c)
    tasks = {"ioi": ioi_task(model, args.n, seed=args.seed),
             "colored_objects": colored_objects_task(model, args.n, seed=args.seed)}
    toks = {k: t.tokens(model) for k, t in tasks.items()}
    c.res["examples"] = {k: [t.clean[0], t.corrupt[0], t.answer[0], t.wrong[0]] for k, t in tasks.items()}
    methods, sc_co = method_scores(c, toks)
    # component reuse at matched size (before the curves, which are the slow part)
    c_ioi = Circuit.from_scores(c.g, methods["eap"], method="eap", metric="logit_diff", task="ioi")
    c_co = Circuit.from_scores(c.g, sc_co, method="eap", metric="logit_diff", task="colored_objects")
    c.res["reuse"] = []
    for n in sorted(args.reuse_sizes):
        reuse_at(c, c_ioi, c_co, n)
    top_path = c.out.with_name(f"circuits_{model.name}_ioi_eap_top{args.save_top}.json")
    c_ioi.top(args.save_top).to_json(top_path)
    c.res["circuit_json"] = str(top_path)
    save(c)
    curves(c, methods, toks["ioi"])
    best = c.res["faithfulness"]["eap"]["smallest_085_refined"]
    if best:
        reuse_at(c, c_ioi, c_co, best)
    c.res["total_seconds"] = time.perf_counter() - c.t_start
    save(c)
    print(f"wrote {c.out} and {top_path} ({c.res['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
