"""DuoAttention gates vs the statistics-engine streaming proxy vs retrieval scores, per KV head (CPU).

    python experiments/duo_compare.py --model default --tokens 1024 --sink 16 --recent 64 --max-minutes 15
    python experiments/duo_compare.py --model qwen2.5-coder-0.5b --steps 10

1. trains the gates α ``[layer, kv_head]`` with ``analyses.duo_attention.train_gates`` (Xiao et al. 2024 loss:
   MSE of the final hidden states at the answer tokens, gated vs full attention, + λ·mean|α|, Adam, α clamped
   to [0, 1]); every step is appended to ``reports/experiments/duo_<model>_train.jsonl`` (a killed run resumes from the
   last α; Adam's moments restart) and the official TSV ``reports/experiments/duo_alpha_<model>.tsv`` is rewritten;
2. computes the engine proxy (attention mass outside sink + recent, ``streaming_proxy``) on fresh passkey prompts
   and reduces the retrieval scores of ``reports/experiments/retrieval_<model>_heads.json`` (Wu et al. 2024, written by
   ``experiments/retrieval_sweep.py``) to KV heads by max and by mean over each group's query heads;
3. prints Spearman rank correlations (with p-values) and writes ``reports/experiments/duo_<model>.json``.
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
    p.add_argument("--steps", type=int, default=200, help="training steps in total (incl. resumed ones)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--tokens", type=int, default=1024, help="passkey prompt length")
    p.add_argument("--n-keys", type=int, default=3)
    p.add_argument("--sink", type=int, default=16)
    p.add_argument("--recent", type=int, default=64)
    p.add_argument("--lam", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--proxy-prompts", type=int, default=2, help="fresh passkey prompts for the proxy")
    p.add_argument("--retrieval-json", default=None, help="default: reports/experiments/retrieval_<model>_heads.json")
    p.add_argument("--fresh", action="store_true", help="ignore (and overwrite) the training checkpoint")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def _spearman(a, b):
    from scipy.stats import spearmanr

    r = spearmanr(np.ravel(a), np.ravel(b))
    return {"rho": float(r.statistic), "p": float(r.pvalue)}


def main(argv=None, model=None):
    import torch

    import interp
    from interp.analyses import duo_attention as duo
    from interp.analyses import retrieval

    a = parse(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = model or interp.load_model(a.model)
    load_s = time.perf_counter() - t0
    tag = model.name.replace("/", "_")
    s = model.shape
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{model}  (load {load_s:.0f}s)", flush=True)

    meta = {"model": model.name, "tokens": a.tokens, "n_keys": a.n_keys, "sink": a.sink, "recent": a.recent,
            "lam": a.lam, "lr": a.lr, "seed": a.seed}
    log_path, tsv = OUT / f"duo_{tag}_train.jsonl", OUT / f"duo_alpha_{tag}.tsv"
    ckpt = io.JsonlCheckpoint(log_path, meta, key="step", fresh=a.fresh, hint="pass --fresh to start over")
    curve = ckpt.records()  # one record per finished step (a torn last line from a kill is dropped)
    alpha0 = curve[-1]["alpha"] if curve else None
    todo = max(0, a.steps - len(curve))
    print(f"resuming after {len(curve)} steps" if curve else "training from α = 1", f"; {todo} steps to go",
          flush=True)

    def log(rec):
        ckpt.add(rec)
        duo.save_duo_tsv(np.asarray(rec["alpha"]), tsv)
        curve.append(rec)
        print(f"  step {rec['step']:4d}  loss {rec['loss']:.5f}  distill {rec['distill']:.5f}  "
              f"mean α {rec['mean_alpha']:.3f}  {rec['seconds']:.1f}s", flush=True)

    t1 = time.perf_counter()
    if todo:
        duo.train_gates(model, steps=todo, n_tokens=a.tokens, n_keys=a.n_keys, sink=a.sink, recent=a.recent,
                        lam=a.lam, lr=a.lr, seed=a.seed, log=log, alpha_init=alpha0, start_step=len(curve),
                        max_seconds=None if a.max_minutes is None else 60 * a.max_minutes)
    train_s = time.perf_counter() - t1
    if not curve:
        raise SystemExit("no training step done: pass --steps > 0")
    alpha = np.asarray(curve[-1]["alpha"], dtype=float)
    duo.save_duo_tsv(alpha, tsv)

    rj = Path(a.retrieval_json) if a.retrieval_json else OUT / f"retrieval_{tag}_heads.json"
    rscores = None
    if rj.exists():
        rscores = retrieval.retrieval_head_scores(retrieval.load_retrieval_json(rj), s.n_layers, s.n_heads)
    else:
        print(f"no retrieval scores at {rj}: run experiments/retrieval_sweep.py first", flush=True)
    t2 = time.perf_counter()
    cmp = duo.compare(model, alpha, retrieval_scores=rscores, n_tokens=a.tokens, sink=a.sink, recent=a.recent,
                      n_prompts=a.proxy_prompts)
    proxy_s = time.perf_counter() - t2
    proxy = np.asarray(cmp["proxy"])
    series = {"alpha": alpha, "proxy": proxy}
    if rscores is not None:
        series["retrieval_max"] = np.asarray(cmp["retrieval_max"])
        series["retrieval_mean"] = np.asarray(cmp["retrieval_mean"])
    names = list(series)
    rho = {f"{x}~{y}": _spearman(series[x], series[y]) for i, x in enumerate(names) for y in names[i + 1:]}

    print(f"\n{len(curve)} steps ({train_s:.0f}s this run), final loss {curve[-1]['loss']:.5f}, "
          f"mean α {alpha.mean():.3f}; proxy on {a.proxy_prompts} prompt(s) ({proxy_s:.0f}s)")
    print(f"\nSpearman over {alpha.size} KV heads:")
    for k, v in rho.items():
        print(f"  {k:32s} rho={v['rho']:+.3f}  p={v['p']:.2g}")
    order = np.argsort(-alpha, axis=None, kind="stable")
    print("\nKV heads by α (top 15):\n  head      " + "  ".join(f"{n:>14s}" for n in names))
    for i in order[:15]:
        l, g = np.unravel_index(i, alpha.shape)
        print(f"  {f'L{l}KV{g}':<9s} " + "  ".join(f"{series[n][l, g]:14.3f}" for n in names))

    out = {
        "model": model.name, "settings": dict(meta, steps_done=len(curve), proxy_prompts=a.proxy_prompts,
                                              proxy_seeds=list(range(1000, 1000 + a.proxy_prompts))),
        "n_layers": s.n_layers, "n_kv_heads": s.n_kv_heads, "group_size": s.group_size,
        "retrieval_json": str(rj.relative_to(OUT.parents[1])) if rscores is not None else None,
        "load_s": load_s, "train_s_last_run": train_s, "proxy_s": proxy_s,
        "spearman": rho,
        "alpha": alpha.tolist(), "proxy": proxy.tolist(),
        "retrieval_max": cmp.get("retrieval_max"), "retrieval_mean": cmp.get("retrieval_mean"),
        "loss_curve": [{k: r[k] for k in ("step", "loss", "distill", "mean_alpha", "seconds")} for r in curve],
    }
    io.write_json(OUT / f"duo_{tag}.json", out, indent=1, sort_keys=False)
    return out


if __name__ == "__main__":
    main()
