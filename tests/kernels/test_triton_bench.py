"""``benchmarks/_gpu_kernels.py`` (the ``--gpu`` benchmark) runs end to end: on CPU as a dry run under the
interpreter at a tiny size (its timings mean nothing; its correctness check, JSON record and verdict are what
is tested), and without CUDA the real run records a skip."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not importable", allow_module_level=True)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "_gpu_kernels.py"


def _module():
    spec = importlib.util.spec_from_file_location("_gpu_kernels", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU dry run")
def test_gpu_benchmark_dry_run_records_every_path(tmp_path):
    g = _module()
    out = tmp_path / "gpu.json"
    rec = g.run_gpu(n=80, layers=2, heads=4, kv=2, d=32, reps=2, dry_run=True, out=out)
    assert json.loads(out.read_text())["verdict"] == json.loads(json.dumps(rec["verdict"]))
    rows = {r["path"]: r for r in rec["rows"]}
    assert {n: r["qk_passes"] for n, r in rows.items()} == {"sdpa_flash": 1, "flash_lse": 1, "triton_rows": 2,
                                                            "triton_rows+lse": 1, "triton": 3, "triton+lse": 2}
    for name, _, _, _ in g.PATHS:
        chk = rows[name]["check"]
        assert chk and all(c.get("ok", True) for c in chk.values()), (name, chk)
        assert all(c["max_abs_err"] < 1e-3 for c in chk.values() if "max_abs_err" in c), chk
        assert len(rows[name]["times_s"]) == 2
    assert set(rows["triton"]["check"]) == set(g.TYPICAL) and rec["verdict"]["checks_ok"]
    assert rec["targets"] == {"all_layers_stats_s": 1.0, "effective_qk_tflops": 350.0, "two_pass_vs_flash": 1.5}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only path")
def test_gpu_benchmark_without_cuda_records_the_skip(tmp_path):
    rec = _module().run_gpu(out=tmp_path / "gpu.json")
    assert rec["skipped"] == "no CUDA device" and "torch" in rec["versions"]
    assert json.loads((tmp_path / "gpu.json").read_text())["skipped"] == "no CUDA device"
