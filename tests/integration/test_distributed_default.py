"""The retrieval sweep on the default model: a local report and one with ``ray="local", workers=2`` (a loopback
cluster this run starts and stops) give identical per-sample scores, score tables and official JSON."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from interp.report import run_report

PARAMS = {"retrieval": {"lengths": [300, 600], "depths": [0.0, 100.0], "needles": [0]}}


@pytest.mark.slow
def test_default_model_retrieval_grid_same_on_two_ray_workers(tmp_path):
    pytest.importorskip("ray")
    import ray

    assert not ray.is_initialized()
    a = run_report("default", ["retrieval"], tmp_path / "local", params=PARAMS, progress=False, static=True)
    b = run_report("default", ["retrieval"], tmp_path / "ray", params=PARAMS, progress=False, static=True,
                   ray="local", workers=2)
    assert not ray.is_initialized()  # the run stopped the cluster it started
    pd.testing.assert_frame_equal(a.scores, b.scores, check_exact=True)
    per = [pd.read_parquet(tmp_path / d / "tables" / "retrieval.per_sample.parquet").drop(columns="seconds")
           for d in ("local", "ray")]
    pd.testing.assert_frame_equal(per[0], per[1], check_exact=True)
    assert len(per[0]) == 4 and per[0]["n_generated"].min() >= 1
    official = [json.loads((tmp_path / d / "official" / "retrieval" / "retrieval_heads.json").read_text())
                for d in ("local", "ray")]
    assert official[0] == official[1] and len(official[0]) == 30 * 9
    units = b.manifest["cluster"]["units"]["retrieval"]
    assert [u["key"] for u in units] == ["300|0|0", "300|100|0", "600|0|0", "600|100|0"]
    assert len({r["pid"] for r in b.manifest["cluster"]["replicas"]}) == 2
