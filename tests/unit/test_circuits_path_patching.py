"""Path patching vs the exact edge patch of interp.graph (an independent implementation of the direct path)."""

import pytest
import torch

from interp.analyses.circuits.path_patching import path_patch, path_patch_heads
from interp.analyses.circuits.tasks import TaskTokens
from interp.graph import Graph, corrupt_outputs, run_graph
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama", n_layers=3, n_heads=4, n_kv_heads=2, seed=3, dtype=torch.float64)
    torch.manual_seed(0)
    clean = torch.randint(2, 60, (3, 7))
    corrupt = torch.randint(2, 60, (3, 7))
    task = TaskTokens(clean, corrupt, torch.tensor([5, 9, 11]), torch.tensor([7, 3, 21]))
    return model, task


def _edge_effect(model, task, edges):
    g = Graph.of(model)
    removed = torch.zeros(g.n_nodes, g.n_inputs)
    for up, down, kind in edges:
        removed[g.edge_index(up, down, kind)] = 1.0
    with torch.no_grad():
        m_clean = float(task.metric(run_graph(model, task.clean).logits))
        logits = run_graph(model, task.clean, corrupt=corrupt_outputs(model, task.corrupt), removed=removed).logits
    return float(task.metric(logits)) - m_clean


@pytest.mark.parametrize("sender,receiver,edge", [
    ("L0H1", "logits", ("L0H1", "logits", "")),
    ("L1H3", "logits", ("L1H3", "logits", "")),
    ("L0H2", ("L2H1", "q"), ("L0H2", "L2H1", "q")),
    ("L1H0", ("L2KV1", "k"), ("L1H0", "L2KV1", "k")),
    ("L0H3", ("L1KV0", "v"), ("L0H3", "L1KV0", "v")),
])
def test_path_patch_equals_edge_patch(setup, sender, receiver, edge):
    model, task = setup
    got = path_patch(model, task.clean, task.corrupt, sender, receiver, task.metric)
    want = _edge_effect(model, task, [edge])
    assert abs(want) > 1e-6  # the edge matters, so the comparison is not 0 == 0
    assert got == pytest.approx(want, rel=1e-5, abs=2e-8)


def test_two_senders_equal_two_edges(setup):
    model, task = setup
    got = path_patch(model, task.clean, task.corrupt, ["L0H0", (1, 2)], "logits", task.metric)
    want = _edge_effect(model, task, [("L0H0", "logits", ""), ("L1H2", "logits", "")])
    assert got == pytest.approx(want, rel=1e-5, abs=2e-8)


def test_later_sender_has_no_effect(setup):
    model, task = setup
    for sender in ("L1H0", "L1H3", "L2H2"):
        assert path_patch(model, task.clean, task.corrupt, sender, ("L1H2", "q"), task.metric) == 0.0
    # but an earlier one does
    assert abs(path_patch(model, task.clean, task.corrupt, "L0H0", ("L1H2", "q"), task.metric)) > 1e-5


def test_mlps_recomputed_adds_indirect_paths(setup):
    """freeze_mlps=False (the IOI paper's variant) also counts L0H1 → M0 → logits, so it differs."""
    model, task = setup
    direct = path_patch(model, task.clean, task.corrupt, "L0H1", "logits", task.metric)
    via = path_patch(model, task.clean, task.corrupt, "L0H1", "logits", task.metric, freeze_mlps=False)
    assert abs(via - direct) > 1e-6


def test_sweep_matches_single_calls(setup):
    model, task = setup
    sweep = path_patch_heads(model, task, ("L2H0", "q"))
    assert sweep.shape == (3, 4)
    assert torch.all(sweep[2] == 0)
    for layer, head in [(0, 1), (1, 3)]:
        one = path_patch(model, task.clean, task.corrupt, f"L{layer}H{head}", ("L2H0", "q"), task.metric)
        assert sweep[layer, head].item() == pytest.approx(one, abs=1e-9)


def test_bad_receiver_raises(setup):
    model, task = setup
    with pytest.raises(ValueError, match="receiver"):
        path_patch(model, task.clean, task.corrupt, "L0H0", ("L1H0", "k"), task.metric)
    with pytest.raises(ValueError, match="layer"):
        path_patch(model, task.clean, task.corrupt, "L9H0", "logits", task.metric)
