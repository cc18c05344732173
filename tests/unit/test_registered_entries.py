"""The report entries registered in this redesign — ``model_divergence``, ``vhd``, ``duo_attention`` — run through
``run_report`` on tiny models and give the numbers of a direct computation (or of a case worked by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.report import run_report
from interp.scores import ScoreTable


def test_model_divergence_against_itself_and_with_one_head_zeroed(tmp_path):
    same = run_report("tiny-llama", ["model_divergence"], tmp_path / "same", progress=False,
                      params={"model_divergence": {"model_b": "tiny-llama", "n_tokens": 32}}).scores
    for score in ("output_rel_l2", "pattern_js"):
        np.testing.assert_allclose(ScoreTable.matrix(same, score, 2, 4), 0.0, atol=1e-6)
    # B = A with L1H2's z zeroed: that head's output differs by all of it (relative distance 1); nothing in layer
    # 0 or in the other heads of layer 1 can see the change (they read the residual before L1's attention)
    abl = run_report("tiny-llama", ["model_divergence"], tmp_path / "abl", progress=False,
                     params={"model_divergence": {"ablate": ["L1H2"], "n_tokens": 32}}).scores
    rel = ScoreTable.matrix(abl, "output_rel_l2", 2, 4)
    want = np.zeros((2, 4))
    want[1, 2] = 1.0
    np.testing.assert_allclose(rel, want, atol=1e-6)
    np.testing.assert_allclose(ScoreTable.matrix(abl, "pattern_js", 2, 4), 0.0, atol=1e-6)
    assert set(abl["level"]) == {"head"} and set(abl["analysis"]) == {"model_divergence"}


def test_duo_attention_gates_land_as_kv_head_rows_and_official_tsv(tmp_path):
    from interp.analyses.duo_attention import load_duo_tsv, train_gates
    from interp.testing import tiny_model

    params = {"steps": 2, "n_tokens": 96, "sink": 4, "recent": 16, "threshold": 0.99}
    res = run_report("tiny-llama", ["duo_attention"], tmp_path / "r", params={"duo_attention": params},
                     progress=False)
    s = res.scores
    alpha = ScoreTable.matrix(s, "duo_alpha", 2, 2, kv=True)
    torch.manual_seed(0)  # what run_report does before each analysis (seed 0)
    ref = train_gates(tiny_model("llama"), steps=2, n_tokens=96, sink=4, recent=16).alpha.detach().double()
    np.testing.assert_allclose(alpha, ref.numpy(), atol=1e-7)
    assert set(s.loc[s["score"].isin(["duo_alpha", "duo_retrieval_head"]), "level"]) == {"kv_head"}
    np.testing.assert_array_equal(ScoreTable.matrix(s, "duo_retrieval_head", 2, 2, kv=True), alpha >= 0.99)
    assert s.loc[s["score"] == "duo_mean_alpha", "value"].item() == pytest.approx(alpha.mean())
    tsv = tmp_path / "r" / "official" / "duo_attention" / "full_attention_heads.tsv"
    np.testing.assert_allclose(load_duo_tsv(tsv), alpha, atol=1e-6)  # written with 6 decimals
    assert res.manifest["official_outputs"]["duo_attention"] == ["official/duo_attention/full_attention_heads.tsv"]


def test_vhd_runs_on_tiny_llava_and_equals_the_direct_call(tmp_path):
    from interp.analyses.vhd import VhdParams, _inputs, vhd_scores
    from interp.testing import tiny_model

    res = run_report("tiny-llava", ["vhd"], tmp_path / "v", params={"vhd": {"n_generate": 3, "top_k": 3}},
                     progress=False)
    model = tiny_model("llava")
    ids, pv = _inputs(model, VhdParams(n_generate=3, top_k=3))
    assert int((ids == model.hf.config.image_token_id).sum()) == 4  # the tiny vision tower's 4 patches
    want, _ = vhd_scores(model, ids, pv, n_generate=3, top_k=3)
    np.testing.assert_allclose(ScoreTable.matrix(res.scores, "vhd", 2, 4), ScoreTable.matrix(want, "vhd", 2, 4),
                               rtol=1e-6, atol=1e-7)
    assert float(res.scores["value"].max()) > 0
