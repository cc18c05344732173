"""Benchmark: the README's main job, ``interp report --model default --out DIR`` (default analyses), end to end.

Each run is a fresh process (``/usr/bin/time -v``: wall time and peak RSS, model load included) writing into a
new temporary folder; the per-part timings come from the run's ``manifest.json``. With ``--baseline PATH`` (a
checkout of another commit with its own ``.venv``, e.g. a git worktree of main before a change) the two trees run
alternately, side by side in one benchmark run, and the table gives their ratio. Writes
``reports/bench/report_job.json`` with ``uptime`` before and after.

    python benchmarks/report_job.py [--repeats 1] [--baseline /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_job(tree: Path) -> dict:
    """One ``interp report --model default`` in ``tree`` (its ``.venv``): wall s, peak RSS MB, manifest timings."""
    exe = tree / ".venv" / "bin" / "interp"
    if not exe.exists():
        raise SystemExit(f"{exe} not found: give a checkout with its .venv (see /work/wt/mk.sh)")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "report"
        p = subprocess.run(["/usr/bin/time", "-v", str(exe), "report", "--model", "default", "--out", str(out)],
                           cwd=tree, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"the job failed in {tree}:\n{p.stderr[-3000:]}")
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", p.stderr).group(1)
        parts = [float(x) for x in wall.split(":")]
        seconds = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
        timings = json.loads((out / "manifest.json").read_text())["timings_s"]
    return {"wall_s": seconds, "peak_rss_mb": rss_kb / 1024, "timings": timings}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout (with .venv) to time alongside")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "report_job.json"))
    args = ap.parse_args()
    trees = {"this tree": ROOT}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), "this tree": ROOT}
    before, load_before = _uptime(), os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, tree in trees.items():
            runs[name].append(run_job(tree))
    after, load_after = _uptime(), os.getloadavg()
    print(f"uptime before: {before}\nuptime after:  {after}")
    print(f"{'tree':12s} {'wall s (median)':>16s} {'runs':>24s} {'peak RSS MB':>12s} {'load model s':>13s}")
    rows = []
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        rss = max(r["peak_rss_mb"] for r in rs)
        load = statistics.median(r["timings"]["load_model"] for r in rs)
        each = " ".join(f"{r['wall_s']:.1f}" for r in rs)
        print(f"{name:12s} {wall:16.1f} {each:>24s} {rss:12.0f} {load:13.1f}")
        rows.append({"tree": name, "path": str(trees[name]), "wall_s_median": wall, "peak_rss_mb_max": rss,
                     "runs": rs})
    doc = {"benchmark": "report_job", "command": "interp report --model default --out DIR",
           "repeats": args.repeats, "uptime_before": before, "uptime_after": after,
           "loadavg_before": list(load_before), "loadavg_after": list(load_after), "cpu_count": os.cpu_count(),
           "python": sys.version.split()[0], "results": rows}
    if len(rows) == 2:
        doc["wall_ratio_this_over_baseline"] = rows[1]["wall_s_median"] / rows[0]["wall_s_median"]
        print(f"this tree / baseline wall time: {doc['wall_ratio_this_over_baseline']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from interp import io

    io.write_json(out, doc, indent=1, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
