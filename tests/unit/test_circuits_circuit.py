"""Circuit data (JSON round trip, frame, top-n, figure), faithfulness endpoints and Task validation."""

from __future__ import annotations

import json

import pytest
import torch

from interp.analyses.circuits import Circuit, Task, circuit_figure, faithfulness_curve
from interp.graph import Graph
from interp.metrics import mean_logit_diff
from interp.testing import tiny_model


def _circuit():
    g = Graph(2, 2, 1)
    scores = torch.arange(g.n_nodes * g.n_inputs, dtype=torch.float64).view(g.n_nodes, g.n_inputs) % 7 - 3
    return g, Circuit.from_scores(g, scores, method="eap", metric="logit_diff", task="toy")


def test_from_scores_json_frame_top(tmp_path):
    g, c = _circuit()
    assert len(c) == g.n_edges and set(c.edges) == set(g.edges())
    back = Circuit.from_json(c.to_json(tmp_path / "sub" / "c.json"))
    assert back.edges == c.edges and back.scores == c.scores and back.method == "eap" and back.task == "toy"
    assert not list((tmp_path / "sub").glob(".*tmp"))  # atomic write leaves no temp file
    df = c.to_frame()
    assert list(df.columns) == ["upstream", "downstream", "input", "score"] and len(df) == g.n_edges
    assert set(df["input"]) == {"q", "k", "v", ""}
    top = c.top(5)
    assert len(top) == 5 and min(abs(s) for s in top.scores) >= sorted(map(abs, c.scores))[-5]
    m = top.mask(g)
    assert int(m.sum()) == 5 and not (m & ~g.valid).any()
    fig = circuit_figure(top)
    assert len(fig.data) == 6  # 5 edges + the node trace


def test_circuit_rejects_bad_data(tmp_path):
    with pytest.raises(ValueError, match="one score per edge"):
        Circuit(["input"], [("input", "logits", "")], [], method="x")
    with pytest.raises(ValueError, match="input in"):
        Circuit(["input"], [("input", "logits", "z")], [1.0], method="x")
    (tmp_path / "bad.json").write_text(json.dumps({"nodes": []}))
    with pytest.raises(ValueError, match="not a circuit"):
        Circuit.from_json(tmp_path / "bad.json")


def test_faithfulness_endpoints_are_zero_and_one():
    m = tiny_model("llama", n_layers=1, dtype=torch.float64, seed=1)
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(2, 60, (2, 6), generator=gen), torch.randint(2, 60, (2, 6), generator=gen)
    metric = lambda logits: mean_logit_diff(logits, torch.tensor([3, 4]), torch.tensor([5, 6]))
    g = Graph.of(m)
    scores = torch.rand(g.n_nodes, g.n_inputs, generator=gen, dtype=torch.float64)
    curve = faithfulness_curve(m, clean, corrupt, scores, metric, sizes=[0, 3, g.n_edges])
    assert curve.values[0] == pytest.approx(0, abs=1e-6) and curve.values[-1] == pytest.approx(1, abs=1e-6)
    assert curve.smallest(0.85) in (3, g.n_edges) and 0 <= curve.area <= max(1.0, max(curve.values))
    with pytest.raises(ValueError, match="sizes"):
        faithfulness_curve(m, clean, corrupt, scores, metric, sizes=[g.n_edges + 1])


def test_task_validation_names_the_lengths(tiny_llama):
    t = Task(["abcd", "wxyz"], ["abcd", "wxy"], ["a", "b"], ["c", "d"], name="toy")
    with pytest.raises(ValueError, match="clean prompt 1 has 5 tokens but its corrupt prompt has 4"):
        t.tokens(tiny_llama)
    with pytest.raises(ValueError, match="answer 'ab' is 2 tokens"):
        Task(["abcd"], ["abce"], ["ab"], ["c"]).tokens(tiny_llama)
    with pytest.raises(ValueError, match="same non-zero number"):
        Task(["abcd"], ["abce", "x"], ["a"], ["c"])
    tok = Task("abcd", "abce", "a", "c").tokens(tiny_llama)
    assert tok.clean.shape == tok.corrupt.shape == (1, 5) and tok.answer.tolist() == [2 + ord("a") % 62]
