"""Accuracy before / after attention calibration on a real model (CPU, sizes that fit a few minutes).

    python benchmarks/calibration_accuracy.py [MODEL] [ANALYSIS ...]     (default: default zerotuning act)

Runs each analysis's ``run`` with the small sizes below, prints the test accuracies (Wilson 95% interval,
McNemar p vs clean) and writes ``reports/experiments/calibration_<analysis>_<model>.json`` (the score rows and
extra tables, atomically) for the README and notebook 08.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "zerotuning": dict(tasks=["sentiment"], n_candidates=6, sweep=[0.5, 2.0], grid=[0.5, 2.0, 4.0],
                       n_calibration=24, n_validation=24, n_test=100, n_random=1, batch_size=25),
    "act": dict(tasks=["sentiment"], n_candidates=6, n_calibration=24, n_test=100, n_random=1, batch_size=25),
    "attention_redistribution": dict(n_calibration=16, n_test=32, n_random=2, batch_size=16),
    "context_attention": dict(n_calibration=16, n_test=32, n_random=2, batch_size=16),
}


def main(argv):
    import interp
    from interp import io
    from interp.analyses import registry

    model_name = argv[0] if argv else "default"
    names = argv[1:] or ["zerotuning", "act"]
    torch.set_num_threads(2)
    model = interp.load_model(model_name)
    for name in names:
        t0 = time.time()
        spec = registry.get(name)
        out = spec.run(model, SIZES[name])
        dt = time.time() - t0
        s = out["scores"]
        acc = s[s["score"].str.contains("_accuracy_") & ~s["score"].str.contains("delta")]
        print(f"\n{name} on {model.name} ({dt:.0f} s)")
        for r in acc.itertuples():
            p = s.loc[s["score"] == r.score.replace("_accuracy_", "_mcnemar_p_"), "value"]
            ci = f"[{r.ci_low:.2f}, {r.ci_high:.2f}]" if r.ci_low == r.ci_low else ""
            print(f"  {r.score:45s} {r.value:.3f} {ci:14s} n={r.n_samples}"
                  + (f"  McNemar p={p.iloc[0]:.3f}" if len(p) else ""))
        doc = {"model": model.name, "analysis": name, "params": SIZES[name], "seconds": dt,
               "tables": {k: json.loads(v.to_json(orient="records")) for k, v in out.items()}}
        io.write_json(ROOT / "reports" / "experiments" / f"calibration_{name}_{model.name}.json", doc)


if __name__ == "__main__":
    main(sys.argv[1:])
