"""Distributed runs on a real local Ray cluster (loopback, 2 CPUs, started once for this module): the same
numbers as a local run, a worker killed mid-unit, bounded retries, a replica that cannot load its model, a
version mismatch, an unreachable address and a driver killed mid-run (resumed from the unit checkpoint)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import interp.distributed as dist
from interp.report import run_report
from interp.testing import tiny_model

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _dist_helpers as planted  # noqa: E402

INDEX = ["analysis", "score", "level", "layer", "head"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray = pytest.importorskip("ray")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 << 20, log_to_driver=False)
    planted.register()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster):
    """Two tiny-llama replicas shared by the fault tests (a dead one is replaced inside the pool)."""
    with dist.Executor("tiny-llama", workers=2, max_retries=2) as ex:
        yield ex


def _sorted(df):
    cols = [c for c in INDEX if c in df.columns]
    return df.sort_values(cols, kind="stable").reset_index(drop=True)


def _planted_local(params):
    from interp.analyses.registry import get

    spec = get("planted")
    return spec.run(tiny_model("llama", n_layers=2), spec.params.coerce(params))


def test_tiny_report_local_and_ray_two_workers_identical(tmp_path):
    a = run_report("tiny-llama", None, tmp_path / "local", n_tokens=40, progress=False)
    b = run_report("tiny-llama", None, tmp_path / "ray", n_tokens=40, progress=False, ray="local", workers=2)
    assert len(a.scores) > 100
    pd.testing.assert_frame_equal(_sorted(a.scores), _sorted(b.scores), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local" / "per_token.parquet"),
                                  pd.read_parquet(tmp_path / "ray" / "per_token.parquet"), check_exact=True)
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == sorted(
        p.name for p in (tmp_path / "ray").iterdir())
    c = b.manifest["cluster"]
    assert c["workers"] == 2 and len({r["pid"] for r in c["replicas"]}) == 2
    assert c["resources_per_worker"] == {"num_cpus": 1, "num_gpus": 0} and c["nodes"]
    assert [u["key"] for u in c["units"]["attention_basics"]] == ["text0", "text1", "text2", "text3"]
    assert all(u["seconds"] >= 0 and u["attempts"] == 1 for us in c["units"].values() for u in us)
    # every unit ran on one of the two replicas; a rerun resumes the whole parts, computing nothing
    pids = {r["pid"] for r in c["replicas"]}
    assert {u["worker"] for us in c["units"].values() for u in us} <= pids
    again = run_report("tiny-llama", None, tmp_path / "ray", n_tokens=40, progress=False, ray="local", workers=2)
    assert again.computed == [] and len(again.resumed) == len(b.computed)


def test_retrieval_grid_on_two_workers_is_the_local_sweep(tmp_path):
    from interp.analyses import retrieval
    from interp.analyses.registry import get

    factory = functools.partial(tiny_model, "llama", n_layers=2, n_ctx=1024)
    params = {"lengths": [300, 340], "depths": [0.0, 50.0, 100.0], "needles": [0, 1], "buffer": 20,
              "max_new_tokens": 6}
    got = dist.run("retrieval", factory, params, workers=2)
    p = get("retrieval").params.coerce(params)
    want = retrieval.run(factory(), p)
    for t in ("scores", "head_counter"):
        pd.testing.assert_frame_equal(want[t], got[t], check_exact=True)
    pd.testing.assert_frame_equal(want["per_sample"].drop(columns="seconds"),
                                  got["per_sample"].drop(columns="seconds"), check_exact=True)
    retrieval.write_official(want, p, tmp_path / "a")
    retrieval.write_official(got, p, tmp_path / "b")
    official = [(tmp_path / d / "retrieval_heads.json").read_bytes() for d in "ab"]
    assert official[0] == official[1]
    assert len(got["per_sample"]) == 12


def test_safety_ships_queries_on_two_workers_equal_the_local_run():
    """Ships split per query, Sahara and the refusal cells in later rounds: the tables of two Ray workers are
    the one-process ``safety`` tables exactly."""
    from interp.analyses import refusal
    from interp.analyses.registry import get

    params = {"n_ships": 3, "n_sahara": 2, "n_refusal": 2, "max_new_tokens": 4, "sahara_candidates": 4}
    factory = functools.partial(tiny_model, "llama", n_layers=2)
    with dist.Executor(factory, workers=2) as ex:
        got = ex.run_analysis(get("safety"), get("safety").params.coerce(params))
        keys = [u["key"] for u in ex.units["safety"]]
    want = refusal.run(factory(), get("safety").params.coerce(params))
    for t in ("scores", "refusal"):
        pd.testing.assert_frame_equal(want[t], got[t], check_exact=True)
    assert keys[:4] == ["ships|q0", "ships|q1", "ships|q2", "sahara"] and len(keys) == 14


def test_circuits_prompt_batches_and_patching_chunks_on_two_workers_equal_the_local_run(tmp_path):
    """``circuits``: EAP / EAP-IG per prompt batch (batch sums merged in batch order) and patching per chunk of
    heads (a second round, made from the replicas' model shape): the report of two Ray workers is the local one.

    The local run uses the replicas' thread count (1: one CPU each): torch's float32 backward kernels reduce in
    a thread-count-dependent order, which moves EAP scores by ~5e-12 (the split itself is exact, see
    ``tests/unit/test_circuit_heads.py``)."""
    import torch

    params = {"circuits": {"task": "numeric_comparison", "n_prompts": 6, "batch_size": 2, "ig_steps": 2,
                           "heads_per_unit": 3, "top_edges": 30}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = run_report("tiny-llama", ["circuits"], tmp_path / "local", params=params, progress=False)
    finally:
        torch.set_num_threads(threads)
    b = run_report("tiny-llama", ["circuits"], tmp_path / "ray", params=params, progress=False, ray="local",
                   workers=2)
    assert set(a.scores["score"]) >= {"eap_node", "eap_ig_abs", "patch_z", "clean_logit_diff"}
    pd.testing.assert_frame_equal(_sorted(a.scores), _sorted(b.scores), check_exact=True)
    edges = [pd.read_parquet(tmp_path / d / "tables" / "circuits.edges.parquet") for d in ("local", "ray")]
    pd.testing.assert_frame_equal(edges[0], edges[1], check_exact=True)
    assert len(edges[0]) == 60
    units = b.manifest["cluster"]["units"]["circuits"]
    assert [u["key"] for u in units] == ["base", "eap|0", "eap|2", "eap|4", "eap_ig|0", "eap_ig|2", "eap_ig|4",
                                         "patching|L0H0-L0H2", "patching|L0H3-L1H1", "patching|L1H2-L1H3"]
    assert {u["worker"] for u in units} <= {r["pid"] for r in b.manifest["cluster"]["replicas"]}


def test_worker_killed_mid_unit_is_retried_on_another_actor(tmp_path, pool):
    from interp.analyses.registry import get

    params = {"n_units": 6, "fault_dir": str(tmp_path), "kill_once": [1, 4]}
    n_replicas = len(pool.replicas)
    spec = get("planted")
    got = pool.run_analysis(spec, spec.params.coerce(params))
    timing = {u["key"]: u for u in pool.units["planted"]}
    want = _planted_local(params)
    for t in want:
        pd.testing.assert_frame_equal(want[t], got[t], check_exact=True)
    assert sorted(timing) == [f"u{i}" for i in range(6)]  # each unit once
    for i in (1, 4):
        killed = int((tmp_path / f"killed-{i}").read_text())
        assert timing[f"u{i}"]["attempts"] == 2 and timing[f"u{i}"]["worker"] != killed
    assert all(timing[f"u{i}"]["attempts"] == 1 for i in (0, 2, 3, 5))
    # one replacement per death is started (it may still be loading when the other replica has finished)
    assert len(pool.replicas) + len(pool._loading) == n_replicas + 2


def test_worker_killed_by_pid_from_outside_while_it_holds_a_unit(pool):
    """``os.kill`` of an actor's pid (as a node dying would) while every actor sleeps inside a unit."""
    import threading

    from interp.analyses.registry import get

    params = {"n_units": 4, "delay": 3.0}
    import ray

    victim = ray.get(pool._actors[0].info.remote())["pid"]  # a live replica (earlier tests killed some)
    threading.Timer(1.5, os.kill, (victim, signal.SIGKILL)).start()
    spec = get("planted")
    got = pool.run_analysis(spec, spec.params.coerce(params))
    timing = pool.units["planted"]
    want = _planted_local(params)
    pd.testing.assert_frame_equal(want["scores"], got["scores"], check_exact=True)
    assert victim not in {u["worker"] for u in timing}
    assert sum(u["attempts"] for u in timing) == 5  # the unit the victim held ran twice, counted once


def test_retries_are_bounded_with_a_clear_error(pool, monkeypatch):
    from interp.analyses.registry import get

    spec = get("planted")
    monkeypatch.setattr(pool, "max_retries", 1)
    with pytest.raises(dist.DistributedError, match=r"unit planted/u2 failed on 2 workers \(max_retries=1\); "
                                                     r"last error: "):
        pool.run_analysis(spec, spec.params.coerce({"n_units": 3, "kill_always": [2]}))


def test_replica_without_its_model_names_node_and_install_command():
    from interp.registry import PACKAGED, ModelNotAvailableError, locate_gguf

    missing = None
    for m in PACKAGED.values():
        try:
            locate_gguf(m)
        except ModelNotAvailableError:
            missing = m
            break
    assert missing is not None, "every packaged model is installed here: the test needs one that is not"
    with pytest.raises(dist.DistributedError, match=rf"failed to load on node \S+: .*{missing.install.split()[0]}"):
        dist.Executor(missing.name, workers=1).start()


def test_version_mismatch_is_refused(monkeypatch):
    real = dist._versions()
    monkeypatch.setattr(dist, "_versions", lambda: {**real, "torch": "0.0.1"})  # what the driver sends
    with pytest.raises(dist.DistributedError, match=r"version mismatch on node \S+: torch .* here, 0.0.1 on "
                                                    "the driver"):
        dist.Executor("tiny-llama", workers=1).start()


def test_analysis_error_in_a_unit_is_not_retried(pool):
    """A unit that raises (not a dead worker) fails the run at once with the unit and the error's kind."""
    from interp.analyses.registry import get
    from interp.report.runner import AnalysisFailed
    from interp.units import Splitter, Unit

    calls = []

    def run_unit(model, params, unit):
        raise ValueError("text 0 has fewer than 2 tokens")

    sp = Splitter(lambda p: [Unit("attention_basics", "text0", 0)], run_unit, lambda *a: calls.append(a))
    with pytest.raises(AnalysisFailed, match="unit 'text0' failed: ValueError: text 0 has fewer") as e:
        pool.run_units(sp, get("attention_basics").params(), 0, sp.split(None))
    assert e.value.kind == "input" and not calls


def test_unreachable_address_fails_within_30_s(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "interp.cli", "report", "-m", "tiny-llama", "-a",
                        "attention_basics", "--out", str(tmp_path / "o"), "--ray", "127.0.0.1:9", "-q"],
                       capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - t0 < 30
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Ray cluster at '127.0.0.1:9' is unreachable") and "--ray local" in last
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


DRIVER = """
import sys
sys.path.insert(0, {here!r})
import _dist_helpers as planted
planted.register()
from interp.report import run_report
run_report("tiny-llama", ["planted"], {out!r}, params={{"planted": {{"n_units": 8, "delay": 1.0}}}},
           progress=False, ray="local", workers=2)
"""


def test_driver_killed_mid_run_rerun_does_only_missing_units(tmp_path):
    out = tmp_path / "r"
    script = DRIVER.format(here=str(HERE), out=str(out))
    ckpt = out / "parts" / "planted.units.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (ckpt.exists() and len(ckpt.read_text().splitlines()) >= 3):
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started
        proc.wait()
    n_before = len(ckpt.read_text().splitlines()) - 1
    assert 2 <= n_before < 8 and not (out / "manifest.json").exists()
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    units = json.loads((out / "manifest.json").read_text())["cluster"]["units"]["planted"]
    resumed = [u["key"] for u in units if u["resumed"]]
    assert len(resumed) >= n_before and len(units) == 8
    lines = [json.loads(x) for x in ckpt.read_text().splitlines()[1:]]
    assert sorted(x["key"] for x in lines) == [f"u{i}" for i in range(8)]  # each unit recorded once
    want = _planted_local({"n_units": 8, "delay": 1.0})
    got = pd.read_parquet(out / "scores.parquet")
    pd.testing.assert_frame_equal(_sorted(want["scores"]), _sorted(got), check_exact=True)
