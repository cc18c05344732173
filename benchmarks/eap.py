"""EAP over every edge of the default model vs a plain per-edge activation-patching loop; EAP-IG cost vs m.

On a batch of IOI prompts (``interp.analyses.circuits.ioi_task``) with the logit-difference metric:
  eap         corrupt forward + clean forward/backward → scores for all edges (interp.graph edges: q per query
              head, k/v per KV head, MLP, logits inputs)
  patch_loop  one patched forward per edge (that edge alone patched to the corrupt run), timed on a random
              subset of edges and extrapolated to all edges
  eap_ig_mK   EAP-IG with m = K integration steps (expected: linear in m)
Peak memory is the peak process RSS above the RSS just before the method (sampled every 2 ms by a thread;
CPU). Writes reports/bench/eap.json.

    python benchmarks/eap.py --batch 8 --loop-edges 24
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
from pathlib import Path

from interp import io


class PeakRSS:
    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        gc.collect()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2**20
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--loop-edges", type=int, default=24)
    ap.add_argument("--ig-steps", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--out", default="reports/bench/eap.json")
    args = ap.parse_args()

    import torch

    import interp
    from interp.analyses.circuits import eap_ig_scores, eap_scores, ioi_task
    from interp.graph import Graph, corrupt_outputs, run_graph

    model = interp.load_model(args.model)
    tok = ioi_task(model, args.batch, seed=0).tokens(model)
    graph = Graph.of(model)
    n_edges = graph.n_edges
    rows = []

    def record(method, seconds, mb, **extra):
        rows.append({"method": method, "seconds": seconds, "peak_rss_mb": mb, **extra})
        print(f"{method:>12s}  {seconds:9.2f} s  {mb:8.0f} MB  {extra}", flush=True)

    eap_scores(model, tok.clean[:1], tok.corrupt[:1], lambda lg: lg[:, -1, 0].mean())  # warm-up
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        scores = eap_scores(model, tok.clean, tok.corrupt, tok.metric)
        t_eap = time.perf_counter() - t0
    record("eap", t_eap, mem.mb, edges=n_edges)

    gen = torch.Generator().manual_seed(0)
    valid = graph.valid.nonzero()
    subset = valid[torch.randperm(len(valid), generator=gen)[: args.loop_edges]]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        corrupt = corrupt_outputs(model, tok.corrupt)
        with torch.no_grad():
            m_clean = float(tok.metric(run_graph(model, tok.clean).logits))
        t_setup = time.perf_counter() - t0
        effects = []
        t1 = time.perf_counter()
        for u, c in subset.tolist():
            removed = torch.zeros(graph.n_nodes, graph.n_inputs, dtype=torch.bool)
            removed[u, c] = True
            with torch.no_grad():
                effects.append(float(tok.metric(run_graph(model, tok.clean, corrupt=corrupt,
                                                          removed=removed).logits)) - m_clean)
        per_edge = (time.perf_counter() - t1) / len(subset)
    est = t_setup + per_edge * n_edges
    record("patch_loop", est, mem.mb, measured_edges=len(subset), seconds_per_edge=per_edge, extrapolated=True)
    eap_sub = torch.tensor([float(scores[u, c]) for u, c in subset.tolist()])
    corr = float(torch.corrcoef(torch.stack([eap_sub, torch.tensor(effects)]))[0, 1])

    for k in args.ig_steps:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            eap_ig_scores(model, tok.clean, tok.corrupt, tok.metric, steps=k)
            dt = time.perf_counter() - t0
        record(f"eap_ig_m{k}", dt, mem.mb, steps=k)

    summary = {"model": model.name, "batch": args.batch, "pos": int(tok.clean.shape[1]), "n_edges": n_edges,
               "threads": torch.get_num_threads(), "speedup_eap_vs_patch_loop": est / t_eap,
               "pearson_eap_vs_patching_on_subset": corr, "rows": rows}
    print(f"\n{n_edges} edges, batch {args.batch} × {tok.clean.shape[1]} tokens: EAP {t_eap:.2f} s vs per-edge "
          f"patching ≈ {est:.0f} s (extrapolated from {len(subset)} edges) → speed-up ×{est / t_eap:.0f}; "
          f"Pearson(EAP, patching effect) on the subset = {corr:.3f}")
    ig = [r for r in rows if r["method"].startswith("eap_ig")]
    print("EAP-IG seconds per step:", ", ".join(f"m={r['steps']}: {r['seconds'] / r['steps']:.2f}" for r in ig))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, summary, indent=1, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
