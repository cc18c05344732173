"""The memory plan: its terms against the real tensors (logits, kept statistics, weights per device of a split
map), the refusal of an over-budget run before any forward (every entry point), the fix it names, and the CLI.
The estimate against measured peak RSS is a benchmark (benchmarks/memory_plan.py), not a test."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import interp
from interp.cli import app
from interp.devices import place
from interp.plan import PlanError, check_run, estimate, plan, plan_for, weight_bytes
from interp.sites import Site
from interp.testing import tiny_model

MiB = 2**20


def ids(batch=2, n=9):
    return torch.randint(2, 60, (batch, n), generator=torch.Generator().manual_seed(0))


def test_logits_and_kept_statistics_are_the_real_tensors():
    m = tiny_model("llama", n_layers=2)
    x = ids(3, 20)
    rows = estimate(m, 20, 3, stats=("entropy", "col_alpha", "lse"))["cpu"]
    assert rows["logits"] == m.logits(x).nbytes
    st = interp.attention_stats(m, x, ["entropy", "col_alpha", "lse"])
    assert rows["kept"] == sum(v.nbytes for v in st.values.values())
    # generation keeps the KV cache: 2 (k, v) × layers × batch × kv_head × pos × d_head elements
    kv = estimate(m, 20, 3, kv_cache=True)["cpu"]["kept"]
    assert kv == 2 * 2 * 3 * 2 * 20 * 8 * 4


def test_weights_per_device_of_a_split_map(tmp_path):
    m = tiny_model("qwen2", n_layers=3)
    sd = {k: v.nbytes for k, v in m.hf.state_dict().items()}
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
          "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    want_disk = sum(b for k, b in sd.items() if k.startswith(("model.layers.1.", "model.layers.2.", "lm_head.")))
    total = sum(p.nbytes for p in m.hf.parameters()) + sum(b.nbytes for b in m.hf.buffers())
    m.hf = place(m.hf, "cpu", dm, offload_folder=str(tmp_path))
    w = weight_bytes(m.hf)
    assert w["disk"] == want_disk and w["cpu"] + w["disk"] == total
    assert plan(m, 16).rows["cpu"]["weights"] == total - want_disk


def test_plan_without_weights_equals_the_loaded_model():
    meta, real = plan_for("tiny-llama"), interp.load_model("tiny-llama")
    assert next(meta.hf.parameters()).device.type == "meta"
    assert estimate(meta, 100, 2, stats=("entropy",)) == estimate(real, 100, 2, stats=("entropy",))


def test_max_tokens_is_the_boundary():
    m = tiny_model("llama", n_layers=2)
    budget = {"cpu": 200 * MiB}
    p = plan(m, 10**6, 4, max_memory=budget)
    assert not p.fits and p.max_tokens > 0
    assert plan(m, p.max_tokens, 4, max_memory=budget).fits
    assert not plan(m, p.max_tokens + 1, 4, max_memory=budget).fits
    assert f"fewer tokens (≤ {p.max_tokens} fit)" in p.message()


@pytest.fixture
def starved():
    """A tiny model whose memory budget (10 KiB beyond the runtime) is below its weights: every run is refused."""
    m = tiny_model("llama", n_layers=2)
    m.memory_budget = {"cpu": "10KiB"}
    calls = []
    m.hf.register_forward_pre_hook(lambda *a: calls.append(1))
    return m, calls


ENTRIES = {
    "logits": lambda m: m.logits(ids()),
    "attention_stats": lambda m: interp.attention_stats(m, ids(), ["entropy"]),
    "run_with_cache": lambda m: interp.run_with_cache(m, ids(), [Site(0, "z")]),
    "collect": lambda m: interp.collect(m, ["the cat", "hi"], [Site(0, "z")], progress=False),
    "patch_sweep": lambda m: interp.patch_sweep(m, ids(), ids(), "z", lambda lg: lg[:, -1, 3]),
    "generate": lambda m: interp.generate(m, ["the cat"], max_new_tokens=3),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_over_budget_is_refused_before_any_forward(starved, entry):
    m, calls = starved
    want = r"needs [0-9.]+ GiB on cpu \(runtime .*\) but [0-9.]+ GiB fit; use a larger memory budget "
    with pytest.raises(PlanError, match=want + r"\(the weights alone need 0.1 MiB\), device_map='auto'") as e:
        ENTRIES[entry](m)
    assert "\n" not in str(e.value)
    assert calls == []  # refused up front: no forward ran


def test_plan_off_and_a_fitting_run(starved, monkeypatch):
    m, calls = starved
    monkeypatch.setenv("INTERP_PLAN", "off")
    check_run(m, 9, 2)
    m.logits(ids())
    assert calls == [1]
    monkeypatch.delenv("INTERP_PLAN")
    m.memory_budget = None  # what is free now: a tiny run fits
    m.logits(ids())
    assert len(calls) == 2


def test_bad_arguments():
    m = tiny_model("llama", n_layers=2)
    for kw, match in ((dict(n_tokens=0), "n_tokens must be a positive int"),
                      (dict(n_tokens=8, batch=-1), "batch must be a positive int")):
        with pytest.raises(ValueError, match=match):
            plan(m, **kw)
    with pytest.raises(ValueError, match="memory size 'x'"):
        plan(m, 8, max_memory={"cpu": "x"})


def test_cli_plan():
    r = CliRunner().invoke(app, ["plan", "-m", "tiny-llama", "-n", "64", "-a", "sinks"])
    assert r.exit_code == 0, r.output
    assert "memory plan: tiny-llama, 64 tokens × batch 1, statistics col_alpha" in r.output
    r = CliRunner().invoke(app, ["plan", "-m", "tiny-llama", "-n", "100000", "-b", "64", "--max-memory",
                                 "cpu=1GiB"])
    assert r.exit_code == 2 and "OVER" in r.output
    err = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and "but 1.44 GiB fit; use fewer tokens" in err[0]
    r = CliRunner().invoke(app, ["plan", "-m", "tiny-llama", "-n", "64", "--max-memory", "cpu"])
    assert r.exit_code == 2 and "is not DEVICE=SIZE" in r.output
    r = CliRunner().invoke(app, ["report", "--plan", "-m", "tiny-llama", "-a", "sinks", "--n-tokens", "32"])
    assert r.exit_code == 0 and "32 tokens × batch 1" in r.output


def test_report_refuses_before_any_analysis_runs(tmp_path):
    """interp report checks every analysis's n_tokens × batch against the plan once the model is loaded."""
    from interp.report.runner import ReportError, run_report

    m = tiny_model("llama", n_layers=2)
    m.memory_budget = {"cpu": "10KiB"}
    calls = []
    m.hf.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ReportError, match=r"params\.sinks: .* needs [0-9.]+ GiB on cpu .* GiB fit; use a larger"):
        run_report(m, ["sinks"], tmp_path / "r", n_tokens=32, progress=False)
    assert calls == []
