"""The memory plan (``interp.plan``) against measured peak RSS on the CPU.

Each case runs in a fresh subprocess: load the model, record RSS, reset the kernel's peak-RSS counter
(``/proc/self/clear_refs`` ← 5), run the entry point once on ``batch`` × ``n_tokens`` random tokens, read
``VmHWM``. The plan's peak (runtime + weights + kept + activations + logits) is compared with that peak; the ratio
estimate / measured is reported and checked against the band ``[0.85, 1.15]``. The tiny model's case checks the
runtime line (``RUNTIME_CPU``: a process that has loaded a model, i.e. imported the model code and its
libraries; a bare interpreter with torch + transformers + interp imported is reported too, it is smaller).

    python benchmarks/memory_plan.py                    # default model at 512/2048/8192 + tiny model
    python benchmarks/memory_plan.py --quick            # tiny model and default at 512 only

Writes ``reports/bench/memory_plan.json`` (Linux only: reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BAND = (0.85, 1.15)
CASES = [("tiny-llama", 256, "logits"), ("default", 512, "logits"), ("default", 2048, "logits"),
         ("default", 8192, "logits"), ("default", 512, "stats"), ("default", 2048, "stats")]
QUICK = CASES[:2]

CHILD = r"""
import gc, json, sys, torch
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
import interp, transformers, accelerate
from interp.plan import plan
runtime = status("VmRSS")
if sys.argv[1] == "runtime":
    print(json.dumps({"runtime": runtime})); sys.exit()
spec, n, entry = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = interp.load_model(spec)
ids = torch.randint(2, min(model.shape.d_vocab, 30000), (1, n))
stats = ["col_alpha"] if entry == "stats" else []
p = plan(model, n, 1, stats=stats)
gc.collect()
loaded = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
with torch.no_grad():
    if entry == "stats":
        out = interp.attention_stats(model, ids, stats)
    else:
        out = model.logits(ids)
peak = status("VmHWM")
print(json.dumps({"rss_loaded": loaded, "peak": peak, "plan_peak": p.peak("cpu"), "rows": p.rows["cpu"]}))
"""


def run_child(*args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), TQDM_DISABLE="1")
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="reports/bench/memory_plan.json")
    args = ap.parse_args()
    from interp.plan import RUNTIME_CPU

    mib = 2**20
    runtime = run_child("runtime")["runtime"]
    rows = []
    print(f"bare interpreter RSS (python + torch + transformers + interp): {runtime / mib:.0f} MiB "
          f"(plan: {RUNTIME_CPU / mib:.0f} MiB)")
    print(f"{'model':<11}{'tokens':>7}{'entry':>7}{'weights':>9}{'act':>8}{'logits':>8}{'loaded':>8}"
          f"{'plan':>8}{'measured':>10}{'ratio':>7}")
    for spec, n, entry in (QUICK if args.quick else CASES):
        r = run_child(spec, n, entry)
        ratio = r["plan_peak"] / r["peak"]
        rows.append(dict(model=spec, n_tokens=n, entry=entry, plan_peak_bytes=r["plan_peak"],
                         measured_peak_bytes=r["peak"], rss_after_load_bytes=r["rss_loaded"], ratio=ratio,
                         plan_rows=r["rows"], in_band=BAND[0] <= ratio <= BAND[1]))
        c = r["rows"]
        print(f"{spec:<11}{n:>7}{entry:>7}{c['weights'] / mib:>9.0f}{c['activations'] / mib:>8.0f}"
              f"{c['logits'] / mib:>8.0f}{r['rss_loaded'] / mib:>8.0f}{r['plan_peak'] / mib:>8.0f}"
              f"{r['peak'] / mib:>10.0f}{ratio:>7.2f}")
    load = os.getloadavg()
    result = dict(band=BAND, runtime_rss_bytes=runtime, runtime_plan_bytes=RUNTIME_CPU, cases=rows,
                  all_in_band=all(r["in_band"] for r in rows), loadavg=load, cpu_count=os.cpu_count(),
                  note="MiB columns; ratio = plan peak / measured VmHWM of one forward (fresh process)")
    from interp import io

    io.write_json(Path(args.out), result)
    print(f"all in band {BAND}: {result['all_in_band']}; load {load[0]:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
