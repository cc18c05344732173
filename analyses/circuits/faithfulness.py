"""Faithfulness of a circuit and its curve over circuit size (Hanna et al. 2024; Wang et al. 2022).

A circuit C of n edges is evaluated by patching every edge *not* in C to the corrupt run (``interp.graph``)::

    faithfulness(C) = (M(C) − M(corrupt)) / (M(clean) − M(corrupt))

so the empty circuit scores 0 and the full graph 1. For scores from EAP / EAP-IG, C_n is the n edges of
largest
|score|; the curve is faithfulness(C_n) over a grid of n, its area is the trapezoid integral over the fraction
of edges n / n_edges (in [0, 1]), and ``smallest(0.85)`` is the smallest n on the grid reaching 0.85.
Validated in ``tests/unit/test_circuits_faithfulness.py`` (endpoints 0 and 1 by construction of the patched
forward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from interp.graph import Graph, corrupt_outputs, run_graph

from .circuit import Circuit


@dataclass
class FaithfulnessCurve:
    sizes: list[int]
    values: list[float]
    n_edges: int
    m_clean: float
    m_corrupt: float

    @property
    def area(self) -> float:
        x = [s / self.n_edges for s in self.sizes]
        return float(sum((x[i + 1] - x[i]) * (self.values[i + 1] + self.values[i]) / 2 for i in range(len(x) - 1)))

    def smallest(self, level: float = 0.85) -> int | None:
        """Smallest circuit size on the grid with faithfulness ≥ ``level`` (None if none reaches it)."""
        return next((s for s, v in zip(self.sizes, self.values, strict=True) if v >= level), None)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"n_edges": self.sizes, "faithfulness": self.values})


def circuit_metric(model, clean_ids, corrupt_ids, keep: torch.Tensor, metric: Callable,
                   corrupt: torch.Tensor | None = None) -> float:
    """M of the clean run with every edge outside ``keep [n_nodes, n_inputs]`` patched to the corrupt run."""
    g = Graph.of(model)
    corrupt = corrupt_outputs(model, corrupt_ids) if corrupt is None else corrupt
    with torch.no_grad():
        logits = run_graph(model, clean_ids, corrupt=corrupt, removed=g.valid & ~keep.bool()).logits
    return float(metric(logits))


def faithfulness(model, clean_ids, corrupt_ids, circuit: Circuit, metric: Callable) -> float:
    """Normalised faithfulness of ``circuit`` (its edges kept, all others patched)."""
    g = Graph.of(model)
    corrupt = corrupt_outputs(model, corrupt_ids)
    with torch.no_grad():
        m_clean = float(metric(run_graph(model, clean_ids).logits))
        m_corrupt = float(metric(run_graph(model, corrupt_ids).logits))
    m_c = circuit_metric(model, clean_ids, corrupt_ids, circuit.mask(g), metric, corrupt)
    return (m_c - m_corrupt) / (m_clean - m_corrupt)


def faithfulness_curve(model, clean_ids, corrupt_ids, scores: torch.Tensor | Circuit, metric: Callable, *,
                       sizes: list[int] | None = None) -> FaithfulnessCurve:
    """Faithfulness of the top-n edges by |score| for n in ``sizes`` (default: 0 and a log grid to all edges).

    ``scores``: a ``[n_nodes, n_inputs]`` matrix or a ``Circuit`` over the graph's edges.
    """
    g = Graph.of(model)
    if isinstance(scores, Circuit):
        mat = torch.zeros(g.n_nodes, g.n_inputs, dtype=torch.float64)
        for (up, down, kind), s in zip(scores.edges, scores.scores, strict=True):
            mat[g.edge_index(up, down, kind)] = s
        scores = mat
    valid = g.valid
    n_edges = int(valid.sum())
    if sizes is None:
        grid = torch.unique(torch.logspace(0, torch.log10(torch.tensor(float(n_edges))), 40).round().long())
        sizes = [0] + grid.tolist() + ([n_edges] if grid[-1] != n_edges else [])
    sizes = sorted({int(s) for s in sizes})
    if sizes[0] < 0 or sizes[-1] > n_edges:
        raise ValueError(f"circuit sizes must lie in [0, {n_edges}], got {sizes[0]}..{sizes[-1]}")
    flat = scores.abs().masked_fill(~valid, -1.0).flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    corrupt = corrupt_outputs(model, corrupt_ids)
    with torch.no_grad():
        m_clean = float(metric(run_graph(model, clean_ids).logits))
        m_corrupt = float(metric(run_graph(model, corrupt_ids).logits))
    if abs(m_clean - m_corrupt) < 1e-12:
        raise ValueError(f"the metric is the same on clean and corrupt prompts ({m_clean:.4g}); faithfulness "
                         "is undefined — use prompts whose corruption changes the metric")
    values = []
    for n in sizes:
        keep = torch.zeros(g.n_nodes * g.n_inputs, dtype=torch.bool)
        keep[order[:n]] = True
        m_c = circuit_metric(model, clean_ids, corrupt_ids, keep.view(g.n_nodes, g.n_inputs), metric, corrupt)
        values.append((m_c - m_corrupt) / (m_clean - m_corrupt))
    return FaithfulnessCurve(sizes, values, n_edges, m_clean, m_corrupt)
