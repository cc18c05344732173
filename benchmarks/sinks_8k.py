"""Sink + head-taxonomy scores of the default model at its full context (8192 tokens of haystack prose).

One ``interp.attention_stats`` pass collects every statistic the analyses need (no [pos, pos] pattern), then
Sink_1 α, the StreamingLLM outside mass, hidden sinks, the TransformerLens-style head-type scores and WAAD/FAI
are derived from it. Prints a table of wall times and the peak RSS and writes ``reports/bench/sinks_8k.json``.

    python benchmarks/sinks_8k.py [--n 8192] [--threads 2] [--model default]

Not included (they need extra forward passes with activations, not attention statistics): secondary sinks'
MLP attribution, value drains / massive activations and the causal checks.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

from interp import io


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="reports/bench/sinks_8k.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import interp
    from interp.analyses._text import long_prose_ids
    from interp.analyses.head_detector import head_scores
    from interp.analyses.hidden_sinks import hidden_sinks
    from interp.analyses.sinks import sink_rate
    from interp.analyses.streaming import streaming_scores
    from interp.analyses.waad_fai import waad_fai_scores

    times = {}
    t = time.perf_counter()
    model = interp.load_model(args.model)
    times["load_model"] = time.perf_counter() - t
    ids = long_prose_ids(model, args.n)  # [1, n]
    rss_after_load = peak_rss_mb()

    t = time.perf_counter()
    st = interp.attention_stats(
        model, ids, stats=["col_alpha", "col_sum", "mass_first", "mass_recent", "mass_self", "attn_distance",
                           "prev_token", "duplicate", "induction"], sink_k=4, recent_w=64, distance_cap=10)
    times["forward_with_stats"] = time.perf_counter() - t

    t = time.perf_counter()
    alpha1 = st["col_alpha"][..., 0].double()  # [layer, batch, head]
    stream, _ = streaming_scores(model, ids, sink=4, window=64, stats=st)
    hidden, hidden_rows = hidden_sinks(model, ids, stats=st)
    types = head_scores(model, ids, stats=st)
    waad, _ = waad_fai_scores(model, ids, window=10, stats=st)
    times["derive_scores"] = time.perf_counter() - t

    ind = types["induction_head"]
    top = torch.argsort(ind.flatten(), descending=True)[:5].tolist()
    H = model.shape.n_heads
    result = {
        "model": model.name, "n_tokens": int(ids.shape[1]), "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "times_s": {k: round(v, 2) for k, v in times.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_load_mb": round(rss_after_load, 1),
        "sink1_rate_eps0.3_pct": sink_rate(alpha1, 0.3),
        "stream_head_frac_tau0.1": float(stream[stream.score == "stream_head_frac"].value.iloc[0]),
        "n_hidden_sinks": int(len(hidden_rows)),
        "top_induction_heads": [f"L{i // H}H{i % H}:{float(ind.flatten()[i]):.3f}" for i in top],
        "n_local_heads": int(waad[waad.score == "local_head"].value.sum()),
    }
    print(f"{'stage':<22}{'seconds':>10}")
    for k, v in times.items():
        print(f"{k:<22}{v:>10.1f}")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB (after load {rss_after_load:.0f} MB); "
          f"Sink_1^0.3 at {args.n} tokens = {result['sink1_rate_eps0.3_pct']:.1f} %")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, result, indent=1, sort_keys=False)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
