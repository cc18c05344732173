"""Peak memory of the MoA attention saliency (``analyses.attention_saliency``) vs a plain forward + backward.

For each length N (default 2048, 4096, 8192 tokens of haystack prose, default model) two fresh processes, one
after the other (peak RSS is per process):

* ``plain``: ``model.forward`` + the summed next-token loss + ``loss.backward()`` (weights trainable, as a user
  would run it);
* ``saliency``: ``saliency_scores`` — one forward + one backward to every layer's z (weights frozen) and the
  tiled influence of every head (no n×n pattern).

Beside them: the bytes a dense pattern would need, fp32, per layer for all heads (H · N² · 4) and for all layers.
Prints a table and writes ``reports/bench/attention_saliency.json`` with ``uptime`` before and after, and the
saliency scores of the longest length (the findings).

    python benchmarks/attention_saliency.py [--lengths 2048 4096 8192] [--tile 512] [--threads 2]
        [--modes plain saliency] [--out reports/bench/attention_saliency.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def child(mode: str, n: int, tile: int, threads: int, model_name: str) -> dict:
    torch.set_num_threads(threads)
    import interp
    from interp.analyses._text import long_prose_ids
    from interp.analyses.attention_saliency import SCORES, saliency_scores, summed_loss

    model = interp.load_model(model_name)
    ids = long_prose_ids(model, n)
    rss_load = peak_rss_mb()
    t = time.perf_counter()
    out = {"mode": mode, "n_tokens": int(ids.shape[1]), "rss_after_load_mb": round(rss_load, 1)}
    if mode == "plain":
        loss = summed_loss(model.forward(ids).logits, ids)
        loss.backward()
        out["loss"] = float(loss.detach())
    else:
        sc = saliency_scores(model, ids, tile=tile)
        out["loss"] = float(sc["loss"])
        out["scores"] = {k: sc[k].tolist() for k in SCORES}
    out["seconds"] = round(time.perf_counter() - t, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def run_child(mode, n, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--n", str(n), "--tile", str(args.tile), "--threads",
           str(args.threads), "--model", args.model]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "n_tokens": n, "error": f"not finished within {args.child_timeout} s (stopped)"}
    if proc.returncode != 0:
        return {"mode": mode, "n_tokens": n, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="reports/bench/attention_saliency.json")
    ap.add_argument("--child-timeout", type=int, default=420, help="seconds per measured process")
    ap.add_argument("--modes", nargs="+", choices=("plain", "saliency"), default=["plain", "saliency"])
    ap.add_argument("--child", choices=("plain", "saliency"))
    ap.add_argument("--n", type=int)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n, args.tile, args.threads, args.model)))
        return {}
    from interp import io
    from interp.model import load_model

    shape = load_model(args.model).shape
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "tile": args.tile, "threads": args.threads, "uptime_before": uptime(),
              "runs": []}
    print(f"{'N':>6} {'mode':>9} {'peak RSS MB':>12} {'after load':>11} {'seconds':>8} "
          f"{'dense/layer MB':>15} {'dense all MB':>13}")
    for n in args.lengths:
        dense = shape.n_heads * n * n * 4 / 2**20
        for mode in args.modes:
            r = run_child(mode, n, args)
            r.update(dense_pattern_per_layer_mb=round(dense, 1),
                     dense_pattern_all_layers_mb=round(dense * shape.n_layers, 1), uptime_after=uptime())
            result["runs"].append(r)
            io.write_json(out, {**result, "uptime_after": uptime()}, indent=1, sort_keys=False)  # partial
            if "error" in r:
                print(f"{n:>6} {mode:>9} failed: {r['error']}")
                continue
            print(f"{n:>6} {mode:>9} {r['peak_rss_mb']:>12.0f} {r['rss_after_load_mb']:>11.0f} {r['seconds']:>8.1f} "
                  f"{dense:>15.0f} {dense * shape.n_layers:>13.0f}")
    result["uptime_after"] = uptime()
    print("uptime before:", result["uptime_before"], "\nuptime after: ", result["uptime_after"])
    io.write_json(out, result, indent=1, sort_keys=False)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
