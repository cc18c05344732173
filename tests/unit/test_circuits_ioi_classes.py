"""IOI head-class sweeps (graph-based) vs the hook-based path patching; positions and attention statistics by
hand."""

import pytest
import torch

from interp.analyses.circuits.ioi_classes import (
    attention_stats,
    direct_path_effects,
    edge_path_effects,
    head_patterns,
    ioi_positions,
)
from interp.analyses.circuits.path_patching import path_patch_heads
from interp.analyses.circuits.tasks import TaskTokens
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama", n_layers=3, n_heads=4, n_kv_heads=2, seed=7, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    clean, corrupt = torch.randint(2, 60, (3, 7), generator=g), torch.randint(2, 60, (3, 7), generator=g)
    return model, TaskTokens(clean, corrupt, torch.tensor([5, 9, 11]), torch.tensor([7, 3, 21]))


def test_direct_path_effects_equal_hook_path_patching(setup):
    model, task = setup
    ours = direct_path_effects(model, task.clean, task.corrupt, task.metric)
    ref = path_patch_heads(model, task, "logits")
    assert ref.abs().max() > 1e-3  # the effects are not trivially zero
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_edge_path_effects_equal_hook_path_patching(setup):
    model, task = setup
    receivers = [("L2H1", "q"), ("L2H3", "q"), ("L2KV0", "v")]
    ours = edge_path_effects(model, task.clean, task.corrupt, receivers, task.metric)
    ref = path_patch_heads(model, task, receivers)
    assert ref[:2].abs().max() > 1e-4
    assert (ours[2] == 0).all()  # senders in the receivers' layer have no path
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    some = edge_path_effects(model, task.clean, task.corrupt, receivers, task.metric, senders=[(0, 1), (1, 2)])
    assert some[0, 1] == ours[0, 1] and some[1, 2] == ours[1, 2] and int(torch.isnan(some).sum()) == 10
    with pytest.raises(ValueError, match="receiver"):
        edge_path_effects(model, task.clean, task.corrupt, [("L2H1", "k")], task.metric)


def test_ioi_positions_by_hand():
    # BOS When B and A went ... B gave to  (A = 11 answer, B = 12 subject)
    ids = torch.tensor([[1, 5, 12, 6, 11, 7, 12, 8, 9], [1, 5, 11, 6, 12, 7, 12, 8, 9]])
    pos = ioi_positions(ids, torch.tensor([11, 11]), torch.tensor([12, 12]))
    assert pos["io"].tolist() == [4, 2] and pos["s1"].tolist() == [2, 4] and pos["s2"].tolist() == [6, 6]
    assert pos["end"].tolist() == [8, 8]
    with pytest.raises(ValueError, match="IOI"):
        ioi_positions(ids, torch.tensor([11, 12]), torch.tensor([12, 5]))


def test_attention_stats_match_explicit_loops(setup):
    model, _ = setup
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(20, 60, (2, 8), generator=g)
    ids[0, [2, 5, 3]] = torch.tensor([11, 11, 12])  # S1=2, S2=5, IO=3
    ids[1, [1, 6, 4]] = torch.tensor([11, 11, 12])  # S1=1, S2=6, IO=4
    pos = ioi_positions(ids, torch.tensor([12, 12]), torch.tensor([11, 11]))
    pat = head_patterns(model, ids)  # [layer, batch, head, q, k]
    assert pat.shape == (3, 2, 4, 8, 8)
    torch.testing.assert_close(pat.sum(-1), torch.ones(3, 2, 4, 8, dtype=pat.dtype))
    st = attention_stats(pat, pos)
    io, s1, s2 = [3, 4], [2, 1], [5, 6]
    for layer in range(3):
        for h in range(4):
            p = pat[layer, :, h]  # [batch, q, k]
            expect = {"end_io": [p[b, 7, io[b]] for b in range(2)],
                      "end_s": [p[b, 7, s1[b]] + p[b, 7, s2[b]] for b in range(2)],
                      "s2_s1": [p[b, s2[b], s1[b]] for b in range(2)],
                      "s2_s1p1": [p[b, s2[b], s1[b] + 1] for b in range(2)],
                      "s1p1_s1": [p[b, s1[b] + 1, s1[b]] for b in range(2)],
                      "prev": [sum(p[b, q, q - 1] for q in range(1, 8)) / 7 for b in range(2)]}
            for key, vals in expect.items():
                assert float(st[key][layer, h]) == pytest.approx(float(sum(vals)) / 2), key


@pytest.mark.slow
def test_real_model_ioi_positions_and_direct_effect(default_model):
    """On the default model: every generated IOI prompt has IO once and S twice, and the largest direct effect
    equals the hook-based path patch of that head to the logits."""
    from interp.analyses.circuits import ioi_task, path_patch

    tt = ioi_task(default_model, 4, seed=0).tokens(default_model)
    pos = ioi_positions(tt.clean, tt.answer, tt.wrong)
    assert (pos["io"] < pos["s2"]).all() and (pos["s1"] < pos["s2"]).all()
    eff = direct_path_effects(default_model, tt.clean, tt.corrupt, tt.metric)
    layer, head = divmod(int(eff.abs().argmax()), eff.shape[1])
    ref = path_patch(default_model, tt.clean, tt.corrupt, f"L{layer}H{head}", "logits", tt.metric)
    assert abs(ref) > 0.1
    assert float(eff[layer, head]) == pytest.approx(ref, rel=1e-3, abs=1e-3)
