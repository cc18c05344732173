"""Benchmark: all-heads z activation patching (all positions) — batched ``interp.patch_sweep`` vs a
TransformerLens hook loop (one ``run_with_hooks`` per head, as ``get_act_patch_attn_head_out_all_pos`` does).

IOI-style prompt pair of equal token length; metric = logit difference " Mary" − " John" at the last position.
Reports wall time of each (clean cache run included), the speed-up and the max |difference| of the two
[layer, head] tables. Writes ``reports/bench/patching.json``.

    python benchmarks/patching.py [--layers N] [--threads T] [--budget-mb MB]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from interp import io

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def tl_loop(model, clean, corrupt, metric, layers):
    """One ``run_with_hooks`` per head on the TL bridge, patching clean hook_z[:, :, head] into the corrupt run."""
    tl = model.tl
    _, cache = tl.run_with_cache(clean, names_filter=lambda n: n.endswith("attn.hook_z"))
    out = torch.zeros(len(layers), model.shape.n_heads)
    for i, L in enumerate(layers):
        name = f"blocks.{L}.attn.hook_z"
        clean_z = cache[name]
        for h in range(model.shape.n_heads):
            def hook(z, hook, h=h, clean_z=clean_z):
                z = z.clone()
                z[:, :, h] = clean_z[:, :, h]
                return z

            with torch.no_grad():
                logits = tl.run_with_hooks(corrupt, fwd_hooks=[(name, hook)])
            out[i, h] = metric(logits).mean()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="only the first N layers (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--budget-mb", type=float, default=1024)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="reports/bench/patching.json")
    args = ap.parse_args()
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
    n_sites = len(layers) * model.shape.n_heads
    _ = model.tl  # build the bridge outside the timings
    interp.patch_sweep(model, clean, corrupt, "z", metric, layers=layers[:1], heads=[0])  # warm-up

    rows = {}
    for name, kw in (("interp batched (prefix reuse)", dict(reuse_prefix=True)),
                     ("interp batched (no reuse)", dict(reuse_prefix=False))):
        t = time.perf_counter()
        res = interp.patch_sweep(model, clean, corrupt, "z", metric, "all", layers=layers,
                                 memory_budget_mb=args.budget_mb, **kw)
        rows[name] = (time.perf_counter() - t, res.values)
    t = time.perf_counter()
    ref = tl_loop(model, clean, corrupt, metric, layers)
    rows["TransformerLens hook loop"] = (time.perf_counter() - t, ref)

    t_tl = rows["TransformerLens hook loop"][0]
    print(f"\nz patching, all positions: {n_sites} heads ({len(layers)} layers × {model.shape.n_heads}), "
          f"prompt {clean.shape[1]} tokens, {torch.get_num_threads()} CPU threads, {model.name}")
    print(f"{'method':32s} {'time (s)':>9s} {'ms/site':>8s} {'speed-up':>9s} {'max|Δ| vs TL':>13s}")
    results = []
    for name, (sec, vals) in rows.items():
        diff = float((vals - ref).abs().max())
        print(f"{name:32s} {sec:9.2f} {1000 * sec / n_sites:8.1f} {t_tl / sec:8.1f}× {diff:13.2e}")
        results.append(dict(method=name, seconds=sec, ms_per_site=1000 * sec / n_sites, speedup_vs_tl=t_tl / sec,
                             max_abs_diff_vs_tl=diff))
    doc = dict(benchmark="patching", model=model.name, n_layers=len(layers), n_heads=model.shape.n_heads,
               n_sites=n_sites, n_tokens=int(clean.shape[1]), threads=torch.get_num_threads(),
               budget_mb=args.budget_mb, device=str(model.device), torch=torch.__version__,
               machine=platform.machine(), cpu_count=os.cpu_count(), clean=CLEAN, corrupt=CORRUPT,
               metric="logit_diff(' Mary', ' John') at the last position", results=results,
               tl_table=ref.tolist())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, doc, indent=1, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
