"""Completeness and minimality spot checks of a circuit (Wang et al. 2022, "Interpretability in the Wild", §4).

Nodes are the upstream components of ``interp.graph`` (heads ``L{layer}H{head}`` and MLPs ``M{layer}``; the
input embedding is never removed). Removing a node set K from an edge set E removes every edge out of those
nodes: E \\ K = {(u → v) ∈ E : u ∉ K}. F is the raw task metric (e.g. the logit difference) of the clean run
with every edge outside the kept set replaced by the ablation values (``ablations.ablation_outputs``; default
``"resample"``, the paired corrupt prompt). For a circuit C inside the full graph M:

    completeness gap(K)  = |F(C \\ K) − F(M \\ K)|          C is complete ⇔ the gap is small for every K ⊆ C
    minimality(v | K)    = |F(C \\ (K ∪ {v})) − F(C \\ K)|   v is needed ⇔ this is large for some K ⊆ C \\ {v}

Every K cannot be tried; like the paper's random-subset variant these are spot checks: K = ∅ and ``n_random``
random subsets of C's nodes (each node in K with probability ``p``) for completeness, and for minimality each
of C's ``top`` nodes (ranked by the summed |score| of their edges in C) with K = ∅ and ``n_random`` random K.
Both return DataFrames; ``gap_rel`` and ``score_rel`` divide by |F(M)| and |F(C)|.

Validated in ``tests/unit/test_circuits_completeness.py`` against explicit ``run_graph`` calls with hand-built
masks, and the full graph as its own circuit (gap exactly 0 for every K).
"""

from __future__ import annotations

import torch

from interp.graph import Graph, run_graph

from .ablations import ablation_outputs
from .circuit import Circuit


def _setup(model, task, circuit, ablation):
    if hasattr(task, "tokens") and not hasattr(task, "metric"):
        task = task.tokens(model)
    g = Graph.of(model)
    keep = circuit if isinstance(circuit, torch.Tensor) else circuit.mask(g)
    if tuple(keep.shape) != (g.n_nodes, g.n_inputs):
        raise ValueError(f"circuit mask must be [n_nodes, n_inputs] = {(g.n_nodes, g.n_inputs)}, "
                         f"got {tuple(keep.shape)}")
    keep = keep.bool() & g.valid.bool()
    nodes = [int(u) for u in keep.any(1).nonzero().flatten() if g.nodes[int(u)] != "input"]
    if not nodes:
        raise ValueError("the circuit has no head or MLP node with an outgoing edge: nothing to remove")
    abl = ablation_outputs(model, task.clean, ablation, corrupt_ids=task.corrupt)

    def F(kept: torch.Tensor) -> float:
        with torch.no_grad():
            logits = run_graph(model, task.clean, corrupt=abl, removed=(g.valid.bool() & ~kept).to(model.dtype))
        return float(task.metric(logits.logits))

    return g, keep, nodes, F


def _without(mask: torch.Tensor, nodes) -> torch.Tensor:
    out = mask.clone()
    out[list(nodes)] = False
    return out


def _random_subsets(nodes, n, p, seed, exclude=()):
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    gen = torch.Generator().manual_seed(seed)
    pool = [u for u in nodes if u not in set(exclude)]
    return [[u for u, r in zip(pool, torch.rand(len(pool), generator=gen).tolist(), strict=True) if r < p]
            for _ in range(n)]


def completeness(model, task, circuit: Circuit | torch.Tensor, *, n_random: int = 5, p: float = 0.3,
                 seed: int = 0, ablation: str = "resample"):
    """DataFrame, one row per K (``K = ∅`` first): ``k, n_removed, removed, f_circuit, f_model, gap, gap_rel``.

    ``task``: ``TaskTokens`` (clean/corrupt ``[batch, pos]`` ids and ``metric(logits) → scalar``) or a ``Task``;
    ``circuit``: a ``Circuit`` or a bool keep mask ``[n_nodes, n_inputs]``.
    """
    import pandas as pd

    g, keep, nodes, F = _setup(model, task, circuit, ablation)
    full = g.valid.bool()
    rows = []
    for i, K in enumerate([[]] + _random_subsets(nodes, n_random, p, seed)):
        fc, fm = F(_without(keep, K)), F(_without(full, K))
        rows.append({"k": "∅" if i == 0 else f"random{i - 1}", "n_removed": len(K),
                     "removed": " ".join(g.nodes[u] for u in K), "f_circuit": fc, "f_model": fm,
                     "gap": abs(fc - fm)})
    df = pd.DataFrame(rows)
    df["gap_rel"] = df.gap / max(abs(df.f_model.iloc[0]), 1e-12)
    return df


def minimality(model, task, circuit: Circuit | torch.Tensor, *, nodes: list[str] | None = None, top: int = 10,
               n_random: int = 1, p: float = 0.3, seed: int = 0, ablation: str = "resample"):
    """DataFrame, one row per (node v, K): ``node, k, n_removed, f_without_k, f_without_kv, score, score_rel``.

    ``nodes``: names of C's nodes to test (default: its ``top`` nodes by summed |edge score|, which needs a
    ``Circuit``; with a bool mask, the first ``top`` nodes in graph order).
    """
    import pandas as pd

    g, keep, cnodes, F = _setup(model, task, circuit, ablation)
    if nodes is not None:
        unknown = [n for n in nodes if n not in g.nodes or g.nodes.index(n) not in cnodes]
        if unknown:
            raise ValueError(f"nodes {unknown} are not head/MLP nodes with an edge in the circuit")
        chosen = [g.nodes.index(n) for n in nodes]
    elif isinstance(circuit, Circuit):
        weight = {}
        for (up, _, _), s in zip(circuit.edges, circuit.scores, strict=True):
            weight[up] = weight.get(up, 0.0) + abs(s)
        chosen = sorted(cnodes, key=lambda u: -weight.get(g.nodes[u], 0.0))[:top]
    else:
        chosen = cnodes[:top]
    f_c = F(keep)
    rows = []
    for v in chosen:
        for i, K in enumerate([[]] + _random_subsets(cnodes, n_random, p, seed + v, exclude=[v])):
            f_k = f_c if not K else F(_without(keep, K))
            f_kv = F(_without(keep, K + [v]))
            rows.append({"node": g.nodes[v], "k": "∅" if i == 0 else f"random{i - 1}", "n_removed": len(K),
                         "f_without_k": f_k, "f_without_kv": f_kv, "score": abs(f_kv - f_k)})
    df = pd.DataFrame(rows)
    df["score_rel"] = df.score / max(abs(f_c), 1e-12)
    return df
