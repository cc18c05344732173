"""Ablation types (CAMA, mean, zero, resample) and the All-for-One staged intervention on tiny models."""

import pytest
import torch

from interp.analyses.circuits.ablations import ablation_outputs, cama_means, faithfulness_by_ablation
from interp.analyses.circuits.all_for_one import all_for_one, all_for_one_grid, stage_masks
from interp.analyses.circuits.tasks import TaskTokens
from interp.graph import Graph, corrupt_outputs, run_graph
from interp.hooks import run_with_cache
from interp.sites import Site
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2, n_heads=4, n_kv_heads=2, seed=1, dtype=torch.float64)


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(2, 6, (6, 5), generator=g)  # few token values → repeated (pos, token) groups
    corrupt = torch.randint(2, 60, (6, 5), generator=g)
    return TaskTokens(clean, corrupt, torch.tensor([7, 8, 9, 10, 11, 12]), torch.tensor([20, 21, 22, 23, 24, 25]))


# --- ablations -----------------------------------------------------------------------------------------------
def test_cama_matches_groupby():
    g = torch.Generator().manual_seed(1)
    ref_ids = torch.tensor([[1, 2, 3], [1, 4, 3], [2, 2, 5], [1, 2, 5]])
    ids = torch.tensor([[1, 2, 5], [2, 4, 9]])
    outs = torch.randn(3, 4, 3, 2, generator=g, dtype=torch.float64)  # [node, ref, pos, d]
    got = cama_means(outs, ref_ids, ids)
    for b in range(2):
        for p in range(3):
            groups = {}
            for r in range(4):
                groups.setdefault(int(ref_ids[r, p]), []).append(outs[:, r, p])
            members = groups.get(int(ids[b, p]), [])
            want = torch.stack(members).mean(0) if len(members) >= 2 else outs[:, :, p].mean(1)
            torch.testing.assert_close(got[:, b, p], want)
    # spot values: token 1 at pos 0 is shared by refs 0, 1, 3; token 4 at pos 1 is unique → plain mean
    torch.testing.assert_close(got[:, 0, 0], (outs[:, 0, 0] + outs[:, 1, 0] + outs[:, 3, 0]) / 3)
    torch.testing.assert_close(got[:, 1, 1], outs[:, :, 1].mean(1))


def test_zero_mean_resample(model, task):
    zero = ablation_outputs(model, task.clean, "zero")
    assert zero.shape == (Graph.of(model).n_nodes, 6, 5, model.shape.d_model) and not zero.any()
    mean = ablation_outputs(model, task.clean, "mean", corrupt_ids=task.corrupt)
    outs = corrupt_outputs(model, task.corrupt)
    for b in range(6):
        torch.testing.assert_close(mean[:, b], sum(outs[:, r] for r in range(6)) / 6)
    torch.testing.assert_close(ablation_outputs(model, task.clean, "resample", corrupt_ids=task.corrupt), outs)
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_outputs(model, task.clean, "gaussian")


def test_fully_removed_graph_under_mean_is_the_mean_forward(model, task):
    """Every edge removed: each input reads Σ_u mean_u, so the logits are lm_head(norm(Σ_u mean_u))."""
    g = Graph.of(model)
    mean = ablation_outputs(model, task.clean, "mean", corrupt_ids=task.corrupt)
    with torch.no_grad():
        logits = run_graph(model, task.clean, corrupt=mean, removed=g.valid.double()).logits
        want = model.hf.lm_head(model.hf.model.norm(mean.sum(0)))
    torch.testing.assert_close(logits, want)


def test_faithfulness_by_ablation_endpoints(model, task):
    g = Graph.of(model)
    full = faithfulness_by_ablation(model, task, g.valid, types=["resample", "mean", "zero", "cama"])
    assert list(full.ablation) == ["resample", "mean", "zero", "cama"]
    assert full.faithfulness.tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    empty = faithfulness_by_ablation(model, task, torch.zeros_like(g.valid), types=["mean", "zero"])
    assert empty.faithfulness.tolist() == pytest.approx([0.0, 0.0], abs=1e-9)


# --- All for One ---------------------------------------------------------------------------------------------
def test_stage_masks_dense():
    n_layers, n_pos, l1, l2 = 5, 4, 1, 3
    got = stage_masks(n_layers, n_pos, l1, l2)
    for layer in range(n_layers):
        for q in range(n_pos):
            for k in range(n_pos):
                if layer < l1:
                    want = k <= q
                elif layer < l2:
                    want = k == q or (q == n_pos - 1 and k <= q)
                else:
                    want = k == q
                assert bool(got[layer, q, k]) == want, (layer, q, k)
    with pytest.raises(ValueError, match="l1"):
        stage_masks(3, 4, 2, 1)


def test_no_stages_is_clean(model, task):
    clean = model.logits(task.clean)
    r = all_for_one(model, task, 0, 0, cama=False, abp=False, last_only=False)
    assert r["metric"] == pytest.approx(float(task.metric(clean)), abs=1e-12)


def test_last_only_from_layer0_is_single_token_run(model, task):
    from interp.analyses.circuits.all_for_one import all_for_one_interventions

    with model.intervene(*all_for_one_interventions(model, task.clean, 0, 0)):
        logits = model.logits(task.clean)
    torch.testing.assert_close(logits[:, -1], model.logits(task.clean[:, -1:])[:, 0], rtol=1e-5, atol=1e-6)
    r = all_for_one(model, task, 0, 0)
    assert r["metric"] == pytest.approx(float(task.metric(logits)), abs=1e-9)


def test_abp_non_last_positions_are_alone(model, task):
    from interp.analyses.circuits.all_for_one import all_for_one_interventions

    n = model.shape.n_layers
    items = all_for_one_interventions(model, task.clean, 0, n, cama=False)
    pats = [Site(layer, "pattern") for layer in range(n)]
    with model.intervene(*items):
        logits, cache = run_with_cache(model, task.clean, pats)
    for p in range(task.clean.shape[1] - 1):
        alone = model.logits(task.clean[:, p:p + 1])[:, 0]
        torch.testing.assert_close(logits[:, p], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(logits[:, -1], model.logits(task.clean[:, -1:])[:, 0], atol=1e-4)
    allowed = stage_masks(n, task.clean.shape[1], 0, n)
    for layer, site in enumerate(pats):
        pat = cache[site]  # [batch, head, query_pos, key_pos]
        assert pat.masked_select(~allowed[layer]).abs().max() == 0
        torch.testing.assert_close(pat.sum(-1), torch.ones_like(pat.sum(-1)))


def test_cama_stage_patches_the_residual(model, task):
    """ℓ1 = n_layers with no attention stages: the logits come from the CAMA of the final residual."""
    n = model.shape.n_layers
    site = Site(n - 1, "resid_post")
    _, cache = run_with_cache(model, task.clean, [site])
    resid = cama_means(cache[site][None], task.clean, task.clean)[0]
    with torch.no_grad():
        want = model.hf.lm_head(model.hf.model.norm(resid))
    r = all_for_one(model, task, n, n, metric=task.metric, abp=False, last_only=False)
    assert r["metric"] == pytest.approx(float(task.metric(want)), rel=1e-9, abs=1e-12)


def test_grid_rows(model, task):
    df = all_for_one_grid(model, task, [0, 1], [1, 2])
    assert [(a, b) for a, b in zip(df.l1, df.l2, strict=True)] == [(-1, -1), (0, 1), (0, 2), (1, 1), (1, 2)]
    assert df.accuracy.between(0, 1).all()
