"""Automatic circuit discovery (ACDC; Conmy, Mavor-Parker, Lynch, Heimersheim & Garriga-Alonso 2023).

Greedy pruning of the edge graph of ``interp.graph``. Start from the full graph (nothing removed) and a
distance ``d`` of the patched run from the clean run. Visit the downstream inputs in reverse topological order
(the logits input first, then per layer from the last: the MLP input, the v, k inputs of each KV head and the
q input of each query head, last index first), and for each its upstream nodes from the latest to ``input``::

    remove the edge (patch it to the corrupt run, on top of everything already removed)
    if d(new) − d(current) < τ:  keep it removed, d(current) = d(new)
    else:                        restore it

``d`` is ``KL(clean ‖ patched)`` at the last position (``metric="kl"``) or, for a task metric M (a callable,
e.g. the logit difference), ``M(clean) − M(patched)``. With ``level="node"`` whole nodes are tried instead
(all outgoing edges of a node at once, latest node first).

``candidates [n_nodes, n_inputs]`` (bool) restricts the search to a candidate edge set, e.g. the top few hundred
EAP edges (Syed et al. 2023 suggest pruning with attribution patching first): every edge outside it is removed
from the start and never tried, and only candidate edges are visited, in the same order.

Validated in ``tests/unit/test_circuits_acdc.py`` against a from-scratch reference that recomputes every node
output explicitly (also with a candidate set: the same greedy loop with the non-candidates pre-removed), and on a
planted induction circuit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from interp.graph import Graph, corrupt_outputs, run_graph
from interp.metrics import mean_kl_to_clean

from .circuit import Circuit


def acdc_order(graph: Graph) -> list[tuple[int, int]]:
    """The ``(node row, input column)`` pairs in the order ACDC visits them."""
    return [(u, c) for c in reversed(range(graph.n_inputs)) for u in reversed(range(graph.n_upstream_of_col(c)))]


def acdc(model, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, *, tau: float,
         metric: str | Callable = "kl", level: str = "edge", task: str = "",
         candidates: torch.Tensor | None = None) -> Circuit:
    """Run ACDC; returns the kept edges as a ``Circuit`` whose scores are ``d(removed) − d(kept)`` measured
    when each edge was tried (the cost of removing it). ``meta`` holds ``d_final``, ``n_tried``, ``n_forwards``
    (patched forwards, plus the clean and corrupt runs), ``seconds`` and the full removed mask (``removed``, list
    of [row, col]). Token ids ``[batch, pos]``; ``candidates [n_nodes, n_inputs]`` bool (see the module)."""
    if level not in ("edge", "node"):
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")
    if not isinstance(tau, (int, float)) or tau < 0:
        raise ValueError(f"tau must be a non-negative number, got {tau!r}")
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError(f"clean {tuple(clean_ids.shape)} and corrupt {tuple(corrupt_ids.shape)} token ids must "
                         "have the same [batch, pos] shape")
    graph = Graph.of(model)
    valid = graph.valid
    if candidates is None:
        cand = valid
    else:
        if not isinstance(candidates, torch.Tensor) or tuple(candidates.shape) != (graph.n_nodes, graph.n_inputs):
            raise ValueError(f"candidates must be a bool tensor [n_nodes, n_inputs] = {(graph.n_nodes, graph.n_inputs)}"
                             f", got {getattr(candidates, 'shape', type(candidates).__name__)}")
        cand = valid & candidates.bool().cpu()
    t0 = time.perf_counter()
    corrupt = corrupt_outputs(model, corrupt_ids)
    with torch.no_grad():
        clean_logits = run_graph(model, clean_ids).logits
    if metric == "kl":
        distance = lambda logits: float(mean_kl_to_clean(logits, clean_logits))
        metric_name = "kl"
    elif callable(metric):
        m_clean = float(metric(clean_logits))
        distance = lambda logits: m_clean - float(metric(logits))
        metric_name = getattr(metric, "__name__", "metric")
    else:
        raise ValueError(f"metric must be 'kl' or a callable logits → scalar, got {metric!r}")

    def d_of(removed):
        with torch.no_grad():
            return distance(run_graph(model, clean_ids, corrupt=corrupt, removed=removed).logits)

    removed = valid & ~cand  # non-candidates are removed from the start
    cost = torch.zeros(graph.n_nodes, graph.n_inputs, dtype=torch.float64)
    current = d_of(removed)
    if level == "edge":
        trials = [(u, c) for u, c in acdc_order(graph) if cand[u, c]]
    else:
        trials = [(u, None) for u in reversed(range(graph.n_nodes)) if cand[u].any()]
    for u, c in trials:
        trial = removed.clone()
        if c is None:
            trial[u] |= cand[u]
        else:
            trial[u, c] = True
        new = d_of(trial)
        if c is None:
            cost[u, cand[u]] = new - current
        else:
            cost[u, c] = new - current
        if new - current < tau:
            removed, current = trial, new
    keep = valid & ~removed
    return Circuit.from_scores(graph, cost, keep=keep, method=f"acdc-{level}", metric=metric_name, task=task,
                               meta={"tau": float(tau), "d_final": current, "n_tried": len(trials),
                                     "n_forwards": len(trials) + 1, "n_candidates": int(cand.sum()),
                                     "seconds": time.perf_counter() - t0, "removed": removed.nonzero().tolist()})
