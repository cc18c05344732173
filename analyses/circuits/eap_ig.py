"""EAP with integrated gradients (EAP-IG; Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness").

The gradient in EAP is replaced by its average along the straight path of input embeddings from the corrupt to
the clean prompt (integrated gradients, Sundararajan et al. 2017), with ``m`` steps::

    e(α) = e_corrupt + α (e_clean − e_corrupt),   α_k = k / m,  k = 1 … m
    score(u → v) = (out_u(corrupt) − out_u(clean)) · (1/m) Σ_k ∂M/∂in_v |e(α_k)

(a right Riemann sum, so ``m = 1`` is exactly EAP; the authors' code uses the left sum k = 0 … m−1). Cost: one
corrupt forward, one clean forward and ``m`` forward+backward passes. Validated in
``tests/unit/test_circuits_eap.py``: m = 1 equals EAP, the completeness axiom (Σ_v score(input → v) →
M(corrupt) − M(clean) as m grows) holds on a tiny model, and the planted induction circuit is recovered.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from interp.graph import Graph, corrupt_outputs, run_graph

from .circuit import Circuit
from .eap import _stream_grads, scores_from_grads


def eap_ig_scores(model, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor,
                  metric: Callable[[torch.Tensor], torch.Tensor], *, steps: int = 5) -> torch.Tensor:
    """EAP-IG scores ``[n_nodes, n_inputs]``; token ids ``[batch, pos]``, ``metric(logits)`` → scalar."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError(f"clean {tuple(clean_ids.shape)} and corrupt {tuple(corrupt_ids.shape)} token ids must "
                         "have the same [batch, pos] shape")
    corrupt = corrupt_outputs(model, corrupt_ids)
    with torch.no_grad():
        clean = run_graph(model, clean_ids).node_outputs
    e_clean, e_corrupt = clean[0], corrupt[0]
    total = None
    for k in range(1, steps + 1):
        embeds = e_corrupt + (k / steps) * (e_clean - e_corrupt)
        _, grads, _ = _stream_grads(model, metric, embeds=embeds)
        total = grads if total is None else [a + g for a, g in zip(total, grads, strict=True)]
    return scores_from_grads(Graph.of(model), corrupt - clean, [g / steps for g in total])


def eap_ig(model, clean_ids, corrupt_ids, metric: Callable, *, steps: int = 5, metric_name: str = "",
           task: str = "") -> Circuit:
    """All edges with EAP-IG scores, as a ``Circuit``."""
    scores = eap_ig_scores(model, clean_ids, corrupt_ids, metric, steps=steps)
    return Circuit.from_scores(Graph.of(model), scores, method=f"eap-ig(m={steps})", metric=metric_name,
                               task=task, meta={"steps": steps})
