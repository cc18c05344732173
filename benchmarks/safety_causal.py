"""Causal check of safety heads (Zhou et al., ICLR 2025) on a model that refuses: Qwen2.5-Coder-0.5B-Instruct.

1. Ships (KL at the last chat-template position, query scaled by 1e-5) of every head on ``--n-ships`` AdvBench
   prompts → dataset-level ``ships_kl_sum``; 2. Sahara greedy set (``--set-size`` heads, r = 1) on ``--n-sahara``
   prompts over the top ``--sahara-candidates`` Ships heads; 3. greedy refusal rates (GCG keyword judge,
   ``--max-new-tokens``) on ``--n-harmful`` AdvBench and ``--n-harmless`` harmless prompts: clean, top-1 and
   top-k Ships heads ablated, the Sahara set ablated, and ``--n-random`` random sets of k heads ablated.

Prints the table and writes ``reports/bench/safety_causal.json``. CPU, 2 shared cores: sizes are modest.
Usage: ``python benchmarks/safety_causal.py [--model qwen2.5-coder-0.5b] [--n-harmful 40] ...``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--template", default="chat")
    ap.add_argument("--n-ships", type=int, default=2)
    ap.add_argument("--n-sahara", type=int, default=6)
    ap.add_argument("--sahara-candidates", type=int, default=8)
    ap.add_argument("--set-size", type=int, default=3)
    ap.add_argument("--n-harmful", type=int, default=40)
    ap.add_argument("--n-harmless", type=int, default=40)
    ap.add_argument("--n-random", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default="reports/bench/safety_causal.json")
    a = ap.parse_args(argv)

    import torch

    import interp
    from interp.analyses.refusal import random_heads, refusal_rate
    from interp.analyses.sahara import sahara
    from interp.analyses.ships import ships_dataset

    if a.threads:
        torch.set_num_threads(a.threads)
    timings: dict = {}
    result: dict = {"model": a.model, "template": a.template, "args": vars(a), "timings_s": timings,
                    "complete": False}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dump = lambda: out.write_text(json.dumps(result, indent=2))  # after every stage: partial results survive
    t = time.time()
    model = interp.load_model(a.model)
    timings["load_s"] = time.time() - t
    print(f"{model} loaded in {timings['load_s']:.0f} s", flush=True)

    rows: list = []
    refusal_time = [0.0]

    def measure(cond, heads):
        t0 = time.time()
        row = {"condition": cond, "heads": " ".join(f"L{x}H{y}" for x, y in heads)}
        for name, n in (("advbench", a.n_harmful), ("harmless", a.n_harmless)):
            r = refusal_rate(model, name, n=n, ablate=heads, template=a.template, max_new_tokens=a.max_new_tokens,
                             batch_size=a.batch_size)
            row[f"refusal_{name}"] = r.rate
            row[f"n_{name}"] = len(r.refused)
            row[f"example_{name}"] = r.generations[0][:80]
        rows.append(row)
        result["conditions"] = rows
        dump()
        refusal_time[0] += time.time() - t0
        print(f"{cond:>18} {row['heads']:<18} harmful {row['refusal_advbench']:.2f}  "
              f"harmless {row['refusal_harmless']:.2f}  ({time.time() - t0:.0f} s)", flush=True)

    measure("clean", [])  # first: the baseline survives even if a later stage runs out of time
    t = time.time()
    sh = ships_dataset(model, "advbench", n=a.n_ships, template=a.template, progress=True)
    timings["ships_s"] = time.time() - t
    n_heads = model.shape.n_layers * model.shape.n_heads
    k = a.set_size
    top = sh.top_heads(max(k, a.sahara_candidates))
    print(f"ships: {a.n_ships} prompts × {n_heads} heads in {timings['ships_s']:.0f} s; top heads "
          + ", ".join(f"L{x}H{y}" for x, y in top[:k]), flush=True)
    result.update(ships_top=[f"L{x}H{y}" for x, y in top], ships_kl_sum_top=[float(sh.kl.sum(0)[x, y]) for x, y in top])
    dump()

    t = time.time()
    sa = sahara(model, "advbench", n=a.n_sahara, set_size=k, candidates=top, template=a.template, progress=True)
    timings["sahara_s"] = time.time() - t
    result.update(sahara_heads=[f"L{x}H{y}" for x, y in sa.heads], sahara_angles_deg=sa.angles)
    dump()

    conditions = {"clean": [], "ships_top1": top[:1], f"ships_top{k}": top[:k], "sahara": sa.heads}
    for seed in range(a.n_random):
        conditions[f"random{k}_seed{seed}"] = random_heads(model, k, seed=seed, exclude=top[:k] + sa.heads)
    for cond, heads in conditions.items():
        if cond != "clean":
            measure(cond, heads)
    timings["refusal_s"] = refusal_time[0]

    print("\n| condition | heads ablated | refusal AdvBench | refusal harmless |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['condition']} | {r['heads'] or '-'} | {r['refusal_advbench']:.2f} ({r['n_advbench']}) | "
              f"{r['refusal_harmless']:.2f} ({r['n_harmless']}) |")
    print("timings (s): " + ", ".join(f"{k_}={v:.0f}" for k_, v in timings.items()))
    result.update(model=model.name, complete=True, torch_threads=torch.get_num_threads())
    dump()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
