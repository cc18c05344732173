"""Attention statistics inside the default model's forward vs the ways other tools get them.

Each (method, length) runs in its own subprocess (so peak RSS is that run's own), side by side in one
benchmark run:
  sdpa      plain HF forward with SDPA (the baseline; no statistics)
  ours      interp.attention_stats: forward + statistics for all 30 × 9 heads, no n×n pattern (impl auto: the
            fused CPU path — matmul tiles + compiled C sweep, reusing the flash SDPA row LSE)
  ours_chunked  the same with impl="chunked" (torch ops only; what runs where no C compiler is available)
  hf_eager  HF forward with output_attentions=True (eager; materialises every pattern)
  tl        TransformerLens bridge run_with_cache of every hook_pattern
Methods that would not fit (est. pattern bytes > --max-pattern-gb) are skipped and reported as such.

    python benchmarks/attention_stats.py --lengths 512 2048 4096 8192
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from interp import io

STATS = ["lse", "entropy", "mass_first", "mass_recent", "attn_distance", "prev_token", "argmax", "col_sum",
         "col_alpha"]


def _child(method: str, n: int) -> dict:
    import resource

    import torch

    import interp

    torch.manual_seed(0)
    model = interp.load_model("default")
    ids = torch.randint(100, 40000, (1, n))
    ids[0, 0] = model.tokenizer.bos_token_id or 1
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with torch.no_grad():
        if method == "sdpa":
            model.hf.set_attn_implementation("sdpa")
            model.hf(ids, use_cache=False)
        elif method in ("ours", "ours_chunked"):
            impl = "chunked" if method == "ours_chunked" else "auto"
            interp.attention_stats(model, ids, stats=STATS, sink_k=4, recent_w=64, distance_cap=64, impl=impl)
        elif method == "hf_eager":
            model.hf.set_attn_implementation("eager")
            out = model.hf(ids, use_cache=False, output_attentions=True)
            assert len(out.attentions) == model.shape.n_layers
        elif method == "tl":
            _, cache = model.tl.run_with_cache(ids, names_filter=lambda s: s.endswith("hook_pattern"))
            assert len(cache) == model.shape.n_layers
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "ours":
        from interp.kernels.attention_stats import fused_cpu

        method_impl = "fused" if fused_cpu.available() else "chunked"
    else:
        method_impl = {"ours_chunked": "chunked"}.get(method, "")
    return {"method": method, "impl": method_impl, "n": n, "seconds": dt, "peak_rss_mb": peak,
            "rss_after_load_mb": base_rss, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    ap.add_argument("--methods", nargs="+", default=["sdpa", "ours", "ours_chunked", "hf_eager", "tl"])
    ap.add_argument("--max-pattern-gb", type=float, default=12.0)
    ap.add_argument("--out", default="reports/bench/attention_stats.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]))))
        return
    rows = []
    for n in args.lengths:
        for method in args.methods:
            pattern_gb = 30 * 9 * n * n * 4 / 1e9
            if method in ("hf_eager", "tl") and pattern_gb > args.max_pattern_gb:
                rows.append({"method": method, "n": n, "skipped": f"patterns alone need {pattern_gb:.0f} GB"})
                print(f"{method:9s} n={n:5d}  skipped (patterns alone need {pattern_gb:.0f} GB)", flush=True)
                continue
            proc = subprocess.run([sys.executable, __file__, "--child", method, str(n)], capture_output=True,
                                  text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
                rows.append({"method": method, "n": n, "failed": tail[0][:200], "returncode": proc.returncode})
                print(f"{method:9s} n={n:5d}  FAILED rc={proc.returncode}: {tail[0][:120]}", flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{method:9s} n={n:5d}  {row['seconds']:8.2f} s  peak RSS {row['peak_rss_mb']:8.0f} MB", flush=True)
    # ratios against the plain SDPA forward of the same length
    print("\n| n | method | seconds | peak RSS MB | time / sdpa | RSS / sdpa |\n|---|---|---|---|---|---|")
    for n in args.lengths:
        base = next((r for r in rows if r["n"] == n and r["method"] == "sdpa" and "seconds" in r), None)
        for r in rows:
            if r["n"] != n:
                continue
            if "seconds" not in r:
                print(f"| {n} | {r['method']} | {r.get('skipped') or r.get('failed')} | | | |")
                continue
            tr = r["seconds"] / base["seconds"] if base else float("nan")
            mr = r["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
            r.update(time_ratio=tr, rss_ratio=mr)
            print(f"| {n} | {r['method']} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {tr:.2f} | {mr:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, {"stats": STATS, "rows": rows, "cpu_count": os.cpu_count()}, sort_keys=False)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
