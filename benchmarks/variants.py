"""Benchmark: single-head ablations (Ships' q scaling) — one forward per head under ``model.intervene`` vs
``interp.run_variants`` packed into the batch, without and with clean-prefix reuse.

Prompt: the paper template around one AdvBench request; readout: float64 log-probabilities at the last position.
Reports wall time of each, the speed-ups measured side by side in this run, the forwards packed per chunk and
the max |difference| of the log-probabilities. Writes ``reports/bench/variants.json``.

    python benchmarks/variants.py [--heads N] [--threads T] [--budget-mb MB] [--model default]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from interp import io


def one_by_one(model, ids, variants):
    out = []
    for v in variants:
        with torch.no_grad(), model.intervene(*v):
            out.append(torch.log_softmax(model.forward(ids, logits_to_keep=1).logits[:, -1].double(), -1))
    return torch.stack(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=90, help="heads ablated, spread over the layers (default 90)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--budget-mb", type=float, default=1024)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="reports/bench/variants.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import interp
    from interp.analyses._safety_data import encode, head_ablation, load_prompts
    from interp.heads import all_heads
    from interp.variants import variants_per_chunk

    model = interp.load_model(args.model)
    ids = torch.tensor(encode(model, load_prompts("advbench", 1), "paper"))
    heads = all_heads(model.shape)
    step = max(1, len(heads) // args.heads)
    heads = heads[::step][: args.heads]
    variants = [[head_ablation(layer, h)] for layer, h in heads]
    readout = lambda o: torch.log_softmax(o.logits[:, -1].double(), -1)  # noqa: E731

    times, outs = {}, {}
    for name, fn in [
        ("one_by_one", lambda: one_by_one(model, ids, variants)),
        ("packed", lambda: interp.run_variants(model, ids, variants, readout, memory_budget_mb=args.budget_mb,
                                               logits_to_keep=1, reuse_prefix=False)),
        ("packed_prefix", lambda: interp.run_variants(model, ids, variants, readout, logits_to_keep=1,
                                                      memory_budget_mb=args.budget_mb)),
    ]:
        t0 = time.perf_counter()
        outs[name] = fn()
        times[name] = time.perf_counter() - t0
    per = variants_per_chunk(model, 1, ids.shape[1], args.budget_mb, logits_to_keep=1)
    diff = {k: float((outs[k] - outs["one_by_one"]).abs().max()) for k in ("packed", "packed_prefix")}
    rows = [(k, times[k], times["one_by_one"] / times[k]) for k in times]
    print(f"{len(variants)} single-head ablations, {ids.shape[1]} tokens, {per} variants per forward "
          f"({args.budget_mb:g} MiB), load {os.getloadavg()[0]:.2f}")
    print(f"{'method':<16}{'seconds':>10}{'speed-up':>10}")
    for k, t, r in rows:
        print(f"{k:<16}{t:>10.2f}{r:>10.2f}")
    print(f"max |Δ log p| vs one-by-one: packed {diff['packed']:.2e}, packed_prefix {diff['packed_prefix']:.2e}")
    io.write_json(args.out, {
        "model": model.name, "n_variants": len(variants), "n_tokens": int(ids.shape[1]),
        "variants_per_forward": per, "budget_mb": args.budget_mb, "seconds": times,
        "speedup_vs_one_by_one": {k: times["one_by_one"] / t for k, t in times.items()}, "max_abs_diff": diff,
        "threads": torch.get_num_threads(), "loadavg_1min": os.getloadavg()[0], "machine": platform.machine()})


if __name__ == "__main__":
    main()
