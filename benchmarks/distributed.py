"""Distributed retrieval scoring on Ray against one local process (issue 16), and a scaling model.

Workload: ``retrieval`` on the default model over a NIAH grid of ``len(lengths) × len(depths) × len(needles)``
samples (default 3 × 2 × 2 = 12). Three modes, one after another in this process, same grid:

- ``local``: the analysis's own ``run`` with 2 torch threads (model load and one warm-up run not timed);
- ``ray1``: a local Ray cluster, 1 replica with 2 CPUs (2 threads);
- ``ray2``: a local Ray cluster, 2 replicas with 1 CPU (1 thread) each.

For each Ray mode: cluster start + replica model load (``startup_s``), the unit phase (``units_s``: split, run
on the replicas, merge) and the per-unit times recorded by the replicas. Ray overhead at 1 worker =
``units_s(ray1) / local_s − 1`` (goal ≤ 10 %); speedup at 2 workers = ``local_s / units_s(ray2)``. The retrieval
tables of every mode are checked identical.

Scaling model, fitted to the ``ray2`` per-unit times: unit time ``t(L) = a + b·L + c·L²`` in the context length
``L`` (least squares over the measured units; linear when the quadratic bends down), per-unit scheduling overhead
``o`` = (``units_s(ray1)`` − Σ of ray1's own unit times) / n_units, start-up ``s`` = ``startup_s(ray2)``. For ``W``
workers on the paper's grid (20 lengths ``linspace(1000, 50000)`` × 10 depths × 3 needles = 600 units) it simulates
the dynamic schedule (each unit, in grid order, goes to the first free worker; each costs ``t(L) + o``) and reports
the predicted wall time ``s + makespan`` and efficiency ``T(1) / (W · T(W))``. Assumptions: identical workers as
fast as one replica here with 1 thread, no contention between them (one core each), unit time depends only on ``L``
(the answer length is the same), the quadratic fit holds from the measured lengths up to 50K (an extrapolation,
stated as such), the driver and object store are never the bottleneck (results are ~10 KB a unit).

    python benchmarks/distributed.py [--lengths 300 600 900] [--depths 0 100] [--needles 0 1] [--max-new-tokens 50]
writes reports/bench/distributed.json (``--json PATH`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path


def _local(spec, p) -> tuple[dict, float]:
    import torch

    from interp import load_model

    torch.set_num_threads(2)
    model = load_model("default")
    spec.run(model, p, None)  # untimed warm-up: the first run in a process pays one-time costs (lazy init, caches;
    t0 = time.perf_counter()  # measured 132.7 s then 29.7 s, load ~3) that the Ray modes, run later, would not
    tables = spec.run(model, p, None)
    return tables, time.perf_counter() - t0


def _ray(spec, p, workers: int, cpus: int) -> dict:
    from interp.distributed import Executor

    t0 = time.perf_counter()
    with Executor("default", "local", workers, num_cpus=cpus) as ex:
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        tables = ex.run_analysis(spec, p)
        units_s = time.perf_counter() - t1
        units = ex.units[spec.name]
        replicas = ex.replicas
    return {"tables": tables, "startup_s": startup, "units_s": units_s, "units": units, "replicas": replicas}


def _same(a: dict, b: dict) -> bool:
    import pandas as pd

    try:
        for t in ("scores", "head_counter"):
            pd.testing.assert_frame_equal(a[t], b[t], check_exact=True)
        pd.testing.assert_frame_equal(a["per_sample"].drop(columns="seconds"),
                                      b["per_sample"].drop(columns="seconds"), check_exact=True)
        return True
    except AssertionError:
        return False


def fit_unit_time(lengths, seconds):
    """Least-squares ``t(L) = a + b·L + c·L²`` (c = 0 with fewer than 3 distinct lengths); ``(a, b, c)``."""
    import numpy as np

    L = np.asarray(lengths, float)
    y = np.asarray(seconds, float)
    if len(set(lengths)) >= 3:
        coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(L), L, L ** 2], 1), y, rcond=None)
        if coef[2] >= 0 and coef[1] >= 0:
            return tuple(float(x) for x in coef)
    # too few lengths, or a fit that bends down (noise over a short range): linear, slope >= 0
    coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(L), L], 1), y, rcond=None)
    if coef[1] < 0:
        return float(y.mean()), 0.0, 0.0
    return float(coef[0]), float(coef[1]), 0.0


def simulate(unit_times, workers: int, overhead: float) -> float:
    """Makespan of the dynamic schedule: units in order, each to the first free worker."""
    import heapq

    free = [0.0] * workers
    for t in unit_times:
        heapq.heappush(free, heapq.heappop(free) + t + overhead)
    return max(free)


def scaling(units, lengths_of, ray1, startup_s, workers=(1, 8, 64, 512)) -> dict:
    """The scaling model (module docstring): unit times of ``units`` (the 1-thread replicas), scheduling
    overhead per unit from ``ray1`` (its unit phase minus its own replica's unit times)."""
    from interp.analyses.niah import paper_depths, paper_lengths

    secs = [u["seconds"] for u in units]
    a, b, c = fit_unit_time([lengths_of[u["key"]] for u in units], secs)
    overhead = max(0.0, (ray1["units_s"] - sum(u["seconds"] for u in ray1["units"])) / len(ray1["units"]))
    grid = [L for _ in range(3) for L in paper_lengths() for _ in paper_depths()]
    times = [max(1e-3, a + b * L + c * L * L) for L in grid]
    t1 = startup_s + simulate(times, 1, overhead)
    rows = []
    for w in workers:
        tw = startup_s + simulate(times, w, overhead)
        rows.append({"workers": w, "wall_s": round(tw, 1), "efficiency": round(t1 / (w * tw), 3)})
    return {"fit_seconds": {"a": a, "b_per_token": b, "c_per_token2": c}, "overhead_per_unit_s": overhead,
            "startup_s": startup_s, "n_units": len(grid), "serial_unit_s": round(sum(times), 1),
            "predicted": rows}


def _refit(path: Path) -> None:
    from interp import io
    from interp.analyses.niah import grid, sample_key

    out = io.read_json(path)
    g = out["grid"]
    lengths_of = {sample_key(*c): c[0] for c in grid(g["lengths"], g["depths"], g["needles"])}
    out["scaling_model"] = scaling(out["ray2"]["units"], lengths_of, out["ray1"], out["ray2"]["startup_s"])
    _print(out)
    io.write_json(path, out)


def _print(out: dict) -> None:
    local_s = out["local_s"]
    print(f"{'mode':<8}{'startup s':>11}{'units s':>10}{'vs local':>10}")
    print(f"{'local':<8}{'-':>11}{local_s:>10.1f}{1.0:>10.2f}")
    for name in ("ray1", "ray2"):
        r = out[name]
        print(f"{name:<8}{r['startup_s']:>11.1f}{r['units_s']:>10.1f}{local_s / r['units_s']:>10.2f}")
    print(f"ray overhead at 1 worker {out['ray1_overhead']:+.1%}; speedup at 2 workers {out['ray2_speedup']:.2f}x; "
          f"identical tables: {out['identical_tables']}")
    sm = out["scaling_model"]
    print(f"scaling model on {sm['n_units']} units (fit a={sm['fit_seconds']['a']:.3f}s, "
          f"b={sm['fit_seconds']['b_per_token']:.2e}s/token, c={sm['fit_seconds']['c_per_token2']:.2e}s/token^2, "
          f"overhead {sm['overhead_per_unit_s']:.3f}s/unit):")
    for row in sm["predicted"]:
        print(f"  {row['workers']:>4} workers: {row['wall_s']:>9.1f} s, efficiency {row['efficiency']:.2f}")
    print(out["uptime_before"], "|", out["uptime_after"])


def main(argv=None):
    p_ = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p_.add_argument("--lengths", type=int, nargs="+", default=[300, 600, 900])
    p_.add_argument("--depths", type=float, nargs="+", default=[0.0, 100.0])
    p_.add_argument("--needles", type=int, nargs="+", default=[0, 1])
    p_.add_argument("--max-new-tokens", type=int, default=50)
    p_.add_argument("--json", default="reports/bench/distributed.json")
    p_.add_argument("--refit", action="store_true", help="recompute the scaling model of --json from its "
                    "measured units (no new measurement)")
    args = p_.parse_args(argv)
    if args.refit:
        return _refit(Path(args.json))
    from interp import io
    from interp.analyses import registry
    from interp.analyses.niah import grid, sample_key

    spec = registry.get("retrieval")
    p = spec.params.coerce({"lengths": args.lengths, "depths": args.depths, "needles": args.needles,
                            "max_new_tokens": args.max_new_tokens})
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    local_tables, local_s = _local(spec, p)
    ray1 = _ray(spec, p, 1, 2)
    ray2 = _ray(spec, p, 2, 1)
    lengths_of = {sample_key(*c): c[0] for c in grid(p.lengths, p.depths, p.needles)}
    out = {
        "grid": {"lengths": args.lengths, "depths": args.depths, "needles": args.needles,
                 "max_new_tokens": args.max_new_tokens, "n_samples": len(lengths_of)},
        "uptime_before": load, "uptime_after": subprocess.run(["uptime"], capture_output=True,
                                                              text=True).stdout.strip(),
        "cpus": os.cpu_count(),
        "local_s": round(local_s, 2),
        "ray1": {k: ray1[k] for k in ("startup_s", "units_s", "units")},
        "ray2": {k: ray2[k] for k in ("startup_s", "units_s", "units")},
        "ray1_overhead": round(ray1["units_s"] / local_s - 1, 4),
        "ray2_speedup": round(local_s / ray2["units_s"], 3),
        "identical_tables": _same(local_tables, ray1["tables"]) and _same(local_tables, ray2["tables"]),
        "scaling_model": scaling(ray2["units"], lengths_of, ray1, ray2["startup_s"]),
    }
    _print(out)
    io.write_json(Path(args.json), out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
