"""Context-aware head divergence on the needle prompts vs the retrieval heads of the same model.

Runs ``interp.analyses.head_divergence.run`` (the three needles inserted in a haystack excerpt; the shared
suffix is the paper's question plus a greedy continuation) and compares its head ranking with retrieval-head
scores read from an official-format JSON (``{"l-h": [per-sample scores]}``, e.g. written by
``experiments/retrieval_sweep.py``): overlap of the top-k sets, Jaccard, and Spearman rank correlation.

    python experiments/divergence_vs_retrieval.py \
        --retrieval reports/experiments/retrieval_smollm2-135m-instruct_heads.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from interp import io


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = (np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--retrieval", required=True, help="retrieval-head JSON of the same model")
    ap.add_argument("--context-tokens", type=int, default=300)
    ap.add_argument("--n-generate", type=int, default=8)
    ap.add_argument("--generated-only", action="store_true", help="average over generated tokens only")
    ap.add_argument("--out", default="reports/experiments/divergence_vs_retrieval.json")
    args = ap.parse_args()

    import interp
    from interp.analyses.head_divergence import run
    from interp.analyses.retrieval import load_retrieval_json, retrieval_head_scores
    from interp.scores import ScoreTable

    model = interp.load_model(args.model)
    s = model.shape
    t0 = time.perf_counter()
    res = run(model, {"context_tokens": args.context_tokens, "n_generate": args.n_generate,
                      "generated_only": args.generated_only})
    seconds = time.perf_counter() - t0
    retrieval = np.nan_to_num(retrieval_head_scores(load_retrieval_json(args.retrieval), s.n_layers, s.n_heads))
    rows = []
    for score in ("context_rel", "context_l2", "context_cos"):
        div = ScoreTable.matrix(res["scores"], score, s.n_layers, s.n_heads)
        row = {"score": score, "spearman_all_heads": spearman(div.ravel(), retrieval.ravel())}
        n_ret = int((retrieval > 0.1).sum())
        for k in (10, 20, n_ret):
            top_d = set(np.argsort(-div.ravel(), kind="stable")[:k].tolist())
            top_r = set(np.argsort(-retrieval.ravel(), kind="stable")[:k].tolist())
            row[f"overlap_top{k}"] = len(top_d & top_r)
            row[f"jaccard_top{k}"] = len(top_d & top_r) / len(top_d | top_r)
        row["n_retrieval_heads"] = n_ret
        # chance level of the top-k overlap: k*k/N
        row["chance_overlap_top10"] = 10 * 10 / (s.n_layers * s.n_heads)
        rows.append(row)
    top = np.argsort(-ScoreTable.matrix(res["scores"], "context_rel", s.n_layers, s.n_heads).ravel())[:10]
    out = {"model": model.name, "seconds": seconds, "generated_only": args.generated_only, "rows": rows,
           "top10_context_rel": [f"L{i // s.n_heads}H{i % s.n_heads}" for i in top],
           "top10_retrieval": [f"L{i // s.n_heads}H{i % s.n_heads}" for i in np.argsort(-retrieval.ravel())[:10]]}
    print(f"context divergence on {len(res['per_token']['sample'].unique())} needle prompts: {seconds:.1f} s")
    print("| score | Spearman (270 heads) | top-10 overlap | Jaccard@10 | top-20 overlap | top-n_ret overlap |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        n = r["n_retrieval_heads"]
        print(f"| {r['score']} | {r['spearman_all_heads']:.3f} | {r['overlap_top10']}/10 | {r['jaccard_top10']:.2f} "
              f"| {r['overlap_top20']}/20 | {r[f'overlap_top{n}']}/{n} |")
    print("top-10 context-sensitive:", out["top10_context_rel"])
    print("top-10 retrieval:        ", out["top10_retrieval"])
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(path, out, sort_keys=False)


if __name__ == "__main__":
    main()
