"""Memory cost of caching every per-head output (z, all layers) of the default model on one long prompt.

Claim checked: peak RSS of ``interp.collect(model, ids, "z")`` stays within ``1.1 × (peak RSS of the plain
forward + bytes of the kept tensors)``. The two runs are separate subprocesses (same prompt, same model load),
each recording ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` and wall time of one forward under no_grad.

z is the per-head output before W_O, ``[1, pos, head, d_head]`` per layer (fp32: 8192 × 9 × 64 × 4 B = 18.9 MB
per layer, 566 MB for 30 layers); the per-head residual write is ``z[..., h, :] @ W_O[:, h]`` (d_model per
head) and can be derived from it without another forward.

    python benchmarks/collect_memory.py [--n 8192] [--n 2048]
writes reports/bench/collect_memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from interp import io


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(mode: str, n: int) -> dict:
    import torch

    import interp

    torch.manual_seed(0)
    model = interp.load_model("default")
    ids = torch.randint(2, model.shape.d_vocab, (1, n))
    ids[0, 0] = model.tokenizer.bos_token_id or 0
    rec = {"mode": mode, "n_tokens": n, "rss_before_mb": _rss_mb(), "peak_before_mb": _peak_mb()}
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "plain":
            out = model.forward(ids).logits
            kept = 0
        else:
            out = interp.collect(model, ids, "z", batch_size=1, progress=False)
            kept = out.nbytes
    rec.update(seconds=time.perf_counter() - t0, peak_mb=_peak_mb(), kept_mb=kept / 2**20,
               threads=torch.get_num_threads())
    if mode != "plain":
        rec["kept_shape_per_layer"] = list(out[out.sites[0]].shape)
    return rec


def run(n: int) -> dict:
    res = {}
    for mode in ("plain", "collect_z"):
        p = subprocess.run([sys.executable, __file__, "--child", mode, "--n", str(n)], capture_output=True,
                           text=True, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"{mode} at n={n} failed:\n{p.stderr[-3000:]}")
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    a, b = res["plain"], res["collect_z"]
    bound = 1.1 * (a["peak_mb"] + b["kept_mb"])
    res["summary"] = {"n_tokens": n, "peak_plain_mb": a["peak_mb"], "peak_collect_mb": b["peak_mb"],
                      "kept_mb": b["kept_mb"], "bound_mb": bound, "ok": b["peak_mb"] <= bound,
                      "overhead_beyond_kept_mb": b["peak_mb"] - a["peak_mb"] - b["kept_mb"],
                      "seconds_plain": a["seconds"], "seconds_collect": b["seconds"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, action="append")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n[0])))
        return
    results = [run(n) for n in (args.n or [8192])]
    print(f"{'tokens':>7} {'plain peak MB':>14} {'collect peak MB':>16} {'kept MB':>8} {'bound MB':>9} "
          f"{'extra MB':>9} {'plain s':>8} {'collect s':>10} ok")
    for r in results:
        s = r["summary"]
        print(f"{s['n_tokens']:>7} {s['peak_plain_mb']:>14.0f} {s['peak_collect_mb']:>16.0f} "
              f"{s['kept_mb']:>8.0f} {s['bound_mb']:>9.0f} {s['overhead_beyond_kept_mb']:>9.0f} "
              f"{s['seconds_plain']:>8.1f} "
              f"{s['seconds_collect']:>10.1f} {s['ok']}")
    out = Path(__file__).resolve().parents[1] / "reports" / "bench" / "collect_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(out, {"benchmark": "collect_memory", "model": "default", "runs": results}, indent=1, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
