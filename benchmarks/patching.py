"""Benchmark: all-heads z activation patching — ``interp.patch_sweep`` vs TransformerLens's own
``transformer_lens.patching`` functions on the same model's TL bridge (``model.tl``).

IOI-style prompt pair of equal token length; metric = logit difference " Mary" − " John" at the last position.

- all positions: every head of every layer, ``patch_sweep(..., "z", positions="all")`` vs
  ``get_act_patch_attn_head_out_all_pos``;
- each position: every head × position of ``--each-layers`` (TL's loop is one forward per site, so it is
  restricted to a few layers through its ``index_df``; ours runs the same sites), ``positions="each"`` vs
  ``get_act_patch_attn_head_out_by_pos``.

Methods run round-robin ``--repeats`` times (the machine may be shared: ``uptime`` is recorded before and
after); the table shows medians, the speed-up is the ratio of medians (and TL / ours of each round), max |Δ|
is against TL's table and must stay within ``--tol`` (1e-4) or nothing is written. On a loaded machine TL's many
small multi-threaded forwards slow down far more than the packed ones (thread oversubscription); ``--threads 1``
runs both sides single-threaded.
Both sides' times include their clean cache run. Writes ``reports/bench/patching.json``.

    python benchmarks/patching.py [--layers N] [--each-layers 0,10,20] [--repeats 3] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from interp import io

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def tl_all_pos(model, clean, corrupt, metric, layers):
    """TL's ``get_act_patch_attn_head_out_all_pos`` over ``layers`` × all heads → ``[layer, head]``."""
    import pandas as pd
    from transformer_lens import patching as tlp

    _, cache = model.tl.run_with_cache(clean)
    index = pd.DataFrame([(L, h) for L in layers for h in range(model.shape.n_heads)], columns=["layer", "head"])
    out = tlp.get_act_patch_attn_head_out_all_pos(model.tl, corrupt, cache, lambda lg: metric(lg).mean(),
                                                  index_axis_names=None, index_df=index)
    return out.reshape(len(layers), model.shape.n_heads).float().cpu()


def tl_by_pos(model, clean, corrupt, metric, layers):
    """TL's ``get_act_patch_attn_head_out_by_pos`` over ``layers`` × heads × positions → ``[layer, head, pos]``."""
    import pandas as pd
    from transformer_lens import patching as tlp

    _, cache = model.tl.run_with_cache(clean)
    n_pos, n_h = clean.shape[1], model.shape.n_heads
    index = pd.DataFrame([(L, p, h) for L in layers for p in range(n_pos) for h in range(n_h)],
                         columns=["layer", "pos", "head"])
    out = tlp.get_act_patch_attn_head_out_by_pos(model.tl, corrupt, cache, lambda lg: metric(lg).mean(),
                                                 index_axis_names=None, index_df=index)
    return out.reshape(len(layers), n_pos, n_h).transpose(1, 2).float().cpu()


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _table(title, rows, ref_name, n_sites):
    ref_secs, ref = rows[ref_name]
    t_ref = statistics.median(ref_secs)
    print(f"\n{title}")
    print(f"{'method':44s} {'median s':>9s} {'runs (s)':>22s} {'ms/site':>8s} {'speed-up':>9s} {'per round':>18s} "
          f"{'max|Δ| vs TL':>13s}")
    out = []
    for name, (secs, vals) in rows.items():
        med = statistics.median(secs)
        diff = float((vals - ref).abs().max())
        rounds = [a / b for a, b in zip(ref_secs, secs)]  # TL / this, each round's pair run back to back
        runs = " ".join(f"{s:.2f}" for s in secs)
        per = " ".join(f"{r:.1f}" for r in rounds)
        print(f"{name:44s} {med:9.2f} {runs:>22s} {1000 * med / n_sites:8.2f} {t_ref / med:8.1f}× {per:>18s} "
              f"{diff:13.2e}")
        out.append(dict(method=name, seconds_median=med, seconds=secs, ms_per_site=1000 * med / n_sites,
                        speedup_vs_tl=t_ref / med, speedup_per_round=rounds,
                        speedup_median_of_rounds=statistics.median(rounds), max_abs_diff_vs_tl=diff))
    return out


