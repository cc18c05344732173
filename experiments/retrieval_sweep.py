"""Retrieval-head sweep (Wu et al. 2024) on a real model, CPU: NIAH grid → retrieval scores → causal check.

    python experiments/retrieval_sweep.py --model default --lengths 500 1000 --depths 0 50 100
    python experiments/retrieval_sweep.py --model qwen2.5-coder-0.5b --lengths 1000 2000 3000

The causal check masks the top-k retrieval heads (uniform attention, as the paper) and, per seed, k random
non-retrieval heads; each condition checkpoints to ``reports/experiments/retrieval_<model>_causal_k<k>_*.jsonl``.

Checkpoints every sample to ``reports/experiments/retrieval_<model>.jsonl`` (a killed run resumes where it stopped),
writes the paper's ``{"l-h": [scores]}`` JSON to ``reports/experiments/retrieval_<model>_heads.json`` and a summary
(top heads, accuracy, timings, causal table) to ``reports/experiments/retrieval_sweep_<model>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from interp import io

OUT = Path(__file__).resolve().parents[1] / "reports" / "bench"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--lengths", type=int, nargs="+", default=[500, 1000])
    p.add_argument("--depths", type=float, nargs="+", default=[0, 50, 100])
    p.add_argument("--needles", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--k", type=int, default=10, help="heads masked in the causal check")
    p.add_argument("--causal-lengths", type=int, nargs="*", default=None, help="default: --lengths")
    p.add_argument("--causal-depths", type=float, nargs="*", default=[50])
    p.add_argument("--causal-max-new-tokens", type=int, default=None, help="default: --max-new-tokens")
    p.add_argument("--causal-needles", type=int, nargs="*", default=None, help="default: --needles")
    p.add_argument("--n-random", type=int, default=3, help="random draws (seeds 0 … n-1) unless --seeds")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="one random draw per seed")
    p.add_argument("--note", default=None, help="free text stored in the summary JSON")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None, model=None):
    import torch

    import interp
    from interp.analyses import retrieval

    a = parse(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = model or interp.load_model(a.model)
    load_s = time.perf_counter() - t0
    tag = model.name.replace("/", "_")
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{model}  (load {load_s:.0f}s)", flush=True)
    t0 = time.perf_counter()
    recs = retrieval.niah_sweep(model, lengths=a.lengths, depths=a.depths, needles=a.needles,
                                max_new_tokens=a.max_new_tokens, checkpoint=OUT / f"retrieval_{tag}.jsonl",
                                progress=True)
    sweep_s = time.perf_counter() - t0
    counter = retrieval.head_counter(recs)
    retrieval.save_retrieval_json(counter, OUT / f"retrieval_{tag}_heads.json")
    shape = model.shape
    scores = np.nan_to_num(retrieval.retrieval_head_scores(counter, shape.n_layers, shape.n_heads))
    n_kept = sum(r["kept"] for r in recs)
    heads = retrieval.top_heads(scores, threshold=0.1)
    print(f"\n{n_kept}/{len(recs)} samples found (ROUGE-1 recall > 0.5); sweep {sweep_s:.0f}s")
    print("by length:", {L: float(np.mean([r["kept"] for r in recs if r["length"] == L])) for L in a.lengths})
    print(f"retrieval heads (score > 0.1): {len(heads)} of {scores.size}")
    top = retrieval.top_heads(scores, threshold=None, k=15)
    print("top-15:", ", ".join(f"L{l}H{h}={scores[l, h]:.3f}" for l, h in top))
    causal = random_summary = None
    if a.k > 0 and n_kept:
        cl = a.causal_lengths or a.lengths
        cn = a.needles if a.causal_needles is None else a.causal_needles
        base = [r for r in recs if r["length"] in cl and r["depth"] in a.causal_depths and r["needle_idx"] in cn]
        cmax = a.causal_max_new_tokens or a.max_new_tokens
        want = len(cl) * len(a.causal_depths) * len(cn)
        if cmax != a.max_new_tokens or len(base) != want:
            base = None
        seeds = a.seeds if a.seeds is not None else list(range(a.n_random))
        t1 = time.perf_counter()
        causal = retrieval.causal_check(model, scores, k=a.k, lengths=cl, depths=a.causal_depths,
                                        needles=cn, seeds=seeds, baseline=base, max_new_tokens=cmax,
                                        checkpoint_prefix=OUT / f"retrieval_{tag}_causal_k{a.k}", progress=True)
        causal_s = time.perf_counter() - t1
        rnd = causal[causal.condition.str.startswith("random")]
        random_summary = {"n_draws": len(rnd), "seeds": seeds, "mean_accuracy": float(rnd.accuracy.mean()),
                          "std_accuracy": float(rnd.accuracy.std(ddof=1)) if len(rnd) > 1 else None,
                          "mean_rouge": float(rnd.mean_rouge.mean())}
        show = causal.drop(columns=["rouge"])
        print(f"\ncausal check ({causal_s:.0f}s; lengths {cl}, depths {a.causal_depths}, needles {cn}):\n"
              f"{show.to_string(index=False)}")
        print(f"random draws: mean accuracy {random_summary['mean_accuracy']:.3f} over {len(rnd)} seeds {seeds}")
    summary = {
        "model": model.name, "note": a.note, "threads": a.threads,
        "lengths": a.lengths, "depths": a.depths, "needles": a.needles,
        "n_samples": len(recs), "n_found": n_kept, "load_s": load_s, "sweep_s": sweep_s,
        "seconds_per_sample": {str(L): float(np.mean([r["seconds"] for r in recs if r["length"] == L]))
                               for L in a.lengths},
        "prompt_tokens": {str(L): int(np.mean([r["n_tokens"] for r in recs if r["length"] == L]))
                          for L in a.lengths},
        "accuracy_by_length": {str(L): float(np.mean([r["kept"] for r in recs if r["length"] == L]))
                               for L in a.lengths},
        "retrieval_heads": [f"L{l}H{h}" for l, h in heads],
        "top15": {f"L{l}H{h}": float(scores[l, h]) for l, h in top},
        "retrieval_heads_scores": {f"L{l}H{h}": float(scores[l, h]) for l, h in heads},
        "top10": {f"L{l}H{h}": float(scores[l, h]) for l, h in top[:10]},
        "causal_k": a.k, "causal_lengths": a.causal_lengths or a.lengths, "causal_depths": a.causal_depths,
        "causal_needles": a.needles if a.causal_needles is None else a.causal_needles,
        "causal": None if causal is None else causal.to_dict(orient="records"),
        "causal_random_summary": random_summary,
        "responses": [{k: r[k] for k in ("key", "n_tokens", "rouge", "response")} for r in recs],
    }
    io.write_json(OUT / f"retrieval_sweep_{tag}.json", summary, indent=1, sort_keys=False)
    return summary


if __name__ == "__main__":
    main()
