"""Peak memory of ``attention_basics`` against the plain forward on one long text (issue 15: O(n) memory).

Claim checked: peak RSS of ``analyses.basic.run`` on one text of ``n`` tokens is at most ``1.3 ×`` the peak
RSS of one plain ``model.forward`` (no_grad) on the same tokens. Each mode runs in its own subprocess: load
the model, tokenize the text, reset the kernel's high-water mark (``/proc/self/clear_refs``, value 5), run,
read ``VmHWM`` (so the model load's own peak does not mask the run's). Before the rewrite on the statistics
engine, the full ``[head, query_pos, key_pos]`` pattern of every layer was cached (9.1 GB passed at 8192
tokens on the default model).

The text is the built-in texts repeated until it holds ``n`` tokens (written to a temporary texts file, so the
analysis runs exactly as ``interp report`` runs it).

    python benchmarks/attention_basics_memory.py [--model default] [--n 8192]
writes reports/bench/attention_basics_memory.json (``--json PATH`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATIO = 1.3
MODES = ("forward", "attention_basics")


def _status_mb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def long_text(model, n: int) -> str:
    from interp.analyses.basic import TEXTS

    text = " ".join(re.sub(r"\n\s*\n", "\n", t) for t in TEXTS)  # one text: no blank line inside
    while len(model.tokenizer(text)["input_ids"]) < n:
        text = text + " " + text
    return text


def child(mode: str, model_spec: str, n: int) -> dict:
    import gc

    import torch

    import interp
    from interp.analyses import basic

    model = interp.load_model(model_spec)
    n = min(n, model.shape.n_ctx or n)
    text = long_text(model, n)
    ids = torch.tensor([model.tokenizer(text)["input_ids"][:n]])  # [1, pos]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.txt"
        path.write_text(text, encoding="utf-8")
        gc.collect()
        rec = {"mode": mode, "n_tokens": n, "rss_before_mb": _status_mb("VmRSS"), "reset": _reset_peak()}
        t0 = time.perf_counter()
        with torch.no_grad():
            if mode == "forward":
                model.forward(ids)
            else:
                out = basic.run(model, {"n_tokens": n, "n_texts": 1, "texts_file": str(path)})
                rec["n_samples"] = int(out["scores"]["n_samples"].iloc[0])
                if rec["n_samples"] != n - 1:
                    raise RuntimeError(f"attention_basics saw {rec['n_samples'] + 1} tokens, not {n}")
        rec["seconds"] = time.perf_counter() - t0
    rec["peak_mb"] = _status_mb("VmHWM")
    rec["threads"] = torch.get_num_threads()
    return rec


def run(model_spec: str = "default", n: int = 8192) -> dict:
    """Both modes, each in a fresh subprocess; ``summary`` holds the peaks, their ratio and the verdict."""
    res = {}
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for mode in MODES:
        p = subprocess.run([sys.executable, __file__, "--child", mode, "--model", model_spec, "--n", str(n)],
                           capture_output=True, text=True, check=False, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"{mode} on {model_spec} at n={n} failed:\n{p.stderr[-3000:]}")
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    a, b = res["forward"], res["attention_basics"]
    ratio = b["peak_mb"] / a["peak_mb"]
    res["summary"] = {"model": model_spec, "n_tokens": a["n_tokens"], "peak_forward_mb": a["peak_mb"],
                      "peak_basics_mb": b["peak_mb"], "ratio": ratio, "bound": RATIO, "ok": ratio <= RATIO,
                      "seconds_forward": a["seconds"], "seconds_basics": b["seconds"],
                      "peak_reset": a["reset"] and b["reset"]}
    return res


def main(argv=None) -> dict:
    from interp import io

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.n)))
        return {}
    r = run(args.model, args.n)
    s = r["summary"]
    print(f"{'model':>22} {'tokens':>7} {'forward MB':>11} {'basics MB':>10} {'ratio':>6} {'fwd s':>6} "
          f"{'basics s':>9} ok")
    print(f"{s['model']:>22} {s['n_tokens']:>7} {s['peak_forward_mb']:>11.0f} {s['peak_basics_mb']:>10.0f} "
          f"{s['ratio']:>6.2f} {s['seconds_forward']:>6.1f} {s['seconds_basics']:>9.1f} {s['ok']}")
    out = Path(args.json) if args.json else (Path(__file__).resolve().parents[1] / "reports" / "bench"
                                             / "attention_basics_memory.json")
    io.write_json(out, {"benchmark": "attention_basics_memory", "uptime": os.getloadavg(), **r}, indent=1,
                  sort_keys=False)
    print(f"wrote {out}")
    return r


if __name__ == "__main__":
    main()
