"""Completeness and minimality spot checks (Wang et al. 2022) vs explicit run_graph calls on a tiny GQA llama."""

import pytest
import torch

from interp.analyses.circuits import Circuit, eap_scores
from interp.analyses.circuits.completeness import completeness, minimality
from interp.analyses.circuits.tasks import TaskTokens
from interp.graph import Graph, corrupt_outputs, run_graph
from interp.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=2, n_heads=4, n_kv_heads=2, seed=3, dtype=torch.float64)


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(2, 60, (4, 6), generator=g)
    corrupt = torch.randint(2, 60, (4, 6), generator=g)
    return TaskTokens(clean, corrupt, torch.tensor([7, 8, 9, 10]), torch.tensor([20, 21, 22, 23]))


@pytest.fixture(scope="module")
def circuit(model, task):
    sc = eap_scores(model, task.clean, task.corrupt, task.metric)
    return Circuit.from_scores(Graph.of(model), sc, method="eap", metric="logit_diff", task="t").top(25)


def _F(model, task, kept):
    g = Graph.of(model)
    with torch.no_grad():
        out = run_graph(model, task.clean, corrupt=corrupt_outputs(model, task.corrupt),
                        removed=g.valid.bool() & ~kept)
    return float(task.metric(out.logits))


def _drop(mask, names, g):
    m = mask.clone()
    for n in names:
        m[g.nodes.index(n)] = False
    return m


def test_completeness_rows_equal_explicit_masks(model, task, circuit):
    g = Graph.of(model)
    df = completeness(model, task, circuit, n_random=3, p=0.5, seed=1)
    assert list(df.k) == ["∅", "random0", "random1", "random2"]
    keep = circuit.mask(g)
    for r in df.itertuples():
        K = r.removed.split()
        assert "input" not in K and len(K) == r.n_removed
        assert r.f_circuit == pytest.approx(_F(model, task, _drop(keep, K, g)), abs=1e-10)
        assert r.f_model == pytest.approx(_F(model, task, _drop(g.valid.bool(), K, g)), abs=1e-10)
        assert r.gap == pytest.approx(abs(r.f_circuit - r.f_model), abs=1e-12)
    assert df.n_removed.iloc[1:].sum() > 0  # the random subsets removed something
    # K = ∅: the full model is the clean run
    assert df.f_model.iloc[0] == pytest.approx(float(task.metric(model.logits(task.clean))), abs=1e-8)
    assert df.gap.iloc[0] > 1e-6  # 25 edges of a random model are not complete


def test_the_full_graph_is_complete(model, task):
    df = completeness(model, task, Graph.of(model).valid.bool(), n_random=4, p=0.4)
    assert (df.gap == 0).all()


def test_minimality_rows_equal_explicit_masks(model, task, circuit):
    g = Graph.of(model)
    keep = circuit.mask(g)
    df = minimality(model, task, circuit, top=3, n_random=1, p=0.5, seed=2)
    assert len(df) == 6 and list(df.k) == ["∅", "random0"] * 3
    weight = {}
    for (up, _, _), s in zip(circuit.edges, circuit.scores, strict=True):
        weight[up] = weight.get(up, 0.0) + abs(s)
    ranked = sorted((n for n in weight if n != "input"), key=lambda n: -weight[n])
    assert list(dict.fromkeys(df.node)) == ranked[:3]
    f_c = _F(model, task, keep)
    for r in df[df.k == "∅"].itertuples():
        assert r.f_without_k == pytest.approx(f_c, abs=1e-10)
        assert r.f_without_kv == pytest.approx(_F(model, task, _drop(keep, [r.node], g)), abs=1e-10)
        assert r.score == pytest.approx(abs(r.f_without_kv - f_c), abs=1e-12)
    assert (df.score > 0).any()


def test_bad_input(model, task, circuit):
    g = Graph.of(model)
    with pytest.raises(ValueError, match="no head or MLP node"):
        completeness(model, task, torch.zeros(g.n_nodes, g.n_inputs, dtype=torch.bool))
    with pytest.raises(ValueError, match="p must be in"):
        completeness(model, task, circuit, p=1.5)
    with pytest.raises(ValueError, match="not head/MLP nodes"):
        minimality(model, task, circuit, nodes=["L9H9"])
    with pytest.raises(ValueError, match="circuit mask must be"):
        completeness(model, task, torch.ones(3, 3, dtype=torch.bool))