def _timed(runs, name, fn):
    t = time.perf_counter()
    vals = fn()
    runs.setdefault(name, ([], None))
    runs[name] = (runs[name][0] + [time.perf_counter() - t], vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="all-positions sweep: first N layers (default: all)")
    ap.add_argument("--each-layers", default="0,10,20", help="layers of the per-position comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--budget-mb", type=float, default=1024)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="reports/bench/patching.json")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |Δ| vs TL's table allowed (else exit 1)")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # TL's progress bars
    from transformer_lens import patching as tlp

    tlp.tqdm = lambda it, *a, **k: it  # its loop without the progress bar (tqdm 4.70 ignores TQDM_DISABLE there)
    if args.threads:
        torch.set_num_threads(args.threads)

    import interp
    from interp.metrics import logit_diff

    model = interp.load_model(args.model)
    clean, corrupt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    if clean.shape != corrupt.shape:
        raise SystemExit(f"prompts tokenise to {tuple(clean.shape)} and {tuple(corrupt.shape)}")
    mary = model.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    john = model.tokenizer(" John", add_special_tokens=False)["input_ids"][0]
    metric = lambda lg: logit_diff(lg, mary, john)
    layers = list(range(args.layers or model.shape.n_layers))
    each_layers = [int(x) for x in args.each_layers.split(",")]
    n_h, n_pos = model.shape.n_heads, clean.shape[1]
    _ = model.tl  # build the bridge outside the timings
    interp.patch_sweep(model, clean, corrupt, "z", metric, layers=layers[:1], heads=[0])  # warm-up
    load_before, uptime_before = os.getloadavg(), _uptime()

    def ours(ls, positions, **kw):
        return lambda: interp.patch_sweep(model, clean, corrupt, "z", metric, positions, layers=ls,
                                          memory_budget_mb=args.budget_mb, **kw).values

    all_rows, each_rows = {}, {}
    for _ in range(args.repeats):
        _timed(all_rows, "interp patch_sweep (prefix reuse)", ours(layers, "all"))
        _timed(all_rows, "interp patch_sweep (reuse_prefix=False)", ours(layers, "all", reuse_prefix=False))
        _timed(all_rows, "TL get_act_patch_attn_head_out_all_pos", lambda: tl_all_pos(model, clean, corrupt,
                                                                                       metric, layers))
        _timed(each_rows, "interp patch_sweep each (prefix reuse)", ours(each_layers, "each"))
        _timed(each_rows, "TL get_act_patch_attn_head_out_by_pos", lambda: tl_by_pos(model, clean, corrupt,
                                                                                      metric, each_layers))
    load_after, uptime_after = os.getloadavg(), _uptime()

    print(f"\nmodel {model.name}, prompt {n_pos} tokens, {torch.get_num_threads()} CPU threads, {args.repeats} "
          f"repeats, load average before {load_before[0]:.2f} / after {load_after[0]:.2f} ({os.cpu_count()} CPUs)")
    res_all = _table(f"z patching, all positions: {len(layers) * n_h} heads ({len(layers)} layers × {n_h})",
                     all_rows, "TL get_act_patch_attn_head_out_all_pos", len(layers) * n_h)
    n_each = len(each_layers) * n_h * n_pos
    res_each = _table(f"z patching, each position: {n_each} sites (layers {each_layers} × {n_h} heads × {n_pos} "
                      "positions)", each_rows, "TL get_act_patch_attn_head_out_by_pos", n_each)
    doc = dict(benchmark="patching", model=model.name, n_layers=len(layers), n_heads=n_h, n_sites=len(layers) * n_h,
               n_tokens=int(n_pos), each_layers=each_layers, n_sites_each=n_each, repeats=args.repeats,
               threads=torch.get_num_threads(), budget_mb=args.budget_mb, device=str(model.device),
               torch=torch.__version__, machine=platform.machine(), cpu_count=os.cpu_count(),
               loadavg_before=list(load_before), loadavg_after=list(load_after), uptime_before=uptime_before,
               uptime_after=uptime_after, clean=CLEAN, corrupt=CORRUPT,
               metric="logit_diff(' Mary', ' John') at the last position", results=res_all,
               results_each=res_each, tl_table=all_rows["TL get_act_patch_attn_head_out_all_pos"][1].tolist())
    worst = max(r["max_abs_diff_vs_tl"] for r in res_all + res_each)
    print(f"max |Δ| vs TL over both sweeps: {worst:.2e} (tolerance {args.tol:g})")
    if not worst <= args.tol:
        raise SystemExit(f"interp and TL differ by {worst:.2e} > {args.tol:g}; nothing written")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, doc, indent=1, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
