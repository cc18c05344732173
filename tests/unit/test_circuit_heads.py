"""The ``circuits`` analysis (``analyses/circuit_heads.py``) and its work units (``analyses/splits_circuits.py``):
merge(split) == the one-process run exactly for several batch / chunk sizes and shuffled completion orders; the
head scores equal independent references on a tiny float64 llama (the existing ``eap_scores`` /
``eap_ig_scores`` on the whole prompt set, an autograd derivative through a plain z hook, a plain-hook patch);
bad parameters give one line naming the value."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from interp.analyses import registry
from interp.analyses.circuit_heads import CircuitsParams, task_tokens
from interp.graph import Graph
from interp.metrics import logit_diff, mean_logit_diff
from interp.params import ParamError
from interp.scores import ScoreTable
from interp.sites import Site
from interp.testing import tiny_model
from interp.units import ModelInfo, decode, drive, encode, run_local, splitter_for

BASE = {"task": "numeric_comparison", "n_prompts": 6, "ig_steps": 2, "top_edges": 20}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2)  # 4 query heads, 2 KV heads


@pytest.fixture(scope="module")
def model64():
    return tiny_model("llama", n_layers=2, dtype=torch.float64, seed=3)


def _shuffled_run(sp, model, p, seed):
    rng = random.Random(seed)
    seen = []

    def run_round(units):
        order = list(units)
        rng.shuffle(order)
        got = {u.key: decode(encode(sp.run(model, p, u))) for u in order}
        seen.extend(units)
        return [got[u.key] for u in units]

    return drive(sp, ModelInfo(model.name, model.shape), p, run_round, "circuits"), seen


def _equal(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k], check_exact=True)


@pytest.mark.parametrize("batch_size,heads_per_unit", [(1, 1), (4, 3), (6, 8)])
def test_merge_of_units_is_the_one_process_run_exactly(model, batch_size, heads_per_unit):
    spec = registry.get("circuits")
    p = spec.params.coerce({**BASE, "batch_size": batch_size, "heads_per_unit": heads_per_unit})
    direct = spec.run(model, p, None)
    sp = splitter_for(spec)
    for seed in (1, 2):
        merged, units = _shuffled_run(sp, model, p, seed)
        _equal(direct, merged)
    n_batches, n_chunks = -(-6 // batch_size), -(-8 // heads_per_unit)
    keys = [u.key for u in units]
    assert keys[0] == "base" and len(keys) == 1 + 2 * n_batches + n_chunks
    assert keys[1:1 + n_batches] == [f"eap|{b}" for b in range(0, 6, batch_size)]
    last = [(l, h) for l in range(2) for h in range(4)][heads_per_unit - 1]
    assert keys[1 + 2 * n_batches] == f"patching|L0H0-L{last[0]}H{last[1]}"
    assert [u.index for u in units] == list(range(len(units)))
    s = direct["scores"]
    assert set(s["score"]) == {"clean_logit_diff", "corrupt_logit_diff", "eap_node", "eap_abs", "eap_ig_node",
                               "eap_ig_abs", "patch_z", "patch_z_norm"}
    assert (s.loc[s["score"] == "eap_abs", "value"] > 0).all()


def test_batch_size_only_regroups_rounding(model):
    """Different unit sizes are different float32 groupings of the same sums: equal to rounding, not exactly."""
    spec = registry.get("circuits")
    a = spec.run(model, spec.params.coerce({**BASE, "batch_size": 1, "heads_per_unit": 1}), None)["scores"]
    b = spec.run(model, spec.params.coerce({**BASE, "batch_size": 6, "heads_per_unit": 8}), None)["scores"]
    np.testing.assert_allclose(a["value"], b["value"], rtol=1e-4, atol=1e-7)


def test_methods_subset_and_run_local(model):
    spec = registry.get("circuits")
    p = spec.params.coerce({**BASE, "methods": ["patching"], "heads_per_unit": 5})
    got = run_local(splitter_for(spec), model, p)
    assert set(got) == {"scores"}
    assert set(got["scores"]["score"]) == {"clean_logit_diff", "corrupt_logit_diff", "patch_z", "patch_z_norm"}
    _equal(spec.run(model, p, None), got)


def _heads(g: Graph):
    return torch.tensor([g.nodes.index(f"L{l}H{h}") for l in range(g.n_layers) for h in range(g.n_heads)])


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
def test_node_scores_equal_the_existing_eap_on_all_prompts(model64, method):
    """Batch sums ÷ N = the existing EAP / EAP-IG with the mean metric on all prompts in one batch (to 1e-6 of
    the scale: HF computes the rotary cos/sin in float32 even in a float64 model, so batching shows at ~1e-10)."""
    from interp.analyses.circuits import eap_ig_scores, eap_scores

    spec = registry.get("circuits")
    p = spec.params.coerce({**BASE, "batch_size": 4, "methods": [method], "ig_steps": 3, "top_edges": 5})
    got = spec.run(model64, p, None)
    tt = task_tokens(model64, p)

    def metric(lg):
        return mean_logit_diff(lg, tt.answer, tt.wrong)

    ref = (eap_scores(model64, tt.clean, tt.corrupt, metric) if method == "eap"
           else eap_ig_scores(model64, tt.clean, tt.corrupt, metric, steps=3))
    g = Graph.of(model64)
    rows = ref[_heads(g)]
    s = got["scores"]
    np.testing.assert_allclose(ScoreTable.matrix(s, f"{method}_node", 2, 4), rows.sum(1).reshape(2, 4),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ScoreTable.matrix(s, f"{method}_abs", 2, 4), rows.abs().sum(1).reshape(2, 4),
                               rtol=1e-6, atol=1e-9)
    flat = ref[g.valid]
    top = flat.abs().sort(descending=True).values[:5]
    np.testing.assert_allclose(np.sort(got["edges"]["score"].abs().to_numpy())[::-1], top, rtol=1e-6, atol=1e-9)
    assert float(rows.abs().max()) > 1e-6  # not trivially zero


def test_eap_node_is_the_derivative_of_patching_the_heads_z(model64):
    """Independent of the graph code: with a plain hook z_h ← z_h + α (z_h(corrupt) − z_h(clean)) on the clean
    run, dM/dα at α = 0 is the first-order effect of patching head h, which ``eap_node`` must equal (to 1e-6:
    HF's float32 rotary cos/sin in the float64 model)."""
    from interp.hooks import run_with_cache

    spec = registry.get("circuits")
    p = spec.params.coerce({**BASE, "batch_size": 2, "methods": ["eap"]})
    node = ScoreTable.matrix(spec.run(model64, p, None)["scores"], "eap_node", 2, 4)
    tt = task_tokens(model64, p)
    for layer, head in [(0, 1), (0, 3), (1, 2)]:
        site = Site(layer, "z", head)
        _, zc = run_with_cache(model64, tt.clean, [site])
        _, zx = run_with_cache(model64, tt.corrupt, [site])
        alpha = torch.zeros((), dtype=torch.float64, requires_grad=True)
        dz = zx[site] - zc[site]  # [batch, pos, d_head]
        with model64.hooks({site: lambda z, s, dz=dz, alpha=alpha: z + alpha * dz}):
            value = mean_logit_diff(model64.forward(tt.clean).logits, tt.answer, tt.wrong)
        (d,) = torch.autograd.grad(value, alpha)
        assert node[layer, head] == pytest.approx(float(d), rel=1e-6, abs=1e-9), (layer, head)


def test_patch_z_equals_a_plain_hook_patch(model64):
    spec = registry.get("circuits")
    p = spec.params.coerce({**BASE, "methods": ["patching"], "heads_per_unit": 3})
    s = spec.run(model64, p, None)["scores"]
    effect, norm = ScoreTable.matrix(s, "patch_z", 2, 4), ScoreTable.matrix(s, "patch_z_norm", 2, 4)
    from interp.hooks import run_with_cache

    tt = task_tokens(model64, p)
    with torch.no_grad():
        m_clean = float(logit_diff(model64.logits(tt.clean), tt.answer, tt.wrong).mean())
        m_corrupt = float(logit_diff(model64.logits(tt.corrupt), tt.answer, tt.wrong).mean())
    for layer, head in [(0, 0), (0, 2), (1, 3)]:
        site = Site(layer, "z", head)
        _, zc = run_with_cache(model64, tt.clean, [site])
        with torch.no_grad(), model64.hooks({site: lambda z, s, clean=zc[site]: clean}):
            m = float(logit_diff(model64.forward(tt.corrupt).logits, tt.answer, tt.wrong).mean())
        assert effect[layer, head] == pytest.approx(m - m_corrupt, rel=1e-5, abs=1e-9)
        assert norm[layer, head] == pytest.approx((m - m_corrupt) / (m_clean - m_corrupt), rel=1e-4)
    assert np.abs(effect).max() > 1e-6
    base = s.set_index("score")["value"]
    assert base["clean_logit_diff"] == pytest.approx(m_clean, rel=1e-9)
    assert base["corrupt_logit_diff"] == pytest.approx(m_corrupt, rel=1e-9)


@pytest.mark.parametrize("params,match", [
    ({"methods": ["eap", "acdc"]}, r"circuits\.methods = \['eap', 'acdc'\]: 'acdc' is not allowed"),
    ({"methods": []}, r"circuits\.methods = \[\]: choose at least one"),
    ({"methods": ["eap", "eap"]}, r"listed twice"),
    ({"batch_size": 0}, r"circuits\.batch_size = 0: must be >= 1"),
    ({"task": "gsm8k"}, r"circuits\.task = 'gsm8k': 'gsm8k' is not allowed"),
    ({"ig_steps": 0}, r"circuits\.ig_steps = 0"),
])
def test_bad_params_one_line(params, match):
    with pytest.raises(ParamError, match=match) as e:
        CircuitsParams.coerce(params, where="circuits")
    assert "\n" not in str(e.value)


def test_task_that_does_not_fit_the_tokenizer_is_refused_before_running(model, tmp_path):
    p = CircuitsParams.coerce({"task": "ioi"}, where="circuits")
    with pytest.raises(ParamError, match=r"circuits\.task = 'ioi': .*word-level tokenizer") as e:
        p.check_model(model, "circuits")
    assert "\n" not in str(e.value)
    missing = CircuitsParams.coerce({"task_file": str(tmp_path / "none.jsonl")}, where="circuits")
    with pytest.raises(ParamError, match=r"circuits\.task_file = '.*none\.jsonl': .*does not exist"):
        missing.check_model(model, "circuits")
    path = tmp_path / "two.jsonl"
    path.write_text('{"clean": "ab 1", "corrupt": "ab 2", "answer": "x", "wrong": "y"}\n' * 2)
    short = CircuitsParams.coerce({"task_file": str(path), "n_prompts": 3}, where="circuits")
    with pytest.raises(ParamError, match=r"circuits\.task_file = '.*two\.jsonl': the file has 2 prompts, fewer "
                       r"than n_prompts = 3"):
        short.check_model(model, "circuits")
    ok = CircuitsParams.coerce({"task_file": str(path), "n_prompts": 2, "methods": ["eap"]}, where="circuits")
    ok.check_model(model, "circuits")
    assert registry.get("circuits").data_files(ok) == [{"path": str(path)}]
