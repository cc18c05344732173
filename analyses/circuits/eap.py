"""Edge attribution patching (EAP; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated
Circuit Discovery").

A first-order Taylor estimate of the effect on the metric M of patching edge u → v to the corrupt run::

    score(u → v) = (out_u(corrupt) − out_u(clean)) · ∂M/∂in_v |clean

summed over batch and positions (M is a batch mean). ``in_v`` is the residual stream that input v reads
(``interp.graph``): one per query head for q, one per **KV head** for k and v, one per MLP, one for the
logits. Two forwards (clean with gradient, corrupt without) and one backward give every edge: the gradients
w.r.t. all input streams come from a single ``autograd.grad`` call and are contracted with the stacked output
differences. The score equals ∂M/∂removed[u, v] at removed = 0 (the edge-mask derivative), which is how it is
validated: ``tests/unit/test_circuits_eap.py`` compares every score with a separate autograd derivative per
edge on a tiny GQA llama, and checks that EAP recovers a planted induction circuit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from interp.graph import Graph, corrupt_outputs, run_graph

from .circuit import Circuit


def _stream_grads(model, metric, *, ids=None, embeds=None):
    """Clean-side forward + one backward: (node outputs, list of per-stream gradients, metric value)."""
    if embeds is None:
        model.check_tokens(ids)
        with torch.no_grad():
            embeds = model.arch.embed(ids.to(model.device))
    embeds = embeds.detach().requires_grad_(True)  # streams need grad even if the weights are frozen
    run = run_graph(model, embeds=embeds, keep_streams=True)
    value = metric(run.logits)
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        raise TypeError(f"metric(logits) must return a scalar tensor, got {type(value).__name__} "
                        f"{tuple(getattr(value, 'shape', ()))}")
    flat = [t for layer in run.streams[:-1] for t in layer] + [run.streams[-1]]
    grads = torch.autograd.grad(value, flat, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(flat, grads, strict=True)]
    return torch.stack(run.outs).detach(), grads, float(value.detach())


def scores_from_grads(graph: Graph, delta: torch.Tensor, grads: list) -> torch.Tensor:
    """``[n_nodes, n_inputs]`` edge scores from ``delta = out(corrupt) − out(clean)`` ``[n_nodes, batch, pos,
    d_model]`` and per-stream gradients (the flat list of ``_stream_grads``). Invalid edges score 0."""
    scores = torch.zeros(graph.n_nodes, graph.n_inputs, dtype=torch.float64)
    flat = delta.reshape(delta.shape[0], -1)  # [n_nodes, batch·pos·d_model]
    for layer in range(graph.n_layers):
        cols, n_up = graph.cols(layer), graph.n_upstream_attn(layer)
        g_q, g_k, g_v, g_m = grads[4 * layer: 4 * layer + 4]
        # one matmul per layer: [up, batch·pos·d_model] @ [batch·pos·d_model, q heads + 2 kv heads + 1]
        # rows are the same (batch, pos, d_model) order as ``flat``: [b, p, c, m] → [b, p, m, c]
        g = torch.cat([x.permute(0, 1, 3, 2).reshape(-1, x.shape[2]) if x.ndim == 4 else x.reshape(-1, 1)
                       for x in (g_q, g_k, g_v, g_m)], dim=1)
        s = (flat[: n_up + graph.n_heads] @ g).double().cpu()
        widths = [g_q.shape[2], g_k.shape[2], g_v.shape[2]]
        at = 0
        for name, w in zip(("q", "k", "v"), widths, strict=True):
            scores[:n_up, cols[name]] = s[:n_up, at: at + w]
            at += w
        scores[: n_up + graph.n_heads, cols["mlp"]] = s[:, at: at + 1]
    scores[:, graph.logits_col] = (flat @ grads[-1].reshape(-1)).double().cpu()
    return scores


def eap_scores(model, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor,
               metric: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """EAP scores ``[n_nodes, n_inputs]`` (``interp.graph.Graph`` layout; 0 where no edge exists).

    ``clean_ids``/``corrupt_ids`` ``[batch, pos]`` (same shape); ``metric(logits [batch, pos, d_vocab])`` →
    scalar.
    """
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError(f"clean {tuple(clean_ids.shape)} and corrupt {tuple(corrupt_ids.shape)} token ids must "
                         "have the same [batch, pos] shape")
    corrupt = corrupt_outputs(model, corrupt_ids)
    clean, grads, _ = _stream_grads(model, metric, ids=clean_ids)
    return scores_from_grads(Graph.of(model), corrupt - clean, grads)


def eap(model, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor, metric: Callable, *, metric_name: str = "",
        task: str = "") -> Circuit:
    """All edges of ``model``'s graph with their EAP scores, as a ``Circuit`` (use ``.top(n)`` to select)."""
    scores = eap_scores(model, clean_ids, corrupt_ids, metric)
    return Circuit.from_scores(Graph.of(model), scores, method="eap", metric=metric_name, task=task)
