"""``benchmarks/attention_basics_memory.py``: attention_basics peak RSS ≤ 1.3 × the plain forward's (issue 15).

The fast test runs the benchmark end to end on tiny-llama (its whole context, 256 tokens) and checks the
measurement itself: after the high-water reset a planted 400 MB allocation shows in ``VmHWM``, and the
analysis saw every token of the long text. The slow test is the claim at 8192 tokens on the default model
(before the rewrite on the statistics engine: 9.1 GB and climbing).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_basics_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("attention_basics_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peak_reset_sees_a_planted_allocation():
    import torch

    b = _bench()
    big = torch.ones(100 * 2**20)  # 400 MB, touched
    del big
    if not b._reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable here: the benchmark falls back to VmHWM since start")
    before = b._status_mb("VmHWM")
    planted = torch.ones(100 * 2**20)
    after = b._status_mb("VmHWM")
    del planted
    assert after - before >= 350, (before, after)


def test_benchmark_runs_on_tiny_llama(tmp_path):
    b = _bench()
    out = tmp_path / "bench.json"
    r = b.main(["--model", "tiny-llama", "--n", "100000", "--json", str(out)])
    s = r["summary"]
    assert s["n_tokens"] == 256 and r["attention_basics"]["n_samples"] == 255  # clamped to the context
    assert s["peak_forward_mb"] > 100 and s["ok"] == (s["ratio"] <= 1.3)
    saved = json.loads(out.read_text())
    assert saved["summary"]["ratio"] == pytest.approx(s["ratio"])


@pytest.mark.slow
def test_attention_basics_8192_tokens_within_1_3x_forward(tmp_path):
    r = _bench().main(["--model", "default", "--n", "8192", "--json", str(tmp_path / "bench.json")])
    s = r["summary"]
    assert s["n_tokens"] == 8192 and r["attention_basics"]["n_samples"] == 8191
    assert s["ratio"] <= 1.3, s
