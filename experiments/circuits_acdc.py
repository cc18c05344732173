"""ACDC on a real model over a candidate edge set (the top-K EAP edges; Syed et al. 2023), IOI task.

Edge-level ACDC over all ~70k edges of the default model is one patched forward per edge (days on 2 CPU cores),
so ``acdc(..., candidates=top-K EAP edges)`` searches only those: every other edge is patched to the corrupt run
from the start, and the K candidates are tried in ACDC's reverse-topological order with threshold ``--tau``
on the distance ``d`` (``logit_diff``: d = LD(clean) − LD(patched); ``kl``: KL(clean ‖ patched) at END).

Reported per tau: forwards, seconds, kept edges / nodes, faithfulness (LD(C) − LD(corrupt)) / (LD(clean) −
LD(corrupt)) with everything outside C patched, and overlap with the EAP circuit of the same size (top-|C| EAP
edges; at node level all outgoing edges of the top-N EAP nodes, N = ACDC's kept nodes, ranked by the summed EAP
score of a node's outgoing edges): edge Jaccard, Jaccard of the upstream (writing) nodes and of the heads among
them, and that EAP circuit's faithfulness. Writes
reports/experiments/circuits_acdc_<model>.json and the ACDC circuit JSON.

    OMP_NUM_THREADS=1 python experiments/circuits_acdc.py --model default --n 8 --candidates 200 --tau 0.05
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from interp import io


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", type=int, default=200, help="top-K EAP edges searched by ACDC")
    ap.add_argument("--tau", type=float, nargs="+", default=[0.05])
    ap.add_argument("--metric", choices=["logit_diff", "kl"], default="logit_diff")
    ap.add_argument("--level", choices=["edge", "node"], default="edge",
                    help="node: ACDC over all nodes (no candidate set), compared with the EAP node ranking")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import interp
    from interp.analyses.circuits import acdc, component_reuse, eap_scores, ioi_task
    from interp.analyses.circuits.faithfulness import circuit_metric
    from interp.graph import Graph, corrupt_outputs, run_graph

    model = interp.load_model(args.model)
    g = Graph.of(model)
    out = Path(args.out or f"reports/experiments/circuits_acdc_{model.name}_{args.level}.json")
    tt = ioi_task(model, args.n, seed=args.seed).tokens(model)
    t0 = time.perf_counter()
    scores = eap_scores(model, tt.clean, tt.corrupt, tt.metric)
    t_eap = time.perf_counter() - t0
    flat = scores.abs().masked_fill(~g.valid, -1.0).flatten()
    order = torch.argsort(flat, descending=True, stable=True)

    def top_mask(k):
        m = torch.zeros(g.n_nodes * g.n_inputs, dtype=torch.bool)
        m[order[:k]] = True
        return m.view(g.n_nodes, g.n_inputs)

    corrupt = corrupt_outputs(model, tt.corrupt)
    with torch.no_grad():
        m_clean = float(tt.metric(run_graph(model, tt.clean).logits))
        m_corr = float(tt.metric(run_graph(model, tt.corrupt).logits))

    def faith(mask):
        return (circuit_metric(model, tt.clean, tt.corrupt, mask, tt.metric, corrupt) - m_corr) / (m_clean - m_corr)

    # EAP node ranking (node-level comparison): Σ of a node's outgoing edge scores = first-order effect of
    # patching the whole node
    node_score = scores.sum(1)
    if args.level == "edge":
        cand = top_mask(args.candidates)
    else:  # all outgoing edges of the top-K nodes by |EAP node score| (K = --candidates; 0: every node)
        cand = g.valid.clone()
        if args.candidates:
            cand[torch.argsort(node_score.abs(), descending=True)[args.candidates:]] = False
    f_cand = faith(cand)
    res = {"model": model.name, "n": args.n, "seed": args.seed, "metric": args.metric, "level": args.level,
           "n_edges": g.n_edges,
           "n_candidates": args.candidates, "eap_seconds": t_eap, "ld_clean": m_clean, "ld_corrupt": m_corr,
           "faithfulness_candidates": f_cand, "threads": args.threads, "runs": []}
    print(f"{model.name}: IOI n={args.n}; LD clean {m_clean:.3f}, corrupt {m_corr:.3f}; EAP {t_eap:.1f} s; "
          f"candidate set ({args.level} level, {args.candidates}): faithfulness {f_cand:.4f}", flush=True)
    metric = tt.metric if args.metric == "logit_diff" else "kl"
    for tau in args.tau:
        circ = acdc(model, tt.clean, tt.corrupt, tau=tau, metric=metric, candidates=cand, task="ioi",
                    level=args.level)
        keep = circ.mask(g)
        n_keep = int(keep.sum())
        f_acdc = faith(keep)
        if args.level == "edge":
            eap_same = top_mask(n_keep)
        else:  # all outgoing edges of the top-N EAP nodes, N = ACDC's kept upstream nodes
            kept_nodes = keep.any(1)
            top_nodes = torch.argsort(node_score.abs(), descending=True)[: int(kept_nodes.sum())]
            eap_same = torch.zeros_like(keep)
            eap_same[top_nodes] = g.valid[top_nodes]
        f_eap = faith(eap_same)
        inter, union = int((keep & eap_same).sum()), int((keep | eap_same).sum())
        # overlap of the upstream (writing) nodes: input, heads L{l}H{h}, MLPs M{l}
        up_a = {g.nodes[u] for u in keep.any(1).nonzero().flatten().tolist()}
        up_b = {g.nodes[u] for u in eap_same.any(1).nonzero().flatten().tolist()}
        nodes, heads = component_reuse(up_a, up_b, exclude=()), component_reuse(up_a, up_b, heads_only=True)
        row = {"tau": tau, "n_forwards": circ.meta["n_forwards"] + 2, "seconds": circ.meta["seconds"],
               "d_final": circ.meta["d_final"], "kept_edges": n_keep, "kept_nodes_incl_inputs": len(circ.nodes),
               "faithfulness": f_acdc, "eap_same_size_faithfulness": f_eap,
               "edge_jaccard_vs_eap": inter / union if union else float("nan"),
               "node_jaccard_vs_eap": nodes["jaccard"], "head_jaccard_vs_eap": heads["jaccard"],
               "kept_upstream_nodes": len(up_a), "eap_upstream_nodes": len(up_b),
               "heads": sorted({e[0] for e in circ.edges if e[0].startswith("L")}),
               "mlps": sorted({e[0] for e in circ.edges if e[0].startswith("M")}),
               "input_kept": "input" in up_a, "input_in_eap_same": "input" in up_b}
        res["runs"].append(row)
        what = f"top-{n_keep} edges" if args.level == "edge" else f"top-{len(up_b)} nodes"
        print(f"tau {tau}: {row['n_forwards']} forwards, {row['seconds']:.0f} s → {n_keep} edges, "
              f"{len(up_a)} upstream nodes ({len(row['heads'])} heads); faithfulness {f_acdc:.3f} (EAP {what}: "
              f"{f_eap:.3f}); Jaccard vs EAP edges {row['edge_jaccard_vs_eap']:.2f}, "
              f"nodes {row['node_jaccard_vs_eap']:.2f}, heads "
              f"{row['head_jaccard_vs_eap']:.2f}", flush=True)
        circ.meta.pop("removed", None)
        circ.to_json(out.with_name(f"circuits_acdc_{model.name}_{args.level}_tau{tau:g}.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        io.write_json(out, res, indent=1, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
